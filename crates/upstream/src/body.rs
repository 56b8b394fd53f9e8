//! A response body read straight from the waifu's connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;
use waifus_http1::body::{Decoder, Framing, Truncated};
use waifus_http1::chunked::{ChunkError, Step};

use super::endpoint::HasEndpoint;
use super::error::SendError;
use super::request::Upload;

/// Bytes asked of the kernel per read. Buffers are not kept with idle
/// connections: ten thousand instances would pin that much memory each.
pub(super) const READ_SIZE: usize = 8 * 1024;
/// Below this much free space, a read first grows the buffer.
pub(super) const MIN_READ: usize = 1024;

/// A response body read straight from the waifu's connection, by the same
/// decoder ([`Decoder`]) the fuzz target drives.
#[derive(Debug)]
pub struct UpstreamBody {
    /// The connection; `None` once it was closed or pooled.
    io: Option<TcpStream>,
    /// Bytes read from it but not yet yielded.
    buf: BytesMut,
    decoder: Decoder,
    keep_alive: bool,
    /// The rest of the request body, still streaming to the waifu.
    upload: Option<Box<Upload>>,
    /// Whose pool the connection goes back to.
    owner: Arc<dyn HasEndpoint>,
}

/// The body was cut short or broke its framing; the client's connection is
/// aborted, as a truncated response must not look complete.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("the waifu closed the connection mid-body")]
    Truncated(#[from] Truncated),
    #[error("bad chunked encoding: {0}")]
    BadChunk(#[from] ChunkError),
    #[error("the client's request body failed")]
    RequestBody,
}

impl UpstreamBody {
    pub(super) fn new(
        io: TcpStream,
        buf: BytesMut,
        framing: Framing,
        keep_alive: bool,
        upload: Option<Box<Upload>>,
        owner: Arc<dyn HasEndpoint>,
    ) -> UpstreamBody {
        let mut body = UpstreamBody {
            io: Some(io),
            buf,
            decoder: Decoder::from(framing),
            keep_alive,
            upload,
            owner,
        };
        if body.decoder.is_done() {
            body.release();
        }
        body
    }

    /// Returns the connection to the pool if the message ended cleanly.
    fn release(&mut self) {
        if let Some(io) = self.io.take()
            && self.keep_alive
            && self.upload.is_none()
            && self.buf.is_empty()
        {
            self.owner.endpoint().pool.checkin(io);
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
        self.decoder = Decoder::Done;
        Poll::Ready(Some(Err(e)))
    }
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
                Poll::Ready(Err(e @ (SendError::RequestBody(_) | SendError::BodyTooLarge))) => {
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
            if this.decoder.is_done() {
                this.release();
                return Poll::Ready(None);
            }
            match this.decoder.step(&this.buf) {
                Err(e) => return this.fail(e.into()),
                Ok(Step::Data(n)) => {
                    let data = this.buf.split_to(n).freeze();
                    if this.decoder.is_done() {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::Framing(n)) => this.buf.advance(n),
                Ok(Step::More) => match ready!(this.poll_fill(cx)) {
                    Ok(true) => {}
                    Ok(false) => match this.decoder.at_end_of_stream() {
                        // Read until the close: complete, never reusable.
                        Ok(()) => this.io = None,
                        Err(e) => return this.fail(e.into()),
                    },
                    Err(e) => return this.fail(e),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
