//! Waiting for a waifu's response head while the request body streams out.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{Method, Response, StatusCode};
use tokio::net::TcpStream;
use waifus_http1::limits::MAX_HEAD;
use waifus_http1::response::{Head, ResponseFields, parse_head};

use super::body::{MIN_READ, READ_SIZE, UpstreamBody};
use super::endpoint::HasEndpoint;
use super::error::SendError;
use super::request::Upload;

/// What the waifu answered.
#[derive(Debug)]
pub enum Answer {
    /// A response whose body streams from the waifu.
    Response(Reply),
    /// `101 Switching Protocols` to an upgrade request: the raw connection,
    /// with any bytes the waifu already sent after the head.
    Switched {
        response: Response<()>,
        io: TcpStream,
        early: Bytes,
    },
}

/// A waifu's response: its fields stay where they lie in the head it
/// sent, for the proxy to clean and write out without building a map.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub fields: ResponseFields,
    pub body: UpstreamBody,
}

impl Reply {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn into_body(self) -> UpstreamBody {
        self.body
    }
}

/// Writing failed or the response never started: `Closed` when nothing at
/// all came back, so a reused connection may be retried.
pub(super) enum HeadError {
    Closed(SendError),
    Other(SendError),
}

/// One request's wait for its response head.
pub(super) struct Exchange<'a> {
    pub io: &'a mut TcpStream,
    pub buf: &'a mut BytesMut,
    /// Taken (`None`) once the upload is complete.
    pub upload: &'a mut Option<Box<Upload>>,
    /// Whether any byte of the response arrived.
    pub any: bool,
}

impl Exchange<'_> {
    pub(super) fn poll_head(
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
                let parsed = parse_head(self.buf, method);
                match parsed.map_err(|e| HeadError::Other(e.into()))? {
                    Some(head) => return Poll::Ready(Ok(head)),
                    None if self.buf.len() >= MAX_HEAD => {
                        return Poll::Ready(Err(HeadError::Other(SendError::HeadTooLarge)));
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
                    return Poll::Ready(Err(HeadError::Other(SendError::TruncatedHead)));
                }
                Ok(0) => return closed(SendError::ClosedEarly),
                Ok(_) => {}
                Err(e) => return closed(e.into()),
            }
        }
    }
}

/// The answer a parsed head makes: a switch, or a response whose body
/// streams from `io` (starting with what is left in `buf`).
pub(super) fn finish<T: HasEndpoint>(
    owner: Arc<T>,
    head: Head,
    io: TcpStream,
    buf: BytesMut,
    upload: Option<Box<Upload>>,
) -> Answer {
    let Head {
        status,
        fields,
        framing,
        keep_alive,
    } = head;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let mut response = Response::new(());
        *response.status_mut() = status;
        fields.append_to(response.headers_mut());
        return Answer::Switched {
            response,
            io,
            early: buf.freeze(),
        };
    }
    let body = UpstreamBody::new(io, buf, framing, keep_alive, upload, owner);
    Answer::Response(Reply {
        status,
        fields,
        body,
    })
}
