//! Reading a response head (RFC 9112 §4, §6.3), as a client of a waifu.
//!
//! Strict: conflicting or malformed `Content-Length`, more than
//! [`MAX_FIELDS`] fields or a malformed head are errors, and a connection is
//! fit for another request only after an HTTP/1.1 answer without
//! `Connection: close` whose body's end is known.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};

use crate::body::Framing;
use crate::limits::{MAX_FIELDS, MAX_HEAD};
use crate::token::{list_elements, lists_token};

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub fields: ResponseFields,
    pub framing: Framing,
    /// Whether the connection may carry another request once the body ends.
    pub keep_alive: bool,
}

/// Where one field lies in its head.
#[derive(Debug, Clone, Copy)]
struct Span {
    name: u32,
    name_len: u32,
    value: u32,
    value_len: u32,
}

// One bit of `removed` per field.
const _: () = assert!(MAX_FIELDS <= 128);

/// Whether bit `i` of `bits` is set.
fn bit(bits: &[u64; 2], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

/// A response's header fields where they lie in the head they came in,
/// in the order they came: nothing copied, hashed or allocated per field.
/// Names are in lower case (lowered in place when the head was read);
/// every name is a token and every value valid field text, as parsing
/// checked, by the same rules `HeaderName` and `HeaderValue` apply.
#[derive(Debug, Clone)]
pub struct ResponseFields {
    head: Bytes,
    spans: Box<[Span]>,
    /// Bit `i` set: the field at `spans[i]` was removed. (Two words, not
    /// a `u128`, whose alignment would pad every response that holds it.)
    removed: [u64; 2],
}

impl ResponseFields {
    /// Every field left as (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans
            .iter()
            .enumerate()
            .filter(|&(i, _)| !bit(&self.removed, i))
            .map(|(_, span)| self.field(span))
    }

    /// The values of the fields named `name` (lower case), in order.
    pub fn get_all<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
        self.iter()
            .filter(move |(n, _)| *n == name)
            .map(|(_, value)| value)
    }

    /// Whether a field named `name` (lower case) is left.
    pub fn contains(&self, name: &[u8]) -> bool {
        self.get_all(name).next().is_some()
    }

    /// Removes the fields for which `keep` says no.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8], &[u8]) -> bool) {
        for (i, span) in self.spans.iter().enumerate() {
            let (name, value) = self.field(span);
            if !bit(&self.removed, i) && !keep(name, value) {
                self.removed[i / 64] |= 1 << (i % 64);
            }
        }
    }

    /// Whether no field is left.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// The fields left, appended to `map` in order: for the code that
    /// needs them as a `HeaderMap` (hyper's writers, compression).
    pub fn append_to(&self, map: &mut HeaderMap) {
        map.reserve(self.spans.len());
        for (i, span) in self.spans.iter().enumerate() {
            if bit(&self.removed, i) {
                continue;
            }
            let (ns, nl) = (span.name as usize, span.name_len as usize);
            let (vs, vl) = (span.value as usize, span.value_len as usize);
            // Neither can fail: parsing admitted only the bytes these
            // admit (a test holds the two sets of rules to each other).
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&self.head[ns..ns + nl]),
                HeaderValue::from_maybe_shared(self.head.slice(vs..vs + vl)),
            ) {
                map.append(name, value);
            }
        }
    }

    /// The fields left, as a `HeaderMap`.
    pub fn to_header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        self.append_to(&mut map);
        map
    }

    fn field(&self, span: &Span) -> (&[u8], &[u8]) {
        let (ns, nl) = (span.name as usize, span.name_len as usize);
        let (vs, vl) = (span.value as usize, span.value_len as usize);
        (&self.head[ns..ns + nl], &self.head[vs..vs + vl])
    }
}

/// Why a response head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadHead {
    #[error("too many response header fields")]
    TooManyFields,
    #[error("response head over 64 KiB")]
    TooLarge,
    #[error("malformed response head")]
    Malformed,
    #[error("invalid status")]
    Status,
    #[error("invalid Content-Length")]
    Length,
    #[error("conflicting Content-Length")]
    ConflictingLength,
}

/// Parses one response head from the front of `buf`, consuming it; what
/// follows stays in `buf`. Interim `1xx` responses other than 101 are
/// consumed and skipped. `Ok(None)`: more bytes are needed. `method` is the
/// request's (a `HEAD` answer has no body).
pub fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, BadHead> {
    loop {
        // Uninitialised: 3 KiB of fields are not zeroed for every response.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut parsed = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut fields) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(BadHead::TooManyFields),
            Err(_) => return Err(BadHead::Malformed),
        };
        let code = parsed.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| BadHead::Status)?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            buf.advance(len);
            continue;
        }
        // A head that completed in the read that took it past the limit.
        if len > MAX_HEAD {
            return Err(BadHead::TooLarge);
        }
        let http11 = parsed.version == Some(1);
        // Offsets into the head (u32: a head is far shorter than 4 GiB).
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        let spans: Box<[Span]> = parsed
            .headers
            .iter()
            .map(|field| Span {
                name: offset(field.name.as_bytes()),
                name_len: field.name.len() as u32,
                value: offset(field.value),
                value_len: field.value.len() as u32,
            })
            .collect();
        let mut present = Present::default();
        for span in &*spans {
            let name = &mut buf[span.name as usize..(span.name + span.name_len) as usize];
            name.make_ascii_lowercase();
            present.note(name);
        }
        let fields = ResponseFields {
            head: buf.split_to(len).freeze(),
            spans,
            removed: [0; 2],
        };
        let (framing, mut keep_alive) = framing_of(&fields, present, status, method)?;
        keep_alive &=
            http11 && !(present.connection && lists_token(fields.get_all(b"connection"), "close"));
        return Ok(Some(Head {
            status,
            fields,
            framing,
            keep_alive,
        }));
    }
}

/// Which of the fields that frame a response it has: noted while the map
/// is built, so an absent one costs no hashed lookup.
#[derive(Debug, Clone, Copy, Default)]
struct Present {
    length: bool,
    encoding: bool,
    connection: bool,
}

impl Present {
    fn note(&mut self, name: &[u8]) {
        match name {
            b"content-length" => self.length = true,
            b"transfer-encoding" => self.encoding = true,
            b"connection" => self.connection = true,
            _ => {}
        }
    }
}

/// How a response body is delimited (RFC 9112 §6.3), and whether that
/// leaves the connection reusable.
fn framing_of(
    fields: &ResponseFields,
    present: Present,
    status: StatusCode,
    method: &Method,
) -> Result<(Framing, bool), BadHead> {
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::SWITCHING_PROTOCOLS
    {
        return Ok((Framing::None, true));
    }
    if present.encoding {
        let last = fields
            .get_all(b"transfer-encoding")
            .flat_map(list_elements)
            .filter(|t| !t.is_empty())
            .last();
        let chunked = last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        // With Content-Length as well, the message is suspect: read it as
        // Transfer-Encoding says, then close (RFC 9112 §6.3 ¶3).
        let reusable = chunked && !present.length;
        return Ok(if chunked {
            (Framing::Chunked, reusable)
        } else {
            (Framing::UntilClose, false)
        });
    }
    let mut length = None;
    for value in fields.get_all(b"content-length") {
        for part in list_elements(value) {
            let n = parse_length(part).ok_or(BadHead::Length)?;
            if length.is_some_and(|l| l != n) {
                return Err(BadHead::ConflictingLength);
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), true),
        None => (Framing::UntilClose, false),
    })
}

/// A `Content-Length` value: plain decimal digits that fit a `u64`.
pub fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, method: &Method) -> Result<Option<(u16, Framing, bool, usize)>, BadHead> {
        let mut buf = BytesMut::from(raw);
        Ok(parse_head(&mut buf, method)?
            .map(|h| (h.status.as_u16(), h.framing, h.keep_alive, buf.len())))
    }

    #[test]
    fn bodiless_statuses_and_plain_lengths() {
        for status in [
            "101 Switching Protocols",
            "204 No Content",
            "304 Not Modified",
        ] {
            let raw = format!("HTTP/1.1 {status}\r\ncontent-length: 5\r\n\r\n");
            assert_eq!(
                head(&raw, &Method::GET).map(|h| h.map(|h| h.1)),
                Ok(Some(Framing::None)),
                "{status}"
            );
        }
        assert_eq!(
            parse_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(parse_length(b"00000000000000000001"), None, "20 digits");
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b"1a"), None);
        assert_eq!(parse_length(b"0"), Some(0));
    }

    #[test]
    fn heads_and_framing() {
        let get = &Method::GET;
        assert_eq!(
            head("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc", get),
            Ok(Some((200, Framing::Length(3), true, 3)))
        );
        assert_eq!(
            head(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                get
            ),
            Ok(Some((204, Framing::None, true, 0)))
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", get),
            Ok(Some((200, Framing::Chunked, true, 0)))
        );
        assert_eq!(
            head(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
                get
            ),
            Ok(Some((200, Framing::Chunked, false, 0)))
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", get),
            Ok(Some((200, Framing::UntilClose, false, 0)))
        );
        assert_eq!(
            head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", get),
            Ok(Some((200, Framing::Length(0), false, 0)))
        );
        assert_eq!(
            head(
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
                get
            ),
            Ok(Some((200, Framing::Length(1), false, 0)))
        );
        assert_eq!(
            head(
                "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
                &Method::HEAD
            ),
            Ok(Some((200, Framing::None, true, 0)))
        );
        assert_eq!(head("HTTP/1.1 200 OK\r\n", get), Ok(None));
        assert_eq!(
            head("HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n", get),
            Err(BadHead::ConflictingLength)
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n", get),
            Err(BadHead::Length)
        );
        assert_eq!(head("HTTP/1.1 099 X\r\n\r\n", get), Err(BadHead::Status));
        assert_eq!(head("nonsense\r\n\r\n", get), Err(BadHead::Malformed));
    }

    /// The fields are kept unchecked by `HeaderName` and `HeaderValue`
    /// because httparse admits exactly the bytes they admit: every byte in
    /// a name and in a value, read by the one and checked by the other.
    #[test]
    fn parsing_admits_exactly_what_header_names_and_values_admit() {
        let parse = |raw: &[u8]| parse_head(&mut BytesMut::from(raw), &Method::GET);
        for b in 0..=255u8 {
            let mut name = b"x-a".to_vec();
            name.insert(1, b);
            let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
            raw.extend_from_slice(&name);
            raw.extend_from_slice(b": 1\r\ncontent-length: 0\r\n\r\n");
            let parsed = parse(&raw);
            let admitted = HeaderName::from_bytes(&name).is_ok();
            // A colon ends the name there instead.
            if b == b':' {
                continue;
            }
            assert_eq!(
                matches!(parsed, Ok(Some(_))),
                admitted,
                "name byte {b:#04x}"
            );
            if let Ok(Some(head)) = parsed {
                let map = head.fields.to_header_map();
                assert_eq!(map.len(), 2, "name byte {b:#04x}");
            }

            let value = [b'a', b, b'z'];
            let mut raw = b"HTTP/1.1 200 OK\r\nx-a: ".to_vec();
            raw.extend_from_slice(&value);
            raw.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
            let parsed = parse(&raw);
            // A line ending inside the value ends the line there instead.
            if b == b'\r' || b == b'\n' {
                continue;
            }
            let admitted = HeaderValue::from_bytes(&value).is_ok();
            assert_eq!(
                matches!(parsed, Ok(Some(_))),
                admitted,
                "value byte {b:#04x}"
            );
            if let Ok(Some(head)) = parsed {
                let map = head.fields.to_header_map();
                assert_eq!(map["x-a"].as_bytes(), &value[..], "value byte {b:#04x}");
            }
        }
    }

    #[test]
    fn fields_are_read_in_lower_case_where_they_lie_and_removed_one_by_one() {
        let mut raw = String::from("HTTP/1.1 200 OK\r\nX-First: a\r\n");
        for i in 0..96 {
            raw.push_str(&format!("X-N{i}: {i}\r\n"));
        }
        raw.push_str("Set-Cookie: a=1\r\nSET-COOKIE: b=2\r\ncontent-length: 2\r\n\r\nok");
        let mut buf = BytesMut::from(raw.as_str());
        let Ok(Some(head)) = parse_head(&mut buf, &Method::GET) else {
            panic!("not parsed");
        };
        assert_eq!(&buf[..], b"ok");
        let mut fields = head.fields;
        assert_eq!(fields.iter().count(), 100, "all of them");
        let cookies: Vec<_> = fields.get_all(b"set-cookie").collect();
        assert_eq!(cookies, [&b"a=1"[..], b"b=2"]);
        assert!(fields.contains(b"x-first"));
        assert!(!fields.contains(b"X-First"), "names are lower case");
        // The first, the 65th and the last field.
        fields
            .retain(|name, _| name != b"x-first" && name != b"x-n63" && name != b"content-length");
        assert!(!fields.contains(b"x-first"));
        assert!(!fields.contains(b"x-n63"));
        assert!(fields.contains(b"x-n62") && fields.contains(b"x-n64"));
        assert!(!fields.contains(b"content-length"));
        assert_eq!(fields.iter().count(), 97);
        assert_eq!(fields.to_header_map().len(), 97);
        let last = fields.iter().last().map(|(name, _)| name.to_vec());
        assert_eq!(last.as_deref(), Some(&b"set-cookie"[..]));
        fields.retain(|_, _| false);
        assert!(fields.is_empty());
        assert!(fields.to_header_map().is_empty());
    }

    #[test]
    fn empty_values_and_heads_without_fields_and_over_the_limit() {
        let raw = "HTTP/1.1 200 OK\r\nX-E:\r\nx-f: \t\r\ncontent-length: 0\r\nX-Last:\r\n\r\n";
        let Ok(Some(head)) = parse_head(&mut BytesMut::from(raw), &Method::GET) else {
            panic!("not parsed");
        };
        let fields: Vec<_> = head.fields.iter().collect();
        assert_eq!(
            fields,
            [
                (&b"x-e"[..], &b""[..]),
                (b"x-f", b""),
                (b"content-length", b"0"),
                (b"x-last", b""),
            ]
        );
        let mut buf = BytesMut::from("HTTP/1.1 204 No Content\r\n\r\nnext");
        let Ok(Some(head)) = parse_head(&mut buf, &Method::GET) else {
            panic!("not parsed");
        };
        assert!(head.fields.is_empty());
        assert_eq!(&buf[..], b"next");
        // Complete, but longer than a head may be.
        let mut raw = String::from("HTTP/1.1 200 OK\r\n");
        raw.push_str(&format!("x-big: {}\r\n", "v".repeat(MAX_HEAD)));
        raw.push_str("\r\n");
        let parsed = parse_head(&mut BytesMut::from(raw.as_str()), &Method::GET);
        assert_eq!(parsed.map(|h| h.is_some()), Err(BadHead::TooLarge));
    }
}
