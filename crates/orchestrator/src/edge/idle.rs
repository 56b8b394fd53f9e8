//! Closing connections on which nothing moved for a while.
//!
//! [`Tracked`] wraps a socket and notes when it last moved a byte;
//! [`close_when_idle`] drops a connection once that is `IDLE_TIMEOUT` ago.
//! This is what ends idle or dead HTTP/2 connections, whose keep-alive
//! hyper does not bound otherwise; upgraded tunnels are handed off and not
//! bound by it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

use super::strict::{Socket, Strict};

/// Runs a connection, dropping it once no byte moved for `idle`.
pub(super) async fn close_when_idle<F, E>(
    mut conn: Pin<Box<F>>,
    activity: Arc<AtomicU64>,
    idle: Duration,
    peer: SocketAddr,
) -> Result<(), E>
where
    F: std::future::Future<Output = Result<(), E>>,
{
    let started = Instant::now();
    loop {
        let last = Duration::from_millis(activity.load(Ordering::Relaxed));
        let deadline = started + last + idle;
        tokio::select! {
            r = conn.as_mut() => return r,
            () = tokio::time::sleep_until(deadline.into()) => {
                let now_last = Duration::from_millis(activity.load(Ordering::Relaxed));
                if now_last == last {
                    debug!(%peer, "closing idle connection");
                    return Ok(());
                }
            }
        }
    }
}

/// A socket that records when it last moved a byte, in milliseconds since
/// it was accepted.
#[derive(Debug)]
pub(super) struct Tracked<S: Socket> {
    inner: Strict<S>,
    started: Instant,
    activity: Arc<AtomicU64>,
}

impl<S: Socket> Tracked<S> {
    pub(super) fn new(inner: Strict<S>, activity: Arc<AtomicU64>) -> Self {
        Tracked {
            inner,
            started: Instant::now(),
            activity,
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.store(ms, Ordering::Relaxed);
    }
}

impl<S: Socket> Tracked<S> {
    /// Takes back bytes read from the client: they are read again first.
    pub(super) fn unread(&mut self, bytes: &[u8]) {
        self.inner.unread(bytes);
    }
}

impl<S: Socket> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if r.is_ready() {
            self.touch();
        }
        r
    }
}

impl<S: Socket> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if r.is_ready() {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if r.is_ready() {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
