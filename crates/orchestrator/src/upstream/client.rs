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
use super::request::{Outgoing, ReqFraming, Upload};
use super::response::{self, Answer, Exchange, HeadError};

/// First buffer of a request: most response heads and small bodies fit, and
/// at hundreds of requests in flight the difference shows in peak memory.
const FIRST_BUF: usize = 2 * 1024;

/// Sends a request to `to`'s endpoint and reads the response head.
///
/// A reused connection that turns out closed before any byte of the
/// response arrived is replaced by a new one and the request sent again,
/// but only when that is safe: an idempotent method and no body.
pub(crate) async fn send<T: HasEndpoint>(
    to: &Arc<T>,
    req: Outgoing,
    connect_timeout: Duration,
) -> Result<Answer, SendError> {
    let endpoint = to.endpoint();
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
        let (mut io, mut buf, reused) = match endpoint.pool.checkout() {
            Some(c) => (c.io, BytesMut::with_capacity(FIRST_BUF), true),
            None => {
                fresh = true;
                // Boxed: the connect and its timer would otherwise be part of
                // every request's future, which hyper allocates and moves.
                let (io, buf) = Box::pin(connect(endpoint, connect_timeout)).await?;
                (io, buf, false)
            }
        };
        if let Err(e) = io.write_all(&head).await {
            if reused && retryable && !fresh {
                tracing::debug!(endpoint = %endpoint.authority, error = %e, "pooled connection was closed; retrying");
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
                return Err(SendError::UnaskedSwitch);
            }
            Ok(parsed) => return Ok(response::finish(to.clone(), parsed, io, buf, upload)),
            Err(HeadError::Closed(e)) if reused && retryable && !fresh => {
                tracing::debug!(endpoint = %endpoint.authority, error = %e, "pooled connection was closed; retrying");
            }
            Err(HeadError::Closed(e) | HeadError::Other(e)) => return Err(e),
        }
    }
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
