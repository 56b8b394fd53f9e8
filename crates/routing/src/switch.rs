//! A waifu's switch: open, paused or in maintenance, on every replica.
//!
//! Paused, its new public requests wait here (none reaches it) until it
//! opens again, each for at most its `max_wait`, then 503 with
//! `Retry-After`; in maintenance, each is answered 503 `maintenance` at
//! once. The registry sets it from the stored state; the proxy reads it
//! with one atomic load per request. It lives with the waifu's route and
//! carries over when the route is rebuilt.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

const OPEN: u8 = 0;
const PAUSED: u8 = 1;
const MAINTENANCE: u8 = 2;

/// What the switch is set to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    Open,
    /// New requests wait, each at most `max_wait`.
    Paused {
        max_wait: Duration,
    },
    /// New requests are answered 503 at once.
    Maintenance {
        message: Option<String>,
        retry_after: Duration,
    },
}

/// What a request finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Open,
    /// Wait for it to open, at most this long.
    Paused(Duration),
    Maintenance {
        message: Option<String>,
        retry_after: Duration,
    },
}

/// One waifu's switch.
#[derive(Debug, Default)]
pub struct Switch {
    state: AtomicU8,
    /// Made the first time it is set: most waifus' switches never are
    /// (24 bytes each instead of 88).
    set: OnceLock<Box<Details>>,
}

/// What a switch that was set keeps beside its state.
#[derive(Debug, Default)]
struct Details {
    max_wait_ms: AtomicU64,
    retry_after_s: AtomicU64,
    /// The maintenance message (read only in maintenance).
    message: Mutex<Option<String>>,
    /// Woken whenever the setting changes.
    changed: Notify,
}

impl Switch {
    /// Sets it; requests waiting see the change at once.
    pub fn set(&self, setting: &Setting) {
        if *setting == Setting::Open && self.set.get().is_none() {
            // Never set: it is open, and nobody waits.
            return;
        }
        let details = self.details();
        let state = match setting {
            Setting::Open => OPEN,
            Setting::Paused { max_wait } => {
                details.max_wait_ms.store(
                    u64::try_from(max_wait.as_millis()).unwrap_or(u64::MAX),
                    SeqCst,
                );
                PAUSED
            }
            Setting::Maintenance {
                message,
                retry_after,
            } => {
                *details.message.lock().unwrap_or_else(|e| e.into_inner()) = message.clone();
                details.retry_after_s.store(retry_after.as_secs(), SeqCst);
                MAINTENANCE
            }
        };
        self.state.store(state, SeqCst);
        details.changed.notify_waiters();
    }

    fn details(&self) -> &Details {
        self.set.get_or_init(Box::default)
    }

    /// The current setting.
    pub fn setting(&self) -> Setting {
        match self.find() {
            Found::Open => Setting::Open,
            Found::Paused(max_wait) => Setting::Paused { max_wait },
            Found::Maintenance {
                message,
                retry_after,
            } => Setting::Maintenance {
                message,
                retry_after,
            },
        }
    }

    /// Whether requests go through now: the hot path's one load.
    pub fn is_open(&self) -> bool {
        self.state.load(SeqCst) == OPEN
    }

    /// What a request finds.
    pub fn find(&self) -> Found {
        let state = self.state.load(SeqCst);
        if state == OPEN {
            return Found::Open;
        }
        let details = self.details();
        match state {
            PAUSED => Found::Paused(Duration::from_millis(details.max_wait_ms.load(SeqCst))),
            _ => Found::Maintenance {
                message: details
                    .message
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
                retry_after: Duration::from_secs(details.retry_after_s.load(SeqCst)),
            },
        }
    }

    /// Waits until the switch is open; `false` if `max_wait` passed first
    /// (or it went into maintenance).
    pub async fn wait_open(&self, max_wait: Duration) -> bool {
        if self.is_open() {
            return true;
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        // Not open: it was set, so its details are there.
        let details = self.details();
        loop {
            // Made before the state is read: a change in between wakes it.
            let changed = details.changed.notified();
            match self.state.load(SeqCst) {
                OPEN => return true,
                MAINTENANCE => return false,
                _ => {}
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.is_open();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paused_requests_wait_for_the_switch_or_their_bound() {
        let switch = Arc::new(Switch::default());
        assert!(switch.is_open());
        switch.set(&Setting::Open);
        assert!(switch.set.get().is_none(), "never set: nothing made");
        assert_eq!(switch.setting(), Setting::Open);
        assert!(switch.wait_open(Duration::ZERO).await);
        switch.set(&Setting::Paused {
            max_wait: Duration::from_secs(30),
        });
        assert_eq!(switch.find(), Found::Paused(Duration::from_secs(30)));
        // Released by a resume.
        let waiting = tokio::spawn({
            let switch = switch.clone();
            async move { switch.wait_open(Duration::from_secs(30)).await }
        });
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!waiting.is_finished());
        switch.set(&Setting::Open);
        assert!(waiting.await.unwrap());
        // Held past its bound.
        switch.set(&Setting::Paused {
            max_wait: Duration::from_secs(5),
        });
        let started = tokio::time::Instant::now();
        assert!(!switch.wait_open(Duration::from_secs(5)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // Maintenance ends the wait at once.
        let waiting = tokio::spawn({
            let switch = switch.clone();
            async move { switch.wait_open(Duration::from_secs(30)).await }
        });
        tokio::task::yield_now().await;
        switch.set(&Setting::Maintenance {
            message: Some("upgrading".into()),
            retry_after: Duration::from_secs(60),
        });
        assert!(!waiting.await.unwrap());
        assert_eq!(
            switch.setting(),
            Setting::Maintenance {
                message: Some("upgrading".into()),
                retry_after: Duration::from_secs(60)
            }
        );
    }
}
