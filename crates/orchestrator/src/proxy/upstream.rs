//! The HTTP/1.1 client towards waifus, run inside the request's own task.
//!
//! A proxied request is written to a pooled keep-alive connection, the
//! response head is parsed with `httparse`, and the body is streamed back by
//! [`UpstreamBody`], which reads the waifu's socket directly and hands the
//! connection back to its instance's pool once the message is complete. No
//! second task, channel or pool lock sits between the client's connection
//! and the waifu's, which is where hyper's general-purpose client spends
//! most of its time (bench/README.md).
//!
//! Framing is strict: a response with an invalid or conflicting
//! `Content-Length`, an invalid chunk, a head over 64 KiB or more than 100
//! fields is a 502, and a connection is reused only after a complete,
//! well-framed HTTP/1.1 message with nothing left over.

use std::fmt::Write as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proxy::headers::{Forwarded, RequestId, write_field, write_request_fields};
use crate::routes::Instance;

/// Largest response head from a waifu.
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a waifu's response.
const MAX_FIELDS: usize = 100;
/// Largest chunk-size line or trailer block.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Bytes asked of the kernel per read. Buffers are not kept with idle
/// connections: ten thousand instances would pin that much memory each.
const READ_SIZE: usize = 8 * 1024;
/// First buffer of a request: most response heads and small bodies fit, and
/// at hundreds of requests in flight the difference shows in peak memory.
const FIRST_BUF: usize = 2 * 1024;
/// A request body ready when the head is written joins it in one write, up
/// to this much in all.
const COALESCE: usize = 16 * 1024;
/// Below this much free space, a read first grows the buffer.
const MIN_READ: usize = 1024;
/// Idle connections kept per instance.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed rather than reused: a waifu
/// may have timed it out already.
pub(crate) const IDLE_FOR: Duration = Duration::from_secs(30);

/// An idle keep-alive connection to an instance.
#[derive(Debug)]
pub(crate) struct IdleConn {
    io: TcpStream,
    since: Instant,
}

/// The idle connections of one instance, most recently used last.
#[derive(Debug, Default)]
pub(crate) struct ConnPool {
    idle: Mutex<Vec<IdleConn>>,
}

impl ConnPool {
    /// A live idle connection, if any.
    fn checkout(&self) -> Option<IdleConn> {
        loop {
            let conn = self.idle.lock().ok()?.pop()?;
            if conn.since.elapsed() < IDLE_FOR && is_quiet(&conn.io) {
                return Some(conn);
            }
        }
    }

    /// Closes idle connections older than `max_age`, so an instance checked
    /// rarely and not proxied to does not hold a descriptor forever.
    /// Closes connections idle for `max_age`; returns how many.
    pub(crate) fn reap(&self, max_age: Duration) -> usize {
        let Ok(mut idle) = self.idle.lock() else {
            return 0;
        };
        let before = idle.len();
        idle.retain(|c| c.since.elapsed() < max_age);
        before - idle.len()
    }

    fn checkin(&self, io: TcpStream) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            // Most instances only ever keep their health check's connection:
            // room for one, not the four a first push would make.
            if idle.capacity() == 0 {
                idle.reserve_exact(1);
            }
            idle.push(IdleConn {
                io,
                since: Instant::now(),
            });
        }
    }
}

/// Whether an idle connection has neither been closed by the waifu nor sent
/// anything unasked. Costs a syscall only when the socket has an event.
fn is_quiet(io: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match io.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => matches!(
            io.try_read(&mut [0u8; 1]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        ),
    }
}

/// Why a request got no response from the waifu.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// No connection could be made: the instance is down.
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("the request body failed: {0}")]
    RequestBody(hyper::Error),
    #[error("bad response: {0}")]
    BadResponse(&'static str),
}

/// A request ready to be written: everything but the body is already in
/// `head`.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub method: Method,
    head: BytesMut,
    /// `None` for a request without a body.
    body: Option<Incoming>,
    framing: ReqFraming,
    /// Upgrade requested: a 101 is relayed instead of refused.
    pub upgrade: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    Empty,
    Length,
    Chunked,
}

impl Outgoing {
    /// Encodes the request head of a proxied request: the client's fields
    /// as [`headers::write_request_fields`] rewrites them. `path` and
    /// `query` must form a valid request target. Returns the request id sent.
    pub(crate) fn new<'h>(
        method: Method,
        path: &str,
        query: Option<&str>,
        headers: &'h HeaderMap,
        body: Option<Incoming>,
        upgrade: bool,
        forwarded: &Forwarded<'_>,
    ) -> (Self, RequestId<'h>) {
        let body = body.filter(|b| !b.is_end_stream());
        let had_length = headers.contains_key(header::CONTENT_LENGTH);
        Self::encode(method, path, query, had_length, body, upgrade, |head| {
            write_request_fields(head, headers, upgrade, forwarded)
        })
    }

    /// A request without a body, such as a health check; `fields` (name,
    /// value) are written as they are, so they must be valid field text.
    pub(crate) fn bodyless(method: Method, path: &str, fields: &[(&str, &str)]) -> Self {
        let (outgoing, ()) = Self::encode(method, path, None, false, None, false, |head| {
            for (name, value) in fields {
                write_field(head, name.as_bytes(), value.as_bytes());
            }
        });
        outgoing
    }

    /// Encodes the head around the fields `fields` writes; returns what
    /// it returns too.
    fn encode<R>(
        method: Method,
        path: &str,
        query: Option<&str>,
        had_length: bool,
        body: Option<Incoming>,
        upgrade: bool,
        fields: impl FnOnce(&mut BytesMut) -> R,
    ) -> (Self, R) {
        let length = body.as_ref().map(|b| b.size_hint().exact());
        let framing = match length {
            None => ReqFraming::Empty,
            Some(Some(_)) => ReqFraming::Length,
            Some(None) => ReqFraming::Chunked,
        };
        let mut head = BytesMut::with_capacity(512);
        head.extend_from_slice(method.as_str().as_bytes());
        head.extend_from_slice(b" ");
        head.extend_from_slice(path.as_bytes());
        if let Some(q) = query {
            head.extend_from_slice(b"?");
            head.extend_from_slice(q.as_bytes());
        }
        head.extend_from_slice(b" HTTP/1.1\r\n");
        let written = fields(&mut head);
        match framing {
            ReqFraming::Empty if had_length => head.extend_from_slice(b"content-length: 0\r\n"),
            ReqFraming::Empty => {}
            ReqFraming::Length => {
                let n = length.flatten().unwrap_or(0);
                let _ = write!(head, "content-length: {n}\r\n");
            }
            ReqFraming::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        head.extend_from_slice(b"\r\n");
        let outgoing = Outgoing {
            method,
            head,
            body,
            framing,
            upgrade,
        };
        (outgoing, written)
    }
}

/// What the waifu answered.
#[derive(Debug)]
pub(crate) enum Answer {
    /// A response whose body streams from the waifu.
    Response(Response<UpstreamBody>),
    /// `101 Switching Protocols` to an upgrade request: the raw connection,
    /// with any bytes the waifu already sent after the head.
    Switched {
        response: Response<()>,
        io: TcpStream,
        early: Bytes,
    },
}

/// Sends a request to `instance` and reads the response head.
///
/// A reused connection that turns out closed before any byte of the
/// response arrived is replaced by a new one and the request sent again,
/// but only when that is safe: an idempotent method and no body.
pub(crate) async fn send(
    instance: &Arc<Instance>,
    req: Outgoing,
    connect_timeout: Duration,
) -> Result<Answer, SendError> {
    let Outgoing {
        method,
        head,
        body,
        framing,
        upgrade,
    } = req;
    let retryable = framing == ReqFraming::Empty && method.is_idempotent();
    let mut upload = body.map(|body| Upload::new(body, framing));
    let mut head = head;
    if let Some(upload) = upload.as_mut() {
        // A small body that is already here goes out with the head: one
        // write, and a waifu reading the head finds its body complete.
        std::future::poll_fn(|cx| Poll::Ready(upload.take_ready(&mut head, cx))).await?;
    }
    let mut fresh = false;
    loop {
        let (mut io, mut buf, reused) = match instance.pool.checkout() {
            Some(c) => (c.io, BytesMut::with_capacity(FIRST_BUF), true),
            None => {
                fresh = true;
                // Boxed: the connect and its timer would otherwise be part of
                // every request's future, which hyper allocates and moves.
                let (io, buf) = Box::pin(connect(instance, connect_timeout)).await?;
                (io, buf, false)
            }
        };
        if let Err(e) = io.write_all(&head).await {
            if reused && retryable && !fresh {
                tracing::debug!(instance = %instance.upstream, error = %e, "pooled connection was closed; retrying");
                continue;
            }
            return Err(e.into());
        }
        let mut exchange = Exchange {
            io: &mut io,
            buf: &mut buf,
            upload: &mut upload,
            any: false,
        };
        let result = std::future::poll_fn(|cx| exchange.poll_head(cx, &method)).await;
        match result {
            Ok(parsed)
                if parsed.response.status() == StatusCode::SWITCHING_PROTOCOLS && !upgrade =>
            {
                return Err(SendError::BadResponse(
                    "101 Switching Protocols without an upgrade request",
                ));
            }
            Ok(parsed) => return Ok(finish(instance, parsed, io, buf, upload)),
            Err(HeadError::Closed(e)) if reused && retryable && !fresh => {
                tracing::debug!(instance = %instance.upstream, error = %e, "pooled connection was closed; retrying");
            }
            Err(HeadError::Closed(e) | HeadError::Other(e)) => return Err(e),
        }
    }
}

async fn connect(
    instance: &Instance,
    timeout: Duration,
) -> Result<(TcpStream, BytesMut), SendError> {
    let authority = instance.authority.as_str();
    let io = match tokio::time::timeout(timeout, TcpStream::connect(authority)).await {
        Err(_) => return Err(SendError::ConnectTimeout),
        Ok(Err(e)) => return Err(SendError::Connect(e)),
        Ok(Ok(io)) => io,
    };
    let _ = io.set_nodelay(true);
    Ok((io, BytesMut::with_capacity(FIRST_BUF)))
}

/// Writing failed or the response never started: `Closed` when nothing at
/// all came back, so a reused connection may be retried.
enum HeadError {
    Closed(SendError),
    Other(SendError),
}

/// A request body being streamed to the waifu, interleaved with reading
/// its response (a waifu may answer, and stream, before the upload ends).
#[derive(Debug)]
struct Upload {
    body: Incoming,
    chunked: bool,
    /// Framed bytes not yet written, in order.
    pending: std::collections::VecDeque<Bytes>,
    /// The body ended and its last bytes are queued.
    ended: bool,
}

impl Upload {
    fn new(body: Incoming, framing: ReqFraming) -> Self {
        Upload {
            body,
            chunked: framing == ReqFraming::Chunked,
            pending: std::collections::VecDeque::with_capacity(3),
            ended: false,
        }
    }

    /// Moves body bytes that are ready now, framed, onto the end of `head`
    /// while it stays under [`COALESCE`]; a larger frame is queued as usual.
    fn take_ready(&mut self, head: &mut BytesMut, cx: &mut Context<'_>) -> Result<(), SendError> {
        while !self.ended && self.pending.is_empty() && head.len() < COALESCE {
            let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) else {
                return Ok(());
            };
            match frame {
                Some(Err(e)) => return Err(SendError::RequestBody(e)),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers are not forwarded
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if head.len() + data.len() > COALESCE {
                        self.queue(data);
                        return Ok(());
                    }
                    if self.chunked {
                        let _ = write!(head, "{:x}\r\n", data.len());
                        head.extend_from_slice(&data);
                        head.extend_from_slice(b"\r\n");
                    } else {
                        head.extend_from_slice(&data);
                    }
                }
                None => {
                    self.ended = true;
                    if self.chunked {
                        head.extend_from_slice(b"0\r\n\r\n");
                    }
                }
            }
        }
        Ok(())
    }

    /// Queues a data frame, framed.
    fn queue(&mut self, data: Bytes) {
        if self.chunked {
            self.pending
                .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
            self.pending.push_back(data);
            self.pending.push_back(Bytes::from_static(b"\r\n"));
        } else {
            self.pending.push_back(data);
        }
    }

    /// Writes as much of the body as can go without waiting; `Ready(Ok)`
    /// once all of it is written.
    fn poll_upload(
        &mut self,
        io: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendError>> {
        loop {
            if let Some(front) = self.pending.front_mut() {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, front))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                front.advance(n);
                if front.is_empty() {
                    self.pending.pop_front();
                }
                continue;
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Err(e)) => return Poll::Ready(Err(SendError::RequestBody(e))),
                Some(Ok(frame)) => {
                    // Trailers are not forwarded.
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        self.queue(data);
                    }
                }
                None => {
                    self.ended = true;
                    if self.chunked {
                        self.pending.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    }
                }
            }
        }
    }
}

/// One request's wait for its response head.
struct Exchange<'a> {
    io: &'a mut TcpStream,
    buf: &'a mut BytesMut,
    /// Taken (`None`) once the upload is complete.
    upload: &'a mut Option<Upload>,
    /// Whether any byte of the response arrived.
    any: bool,
}

impl Exchange<'_> {
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
    ) -> Poll<Result<Head, HeadError>> {
        if let Some(upload) = self.upload.as_mut() {
            match upload.poll_upload(self.io, cx) {
                Poll::Ready(Ok(())) => *self.upload = None,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(HeadError::Other(e))),
                Poll::Pending => {}
            }
        }
        loop {
            if !self.buf.is_empty() {
                self.any = true;
                match parse_head(self.buf, method).map_err(HeadError::Other)? {
                    Some(head) => return Poll::Ready(Ok(head)),
                    None if self.buf.len() >= MAX_HEAD => {
                        return Poll::Ready(Err(HeadError::Other(SendError::BadResponse(
                            "response head too large",
                        ))));
                    }
                    None => {}
                }
            }
            if self.buf.capacity() - self.buf.len() < MIN_READ {
                self.buf.reserve(READ_SIZE);
            }
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut *self.io),
                cx,
                &mut *self.buf
            ));
            let closed = |e: SendError| {
                Poll::Ready(Err(if self.any {
                    HeadError::Other(e)
                } else {
                    HeadError::Closed(e)
                }))
            };
            match read {
                Ok(0) if self.any => {
                    return Poll::Ready(Err(HeadError::Other(SendError::BadResponse(
                        "truncated response head",
                    ))));
                }
                Ok(0) => {
                    return closed(SendError::BadResponse(
                        "the connection closed before a response",
                    ));
                }
                Ok(_) => {}
                Err(e) => return closed(e.into()),
            }
        }
    }
}

/// A parsed response head; `buf` holds what followed it.
struct Head {
    response: Response<()>,
    framing: RespFraming,
    keep_alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RespFraming {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Parses one response head from the front of `buf`, consuming it. Interim
/// `1xx` responses other than 101 are consumed and skipped. `Ok(None)`:
/// more bytes are needed.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, SendError> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut parsed = httparse::Response::new(&mut fields);
        let len = match parsed.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(SendError::BadResponse("too many response header fields"));
            }
            Err(_) => return Err(SendError::BadResponse("malformed response head")),
        };
        let code = parsed.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| SendError::BadResponse("invalid status"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            buf.advance(len);
            continue;
        }
        let http11 = parsed.version == Some(1);
        // Header values are kept as slices of the head, not copied.
        let base = buf.as_ptr() as usize;
        let count = parsed.headers.len();
        let mut spans = [(0usize, 0usize, 0usize, 0usize); MAX_FIELDS];
        for (span, field) in spans.iter_mut().zip(parsed.headers.iter()) {
            *span = (
                field.name.as_ptr() as usize - base,
                field.name.len(),
                field.value.as_ptr() as usize - base,
                field.value.len(),
            );
        }
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        for &(ns, nl, vs, vl) in &spans[..count] {
            let name = HeaderName::from_bytes(&head[ns..ns + nl])
                .map_err(|_| SendError::BadResponse("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(vs..vs + vl))
                .map_err(|_| SendError::BadResponse("invalid header value"))?;
            headers.append(name, value);
        }
        let (framing, mut keep_alive) = framing_of(&headers, status, method)?;
        keep_alive &= http11 && !has_token(&headers, &header::CONNECTION, "close");
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

/// How the body is delimited (RFC 9112 §6.3), and whether that leaves the
/// connection reusable.
fn framing_of(
    headers: &HeaderMap,
    status: StatusCode,
    method: &Method,
) -> Result<(RespFraming, bool), SendError> {
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::SWITCHING_PROTOCOLS
    {
        return Ok((RespFraming::None, true));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .rfind(|t| !t.is_empty());
        let chunked = last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        // With Content-Length as well, the message is suspect: read it as
        // Transfer-Encoding says, then close (RFC 9112 §6.3 ¶3).
        let reusable = chunked && !headers.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked {
            (RespFraming::Chunked, reusable)
        } else {
            (RespFraming::UntilClose, false)
        });
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = parse_length(part.trim_ascii())
                .ok_or(SendError::BadResponse("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(SendError::BadResponse("conflicting Content-Length"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (RespFraming::Length(n), true),
        None => (RespFraming::UntilClose, false),
    })
}

fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn finish(
    instance: &Arc<Instance>,
    head: Head,
    io: TcpStream,
    buf: BytesMut,
    upload: Option<Upload>,
) -> Answer {
    let Head {
        response,
        framing,
        keep_alive,
    } = head;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Answer::Switched {
            response,
            io,
            early: buf.freeze(),
        };
    }
    let (parts, ()) = response.into_parts();
    let mut body = UpstreamBody {
        io: Some(io),
        buf,
        state: State::from(framing),
        keep_alive,
        upload,
        instance: instance.clone(),
    };
    if body.state == State::Done {
        body.release();
    }
    Answer::Response(Response::from_parts(parts, body))
}

/// A response body read straight from the waifu's connection.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    /// The connection; `None` once it was closed or pooled.
    io: Option<TcpStream>,
    /// Bytes read from it but not yet yielded.
    buf: BytesMut,
    state: State,
    keep_alive: bool,
    /// The rest of the request body, still streaming to the waifu.
    upload: Option<Upload>,
    instance: Arc<Instance>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    Chunk(Chunk),
    UntilClose,
    Done,
}

impl From<RespFraming> for State {
    /// Where reading a body framed so starts.
    fn from(framing: RespFraming) -> State {
        match framing {
            RespFraming::None | RespFraming::Length(0) => State::Done,
            RespFraming::Length(n) => State::Length(n),
            RespFraming::Chunked => State::Chunk(Chunk::Size),
            RespFraming::UntilClose => State::UntilClose,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// The body was cut short or broke its framing; the client's connection is
/// aborted, as a truncated response must not look complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("the waifu closed the connection mid-body")]
    Truncated,
    #[error("bad chunked encoding: {0}")]
    BadChunk(&'static str),
    #[error("the client's request body failed")]
    RequestBody,
}

impl UpstreamBody {
    /// Returns the connection to the pool if the message ended cleanly.
    fn release(&mut self) {
        if let Some(io) = self.io.take()
            && self.keep_alive
            && self.upload.is_none()
            && self.buf.is_empty()
        {
            self.instance.pool.checkin(io);
        }
    }

    /// Reads more from the waifu into the buffer; `Ok(false)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, BodyError>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        self.buf.reserve(READ_SIZE);
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(io),
            cx,
            &mut self.buf
        ))?;
        Poll::Ready(Ok(n > 0))
    }

    /// Ends the body after an error: the connection is closed, never reused.
    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.io = None;
        self.state = State::Done;
        Poll::Ready(Some(Err(e)))
    }

    /// Takes up to `left` buffered bytes of a sized body; the state says
    /// what remains.
    fn take_sized(&mut self, left: u64) -> Bytes {
        let n = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        let data = self.buf.split_to(n).freeze();
        let left = left - n as u64;
        self.state = if left == 0 {
            State::Done
        } else {
            State::Length(left)
        };
        data
    }

    /// Advances the chunked decoder over what is buffered: data to yield,
    /// `None` to read more.
    fn step_chunked(&mut self, chunk: Chunk) -> Result<Option<Bytes>, BodyError> {
        let buf = &mut self.buf;
        match chunk {
            Chunk::Size => match httparse::parse_chunk_size(buf) {
                // httparse takes any byte in an extension, a bare LF or NUL
                // included; a waifu's stream is read one way only.
                Ok(httparse::Status::Complete((len, _))) if has_ctl(&buf[..len - 2]) => Err(
                    BodyError::BadChunk("control character in a chunk-size line"),
                ),
                // ... and reads a line with no digits (`;x`, empty) as size 0.
                Ok(httparse::Status::Complete(_)) if !buf[0].is_ascii_hexdigit() => {
                    Err(BodyError::BadChunk("a chunk-size line without a size"))
                }
                Ok(httparse::Status::Complete((len, size))) => {
                    buf.advance(len);
                    self.state = State::Chunk(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                    Ok(Some(Bytes::new()))
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                    Err(BodyError::BadChunk("chunk-size line too long"))
                }
                Ok(httparse::Status::Partial) => Ok(None),
                Err(_) => Err(BodyError::BadChunk("invalid chunk size")),
            },
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(n).freeze();
                let left = left - n as u64;
                self.state = State::Chunk(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                Ok(Some(data))
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(BodyError::BadChunk("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                self.state = State::Chunk(Chunk::Size);
                Ok(Some(Bytes::new()))
            }
            Chunk::Trailers => {
                let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                    return if buf.len() > MAX_CHUNK_LINE {
                        Err(BodyError::BadChunk("trailer line too long"))
                    } else {
                        Ok(None)
                    };
                };
                if end > 0 && !is_field_line(&buf[..end]) {
                    return Err(BodyError::BadChunk("malformed trailer line"));
                }
                buf.advance(end + 2);
                if end == 0 {
                    self.state = State::Done;
                }
                Ok(Some(Bytes::new()))
            }
        }
    }
}

/// Whether `line` has a control character other than HTAB (a CR or LF
/// inside a line, a NUL).
fn has_ctl(line: &[u8]) -> bool {
    line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// Whether a trailer line is a field: a token, a colon, a value without
/// control characters.
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    colon > 0
        && line[..colon].iter().all(|&b| crate::strict::is_tchar(b))
        && !has_ctl(&line[colon + 1..])
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let (Some(upload), Some(io)) = (this.upload.as_mut(), this.io.as_mut()) {
            match upload.poll_upload(io, cx) {
                Poll::Ready(Ok(())) => this.upload = None,
                // The client's body broke: the exchange is over, and the
                // client's connection is cut (its answer has begun).
                Poll::Ready(Err(SendError::RequestBody(e))) => {
                    tracing::debug!(error = %e, "the request body failed mid-response");
                    this.upload = None;
                    return this.fail(BodyError::RequestBody);
                }
                // The waifu stopped reading; its answer may still be whole.
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "request body not fully sent");
                    this.keep_alive = false;
                    this.upload = None;
                }
                Poll::Pending => {}
            }
        }
        loop {
            match this.state {
                State::Done => {
                    this.release();
                    return Poll::Ready(None);
                }
                State::Length(left) => {
                    if !this.buf.is_empty() {
                        let data = this.take_sized(left);
                        if this.state == State::Done {
                            this.release();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    match ready!(this.poll_fill(cx)) {
                        Ok(true) => {}
                        Ok(false) => return this.fail(BodyError::Truncated),
                        Err(e) => return this.fail(e),
                    }
                }
                State::UntilClose => {
                    let buf = &mut this.buf;
                    if !buf.is_empty() {
                        let data = buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    match ready!(this.poll_fill(cx)) {
                        Ok(true) => {}
                        Ok(false) => {
                            this.state = State::Done;
                            this.io = None;
                        }
                        Err(e) => return this.fail(e),
                    }
                }
                State::Chunk(chunk) => match this.step_chunked(chunk) {
                    Err(e) => return this.fail(e),
                    Ok(Some(data)) if !data.is_empty() => {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => match ready!(this.poll_fill(cx)) {
                        Ok(true) => {}
                        Ok(false) => return this.fail(BodyError::Truncated),
                        Err(e) => return this.fail(e),
                    },
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// What the upstream client makes of `data` when it is all a waifu sends
/// on a connection before closing it, for the fuzz target (through
/// `crate::hot_path`): the parsed head and the body decoded as
/// [`UpstreamBody`] decodes it, with what that leaves.
pub(crate) fn decode_copy(data: &[u8], method: &Method) -> Decoded {
    let mut buf = BytesMut::from(data);
    let head = match parse_head(&mut buf, method) {
        Ok(Some(head)) => head,
        Ok(None) => return Decoded::HeadIncomplete,
        Err(_) => return Decoded::Refused,
    };
    let status = head.response.status().as_u16();
    if status == 101 {
        return Decoded::Switched { early: buf.len() };
    }
    let state = State::from(head.framing);
    let upstream = waifus_protocol::parse_host("fuzz.invalid:1").expect("a valid host");
    let token = tokio_util::sync::CancellationToken::new();
    let mut decoder = UpstreamBody {
        io: None,
        buf,
        state,
        keep_alive: head.keep_alive,
        upload: None,
        instance: Arc::new(Instance::new(upstream, true, &token)),
    };
    let mut body = Vec::new();
    // `poll_frame`'s loop, with the end of `data` as the end of the stream.
    let ending = loop {
        match decoder.state {
            State::Done => break BodyEnd::Complete,
            State::UntilClose => {
                body.extend_from_slice(&decoder.buf.split());
                break BodyEnd::AtClose;
            }
            State::Length(left) => {
                if decoder.buf.is_empty() {
                    break BodyEnd::Truncated;
                }
                body.extend_from_slice(&decoder.take_sized(left));
            }
            State::Chunk(chunk) => match decoder.step_chunked(chunk) {
                Ok(Some(data)) => body.extend_from_slice(&data),
                Ok(None) => break BodyEnd::Truncated,
                Err(_) => break BodyEnd::BadChunk,
            },
        }
    };
    let left = decoder.buf.len();
    // `release`'s condition: only a complete message with nothing after it
    // leaves the connection fit for another request.
    let reusable = ending == BodyEnd::Complete && decoder.keep_alive && left == 0;
    Decoded::Response {
        status,
        body,
        ending,
        left,
        reusable,
    }
}

/// See [`decode_copy`].
#[derive(Debug)]
pub enum Decoded {
    Refused,
    HeadIncomplete,
    Switched {
        early: usize,
    },
    Response {
        status: u16,
        body: Vec<u8>,
        ending: BodyEnd,
        /// Bytes after the message.
        left: usize,
        reusable: bool,
    },
}

/// How a decoded body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    Complete,
    AtClose,
    Truncated,
    BadChunk,
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use proptest::prelude::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;
    use waifus_protocol::parse_host;

    /// What a GET got: status and body (or the error), and how many
    /// connections went back to the pool.
    type Got = (Result<(u16, Result<Vec<u8>, String>), String>, usize);

    /// Sends one GET to a waifu that answers with `pieces`, written one by
    /// one, then closes the connection if `close`.
    async fn exchange(method: Method, pieces: Vec<Vec<u8>>, close: bool) -> Got {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if s.read(&mut byte).await.unwrap() == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            for p in pieces {
                s.write_all(&p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if !close {
                let _ = s.read(&mut [0u8; 1]).await;
            }
        });
        let token = CancellationToken::new();
        let host = parse_host(&format!("127.0.0.1:{port}")).unwrap();
        let instance = Arc::new(Instance::new(host, true, &token));
        let req = Outgoing::bodyless(method, "/x", &[]);
        let got = match send(&instance, req, Duration::from_secs(5)).await {
            Err(e) => Err(e.to_string()),
            Ok(Answer::Switched { .. }) => Err("switched".into()),
            Ok(Answer::Response(r)) => {
                let status = r.status().as_u16();
                let body = r.into_body().collect().await;
                Ok((
                    status,
                    body.map(|b| b.to_bytes().to_vec())
                        .map_err(|e| e.to_string()),
                ))
            }
        };
        let pooled = instance.pool.idle.lock().unwrap().len();
        drop(instance);
        server.abort();
        (got, pooled)
    }

    fn ok(status: u16, body: &str, pooled: usize) -> Got {
        (Ok((status, Ok(body.as_bytes().to_vec()))), pooled)
    }

    #[tokio::test]
    async fn framing() {
        let cases: &[(&str, &str, bool, Got)] = &[
            (
                "length",
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                false,
                ok(200, "hello", 1),
            ),
            (
                "chunked, extensions, trailers",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
                false,
                ok(200, "hello world", 1),
            ),
            (
                "interim 100 and 103 skipped",
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
                false,
                ok(201, "ok", 1),
            ),
            (
                "until close",
                "HTTP/1.1 200 OK\r\n\r\nall of it",
                true,
                ok(200, "all of it", 0),
            ),
            (
                "HTTP/1.0 is not reused",
                "HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
                false,
                ok(200, "ok", 0),
            ),
            (
                "Connection: close",
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                false,
                ok(200, "ok", 0),
            ),
            (
                "equal lengths",
                "HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\ncontent-length: 2\r\n\r\nok",
                false,
                ok(200, "ok", 1),
            ),
            (
                "204 has no body",
                "HTTP/1.1 204 No Content\r\n\r\n",
                false,
                ok(204, "", 1),
            ),
            (
                "bytes after a 204: not reused",
                "HTTP/1.1 204 No Content\r\n\r\nstray",
                false,
                ok(204, "", 0),
            ),
            (
                "TE and CL: chunked wins, then close",
                "HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                false,
                ok(200, "ok", 0),
            ),
            (
                "TE not ending in chunked: until close",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nraw",
                true,
                ok(200, "raw", 0),
            ),
        ];
        for (what, raw, close, want) in cases {
            let got = exchange(Method::GET, vec![raw.as_bytes().to_vec()], *close).await;
            assert_eq!(&got, want, "{what}");
        }
    }

    #[tokio::test]
    async fn head_has_no_body() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n".to_vec();
        assert_eq!(
            exchange(Method::HEAD, vec![raw], false).await,
            ok(200, "", 1)
        );
    }

    #[tokio::test]
    async fn broken_responses_are_errors() {
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "a: b\r\n".repeat(101));
        let cases: &[(&str, &str, bool, &str)] = &[
            (
                "conflicting lengths",
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
                false,
                "conflicting Content-Length",
            ),
            (
                "plus sign",
                "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello",
                false,
                "invalid Content-Length",
            ),
            (
                "empty length",
                "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
                false,
                "invalid Content-Length",
            ),
            (
                "garbage",
                "HTTP/1.1 OK\r\n\r\n",
                false,
                "malformed response head",
            ),
            (
                "too many fields",
                &many,
                false,
                "too many response header fields",
            ),
            (
                "unasked 101",
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
                false,
                "without an upgrade request",
            ),
            ("closed at once", "", true, "closed before a response"),
            (
                "truncated head",
                "HTTP/1.1 200 OK\r\ncontent-",
                true,
                "truncated response head",
            ),
        ];
        for (what, raw, close, want) in cases {
            let (got, pooled) = exchange(Method::GET, vec![raw.as_bytes().to_vec()], *close).await;
            let err = got.expect_err(what);
            assert!(err.contains(want), "{what}: {err}");
            assert_eq!(pooled, 0, "{what}");
        }
        let bodies: &[(&str, &str, &str)] = &[
            (
                "short body",
                "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello",
                "mid-body",
            ),
            (
                "bad chunk size",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "invalid chunk size",
            ),
            (
                "no CRLF after data",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
                "not followed by CRLF",
            ),
            (
                "chunk size overflow",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
                "invalid chunk size",
            ),
            (
                "truncated chunked",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
                "mid-body",
            ),
            // Found by `fuzz/fuzz_targets/upstream.rs`: httparse takes any
            // byte in a chunk extension, and trailers were only split at CRLF.
            (
                "NUL in an extension",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;x=\0\r\nok\r\n0\r\n\r\n",
                "control character in a chunk-size line",
            ),
            (
                "bare LF in an extension",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0;x\n\r\n\r\n",
                "control character in a chunk-size line",
            ),
            (
                "no size, only an extension",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n;x=1\r\n\r\n",
                "without a size",
            ),
            (
                "an empty chunk-size line",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\r\n\r\n",
                "without a size",
            ),
            (
                "bare LF in the trailers",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx: 1\n\r\n",
                "malformed trailer line",
            ),
            (
                "a trailer that is not a field",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nhello\r\n\r\n",
                "malformed trailer line",
            ),
        ];
        for (what, raw, want) in bodies {
            let (got, pooled) = exchange(Method::GET, vec![raw.as_bytes().to_vec()], true).await;
            let (status, body) = got.expect(what);
            assert_eq!(status, 200, "{what}");
            let err = body.expect_err(what);
            assert!(err.contains(want), "{what}: {err}");
            assert_eq!(pooled, 0, "{what}");
        }
    }

    /// A pooled connection the waifu closed meanwhile is never used for the
    /// next request: it is noticed as closed (or the GET is retried).
    #[tokio::test]
    async fn closed_pooled_connection_is_not_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut closed_tx = Some(closed_tx);
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await.unwrap();
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                drop(s);
                if let Some(tx) = closed_tx.take() {
                    let _ = tx.send(());
                }
            }
        });
        let token = CancellationToken::new();
        let host = parse_host(&format!("127.0.0.1:{port}")).unwrap();
        let instance = Arc::new(Instance::new(host, true, &token));
        let mut closed_rx = Some(closed_rx);
        for round in 0..2 {
            let req = Outgoing::bodyless(Method::GET, "/", &[]);
            let Ok(Answer::Response(r)) = send(&instance, req, Duration::from_secs(5)).await else {
                panic!("round {round}: no response");
            };
            let body = r.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "ok", "round {round}");
            if round == 0 {
                assert_eq!(instance.pool.idle.lock().unwrap().len(), 1);
                instance.pool.reap(Duration::from_secs(30));
                assert_eq!(instance.pool.idle.lock().unwrap().len(), 1, "young: kept");
                closed_rx.take().unwrap().await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        instance.pool.reap(Duration::ZERO);
        assert!(instance.pool.idle.lock().unwrap().is_empty(), "old: closed");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// However the waifu's bytes are split across reads, a chunked body
        /// decodes to the same bytes and leaves the connection reusable.
        #[test]
        fn chunked_survives_any_split(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..6),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            let mut want = Vec::new();
            for c in &chunks {
                raw.extend_from_slice(format!("{:X}\r\n", c.len()).as_bytes());
                raw.extend_from_slice(c);
                raw.extend_from_slice(b"\r\n");
                want.extend_from_slice(c);
            }
            raw.extend_from_slice(b"0\r\n\r\n");
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(raw.len())).collect();
            at.push(raw.len());
            at.sort_unstable();
            let mut pieces = Vec::new();
            let mut from = 0;
            for to in at {
                if to > from {
                    pieces.push(raw[from..to].to_vec());
                    from = to;
                }
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let got = rt.block_on(exchange(Method::GET, pieces, false));
            prop_assert_eq!(got, (Ok((200, Ok(want))), 1));
        }
    }
}
