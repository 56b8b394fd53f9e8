use super::*;
use proptest::prelude::*;

/// Feeds `pieces` as successive reads, as the socket wrapper does: returns what
/// hyper would get and the violation, if any.
fn run(pieces: &[&[u8]]) -> (Vec<u8>, Option<Violation>) {
    let mut checker = Checker::default();
    let mut out = Vec::new();
    for piece in pieces {
        let mut data = checker.take_held();
        data.extend_from_slice(piece);
        let verdict = checker.check(&data);
        out.extend_from_slice(&data[..verdict.pass]);
        if verdict.violation.is_some() {
            return (out, verdict.violation);
        }
        checker.hold(data[verdict.pass..].to_vec());
    }
    (out, None)
}

const GET: &str = "GET / HTTP/1.1\r\nhost: a\r\n\r\n";

#[test]
fn refused_heads() {
    use Violation::*;
    let cases: &[(&str, &str, Violation)] = &[
        (
            "CL and TE",
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            LengthAndEncoding,
        ),
        (
            "two CLs",
            "POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc",
            TwoLengths,
        ),
        (
            "CL list",
            "POST / HTTP/1.1\r\ncontent-length: 3, 3\r\n\r\nabc",
            BadLength,
        ),
        (
            "plus CL",
            "POST / HTTP/1.1\r\ncontent-length: +3\r\n\r\nabc",
            BadLength,
        ),
        (
            "empty CL",
            "POST / HTTP/1.1\r\ncontent-length: \r\n\r\n",
            BadLength,
        ),
        (
            "negative CL",
            "POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
            BadLength,
        ),
        (
            "huge CL",
            "POST / HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\n",
            BadLength,
        ),
        (
            "xchunked",
            "POST / HTTP/1.1\r\ntransfer-encoding: xchunked\r\n\r\n",
            BadEncoding,
        ),
        (
            "chunked tab",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\t\r\n\r\n",
            BadEncoding,
        ),
        (
            "tab chunked",
            "POST / HTTP/1.1\r\ntransfer-encoding:\tchunked\r\n\r\n",
            BadEncoding,
        ),
        (
            "identity, chunked",
            "POST / HTTP/1.1\r\ntransfer-encoding: identity, chunked\r\n\r\n",
            BadEncoding,
        ),
        (
            "chunked, chunked",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked, chunked\r\n\r\n",
            BadEncoding,
        ),
        (
            "second TE",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            TwoEncodings,
        ),
        (
            "obs-fold",
            "GET / HTTP/1.1\r\nhost: a\r\nx-a: b\r\n c\r\n\r\n",
            ObsFold,
        ),
        (
            "obs-fold tab",
            "GET / HTTP/1.1\r\nhost: a\r\n\tc\r\n\r\n",
            ObsFold,
        ),
        (
            "space before colon",
            "GET / HTTP/1.1\r\nhost : a\r\n\r\n",
            SpaceBeforeColon,
        ),
        (
            "TE space before colon",
            "POST / HTTP/1.1\r\ntransfer-encoding : chunked\r\n\r\n",
            SpaceBeforeColon,
        ),
        ("bare LF in head", "GET / HTTP/1.1\nhost: a\r\n\r\n", BareLf),
        ("bare LF ending", "GET / HTTP/1.1\r\nhost: a\n\n", BareLf),
        ("bare CR", "GET / HTTP/1.1\r\nhost: a\rx: y\r\n\r\n", BareCr),
        ("no colon", "GET / HTTP/1.1\r\nhost a\r\n\r\n", BadFieldName),
        ("fragment", "GET /w#a HTTP/1.1\r\nhost: a\r\n\r\n", Fragment),
        (
            "fragment before a query",
            "GET /w#a?b=1 HTTP/1.1\r\nhost: a\r\n\r\n",
            Fragment,
        ),
        (
            "fragment hiding a path",
            "GET /app/x#/../__internal/y HTTP/1.1\r\nhost: a\r\n\r\n",
            Fragment,
        ),
        (
            "bad name",
            "GET / HTTP/1.1\r\nho\"st: a\r\n\r\n",
            BadFieldName,
        ),
        (
            "bad chunk size",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            BadChunk(ChunkError::NoSize),
        ),
        (
            "no CRLF after chunk",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n1\r\naXX",
            BadChunk(ChunkError::NoCrlf),
        ),
        // What httparse alone would take: a size line with no digits,
        // a bare LF or a NUL in an extension, a trailer that is no field.
        (
            "chunk line without a size",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n;x=1\r\n",
            BadChunk(ChunkError::NoSize),
        ),
        (
            "bare LF in a chunk extension",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n1;a\nb\r\nx\r\n",
            BadChunk(ChunkError::Control),
        ),
        (
            "NUL in a chunk extension",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n1;\0\r\nx\r\n",
            BadChunk(ChunkError::Control),
        ),
        (
            "a trailer that is not a field",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\nhello\r\n\r\n",
            BadChunk(ChunkError::BadTrailer),
        ),
    ];
    for (what, raw, want) in cases {
        let (passed, violation) = run(&[raw.as_bytes()]);
        assert_eq!(violation, Some(*want), "{what}");
        // Nothing of a refused head reaches hyper.
        let in_body = matches!(want, BadChunk(_));
        let refused_at = if in_body { passed.len() } else { 0 };
        assert_eq!(passed.len(), refused_at, "{what}");
        // Split anywhere, the head is still refused, and hyper never
        // gets all of it (it would need the final empty line).
        if !in_body {
            for k in 1..raw.len() {
                let (passed, violation) = run(&[&raw.as_bytes()[..k], &raw.as_bytes()[k..]]);
                assert!(violation.is_some(), "{what} split at {k}");
                assert!(find_head_end(&passed).is_none(), "{what} split at {k}");
                assert!(
                    !passed.windows(2).any(|w| w == b"\n\n"),
                    "{what} split at {k}"
                );
            }
        }
        // The same, after a good request: that one passes whole.
        let (passed, violation) = run(&[GET.as_bytes(), raw.as_bytes()]);
        assert_eq!(violation, Some(*want), "{what} (pipelined)");
        assert!(passed.starts_with(GET.as_bytes()), "{what} (pipelined)");
    }
}

#[test]
fn accepted_streams() {
    let cases: &[(&str, &str)] = &[
        ("get", GET),
        (
            "length",
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello",
        ),
        (
            "chunked",
            "POST / HTTP/1.1\r\ntransfer-encoding:  Chunked \r\n\r\n5;x=1\r\nhello\r\n0\r\nt: 1\r\n\r\n",
        ),
        (
            "a body that looks like a bad head",
            "POST / HTTP/1.1\r\ncontent-length: 20\r\n\r\nGET / HTTP/1.1\nx\n\n\n\n",
        ),
        (
            "h2 preface",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\n\n",
        ),
        (
            "leading empty line",
            "\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n",
        ),
    ];
    for (what, raw) in cases {
        let stream = [raw.as_bytes(), GET.as_bytes()].concat();
        assert_eq!(run(&[&stream]), (stream.clone(), None), "{what}");
    }
}

/// An upgrade request is a request like any other: what follows it is
/// checked until a switch is actually relayed.
#[test]
fn an_upgrade_request_leaves_the_checks_on() {
    let upgrade = "GET / HTTP/1.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n";
    let h2c = "GET / HTTP/1.1\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n\
               http2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    let smuggle =
        "POST / HTTP/1.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
    for first in [upgrade, h2c] {
        let stream = format!("{first}{smuggle}");
        assert_eq!(
            run(&[stream.as_bytes()]),
            (
                first.as_bytes().to_vec(),
                Some(Violation::LengthAndEncoding)
            ),
            "{first}"
        );
        // Binary after the head, as a tunnel would carry: not HTTP/1.
        let stream = format!("{first}\x01\n\n");
        assert_eq!(run(&[stream.as_bytes()]).1, Some(Violation::BareLf));
    }
}

#[test]
fn a_bad_line_ending_is_refused_before_the_head_ends() {
    let (passed, violation) = run(&[b"GET / HTTP/1.1\nhost: a"]);
    assert_eq!((passed.len(), violation), (0, Some(Violation::BareLf)));
}

#[test]
fn each_refusal_is_a_complete_json_answer() {
    use Violation::*;
    let all = [
        BareLf,
        BareCr,
        ObsFold,
        SpaceBeforeColon,
        BadFieldName,
        TwoLengths,
        BadLength,
        TwoEncodings,
        BadEncoding,
        LengthAndEncoding,
        BadChunk(crate::chunked::ChunkError::NoSize),
        Fragment,
        HeadTooLarge,
    ];
    let messages: std::collections::BTreeSet<&str> = all.iter().map(|v| v.message()).collect();
    assert_eq!(messages.len(), all.len(), "one message each");
    for v in all {
        assert!(v.message().len() > 10, "{v:?}");
        let response = String::from_utf8(v.response()).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = if v == HeadTooLarge {
            "HTTP/1.1 431 Request Header Fields Too Large\r\n"
        } else {
            "HTTP/1.1 400 Bad Request\r\n"
        };
        assert!(head.starts_with(status), "{response}");
        assert!(head.contains("connection: close"), "{response}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{response}"
        );
        assert!(body.contains(v.message()), "{response}");
        assert!(body.starts_with(r#"{"error":""#), "{response}");
    }
}

#[test]
fn held_bytes_and_where_the_stream_is() {
    let mut checker = Checker::default();
    assert!(checker.between_messages());
    // Inside a body, not between messages; after it, between again.
    let head = b"POST / HTTP/1.1\r\ncontent-length: 4\r\n\r\nab";
    assert_eq!(checker.check(head).pass, head.len());
    assert!(!checker.between_messages());
    assert_eq!(checker.check(b"cd").pass, 2);
    assert!(checker.between_messages());
    // What was held is offered again; a switch hands it over and ends the
    // checks.
    checker.hold(b"\r".to_vec());
    assert_eq!(checker.held_len(), 1);
    assert_eq!(checker.stop_checking(), b"\r");
    assert_eq!(checker.held_len(), 0);
    assert!(checker.between_messages());
    let binary = b"\x00\n\n\r\x01";
    assert_eq!(
        checker.check(binary),
        Verdict {
            pass: binary.len(),
            violation: None
        }
    );
}

#[test]
fn the_h2_preface_counts_only_as_the_first_bytes() {
    // After a request, the preface is just more HTTP/1 (and the binary
    // after it is refused).
    let preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\n\n";
    let stream = format!("{GET}{preface}");
    assert_eq!(run(&[stream.as_bytes()]).1, Some(Violation::BareLf));
    // Also when it comes in a read of its own.
    let (_, violation) = run(&[GET.as_bytes(), preface.as_bytes()]);
    assert_eq!(violation, Some(Violation::BareLf));
}

#[test]
fn a_body_of_known_length_ends_where_it_says() {
    let stream = "POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nabcGET / HTTP/1.1\nx: y\r\n\r\n";
    let (passed, violation) = run(&[stream.as_bytes()]);
    assert_eq!(violation, Some(Violation::BareLf));
    assert!(
        passed.ends_with(b"abc"),
        "{:?}",
        String::from_utf8_lossy(&passed)
    );
}

#[test]
fn a_head_over_the_limit_is_left_to_the_parser_and_one_at_it_is_checked() {
    // An unfinished head of exactly MAX_HEAD bytes is still checked.
    let at_limit = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(MAX_HEAD - 19));
    assert_eq!(at_limit.len(), MAX_HEAD);
    let (_, violation) = run(&[at_limit.as_bytes(), b"\n"]);
    assert_eq!(violation, Some(Violation::BareLf));
    // One byte more: the parser refuses it (431) on its own; nothing more
    // is judged here.
    let over = format!("{at_limit}a");
    let (passed, violation) = run(&[over.as_bytes(), b"\n"]);
    assert_eq!(violation, None);
    assert_eq!(passed.len(), over.len() + 1);
}

proptest! {
    /// However a valid pipelined stream is split into reads, all of it
    /// passes, in order.
    #[test]
    fn any_split_of_valid_requests_passes(
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..4),
        chunked in any::<bool>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut stream = Vec::new();
        for body in &bodies {
            if chunked {
                stream.extend_from_slice(b"POST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n");
                for part in body.chunks(7) {
                    stream.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                    stream.extend_from_slice(part);
                    stream.extend_from_slice(b"\r\n");
                }
                stream.extend_from_slice(b"0\r\n\r\n");
            } else {
                stream.extend_from_slice(format!("POST /l HTTP/1.1\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes());
                stream.extend_from_slice(body);
            }
        }
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(stream.len())).collect();
        at.push(stream.len());
        at.sort_unstable();
        let mut pieces: Vec<&[u8]> = Vec::new();
        let mut from = 0;
        for to in at {
            pieces.push(&stream[from..to]);
            from = to;
        }
        prop_assert_eq!(run(&pieces), (stream.clone(), None));
    }
}

/// The checks as first written, byte by byte: the `memchr` versions must
/// judge every input the same way.
mod reference {
    use super::super::{Chunked, Framing, Violation, trim_spaces};
    use crate::token::is_tchar;

    pub fn line_ending_violation(mut prev: u8, bytes: &[u8]) -> Option<Violation> {
        for &b in bytes {
            if b == b'\n' && prev != b'\r' {
                return Some(Violation::BareLf);
            }
            if prev == b'\r' && b != b'\n' {
                return Some(Violation::BareCr);
            }
            prev = b;
        }
        None
    }

    pub fn judge_head(head: &[u8]) -> Result<Framing, Violation> {
        if let Some(v) = line_ending_violation(0, head) {
            return Err(v);
        }
        let mut lines = head[..head.len() - 4]
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .skip_while(|l| l.is_empty());
        if let Some(line) = lines.next()
            && line
                .split(|&b| b == b' ')
                .nth(1)
                .is_some_and(|t| t.contains(&b'#'))
        {
            return Err(Violation::Fragment);
        }
        let (mut length, mut encoding) = (None::<&[u8]>, None::<&[u8]>);
        for line in lines {
            if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
                return Err(Violation::ObsFold);
            }
            let colon = line
                .iter()
                .position(|&b| b == b':')
                .ok_or(Violation::BadFieldName)?;
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            if name.last().is_some_and(|&b| b == b' ' || b == b'\t') {
                return Err(Violation::SpaceBeforeColon);
            }
            if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
                return Err(Violation::BadFieldName);
            }
            if name.eq_ignore_ascii_case(b"content-length") {
                if length.replace(value).is_some() {
                    return Err(Violation::TwoLengths);
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding")
                && encoding.replace(&line[colon + 1..]).is_some()
            {
                return Err(Violation::TwoEncodings);
            }
        }
        Ok(match (length, encoding) {
            (Some(_), Some(_)) => return Err(Violation::LengthAndEncoding),
            (Some(value), None) => {
                let ok =
                    !value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit);
                let n = std::str::from_utf8(value)
                    .ok()
                    .filter(|_| ok)
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or(Violation::BadLength)?;
                if n == 0 {
                    Framing::Head
                } else {
                    Framing::Length(n)
                }
            }
            (None, Some(raw)) => {
                if !trim_spaces(raw).eq_ignore_ascii_case(b"chunked") {
                    return Err(Violation::BadEncoding);
                }
                Framing::Chunked(Chunked::Size)
            }
            (None, None) => Framing::Head,
        })
    }
}

/// Bytes a head is made of, weighted towards the ones the checks look at.
fn head_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => prop::sample::select(b"\r\n :\t#,".to_vec()),
        4 => prop::sample::select(b"GETPOST/ HTTP/1.1hostcontent-lengthtransfer-encodingchunked0123456789".to_vec()),
        1 => any::<u8>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn line_endings_are_judged_as_byte_by_byte(
        prev in prop::sample::select(vec![0u8, b'\r', b'\n', b'a']),
        bytes in prop::collection::vec(head_byte(), 0..64),
    ) {
        prop_assert_eq!(line_ending_violation(prev, &bytes), reference::line_ending_violation(prev, &bytes));
    }

    #[test]
    fn heads_are_judged_as_byte_by_byte(
        lines in prop::collection::vec(prop::collection::vec(head_byte(), 0..24), 0..6),
        glue in prop::sample::select(vec![&b"\r\n"[..], b"\n", b"\r"]),
    ) {
        // Whole heads, as `check` hands them over: ending in CRLF CRLF.
        let mut head = b"GET /a HTTP/1.1".to_vec();
        for line in &lines {
            head.extend_from_slice(glue);
            head.extend_from_slice(line);
        }
        head.extend_from_slice(b"\r\n\r\n");
        prop_assert_eq!(judge_head(&head), reference::judge_head(&head));
        let known = [
            &b"POST / HTTP/1.1\r\ncontent-length: 12\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ntransfer-encoding:  chunked \r\n\r\n",
            b"\r\n\r\nGET /#x HTTP/1.1\r\nhost: a\r\n\r\n",
        ];
        for head in known {
            prop_assert_eq!(judge_head(head), reference::judge_head(head));
        }
    }
}
