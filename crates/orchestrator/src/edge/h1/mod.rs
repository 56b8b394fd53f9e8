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
//! Bytes arrive through [`super::strict`], as they do for hyper, so the
//! same framing checks apply to both.

mod parse;
mod respond;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::Request;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use waifus_http1::limits::MAX_HEAD;

use super::idle::Tracked;
use super::strict::Socket;
use crate::proxy::{ClientRequest, Proxy, Via};
pub(crate) use parse::{Parsed, parse};
use respond::{RespondError, respond};

/// First read buffer; it grows up to `MAX_HEADER_BYTES` for a long head.
const READ_BUF: usize = 2 * 1024;

/// What one connection needs besides its socket.
pub(crate) struct Conn {
    pub proxy: Arc<Proxy>,
    pub peer: SocketAddr,
    pub via: Via,
    pub header_read_timeout: Duration,
    /// For the requests handed to hyper.
    pub builder: Arc<auto::Builder<TokioExecutor>>,
    /// Cancelled when the listener drains: every request from then on is
    /// answered with `connection: close`, and a connection that stays idle
    /// for [`DRAIN_IDLE_GRACE`] after it is closed.
    pub draining: CancellationToken,
}

/// How long a keep-alive connection that is idle when the drain begins is
/// kept open for its next request. Closing it at once races a client that
/// is sending that request right then (it would see the connection reset
/// and fail a request that never reached anyone); answering the request
/// with `connection: close` makes the client open a new connection, which
/// the listener's next owner accepts (an upgrade) or which waits in the
/// backlog (a socket-activated restart).
pub(crate) const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Respond(#[from] RespondError),
    #[error("hyper: {0}")]
    Hyper(Box<dyn std::error::Error + Send + Sync>),
}

/// Serves a connection until the client or the drain ends it.
pub(crate) async fn serve<S>(mut io: Tracked<S>, conn: Conn) -> Result<(), ConnError>
where
    S: Socket + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(READ_BUF);
    // Response heads (and small bodies) are gathered here, kept for the
    // next response.
    let mut out = BytesMut::new();
    let mut timer = HeadTimer::new(conn.header_read_timeout);
    // One wait on the drain (and its grace) for the whole connection: a new
    // one per read would register with (and leave) the token's waiter list
    // every time.
    let draining = conn.draining.clone();
    let drained = async move {
        draining.cancelled().await;
        tokio::time::sleep(DRAIN_IDLE_GRACE).await;
    };
    tokio::pin!(drained);
    loop {
        // Read until a whole head is in, or it is clear hyper must take over.
        let head = loop {
            // Served where it lies: the proxy is done with the head's bytes
            // when `handle` returns, before `buf` changes again.
            match parse(&buf, |req| conn.proxy.handle(req, conn.peer, &conn.via)) {
                Parsed::Fast(head) => break head,
                Parsed::HandOff => return hand_off(io, &buf, &conn).await,
                Parsed::Partial if buf.len() >= MAX_HEAD => {
                    // hyper answers 431 for a head this long.
                    return hand_off(io, &buf, &conn).await;
                }
                Parsed::Partial => {}
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
        buf.advance(head.len);
        timer.received();
        let close_after = head.close || conn.draining.is_cancelled();
        let Ok(response) = head.served.await;
        // The drain may have begun while the waifu answered.
        let close_after = close_after || conn.draining.is_cancelled();
        respond(&mut io, &mut out, response, head.is_head, close_after).await?;
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

/// Gives the connection to hyper, `read` being what came from the client
/// and was not answered yet.
async fn hand_off<S>(mut io: Tracked<S>, read: &[u8], conn: &Conn) -> Result<(), ConnError>
where
    S: Socket + Send + 'static,
{
    io.unread(read);
    let proxy = conn.proxy.clone();
    let (peer, via) = (conn.peer, conn.via.clone());
    let draining = conn.draining.clone();
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let http1 = req.version() < http::Version::HTTP_2;
        let (mut parts, body) = req.into_parts();
        let handled = proxy.handle(ClientRequest::of_hyper(&mut parts, body), peer, &via);
        let draining = draining.clone();
        async move {
            let Ok(answered) = handled.await;
            let mut response = answered.into_http();
            // Draining: the client takes its next request elsewhere.
            if http1
                && draining.is_cancelled()
                && response.status() != http::StatusCode::SWITCHING_PROTOCOLS
            {
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let io = TokioIo::new(io);
    let served = conn.builder.serve_connection_with_upgrades(io, service);
    // Boxed: kept apart from the fast path's state.
    let mut served = Box::pin(served);
    // Draining: requests get `connection: close` for the grace, then hyper
    // closes what is idle (HTTP/2: GOAWAY) and finishes the rest.
    let finished = tokio::select! {
        r = served.as_mut() => Some(r),
        () = async {
            conn.draining.cancelled().await;
            tokio::time::sleep(DRAIN_IDLE_GRACE).await;
        } => None,
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
