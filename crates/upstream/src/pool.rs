//! Idle keep-alive connections to one endpoint, for reuse.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Idle connections kept per endpoint. As many as HTTP/2 clients may have
/// requests in flight to one waifu in a burst (8 connections of 100 streams
/// each, say): with 256, three in four of those requests' connections were
/// closed on return and opened again for the next burst, a `connect` per
/// request and a p99 half as high again as nginx's (which keeps 1,024 in
/// the benchmark).
const MAX_IDLE: usize = 1024;
/// An idle connection older than this is closed rather than reused: a waifu
/// may have timed it out already.
pub const IDLE_FOR: Duration = Duration::from_secs(30);

/// An idle keep-alive connection.
#[derive(Debug)]
pub struct IdleConn {
    pub(super) io: TcpStream,
    since: Instant,
}

/// The idle connections of one endpoint, most recently used last.
#[derive(Debug, Default)]
pub struct ConnPool {
    idle: Mutex<Vec<IdleConn>>,
    /// Set once the endpoint is going away: nothing is kept any more.
    closed: AtomicBool,
}

impl ConnPool {
    /// A live idle connection, if any.
    pub(super) fn checkout(&self) -> Option<IdleConn> {
        loop {
            let conn = self.idle.lock().ok()?.pop()?;
            if conn.since.elapsed() < IDLE_FOR && is_quiet(&conn.io) {
                return Some(conn);
            }
        }
    }

    /// Closes connections idle for `max_age`, so an endpoint checked rarely
    /// and not proxied to does not hold a descriptor forever; returns how
    /// many.
    pub fn reap(&self, max_age: Duration) -> usize {
        let Ok(mut idle) = self.idle.lock() else {
            return 0;
        };
        let before = idle.len();
        idle.retain(|c| c.since.elapsed() < max_age);
        before - idle.len()
    }

    /// Closes every idle connection and keeps none from now on, so a waifu
    /// that is leaving does not wait for them to exit.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    /// How many idle connections are kept now.
    pub fn idle(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }

    pub(super) fn checkin(&self, io: TcpStream) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
            && !self.closed.load(Ordering::Acquire)
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
