//! The listeners: accepting connections, bounding them, draining them on
//! shutdown.
//!
//! The public listener speaks HTTP/1.1 and h2c (prior knowledge): requests
//! without a body are served by its own loop ([`h1`]), and the first
//! request that loop leaves alone hands the connection to hyper-util's auto
//! builder. The TLS listener does the same after a rustls handshake (ALPN
//! h2 or http/1.1); the internal listener serves the API with hyper. Slow
//! or stuck clients are bounded: HTTP/1 must deliver a request's headers
//! within `HEADER_READ_TIMEOUT` (which also closes idle keep-alive
//! connections), header blocks and request targets are size limited, and
//! any connection on which no byte moved for `IDLE_TIMEOUT` is closed (this
//! is what ends idle or dead HTTP/2 connections; upgraded tunnels are
//! handed off and not bound by it, [`idle`]). Request framing is checked
//! strictly before either parses it ([`strict`]).

mod h1;
mod idle;
pub(crate) mod strict;

pub(crate) use h1::{Parsed, parse as parse_fast};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};
use waifus_http1::limits::{MAX_FIELDS, MAX_HEAD};

use crate::ops::metrics::Open;
use crate::proxy::{Proxy, Via};
use idle::{Tracked, close_when_idle};
use prometheus_client::metrics::gauge::Gauge;
use strict::{Socket, Strict};

/// Limits on what a client may send.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Connections served at once; the accept loop waits for a free slot.
    pub max_connections: u32,
}

/// Largest HTTP/2 header list.
const MAX_H2_HEADER_LIST: u32 = 64 * 1024;

/// Serves the proxy on one public listener (plain, or TLS with `tls`)
/// until `shutdown`, then drains for at most `drain`. Over TLS the
/// handshake must finish within the header-read timeout, and a TLS-ALPN-01
/// validation ends after its handshake.
pub(crate) async fn serve_proxy(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    proxy: Arc<Proxy>,
    limits: ConnLimits,
    shutdown: CancellationToken,
    drain: Duration,
    open: Gauge,
) {
    let builder = Arc::new(public_builder(limits));
    // hyper's graceful shutdown only watches hyper's own connections; the
    // fast path drains on `shutdown` itself and hands it to hyper.
    let connections = TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections as usize));
    let port = listener.local_addr().map_or(0, |a| a.port());
    while let Some((stream, peer, slot)) = next_connection(&listener, &slots, &shutdown).await {
        let _ = stream.set_nodelay(true);
        let counted = Open::new(&open);
        let conn = h1::Conn {
            proxy: proxy.clone(),
            peer,
            via: Via {
                port,
                ..Via::default()
            },
            header_read_timeout: limits.header_read_timeout,
            builder: builder.clone(),
            draining: shutdown.clone(),
        };
        let Some(acceptor) = &tls else {
            let served = serve_proxied(stream, conn, limits);
            connections.spawn(async move {
                served.await;
                drop((slot, counted));
            });
            continue;
        };
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            let _counted = counted;
            // Boxed: the handshake's state is only needed until it ends, not
            // for the whole life of the connection's task.
            let handshake = Box::pin(tokio::time::timeout(
                limits.header_read_timeout,
                acceptor.accept(stream),
            ));
            let mut tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let (_, session) = tls.get_ref();
            if session.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
                debug!(%peer, "answered a TLS-ALPN-01 validation");
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                return;
            }
            let via = Via {
                tls: true,
                port,
                sni: session.server_name().map(|n| n.to_ascii_lowercase().into()),
                switched: None,
            };
            serve_proxied(tls, h1::Conn { via, ..conn }, limits).await;
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    let which = if tls.is_some() { "TLS" } else { "public" };
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        warn!("drain timed out; closing remaining {which} connections");
    }
}

/// The public listeners' builder: shared limits, half-close for refusals,
/// bounded HTTP/2 streams.
fn public_builder(limits: ConnLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = limited_builder(limits);
    // A refused request ends the stream after the good ones before it
    // (crate::strict): those are still answered.
    builder.http1().half_close(true);
    builder.http2().max_concurrent_streams(256);
    builder
}

/// One proxied connection: strict framing, the idle bound, the HTTP/1.1
/// fast path and hyper for the rest ([`h1`]).
fn serve_proxied<S: Socket + Send + 'static>(
    stream: S,
    mut conn: h1::Conn,
    limits: ConnLimits,
) -> impl Future<Output = ()> + Send + 'static {
    let activity = Arc::new(AtomicU64::new(0));
    // The proxy raises it when it relays a 101; the strict check then stops.
    let switched = Arc::new(std::sync::atomic::AtomicBool::new(false));
    conn.via.switched = Some(switched.clone());
    let io = Tracked::new(Strict::new(stream, switched), activity.clone());
    let peer = conn.peer;
    // Boxed: a future moved into an `async` block and awaited there is
    // stored twice, once per level of nesting.
    let served = Box::pin(h1::serve(io, conn));
    let idle = limits.idle_timeout;
    async move {
        if let Err(e) = close_when_idle(served, activity, idle, peer).await {
            debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// The next connection to serve and its slot; `None` once shutting down.
/// At `MAX_CONNECTIONS` no connection is accepted: newcomers wait in the
/// kernel's backlog.
async fn next_connection(
    listener: &TcpListener,
    slots: &Arc<tokio::sync::Semaphore>,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr, tokio::sync::OwnedSemaphorePermit)> {
    let slot = tokio::select! {
        () = shutdown.cancelled() => return None,
        slot = slots.clone().acquire_owned() => slot.ok()?,
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => return Some((stream, peer, slot)),
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// HTTP/1.1 and h2c with the header limits and header-read timeout that
/// every listener applies.
fn limited_builder(limits: ConnLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_FIELDS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_H2_HEADER_LIST);
    builder
}

/// Waits for watched connections to finish, at most `drain`.
async fn drain_or_give_up(graceful: GracefulShutdown, drain: Duration, which: &str) {
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("drain timed out; closing remaining {which} connections");
    }
}

/// Serves the internal API until `shutdown`, then drains for at most
/// `drain`. The same header limits and header-read timeout as the public
/// listener apply; the client's address reaches handlers as `ConnectInfo`.
pub(crate) async fn serve_internal(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnLimits,
    shutdown: CancellationToken,
    drain: Duration,
    open: Gauge,
) {
    let builder = limited_builder(limits);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections as usize));
    while let Some((stream, peer, slot)) = next_connection(&listener, &slots, &shutdown).await {
        let service = router
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        let service = hyper_util::service::TowerToHyperService::new(service);
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = Box::pin(graceful.watch(conn));
        let counted = Open::new(&open);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "internal connection ended with an error");
            }
            drop((slot, counted));
        });
    }
    drop(listener);
    // Keep-alive connections get their grace, as on the public listener
    // (hyper closes idle ones at once once told to shut down).
    if graceful.count() > 0 {
        tokio::time::sleep(h1::DRAIN_IDLE_GRACE.min(drain)).await;
    }
    drain_or_give_up(graceful, drain, "internal").await;
}
