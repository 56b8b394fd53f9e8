//! The public listeners' HTTP/1.1 fast path.
//!
//! Most requests a proxy sees are HTTP/1.1 without a body: they are parsed,
//! proxied and answered here, in the connection's own task, with one
//! header-read timer per connection and the response head and body written
//! in one go. Anything else goes to hyper, which gets the connection from
//! that request on (with the bytes already read) and keeps it:
//!
//! - a request body (`Transfer-Encoding`, or a `Content-Length` other
//!   than 0), `Expect`, an `Upgrade` (WebSocket, h2c), `CONNECT`;
//! - a target that is not in origin form (`*`, absolute, authority);
//! - HTTP/1.0 (its keep-alive rules), the HTTP/2 preface (h2c with prior
//!   knowledge, or ALPN h2 over TLS);
//! - anything this parser refuses or does not know (too many fields, a
//!   bad token, an invalid target): hyper answers it as it always did.
//!
//! Bytes arrive through [`crate::strict`], as they do for hyper, so the
//! same framing checks apply to both.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Body;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{MAX_HEADER_BYTES, MAX_HEADERS};
use crate::proxy::{ClientBody, Proxy, Via};

/// First read buffer; it grows up to `MAX_HEADER_BYTES` for a long head.
const READ_BUF: usize = 2 * 1024;
/// Response bytes gathered before they are written.
const WRITE_BUF: usize = 16 * 1024;

/// What one connection needs besides its socket.
pub(crate) struct Conn {
    pub proxy: Arc<Proxy>,
    pub peer: SocketAddr,
    pub via: Via,
    pub header_read_timeout: Duration,
    /// For the requests handed to hyper.
    pub builder: Arc<auto::Builder<TokioExecutor>>,
    /// Cancelled when the listener drains: the request in flight is
    /// answered with `connection: close`, an idle connection is closed.
    pub draining: CancellationToken,
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("the response body failed; connection aborted")]
    Body,
    #[error("hyper: {0}")]
    Hyper(Box<dyn std::error::Error + Send + Sync>),
}

/// Serves a connection until the client or the drain ends it.
pub(crate) async fn serve<S>(mut io: S, conn: Conn) -> Result<(), ConnError>
where
    S: Unread + AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(READ_BUF);
    // Response heads (and small bodies) are gathered here, kept for the
    // next response.
    let mut out = BytesMut::new();
    let mut timer = HeadTimer::new(conn.header_read_timeout);
    // One wait on the drain for the whole connection: a new one per read
    // would register with (and leave) the token's waiter list every time.
    let drained = conn.draining.clone().cancelled_owned();
    tokio::pin!(drained);
    loop {
        // Read until a whole head is in, or it is clear hyper must take over.
        let head = loop {
            match parse(&mut buf) {
                Parsed::Fast(head) => break head,
                Parsed::HandOff => return hand_off(io, &buf, &conn).await,
                Parsed::Partial if buf.len() >= MAX_HEADER_BYTES => {
                    // hyper answers 431 for a head this long.
                    return hand_off(io, &buf, &conn).await;
                }
                Parsed::Partial => {}
            }
            if buf.is_empty() && conn.draining.is_cancelled() {
                return close(&mut io).await;
            }
            timer.waiting();
            buf.reserve(READ_BUF);
            let read = tokio::select! {
                biased;
                n = io.read_buf(&mut buf) => n?,
                () = timer.expired() => {
                    tracing::debug!(peer = %conn.peer, "request head not received in time");
                    return Ok(());
                }
                () = &mut drained, if buf.is_empty() => {
                    return close(&mut io).await;
                }
            };
            if read == 0 {
                // The client is done sending: everything it asked for was
                // answered. A refusal by `Strict` goes out at shutdown.
                return close(&mut io).await;
            }
        };
        timer.received();
        let close_after = head.close || conn.draining.is_cancelled();
        let is_head = head.parts.method == Method::HEAD;
        let request = Request::from_parts(head.parts, None);
        let Ok(response) = conn.proxy.handle(request, conn.peer, &conn.via).await;
        // The drain may have begun while the waifu answered.
        let close_after = close_after || conn.draining.is_cancelled();
        respond(&mut io, &mut out, response, is_head, close_after).await?;
        if close_after {
            return close(&mut io).await;
        }
    }
}

/// Shuts the connection down; errors no longer matter to anyone.
async fn close<S: AsyncWrite + Unpin>(io: &mut S) -> Result<(), ConnError> {
    let _ = io.shutdown().await;
    Ok(())
}

/// A client socket that can take back bytes read from it: they are read
/// again first.
pub(crate) trait Unread {
    fn unread(&mut self, bytes: &[u8]);
}

/// Gives the connection to hyper, `read` being what came from the client
/// and was not answered yet.
async fn hand_off<S>(mut io: S, read: &[u8], conn: &Conn) -> Result<(), ConnError>
where
    S: Unread + AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    io.unread(read);
    let proxy = conn.proxy.clone();
    let (peer, via) = (conn.peer, conn.via.clone());
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        proxy.handle(req.map(Some), peer, &via)
    });
    let io = TokioIo::new(io);
    let served = conn.builder.serve_connection_with_upgrades(io, service);
    // Boxed: kept apart from the fast path's state.
    let mut served = Box::pin(served);
    let finished = tokio::select! {
        r = served.as_mut() => Some(r),
        () = conn.draining.cancelled() => None,
    };
    let result = match finished {
        Some(r) => r,
        None => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    result.map_err(ConnError::Hyper)
}

/// A request head the fast path serves.
#[derive(Debug)]
struct Head {
    parts: http::request::Parts,
    /// The client asked for the connection to close after this request.
    close: bool,
}

// Returned once per request and consumed at once: boxing the head would
// cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Parsed {
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
fn parse(buf: &mut BytesMut) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    let mut fields = [Field::default(); MAX_HEADERS];
    // Uninitialised: 3 KiB of headers are not zeroed for every request.
    let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
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
            close |= value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
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

/// The header-read timeout: a head must arrive within it of the previous
/// response (or of the connection's start). One timer per connection,
/// re-armed only when it fires early, not for every request.
struct HeadTimer {
    limit: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// When the wait for the current head began; `None` while a request
    /// is being served.
    since: Option<Instant>,
}

impl HeadTimer {
    fn new(limit: Duration) -> Self {
        let now = Instant::now();
        HeadTimer {
            limit,
            sleep: Box::pin(tokio::time::sleep_until((now + limit).into())),
            since: Some(now),
        }
    }

    /// Called before each read for a head: the wait starts with the first.
    fn waiting(&mut self) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
    }

    fn received(&mut self) {
        self.since = None;
    }

    /// Resolves once the head is overdue.
    async fn expired(&mut self) {
        loop {
            self.sleep.as_mut().await;
            let now = Instant::now();
            match self.since {
                Some(since) if now >= since + self.limit => return,
                Some(since) => self.sleep.as_mut().reset((since + self.limit).into()),
                None => self.sleep.as_mut().reset((now + self.limit).into()),
            }
        }
    }
}

/// Writes a response: head and body, framed for HTTP/1.1. An error means
/// the connection must not be used again.
async fn respond<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut BytesMut,
    response: Response<ClientBody>,
    is_head: bool,
    close: bool,
) -> Result<(), ConnError> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodyless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodyless || is_head {
        Framing::None
    } else {
        match body.size_hint().exact() {
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        }
    };
    out.clear();
    out.reserve(512);
    encode_head(
        out,
        status,
        &parts.headers,
        framing,
        is_head && !bodyless,
        close,
    );
    if matches!(framing, Framing::None) {
        drop(body);
        return flush(io, out).await;
    }
    let mut left = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    loop {
        // Whatever is ready goes out together; before waiting, what is
        // gathered is written.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                flush(io, out).await?;
                body.frame().await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(_)) => return Err(ConnError::Body),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers: not sent over HTTP/1
            },
        };
        if data.is_empty() {
            continue;
        }
        match &mut left {
            Some(left) => {
                // More than announced would desynchronise the client.
                *left = left.checked_sub(data.len() as u64).ok_or(ConnError::Body)?;
                put(io, out, data).await?;
            }
            None => {
                let _ = write!(ChunkSize(out), "{:x}\r\n", data.len());
                put(io, out, data).await?;
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    match left {
        Some(0) => {}
        // Fewer bytes than announced: the client must see it cut off.
        Some(_) => return Err(ConnError::Body),
        None => out.extend_from_slice(b"0\r\n\r\n"),
    }
    flush(io, out).await?;
    if out.capacity() > 4 * READ_BUF {
        // A large body passed through: do not keep its buffer.
        *out = BytesMut::new();
    }
    Ok(())
}

/// `fmt::Write` into a `BytesMut`.
struct ChunkSize<'a>(&'a mut BytesMut);

impl std::fmt::Write for ChunkSize<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Adds body bytes: small ones are gathered, a large one is written as is.
async fn put<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut BytesMut,
    mut data: Bytes,
) -> Result<(), ConnError> {
    if out.len() + data.len() <= WRITE_BUF {
        out.extend_from_slice(&data);
        return Ok(());
    }
    flush(io, out).await?;
    io.write_all_buf(&mut data).await?;
    Ok(())
}

async fn flush<S: AsyncWrite + Unpin>(io: &mut S, out: &mut BytesMut) -> Result<(), ConnError> {
    if !out.is_empty() {
        io.write_all_buf(out).await?;
    }
    io.flush().await?;
    Ok(())
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// The status line and fields. Framing fields are ours to write, as
/// hyper writes them: a `Content-Length` is kept only for `HEAD`
/// (the length the `GET` would have), `204`/`304`/1xx have neither.
fn encode_head(
    out: &mut BytesMut,
    status: StatusCode,
    headers: &HeaderMap,
    framing: Framing,
    keep_length: bool,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = false;
    for (name, value) in headers {
        match *name {
            header::CONTENT_LENGTH if !keep_length => continue,
            header::TRANSFER_ENCODING | header::CONNECTION => continue,
            header::TRAILER if !matches!(framing, Framing::Chunked) => continue,
            header::DATE => has_date = true,
            _ => {}
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            let _ = write!(ChunkSize(out), "{n}");
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None => {}
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

/// The current time as an HTTP date, formatted once a second per thread.
fn http_date(out: &mut BytesMut) {
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            text.clear();
            let _ = write!(text, "{}", httpdate::HttpDate::from(now));
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// What this loop makes of `data` arriving in one read, for the fuzz
/// target (through `crate::hot_path`): how many bytes the strict check
/// lets through, the request served here from those (with its `close`
/// flag), if any, and the bytes left in the buffer after it.
pub(crate) fn parse_copy(data: &[u8]) -> (usize, Option<(http::request::Parts, bool)>, Vec<u8>) {
    let passed = crate::strict::Checker::default().check(data).pass;
    let mut buf = BytesMut::from(&data[..passed]);
    let head = match parse(&mut buf) {
        Parsed::Fast(head) => Some((head.parts, head.close)),
        Parsed::Partial | Parsed::HandOff => None,
    };
    (passed, head, buf.to_vec())
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

    #[test]
    fn heads_are_encoded_as_hyper_encodes_them() {
        let mut headers = HeaderMap::new();
        headers.insert("content-length", HeaderValue::from_static("99"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("date", HeaderValue::from_static("then"));
        headers.insert("x-y", HeaderValue::from_static("z"));
        let head = |status: u16, framing, keep_length, close| {
            let mut out = BytesMut::new();
            let status = StatusCode::from_u16(status).unwrap();
            encode_head(&mut out, status, &headers, framing, keep_length, close);
            String::from_utf8(out.to_vec()).unwrap()
        };
        assert_eq!(
            head(200, Framing::Length(3), false, false),
            "HTTP/1.1 200 OK\r\ndate: then\r\nx-y: z\r\ncontent-length: 3\r\n\r\n"
        );
        assert_eq!(
            head(599, Framing::Chunked, false, true),
            "HTTP/1.1 599 \r\ndate: then\r\nx-y: z\r\ntransfer-encoding: chunked\r\n\
             connection: close\r\n\r\n"
        );
        // HEAD: the length the GET would have had.
        assert_eq!(
            head(200, Framing::None, true, false),
            "HTTP/1.1 200 OK\r\ncontent-length: 99\r\ndate: then\r\nx-y: z\r\n\r\n"
        );
        assert_eq!(
            head(204, Framing::None, false, false),
            "HTTP/1.1 204 No Content\r\ndate: then\r\nx-y: z\r\n\r\n"
        );
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
