//! The rules of the throttle on wrong or missing secrets, per name.
//!
//! Five failures for a name within [`WINDOW`] lock the name for
//! [`FIRST_LOCK`]; every failure after a lockout (within [`MEMORY`] of the
//! last one) locks it again for twice as long, up to [`MAX_LOCK`]. A right
//! secret clears the record. While locked, every attempt, right or wrong, is
//! refused with 429 and `Retry-After`, without running Argon2. Other names
//! are unaffected.
//!
//! The records live in PostgreSQL, so every orchestrator on one database
//! counts the same failures: three replicas behind a load balancer give an
//! attacker five attempts, not fifteen. Time is the database's clock, for
//! the same reason. This module holds only the arithmetic.

use std::time::{Duration, SystemTime};

pub(crate) use crate::store::ownership::FailureRecord as Record;

pub(crate) const MAX_FAILURES: u32 = 5;
pub(crate) const WINDOW: Duration = Duration::from_secs(15 * 60);
pub(crate) const FIRST_LOCK: Duration = Duration::from_secs(60);
pub(crate) const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
/// How long a name's lockout history is remembered after its last failure.
pub(crate) const MEMORY: Duration = Duration::from_secs(60 * 60);

/// How long `record` keeps the name locked after `now`, if it does.
pub(crate) fn locked_for(record: Option<&Record>, now: SystemTime) -> Option<Duration> {
    let until = record?.locked_until?;
    until.duration_since(now).ok().filter(|d| !d.is_zero())
}

/// One more failure at `now`: the record to store, and the lockout it
/// starts, if any.
pub(crate) fn failure(record: Option<Record>, now: SystemTime) -> (Record, Option<Duration>) {
    let since = |t: SystemTime| now.duration_since(t).unwrap_or(Duration::ZERO);
    let mut r = record.unwrap_or(Record {
        failures: 0,
        window_start: now,
        last_failure: now,
        last_lock: Duration::ZERO,
        locked_until: None,
    });
    if since(r.last_failure) >= MEMORY {
        r.last_lock = Duration::ZERO;
    }
    if since(r.window_start) >= WINDOW {
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
        return (r, None);
    };
    r.last_lock = lock;
    r.failures = 0;
    r.window_start = now;
    r.locked_until = Some(now + lock);
    (r, Some(lock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_five_and_backs_off_to_fifteen_minutes() {
        let mut now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut r = None;
        for _ in 0..4 {
            let (next, lock) = failure(r, now);
            assert_eq!(lock, None);
            r = Some(next);
            assert_eq!(locked_for(r.as_ref(), now), None);
        }
        let (next, lock) = failure(r, now);
        assert_eq!(lock, Some(FIRST_LOCK));
        r = Some(next);
        assert_eq!(locked_for(r.as_ref(), now), Some(FIRST_LOCK));
        let mut expected = FIRST_LOCK;
        for _ in 0..6 {
            now += expected;
            assert_eq!(locked_for(r.as_ref(), now), None, "the lock expires");
            expected = (expected * 2).min(MAX_LOCK);
            let (next, lock) = failure(r, now);
            assert_eq!(lock, Some(expected), "one more failure relocks");
            r = Some(next);
        }
        assert_eq!(expected, MAX_LOCK);
        // A success forgets the record: the next failure starts over.
        assert_eq!(failure(None, now).1, None);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let mut now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut r = None;
        for _ in 0..4 {
            r = Some(failure(r, now).0);
        }
        now += WINDOW;
        for _ in 0..4 {
            let (next, lock) = failure(r, now);
            assert_eq!(lock, None);
            r = Some(next);
        }
        assert_eq!(failure(r, now).1, Some(FIRST_LOCK));
    }

    #[test]
    fn a_lockout_is_forgotten_after_an_hour_without_failures() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut r = None;
        for _ in 0..5 {
            r = Some(failure(r, now).0);
        }
        let later = now + MEMORY + FIRST_LOCK;
        assert_eq!(failure(r, later).1, None, "the back-off starts over");
    }
}
