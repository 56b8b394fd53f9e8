//! Reading a response head (RFC 9112 §4, §6.3), as a client of a waifu.
//!
//! Strict: conflicting or malformed `Content-Length`, more than
//! [`MAX_FIELDS`] fields or a malformed head are errors, and a connection is
//! fit for another request only after an HTTP/1.1 answer without
//! `Connection: close` whose body's end is known.

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode, Version};

use crate::body::Framing;
use crate::limits::MAX_FIELDS;
use crate::token::{list_elements, lists_token};

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub response: Response<()>,
    pub framing: Framing,
    /// Whether the connection may carry another request once the body ends.
    pub keep_alive: bool,
}

/// Why a response head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadHead {
    #[error("too many response header fields")]
    TooManyFields,
    #[error("malformed response head")]
    Malformed,
    #[error("invalid status")]
    Status,
    #[error("invalid header name")]
    Name,
    #[error("invalid header value")]
    Value,
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
        let http11 = parsed.version == Some(1);
        // Header values are kept as slices of the head, not copied.
        let base = buf.as_ptr() as usize;
        let count = parsed.headers.len();
        // Offsets (u32: a head is far shorter than 4 GiB): 1.6 KiB, which
        // libc clears with vector stores, not a byte-counted `rep stosb`.
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_FIELDS];
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        for (span, field) in spans.iter_mut().zip(parsed.headers.iter()) {
            *span = (
                offset(field.name.as_bytes()),
                field.name.len() as u32,
                offset(field.value),
                field.value.len() as u32,
            );
        }
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        let mut present = Present::default();
        for &(ns, nl, vs, vl) in &spans[..count] {
            let (ns, nl, vs, vl) = (ns as usize, nl as usize, vs as usize, vl as usize);
            let name = HeaderName::from_bytes(&head[ns..ns + nl]).map_err(|_| BadHead::Name)?;
            let value = HeaderValue::from_maybe_shared(head.slice(vs..vs + vl))
                .map_err(|_| BadHead::Value)?;
            present.note(&name);
            headers.append(name, value);
        }
        let (framing, mut keep_alive) = framing_of(&headers, present, status, method)?;
        keep_alive &=
            http11 && !(present.connection && has_token(&headers, &header::CONNECTION, "close"));
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = Version::HTTP_11;
        *response.headers_mut() = headers;
        return Ok(Some(Head {
            response,
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
    fn note(&mut self, name: &HeaderName) {
        if *name == header::CONTENT_LENGTH {
            self.length = true;
        } else if *name == header::TRANSFER_ENCODING {
            self.encoding = true;
        } else if *name == header::CONNECTION {
            self.connection = true;
        }
    }
}

/// How a response body is delimited (RFC 9112 §6.3), and whether that
/// leaves the connection reusable.
fn framing_of(
    headers: &HeaderMap,
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
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| list_elements(v.as_bytes()))
            .rfind(|t| !t.is_empty());
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
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in list_elements(value.as_bytes()) {
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

/// Whether a comma-separated field lists `token` (any case).
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    lists_token(headers.get_all(name).iter().map(|v| v.as_bytes()), token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, method: &Method) -> Result<Option<(u16, Framing, bool, usize)>, BadHead> {
        let mut buf = BytesMut::from(raw);
        Ok(parse_head(&mut buf, method)?.map(|h| {
            (
                h.response.status().as_u16(),
                h.framing,
                h.keep_alive,
                buf.len(),
            )
        }))
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
}
