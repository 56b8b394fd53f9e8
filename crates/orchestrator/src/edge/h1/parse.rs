//! Parsing a request head the fast path may serve itself, or deciding that
//! hyper must take the connection.
//!
//! A head served here is read where it lies in the read buffer: the proxy
//! is handed its fields as the parser found them ([`Fields::Raw`]), with
//! nothing copied, hashed or allocated, and is done with them before the
//! buffer is touched again.

use std::mem::MaybeUninit;

use http::{Method, Version};
use waifus_http1::limits::MAX_FIELDS;
use waifus_http1::token::ByteSet;

use crate::proxy::fields::is_value;
use crate::proxy::{ClientRequest, Fields};

/// What became of the bytes at the start of the buffer.
#[derive(Debug)]
pub(crate) enum Parsed<T> {
    /// A whole head, served: what serving it returned, and the head's facts.
    Fast(Head<T>),
    Partial,
    HandOff,
}

/// A request head the fast path served.
#[derive(Debug)]
pub(crate) struct Head<T> {
    pub served: T,
    /// The head's length: these bytes are done with.
    pub len: usize,
    /// The client asked for the connection to close after this request.
    pub close: bool,
    pub is_head: bool,
}

/// Parses the head at the start of `buf` and, if the fast path may serve
/// it, hands it to `serve` (which must be done with its borrow of `buf`
/// when it returns). Nothing of `buf` is consumed: the caller drops
/// [`Head::len`] bytes.
pub(crate) fn parse<T>(buf: &[u8], serve: impl FnOnce(ClientRequest<'_>) -> T) -> Parsed<T> {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    // Uninitialised: 3 KiB of headers are not zeroed for every request.
    let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut raw) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::HandOff,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::HandOff;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::HandOff;
    };
    if method == Method::CONNECT {
        return Parsed::HandOff;
    }
    let Some((path, query)) = origin_form(target) else {
        return Parsed::HandOff;
    };
    let mut close = false;
    for field in req.headers.iter() {
        let name = field.name.as_bytes();
        let value = field.value;
        if !is_value(value) {
            return Parsed::HandOff;
        }
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
    }
    let is_head = method == Method::HEAD;
    let served = serve(ClientRequest {
        method,
        version: Version::HTTP_11,
        authority: None,
        path,
        query,
        fields: Fields::Raw(req.headers),
        body: None,
        upgrade: None,
    });
    Parsed::Fast(Head {
        served,
        len,
        close,
        is_head,
    })
}

/// An origin-form target's path and query, if every byte of it is one a
/// URI allows there and none needs a second look (no fragment, nothing
/// outside ASCII): such a target is served as `http::Uri` would read it,
/// and anything else goes to hyper, which reads it with `http::Uri`.
fn origin_form(target: &str) -> Option<(&str, Option<&str>)> {
    if !target.starts_with('/') {
        return None;
    }
    let (path, query) = match target.bytes().position(|b| b == b'?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    };
    let plain =
        PATH.holds_all(path.as_bytes()) && query.is_none_or(|q| QUERY.holds_all(q.as_bytes()));
    plain.then_some((path, query))
}

/// Unreserved, sub-delims, `%`, `:`, `@` and `/` (RFC 3986 §3.3).
static PATH: ByteSet = ByteSet::new(&[(b'$', b';'), (b'@', b'Z'), (b'a', b'z')], b"!=_~");
/// The same and `?` (RFC 3986 §3.4).
static QUERY: ByteSet = ByteSet::new(&[(b'$', b';'), (b'@', b'Z'), (b'a', b'z')], b"!=_~?");

#[cfg(test)]
mod tests {
    use super::*;

    /// The tables hold exactly the bytes RFC 3986 allows in a path and
    /// a query, but for `#` and what is not ASCII.
    #[test]
    fn path_and_query_bytes_are_the_rfcs() {
        for b in 0..=255u8 {
            let path =
                matches!(b, b'!' | b'$'..=b';' | b'=' | b'@'..=b'Z' | b'_' | b'a'..=b'z' | b'~');
            assert_eq!(PATH.contains(b), path, "{b:#x}");
            assert_eq!(QUERY.contains(b), path || b == b'?', "{b:#x}");
        }
    }

    /// What the proxy was handed.
    #[derive(Debug)]
    struct Seen {
        method: Method,
        path: String,
        query: Option<String>,
        fields: Vec<(String, Vec<u8>)>,
    }

    /// The head parsed, and what of `raw` is left once a served head is
    /// dropped.
    fn parsed(raw: &str) -> (Parsed<Seen>, Vec<u8>) {
        let p = parse(raw.as_bytes(), |req| Seen {
            method: req.method,
            path: req.path.to_owned(),
            query: req.query.map(str::to_owned),
            fields: req
                .fields
                .each()
                .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v.to_vec()))
                .collect(),
        });
        let rest = match &p {
            Parsed::Fast(head) => raw.as_bytes()[head.len..].to_vec(),
            _ => raw.as_bytes().to_vec(),
        };
        (p, rest)
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
        assert_eq!(rest, b"GET /next", "a pipelined request stays for later");
        assert!(head.close);
        assert!(!head.is_head);
        let seen = head.served;
        assert_eq!(seen.method, Method::GET);
        assert_eq!(seen.path, "/w/a");
        assert_eq!(seen.query.as_deref(), Some("q=1"));
        let fields: Vec<(&str, &[u8])> = seen
            .fields
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        assert_eq!(
            fields,
            [
                ("Host", &b"Example"[..]),
                ("X-A", b"1"),
                ("x-a", b"2"),
                ("Connection", b"Close")
            ]
        );
    }

    proptest::proptest! {
        /// A target the fast path reads itself is read as `http::Uri`
        /// reads it (hyper's path); one it does not is left to hyper.
        #[test]
        fn a_target_is_read_as_a_uri_reads_it(
            target in proptest::collection::vec(proptest::sample::select(
                b"/?#%aZ09-._~!$&'()*+,;=:@[]{}|\\^`\"<> \x7f\x80\xc3\xa9".to_vec()
            ), 0..12),
        ) {
            let mut target = target;
            target.insert(0, b'/');
            let Ok(text) = std::str::from_utf8(&target) else {
                return Ok(());
            };
            if let Some((path, query)) = origin_form(text) {
                let uri = http::Uri::from_maybe_shared(bytes::Bytes::from(target.clone()));
                let uri = uri.map_err(|e| proptest::test_runner::TestCaseError::fail(
                    format!("{text:?} served here, refused by Uri: {e}")))?;
                proptest::prop_assert_eq!(uri.path(), path);
                proptest::prop_assert_eq!(uri.query(), query);
            }
        }
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
                    let taken = head.len;
                    proptest::prop_assert_eq!(&left[..], &raw.as_bytes()[taken..]);
                    proptest::prop_assert!(raw[..taken].ends_with("\r\n\r\n"));
                    proptest::prop_assert_eq!(head.served.fields.len(), fields.len());
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
