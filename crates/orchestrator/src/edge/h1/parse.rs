//! Parsing a request head the fast path may serve itself, or deciding that
//! hyper must take the connection.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri, Version};
use waifus_http1::limits::MAX_FIELDS;

/// A request head the fast path serves.
#[derive(Debug)]
pub(crate) struct Head {
    pub parts: http::request::Parts,
    /// The client asked for the connection to close after this request.
    pub close: bool,
}

// Returned once per request and consumed at once: boxing the head would
// cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Parsed {
    Fast(Head),
    Partial,
    HandOff,
}

/// Where a field's name and value are in the head.
#[derive(Debug, Clone, Copy, Default)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

/// Parses the head at the start of `buf`; a head served here is taken
/// out of it.
pub(crate) fn parse(buf: &mut BytesMut) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    let mut fields = [Field::default(); MAX_FIELDS];
    // Uninitialised: 3 KiB of headers are not zeroed for every request.
    let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut raw) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::HandOff,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::HandOff;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::HandOff;
    };
    if method == Method::CONNECT || !path.starts_with('/') {
        return Parsed::HandOff;
    }
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start as u32, (start + s.len()) as u32)
    };
    let target = at(path.as_bytes());
    let mut close = false;
    let count = req.headers.len();
    for (field, raw) in fields.iter_mut().zip(req.headers.iter()) {
        let name = raw.name.as_bytes();
        let value = raw.value;
        if name.eq_ignore_ascii_case(b"content-length") {
            if value != b"0" {
                return Parsed::HandOff;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return Parsed::HandOff;
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= waifus_http1::token::lists_token([value], "close");
        }
        *field = Field {
            name: at(name),
            value: at(value),
        };
    }
    let head = buf.split_to(len).freeze();
    let slice = |(start, end): (u32, u32)| head.slice(start as usize..end as usize);
    let Ok(uri) = Uri::from_maybe_shared(slice(target)) else {
        // `buf` no longer holds this head: put it back for hyper.
        return unsplit(buf, head);
    };
    let mut headers = HeaderMap::with_capacity(count);
    for field in &fields[..count] {
        let name = HeaderName::from_bytes(&slice(field.name));
        let value = HeaderValue::from_maybe_shared(slice(field.value));
        let (Ok(name), Ok(value)) = (name, value) else {
            return unsplit(buf, head);
        };
        headers.append(name, value);
    }
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    Parsed::Fast(Head { parts, close })
}

/// Puts a head taken out of `buf` back in front of it, for hyper.
fn unsplit(buf: &mut BytesMut, head: Bytes) -> Parsed {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(buf);
    *buf = whole;
    Parsed::HandOff
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(raw);
        (parse(&mut buf), buf)
    }

    #[test]
    fn only_bodyless_origin_form_http_1_1_stays_here() {
        let fast = [
            "GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n",
            "HEAD / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "DELETE /x HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, te\r\n\r\n",
        ];
        for raw in fast {
            let (p, rest) = parsed(raw);
            assert!(matches!(p, Parsed::Fast(_)), "{raw:?}: {p:?}");
            assert!(rest.is_empty(), "{raw:?}");
        }
        let handed = [
            // A body of any kind: its bytes must never be read as a request.
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 00\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: x\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "G@T / HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
            // Accepted by the parser, not by `Uri`: the head goes back.
            "GET /a<b> HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX: \x01\r\n\r\n",
        ];
        for raw in handed {
            let (p, rest) = parsed(raw);
            assert!(matches!(p, Parsed::HandOff), "{raw:?}: {p:?}");
            assert_eq!(rest, raw.as_bytes(), "{raw:?}: hyper must get every byte");
        }
        let (p, _) = parsed("GET / HTTP/1.1\r\nHost: x\r\n");
        assert!(matches!(p, Parsed::Partial));
    }

    #[test]
    fn heads_become_requests() {
        let (p, rest) = parsed(
            "GET /w/a?q=1 HTTP/1.1\r\nHost: Example\r\nX-A: 1\r\nx-a: 2\r\nConnection: Close\r\n\r\nGET /next",
        );
        let Parsed::Fast(head) = p else {
            panic!("{p:?}")
        };
        assert_eq!(rest, "GET /next", "a pipelined request stays for later");
        assert!(head.close);
        let parts = head.parts;
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.uri.path(), "/w/a");
        assert_eq!(parts.uri.query(), Some("q=1"));
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.headers["host"], "Example");
        let xa: Vec<_> = parts.headers.get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
    }

    proptest::proptest! {
        /// Whatever the head: the loop takes exactly one head and nothing
        /// after it, and only one without a body, an upgrade or `Expect`;
        /// anything else leaves every byte for hyper.
        #[test]
        fn a_head_is_taken_whole_or_not_at_all(
            method in proptest::sample::select(vec!["GET", "HEAD", "POST", "PUT", "CONNECT", "PRI", "get", "G T"]),
            target in proptest::sample::select(vec!["/", "/w/a?b", "*", "http://x/", "x:1", "/a b", "/\u{e9}", ""]),
            version in proptest::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "http/1.1"]),
            fields in proptest::collection::vec(proptest::sample::select(vec![
                "Host: x", "Content-Length: 0", "Content-Length: 7", "content-length: 00",
                "Transfer-Encoding: chunked", "Upgrade: h2c", "Expect: 100-continue",
                "Connection: close", "Connection: keep-alive", "X-A: \u{1}", "X A: b", "Te: trailers",
            ]), 0..5),
            rest in proptest::sample::select(vec!["", "hello!!", "GET / HTTP/1.1\r\n\r\n", "\r\n"]),
        ) {
            let mut raw = format!("{method} {target} {version}\r\n");
            for field in &fields {
                raw.push_str(field);
                raw.push_str("\r\n");
            }
            raw.push_str("\r\n");
            raw.push_str(rest);
            let (p, left) = parsed(&raw);
            match p {
                Parsed::Fast(head) => {
                    let taken = raw.len() - left.len();
                    proptest::prop_assert_eq!(&left[..], &raw.as_bytes()[taken..]);
                    proptest::prop_assert!(raw[..taken].ends_with("\r\n\r\n"));
                    proptest::prop_assert_eq!(&raw[taken..], rest);
                    proptest::prop_assert_eq!(version, "HTTP/1.1");
                    proptest::prop_assert!(target.starts_with('/'));
                    for field in &fields {
                        let name = field.split(':').next().unwrap_or("").to_ascii_lowercase();
                        proptest::prop_assert!(
                            !["transfer-encoding", "upgrade", "expect"].contains(&name.as_str())
                                && *field != "Content-Length: 7"
                                && *field != "content-length: 00",
                            "{field} stayed in the fast loop"
                        );
                    }
                    proptest::prop_assert_eq!(
                        head.close,
                        fields.contains(&"Connection: close")
                    );
                }
                Parsed::HandOff | Parsed::Partial => {
                    proptest::prop_assert_eq!(&left[..], raw.as_bytes());
                }
            }
        }
    }
}
