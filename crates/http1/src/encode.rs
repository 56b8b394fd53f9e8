//! Writing an HTTP/1.1 response head (RFC 9112 §4, §6), as hyper writes
//! one, for the public listener's own loop.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::SystemTime;

use bytes::BytesMut;
use http::{HeaderMap, StatusCode};

/// How the body that follows a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delimited {
    /// No body follows.
    None,
    Length(u64),
    Chunked,
}

/// The status line and fields. Framing fields are ours to write: a
/// `Content-Length` is kept only when `keep_length` (the answer to a `HEAD`:
/// the length the `GET` would have), `204`/`304`/1xx have neither, and
/// `Connection` is written only as `close` when `close`. A `Date` is added
/// if the fields have none. `fields` are (name in lower case, value).
pub fn response_head<'a>(
    out: &mut BytesMut,
    status: StatusCode,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    delimited: Delimited,
    keep_length: bool,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = false;
    for (name, value) in fields {
        match name {
            b"content-length" if !keep_length => continue,
            b"transfer-encoding" | b"connection" => continue,
            b"trailer" if delimited != Delimited::Chunked => continue,
            b"date" => has_date = true,
            _ => {}
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    match delimited {
        Delimited::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Delimited::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Delimited::None => {}
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal digits, without the formatting machinery (which cost a
/// fifth as much as writing the whole rest of a response head).
pub fn decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The line that starts a chunk of `len` bytes.
pub fn chunk_size_line(out: &mut BytesMut, len: usize) {
    let _ = write!(out, "{len:x}\r\n");
}

/// A map's fields as [`response_head`] takes them.
pub fn map_fields(map: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    map.iter()
        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
}

/// One `name: value` field line.
pub fn field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The current time as an HTTP date, formatted once a second per thread.
pub fn http_date(out: &mut BytesMut) {
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            text.clear();
            let _ = write!(text, "{}", httpdate::HttpDate::from(now));
        }
        out.extend_from_slice(text.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn decimals_are_written_as_displayed() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            12_345,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = BytesMut::new();
            super::decimal(&mut out, n);
            assert_eq!(&out[..], n.to_string().as_bytes());
        }
    }

    use super::*;
    use http::HeaderValue;

    #[test]
    fn heads_are_encoded_as_hyper_encodes_them() {
        let mut headers = HeaderMap::new();
        headers.insert("content-length", HeaderValue::from_static("99"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("date", HeaderValue::from_static("then"));
        headers.insert("x-y", HeaderValue::from_static("z"));
        let head = |status: u16, delimited, keep_length, close| {
            let mut out = BytesMut::new();
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            response_head(
                &mut out,
                status,
                map_fields(&headers),
                delimited,
                keep_length,
                close,
            );
            String::from_utf8(out.to_vec()).unwrap_or_default()
        };
        assert_eq!(
            head(200, Delimited::Length(3), false, false),
            "HTTP/1.1 200 OK\r\ndate: then\r\nx-y: z\r\ncontent-length: 3\r\n\r\n"
        );
        assert_eq!(
            head(599, Delimited::Chunked, false, true),
            "HTTP/1.1 599 \r\ndate: then\r\nx-y: z\r\ntransfer-encoding: chunked\r\n\
             connection: close\r\n\r\n"
        );
        // HEAD: the length the GET would have had.
        assert_eq!(
            head(200, Delimited::None, true, false),
            "HTTP/1.1 200 OK\r\ncontent-length: 99\r\ndate: then\r\nx-y: z\r\n\r\n"
        );
        assert_eq!(
            head(204, Delimited::None, false, false),
            "HTTP/1.1 204 No Content\r\ndate: then\r\nx-y: z\r\n\r\n"
        );
    }

    #[test]
    fn trailer_fields_go_only_with_a_chunked_body() {
        let mut headers = HeaderMap::new();
        headers.insert("trailer", HeaderValue::from_static("x-sum"));
        for (delimited, kept) in [
            (Delimited::Chunked, true),
            (Delimited::Length(1), false),
            (Delimited::None, false),
        ] {
            let mut out = BytesMut::new();
            response_head(
                &mut out,
                StatusCode::OK,
                map_fields(&headers),
                delimited,
                false,
                false,
            );
            let head = String::from_utf8(out.to_vec()).unwrap_or_default();
            assert_eq!(head.contains("trailer: x-sum\r\n"), kept, "{head}");
        }
        let mut out = BytesMut::new();
        field(&mut out, b"x-a", b"b c");
        assert_eq!(&out[..], b"x-a: b c\r\n");
    }

    #[test]
    fn dates_and_chunk_lines() {
        let mut out = BytesMut::new();
        http_date(&mut out);
        let date = std::str::from_utf8(&out).unwrap_or_default();
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        let mut out = BytesMut::new();
        chunk_size_line(&mut out, 255);
        assert_eq!(&out[..], b"ff\r\n");
    }
}
