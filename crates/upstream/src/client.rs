//! One exchange: a request written to a pooled (or new) connection, and
//! its response head read.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::endpoint::{Endpoint, HasEndpoint};
use super::error::SendError;
use super::request::{Outgoing, ReqFraming};
use super::response::{self, Answer, Exchange, HeadError};

/// First buffer of a request: most response heads and small bodies fit, and
/// at hundreds of requests in flight the difference shows in peak memory.
const FIRST_BUF: usize = 2 * 1024;

/// Sends a request to `to`'s endpoint and reads the response head.
///
/// A reused connection that turns out closed before any byte of the
/// response arrived is replaced by a new one and the request sent again,
/// but only when that is safe: an idempotent method and no body.
pub async fn send<T: HasEndpoint>(
    to: &Arc<T>,
    req: Outgoing,
    connect_timeout: Duration,
) -> Result<Answer, SendError> {
    try_send(to, req, connect_timeout)
        .await
        .map_err(|u| u.error)
}

/// Why a request got no answer, and the request itself when not one byte of
/// it reached the instance (no connection could be made, or the socket
/// failed before taking any): then it may go to another instance, whatever
/// its method.
#[derive(Debug)]
pub struct Unanswered {
    pub error: SendError,
    pub unsent: Option<Outgoing>,
}

impl From<SendError> for Unanswered {
    fn from(error: SendError) -> Self {
        Unanswered {
            error,
            unsent: None,
        }
    }
}

/// [`send`], giving the request back when none of it was written.
pub async fn try_send<T: HasEndpoint>(
    to: &Arc<T>,
    mut req: Outgoing,
    connect_timeout: Duration,
) -> Result<Answer, Unanswered> {
    let endpoint = to.endpoint();
    let retryable = req.framing == ReqFraming::Empty && req.method.is_idempotent();
    if !req.coalesced {
        req.coalesced = true;
        if let Some(upload) = req.upload.as_mut() {
            // A small body that is already here goes out with the head: one
            // write, and a waifu reading the head finds its body complete.
            let head = &mut req.head;
            std::future::poll_fn(|cx| Poll::Ready(upload.take_ready(head, cx))).await?;
        }
    }
    let mut fresh = false;
    loop {
        let (mut io, mut buf, reused) = match endpoint.pool.checkout() {
            Some(c) => (c.io, BytesMut::with_capacity(FIRST_BUF), true),
            None => {
                fresh = true;
                // Boxed: the connect and its timer would otherwise be part of
                // every request's future, which hyper allocates and moves.
                match Box::pin(connect(endpoint, connect_timeout)).await {
                    Ok((io, buf)) => (io, buf, false),
                    Err(error) => {
                        return Err(Unanswered {
                            error,
                            unsent: Some(req),
                        });
                    }
                }
            }
        };
        match write_head(&mut io, &req.head).await {
            Ok(()) => {}
            // Closed under us before it took a byte: nothing was sent.
            Err((0, e)) if reused => {
                tracing::debug!(endpoint = %endpoint.authority, error = %e, "pooled connection was closed; trying another");
                continue;
            }
            Err((0, e)) => {
                return Err(Unanswered {
                    error: e.into(),
                    unsent: Some(req),
                });
            }
            Err((_, e)) if reused && retryable && !fresh => {
                tracing::debug!(endpoint = %endpoint.authority, error = %e, "pooled connection was closed; retrying");
                continue;
            }
            Err((_, e)) => return Err(SendError::from(e).into()),
        }
        let mut exchange = Exchange {
            io: &mut io,
            buf: &mut buf,
            upload: &mut req.upload,
            any: false,
        };
        let method = &req.method;
        let result = std::future::poll_fn(|cx| exchange.poll_head(cx, method)).await;
        match result {
            Ok(parsed) if parsed.status == StatusCode::SWITCHING_PROTOCOLS && !req.upgrade => {
                return Err(SendError::UnaskedSwitch.into());
            }
            Ok(mut parsed) => {
                parsed.keep_alive &= !req.close;
                return Ok(response::finish(to.clone(), parsed, io, buf, req.upload));
            }
            Err(HeadError::Closed(e)) if reused && retryable && !fresh => {
                tracing::debug!(endpoint = %endpoint.authority, error = %e, "pooled connection was closed; retrying");
            }
            Err(HeadError::Closed(e) | HeadError::Other(e)) => return Err(e.into()),
        }
    }
}

/// Writes the whole head; on failure, how many bytes went out before it.
async fn write_head(io: &mut TcpStream, head: &[u8]) -> Result<(), (usize, std::io::Error)> {
    let mut written = 0;
    while written < head.len() {
        match io.write(&head[written..]).await {
            Ok(0) => return Err((written, std::io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) => return Err((written, e)),
        }
    }
    Ok(())
}

async fn connect(
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<(TcpStream, BytesMut), SendError> {
    let authority = endpoint.authority.as_str();
    let io = match tokio::time::timeout(timeout, TcpStream::connect(authority)).await {
        Err(_) => return Err(SendError::ConnectTimeout),
        Ok(Err(e)) => return Err(SendError::Connect(e)),
        Ok(Ok(io)) => io,
    };
    let _ = io.set_nodelay(true);
    Ok((io, BytesMut::with_capacity(FIRST_BUF)))
}
