//! The invariants of the fuzz target for the proxy's reading of a waifu's answer
//! (`crates/orchestrator/src/upstream/`, `crates/http1/`): a waifu is less trusted than the orchestrator, and
//! a connection reused after a misread answer would hand one client's bytes
//! to the next.
//!
//! The first input byte picks the request method (odd: `HEAD`, else `GET`);
//! the rest is everything the waifu sends before closing. Invariants,
//! checked with a reader written here, independently of the proxy's:
//! - nothing panics (the release build aborts on a panic);
//! - a decoded body is never longer than what was sent;
//! - a connection is kept for reuse only after an HTTP/1.1 answer without
//!   `Connection: close`, whose body was framed explicitly and read exactly:
//!   a single `Content-Length` it matches, or `chunked` (last coding, no
//!   `Content-Length`) that decodes to the same bytes, or no body where none
//!   is allowed; with nothing sent after it.
//!
//! Shared by the cargo-fuzz target (`fuzz/fuzz_targets/`) and the smoke run
//! in the test suite (`crates/orchestrator/tests/fuzz_smoke.rs`).

use orchestrator::testing::{BodyEnd, Decoded, upstream_decode};

/// Panics when an invariant does not hold for `input`.
pub fn check(input: &[u8]) {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let head_request = first & 1 == 1;
    let Decoded::Response {
        status,
        body,
        ending,
        left,
        reusable,
    } = upstream_decode(data, head_request)
    else {
        return;
    };
    assert!(body.len() <= data.len());
    if !reusable {
        return;
    }
    assert_eq!(ending, BodyEnd::Complete);
    assert_eq!(left, 0);

    let (answer, rest) = final_head(data).expect("a reused answer has a head");
    assert_eq!(answer.status, status);
    assert!(answer.http11, "reused after an HTTP/1.0 answer");
    assert!(!answer.close, "reused after Connection: close");
    let bodyless = head_request || status == 204 || status == 304;
    let te = answer.values("transfer-encoding");
    let cl = answer.values("content-length");
    if bodyless {
        assert!(body.is_empty() && rest.is_empty(), "{data:?}");
    } else if !te.is_empty() {
        let last = te
            .iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .rfind(|t| !t.is_empty());
        assert!(last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")));
        assert!(
            cl.is_empty(),
            "reused with both Transfer-Encoding and Content-Length"
        );
        assert_eq!(
            dechunk(rest).as_deref(),
            Some(&body[..]),
            "chunked body read differently: {data:?}"
        );
    } else {
        let lengths: Vec<&[u8]> = cl
            .iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .collect();
        assert!(!lengths.is_empty(), "reused without framing");
        assert!(lengths.iter().all(|l| *l == lengths[0]));
        let n: usize = std::str::from_utf8(lengths[0]).unwrap().parse().unwrap();
        assert_eq!(body.len(), n);
        assert_eq!(rest, &body[..], "{data:?}");
    }
}

struct Answer<'a> {
    status: u16,
    http11: bool,
    close: bool,
    fields: Vec<(String, &'a [u8])>,
}

impl Answer<'_> {
    fn values(&self, name: &str) -> Vec<&[u8]> {
        self.fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .collect()
    }
}

/// Splits off one line ending in LF (a CR before it dropped).
fn line(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = data.iter().position(|&b| b == b'\n')?;
    let l = &data[..end];
    Some((l.strip_suffix(b"\r").unwrap_or(l), &data[end + 1..]))
}

/// The first head that is not an interim 1xx answer (101 counts as final),
/// and the bytes after it. Lines may end in a bare LF: httparse takes that
/// in responses, and this reader follows, so that only the body's framing
/// is compared.
fn final_head(mut data: &[u8]) -> Option<(Answer<'_>, &[u8])> {
    loop {
        // Empty lines before a status line are skipped, as httparse does.
        let (mut status_line, mut rest) = line(data)?;
        while status_line.is_empty() {
            (status_line, rest) = line(rest)?;
        }
        let mut words = status_line.splitn(3, |&b| b == b' ');
        let version = words.next()?;
        let status: u16 = std::str::from_utf8(words.next()?).ok()?.parse().ok()?;
        let mut fields = Vec::new();
        loop {
            let (l, after) = line(rest)?;
            rest = after;
            if l.is_empty() {
                break;
            }
            let colon = l.iter().position(|&b| b == b':')?;
            let name = String::from_utf8_lossy(l[..colon].trim_ascii()).to_ascii_lowercase();
            fields.push((name, l[colon + 1..].trim_ascii()));
        }
        if (100..200).contains(&status) && status != 101 {
            data = rest;
            continue;
        }
        let close = fields.iter().any(|(n, v)| {
            n == "connection"
                && v.split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        });
        let answer = Answer {
            status,
            http11: version == b"HTTP/1.1",
            close,
            fields,
        };
        return Some((answer, rest));
    }
}

/// Splits off one line ending in CRLF, with no other CR, LF or control
/// character in it (HTAB aside).
fn crlf_line(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = data.windows(2).position(|w| w == b"\r\n")?;
    let l = &data[..end];
    let ctl = l.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f);
    (!ctl).then_some((l, &data[end + 2..]))
}

/// A chunked body decoded, or `None` if `data` is not exactly one: chunk-size
/// lines and trailer lines end in CRLF and hold no control characters,
/// trailers are `name: value` fields.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let (size_line, rest) = crlf_line(data)?;
        let digits = size_line.split(|&b| b == b';').next()?.trim_ascii();
        if digits.is_empty() || digits.len() > 16 {
            return None;
        }
        let size = usize::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()?;
        data = rest;
        if size == 0 {
            // Trailer lines until an empty one, and nothing after it.
            loop {
                let (l, rest) = crlf_line(data)?;
                data = rest;
                if l.is_empty() {
                    return data.is_empty().then_some(body);
                }
                let colon = l.iter().position(|&b| b == b':')?;
                let name = &l[..colon];
                let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                if name.is_empty() || !name.iter().all(|&b| tchar(b)) {
                    return None;
                }
            }
        }
        body.extend_from_slice(data.get(..size)?);
        data = data[size..].strip_prefix(b"\r\n")?;
    }
}
