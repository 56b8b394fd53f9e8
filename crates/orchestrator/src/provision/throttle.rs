//! Throttling wrong secrets per waifu name.
//!
//! Five wrong secrets for a name within [`WINDOW`] lock the name for
//! [`FIRST_LOCK`]; every wrong secret after a lockout (within [`MEMORY`] of
//! the last one) locks it again for twice as long, up to [`MAX_LOCK`]. A
//! right secret clears the record. While locked, every attempt, right or
//! wrong, is refused with 429 and `Retry-After`, without running Argon2.
//! Other names are unaffected. State is per orchestrator process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) const MAX_FAILURES: u32 = 5;
pub(crate) const WINDOW: Duration = Duration::from_secs(15 * 60);
pub(crate) const FIRST_LOCK: Duration = Duration::from_secs(60);
pub(crate) const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
/// How long a name's lockout history is remembered after its last failure.
pub(crate) const MEMORY: Duration = Duration::from_secs(60 * 60);
/// Bound on remembered names; expired records are swept first.
const MAX_NAMES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    window_start: Instant,
    last_failure: Instant,
    /// Length of the last lockout; zero before the first.
    last_lock: Duration,
    locked_until: Option<Instant>,
}

/// Per-name failure records.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    records: Mutex<HashMap<String, Record>>,
}

impl Throttle {
    /// `Err(wait)` while `name` is locked.
    pub(crate) fn check(&self, name: &str, now: Instant) -> Result<(), Duration> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        match records.get(name).and_then(|r| r.locked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Records a wrong secret; returns the lockout it starts, if any.
    pub(crate) fn failure(&self, name: &str, now: Instant) -> Option<Duration> {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() >= MAX_NAMES && !records.contains_key(name) {
            records.retain(|_, r| now.duration_since(r.last_failure) < MEMORY);
        }
        let r = records.entry(name.to_owned()).or_insert(Record {
            failures: 0,
            window_start: now,
            last_failure: now,
            last_lock: Duration::ZERO,
            locked_until: None,
        });
        if now.duration_since(r.last_failure) >= MEMORY {
            r.last_lock = Duration::ZERO;
        }
        if now.duration_since(r.window_start) >= WINDOW {
            r.failures = 0;
            r.window_start = now;
        }
        r.failures += 1;
        r.last_failure = now;
        let lock = if r.last_lock > Duration::ZERO {
            (r.last_lock * 2).min(MAX_LOCK)
        } else if r.failures >= MAX_FAILURES {
            FIRST_LOCK
        } else {
            return None;
        };
        r.last_lock = lock;
        r.failures = 0;
        r.window_start = now;
        r.locked_until = Some(now + lock);
        Some(lock)
    }

    /// A right secret: forget the name's failures.
    pub(crate) fn success(&self, name: &str) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_five_and_backs_off_to_fifteen_minutes() {
        let t = Throttle::default();
        let mut now = Instant::now();
        for _ in 0..4 {
            assert_eq!(t.failure("a", now), None);
            assert!(t.check("a", now).is_ok());
        }
        assert_eq!(t.failure("a", now), Some(FIRST_LOCK));
        assert_eq!(t.check("a", now), Err(FIRST_LOCK));
        assert!(t.check("b", now).is_ok(), "other names are unaffected");

        let mut expected = FIRST_LOCK;
        for _ in 0..6 {
            now += expected;
            assert!(t.check("a", now).is_ok(), "the lock expires");
            expected = (expected * 2).min(MAX_LOCK);
            assert_eq!(
                t.failure("a", now),
                Some(expected),
                "one more failure relocks"
            );
        }
        assert_eq!(expected, MAX_LOCK);

        t.success("a");
        assert!(t.check("a", now).is_ok());
        assert_eq!(t.failure("a", now), None, "a success starts over");
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let t = Throttle::default();
        let mut now = Instant::now();
        for _ in 0..4 {
            assert_eq!(t.failure("a", now), None);
        }
        now += WINDOW;
        for _ in 0..4 {
            assert_eq!(t.failure("a", now), None);
        }
        assert_eq!(t.failure("a", now), Some(FIRST_LOCK));
    }
}
