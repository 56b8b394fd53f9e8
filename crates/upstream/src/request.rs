//! Encoding a request for a waifu, and streaming its body.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::Method;
use hyper::body::{Body, Incoming};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use waifus_http1::encode::{decimal, field};

use super::error::SendError;

/// A request body ready when the head is written joins it in one write, up
/// to this much in all.
const COALESCE: usize = 16 * 1024;

/// A request ready to be written: everything but the body is already in
/// `head`. It stays whole until a byte of it is written, so a request that
/// could not be written at all can go to another instance.
#[derive(Debug)]
pub struct Outgoing {
    pub method: Method,
    pub(super) head: BytesMut,
    /// `None` for a request without a body. Boxed: most requests have
    /// none, and a request is moved several times on its way.
    pub(super) upload: Option<Box<Upload>>,
    pub(super) framing: ReqFraming,
    /// Upgrade requested: a 101 is relayed instead of refused.
    pub upgrade: bool,
    /// Body bytes that were ready have been moved onto `head` already.
    pub(super) coalesced: bool,
    /// The connection is closed after the answer, never pooled
    /// ([`Outgoing::closing`]).
    pub(super) close: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReqFraming {
    Empty,
    Length,
    Chunked,
}

impl Outgoing {
    /// Encodes a request head: the request line (`path` and `query` must
    /// form a valid request target), the fields `fields` writes (what it
    /// returns is returned too), and the framing fields for `body`. With
    /// `had_length` (the client sent a `Content-Length`), a request whose
    /// body turned out empty still says `content-length: 0`.
    pub fn new<R>(
        method: Method,
        path: &str,
        query: Option<&str>,
        had_length: bool,
        body: Option<Incoming>,
        upgrade: bool,
        fields: impl FnOnce(&mut BytesMut) -> R,
    ) -> (Self, R) {
        let body = body.filter(|b| !b.is_end_stream());
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
                head.extend_from_slice(b"content-length: ");
                decimal(&mut head, n);
                head.extend_from_slice(b"\r\n");
            }
            ReqFraming::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        head.extend_from_slice(b"\r\n");
        let outgoing = Outgoing {
            method,
            head,
            upload: body.map(|body| Box::new(Upload::new(body, framing))),
            framing,
            upgrade,
            coalesced: false,
            close: false,
        };
        (outgoing, written)
    }

    /// Sends at most `max` body bytes: a body that turns out larger (a
    /// chunked one) fails with [`SendError::BodyTooLarge`] before its
    /// excess or its end is written, so the waifu sees an aborted request,
    /// never a complete-looking truncated one.
    pub fn limit_body(&mut self, max: u64) {
        if let Some(upload) = &mut self.upload {
            upload.left = max;
        }
    }

    /// A request without a body, such as a health check; `fields` (name,
    /// value) are written as they are, so they must be valid field text.
    pub fn bodyless(method: Method, path: &str, fields: &[(&str, &str)]) -> Self {
        let (outgoing, ()) = Self::new(method, path, None, false, None, false, |head| {
            for (name, value) in fields {
                field(head, name.as_bytes(), value.as_bytes());
            }
        });
        outgoing
    }

    /// The same, asking the waifu to close the connection after its answer
    /// (`connection: close`), which is then not kept for reuse either: for
    /// a request whose connection would only sit idle until it is reaped.
    pub fn closing(mut self) -> Self {
        if !self.close {
            // The head ends with its empty line: the field goes before it.
            self.head.truncate(self.head.len() - 2);
            self.head.extend_from_slice(b"connection: close\r\n\r\n");
            self.close = true;
        }
        self
    }
}

/// A request body being streamed to the waifu, interleaved with reading
/// its response (a waifu may answer, and stream, before the upload ends).
#[derive(Debug)]
pub(super) struct Upload {
    body: Incoming,
    chunked: bool,
    /// Framed bytes not yet written, in order.
    pending: VecDeque<Bytes>,
    /// The body ended and its last bytes are queued.
    ended: bool,
    /// Body bytes still allowed ([`Outgoing::limit_body`]).
    left: u64,
}

impl Upload {
    pub(super) fn new(body: Incoming, framing: ReqFraming) -> Self {
        Upload {
            body,
            chunked: framing == ReqFraming::Chunked,
            pending: VecDeque::with_capacity(3),
            ended: false,
            left: u64::MAX,
        }
    }

    /// Takes `n` bytes of the allowance.
    fn spend(&mut self, n: usize) -> Result<(), SendError> {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        self.left = self.left.checked_sub(n).ok_or(SendError::BodyTooLarge)?;
        Ok(())
    }

    /// Moves body bytes that are ready now, framed, onto the end of `head`
    /// while it stays under [`COALESCE`]; a larger frame is queued as usual.
    pub(super) fn take_ready(
        &mut self,
        head: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Result<(), SendError> {
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
                    self.spend(data.len())?;
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
    pub(super) fn poll_upload(
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
                        if let Err(e) = self.spend(data.len()) {
                            return Poll::Ready(Err(e));
                        }
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
