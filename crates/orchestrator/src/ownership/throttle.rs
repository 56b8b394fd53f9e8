//! The rules of the throttle on wrong or missing secrets: per name and
//! source address, under a ceiling per name.
//!
//! Each source address has its own count for each name. Five failures from
//! one address within [`WINDOW`] lock that address out of the name for
//! [`FIRST_LOCK`]; each failure after a lockout (within [`MEMORY`] of the
//! address's last failure) locks it again for twice as long, up to
//! [`MAX_LOCK`]. A right secret from the address forgets its record. While
//! an address is locked, each of its attempts, right or wrong, is refused
//! with 429 and `Retry-After`, without running Argon2; other addresses are
//! not affected, so five wrong guesses from anyone never lock the owner out.
//!
//! Over all addresses together, a name takes at most [`NAME_MAX_FAILURES`]
//! failures within the window before the same lockout applies to the name,
//! the brute-force bound for an attacker with many addresses. An address
//! that showed the right secret within [`TRUSTED_FOR`] is exempt from that
//! ceiling (only its own count binds it), so the owner's running instances
//! keep their name while someone else sprays guesses.
//!
//! An attempt that will run Argon2 is reserved first ([`reserve`]), in the
//! transaction that reads the lock: the record counts it as pending until it
//! is judged, so many attempts at once cannot all be checked. A failure
//! count plus the attempts pending never passes the budget; a reservation
//! older than [`PENDING_FOR`] (its check crashed) is void.
//!
//! The records live in PostgreSQL, so every orchestrator on one database
//! counts the same failures and judges time by the database's clock. This
//! module holds only the arithmetic.

use std::time::{Duration, SystemTime};

pub(crate) use crate::store::ownership::FailureRecord as Record;

/// Failures from one address within [`WINDOW`] before it is locked out.
pub(crate) const MAX_FAILURES: u32 = 5;
/// Failures over every address within [`WINDOW`] before the name is locked
/// for addresses it does not trust.
pub(crate) const NAME_MAX_FAILURES: u32 = 50;
pub(crate) const WINDOW: Duration = Duration::from_secs(15 * 60);
pub(crate) const FIRST_LOCK: Duration = Duration::from_secs(60);
pub(crate) const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
/// How long a lockout history is remembered after the last failure.
pub(crate) const MEMORY: Duration = Duration::from_secs(60 * 60);
/// How long an address that showed the right secret stays exempt from the
/// name's ceiling.
pub(crate) const TRUSTED_FOR: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// How often an address's trust is renewed by the right secret: the
/// hello every 30 s does not write each time.
pub(crate) const TRUST_RENEW: Duration = Duration::from_secs(60 * 60);
/// How long a reservation counts without being judged.
pub(crate) const PENDING_FOR: Duration = Duration::from_secs(30);

/// Whose count a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// One source address.
    Source,
    /// The name over every address.
    Name,
}

impl Scope {
    fn max_failures(self) -> u32 {
        match self {
            Scope::Source => MAX_FAILURES,
            Scope::Name => NAME_MAX_FAILURES,
        }
    }
}

/// A record with nothing in it, at `now`.
pub(crate) fn fresh(now: SystemTime) -> Record {
    Record::empty(now)
}

fn since(now: SystemTime, t: SystemTime) -> Duration {
    now.duration_since(t).unwrap_or(Duration::ZERO)
}

/// How long `record` keeps its scope locked after `now`, if it does.
fn lock_left(record: &Record, now: SystemTime) -> Option<Duration> {
    let until = record.locked_until?;
    until.duration_since(now).ok().filter(|d| !d.is_zero())
}

/// Whether the address showed the right secret recently enough to pass the
/// name's ceiling.
pub(crate) fn trusted(source: &Record, now: SystemTime) -> bool {
    source
        .trusted_at
        .is_some_and(|t| since(now, t) < TRUSTED_FOR)
}

/// Whether a right secret from the address would change nothing worth
/// writing: no failures, no lockout history, trust renewed lately.
pub(crate) fn settled_success(source: &Record, now: SystemTime) -> bool {
    source.failures == 0
        && source.last_lock.is_zero()
        && source
            .trusted_at
            .is_some_and(|t| since(now, t) < TRUST_RENEW)
}

/// How long a call from the address of `source` is refused after `now`, if
/// it is: its own lockout, or the name's when it is not trusted.
pub(crate) fn locked_for(source: &Record, name: &Record, now: SystemTime) -> Option<Duration> {
    let own = lock_left(source, now);
    if own.is_some() || trusted(source, now) {
        return own;
    }
    lock_left(name, now)
}

/// The record as of `now`: failures outside the window, a lockout history
/// older than [`MEMORY`] and stale reservations forgotten.
fn aged(mut r: Record, now: SystemTime) -> Record {
    if since(now, r.last_failure) >= MEMORY {
        r.last_lock = Duration::ZERO;
    }
    if since(now, r.window_start) >= WINDOW {
        r.failures = 0;
        r.window_start = now;
    }
    if r.pending_at.is_none_or(|t| since(now, t) >= PENDING_FOR) {
        r.pending = 0;
    }
    r
}

/// How many attempts the record may have judged or pending: one after a
/// lockout (its next failure relocks), else what is left of the window's.
fn budget(r: &Record, scope: Scope) -> u32 {
    if r.last_lock > Duration::ZERO {
        1
    } else {
        scope.max_failures().saturating_sub(r.failures)
    }
}

/// Reserves one attempt that is about to be checked: both records with it
/// pending, or how long to wait when the address (or, for an untrusted
/// address, the name) is locked or has as many attempts pending as it may
/// still fail. A wait of a second means "attempts are being checked".
pub(crate) fn reserve(
    source: Record,
    name: Record,
    now: SystemTime,
) -> Result<(Record, Record), Duration> {
    if let Some(wait) = locked_for(&source, &name, now) {
        return Err(wait);
    }
    let (mut source, mut name) = (aged(source, now), aged(name, now));
    if source.pending >= budget(&source, Scope::Source) {
        return Err(Duration::from_secs(1));
    }
    if !trusted(&source, now) && name.pending >= budget(&name, Scope::Name) {
        return Err(Duration::from_secs(1));
    }
    for r in [&mut source, &mut name] {
        r.pending += 1;
        r.pending_at = Some(now);
    }
    Ok((source, name))
}

/// One reservation judged: no longer pending.
fn settle(mut r: Record, reserved: bool) -> Record {
    if reserved {
        r.pending = r.pending.saturating_sub(1);
    }
    r
}

/// One more failure at `now` in `scope` (its reservation, if `reserved`,
/// settled): the record to store, and the lockout it starts, if any.
pub(crate) fn failure(
    record: Record,
    scope: Scope,
    reserved: bool,
    now: SystemTime,
) -> (Record, Option<Duration>) {
    let mut r = settle(aged(record, now), reserved);
    r.failures += 1;
    r.last_failure = now;
    let lock = if r.last_lock > Duration::ZERO {
        (r.last_lock * 2).min(MAX_LOCK)
    } else if r.failures >= scope.max_failures() {
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

/// The right secret from the address at `now`: its failures and lockout
/// history are forgotten and it is trusted; the name's count stays (the
/// owner's hellos must not reopen the ceiling for guesses from elsewhere).
pub(crate) fn success(
    source: Record,
    name: Record,
    reserved: bool,
    now: SystemTime,
) -> (Record, Record) {
    let source = settle(aged(source, now), reserved);
    let source = Record {
        pending: source.pending,
        pending_at: source.pending_at,
        trusted_at: Some(now),
        ..fresh(now)
    };
    (source, settle(aged(name, now), reserved))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    /// One checked wrong attempt from the address: reserved, then judged.
    fn wrong(source: Record, name: Record, now: SystemTime) -> (Record, Record, Option<Duration>) {
        let (source, name) = reserve(source, name, now).expect("not locked");
        let (source, lock) = failure(source, Scope::Source, true, now);
        let (name, _) = failure(name, Scope::Name, true, now);
        (source, name, lock)
    }

    #[test]
    fn attempts_pending_on_the_name_hold_back_untrusted_addresses_only() {
        let now = t0();
        let mut name = fresh(now);
        // As many attempts pending, from as many addresses, as the name
        // may still fail: the next untrusted address waits.
        for _ in 0..NAME_MAX_FAILURES {
            let (_, n) = reserve(fresh(now), name, now).expect("within the budget");
            name = n;
        }
        assert_eq!(reserve(fresh(now), name, now), Err(Duration::from_secs(1)));
        // The owner's address is not held back by them.
        let owner = success(fresh(now), fresh(now), false, now).0;
        assert!(reserve(owner, name, now).is_ok());
    }

    /// The numbers docs/security.md and docs/protocol.md give.
    #[test]
    fn the_documented_limits() {
        assert_eq!((MAX_FAILURES, NAME_MAX_FAILURES), (5, 50));
        let minutes = |m: u64| Duration::from_secs(m * 60);
        assert_eq!(WINDOW, minutes(15));
        assert_eq!(FIRST_LOCK, minutes(1));
        assert_eq!(MAX_LOCK, minutes(15));
        assert_eq!(MEMORY, minutes(60));
        assert_eq!(TRUSTED_FOR, minutes(7 * 24 * 60));
        assert_eq!(TRUST_RENEW, minutes(60));
        assert_eq!(PENDING_FOR, Duration::from_secs(30));
    }

    #[test]
    fn a_right_secret_keeps_the_other_attempts_pending() {
        let now = t0();
        let (s, n) = reserve(fresh(now), fresh(now), now).unwrap();
        let (s, n) = reserve(s, n, now).unwrap();
        // One of the two is judged right; the other is still being checked.
        let (s, _) = success(s, n, true, now);
        assert_eq!(s.pending, 1);
        assert_eq!(s.pending_at, Some(now));
    }

    #[test]
    fn five_wrong_lock_the_address_for_a_minute_then_twice_as_long_up_to_fifteen() {
        let mut now = t0();
        let (mut s, mut n) = (fresh(now), fresh(now));
        for _ in 0..4 {
            let (s2, n2, lock) = wrong(s, n, now);
            assert_eq!(lock, None);
            (s, n) = (s2, n2);
        }
        let (s2, n2, lock) = wrong(s, n, now);
        assert_eq!(lock, Some(FIRST_LOCK));
        (s, n) = (s2, n2);
        assert_eq!(locked_for(&s, &n, now), Some(FIRST_LOCK));
        assert_eq!(reserve(s, n, now), Err(FIRST_LOCK), "the sixth is a 429");
        // Each failure after a lockout relocks for twice as long.
        let mut expected = FIRST_LOCK;
        for want in [120, 240, 480, 900, 900] {
            now += expected;
            assert_eq!(locked_for(&s, &n, now), None, "the lock expires");
            let (s2, n2, lock) = wrong(s, n, now);
            expected = Duration::from_secs(want);
            assert_eq!(lock, Some(expected));
            (s, n) = (s2, n2);
        }
        assert_eq!(expected, MAX_LOCK);
    }

    #[test]
    fn a_right_secret_from_the_address_forgets_its_record() {
        let now = t0();
        let (mut s, mut n) = (fresh(now), fresh(now));
        for _ in 0..5 {
            let (s2, n2, _) = wrong(s, n, now);
            (s, n) = (s2, n2);
        }
        let later = now + FIRST_LOCK;
        let (s2, n2) = reserve(s, n, later).unwrap();
        let (s, n) = success(s2, n2, true, later);
        assert_eq!(s.failures, 0);
        assert_eq!(s.last_lock, Duration::ZERO);
        assert_eq!(s.pending, 0);
        assert!(trusted(&s, later));
        assert!(settled_success(&s, later));
        assert!(!settled_success(&s, later + TRUST_RENEW));
        // The next failure starts over: no lock.
        let (_, _, lock) = wrong(s, n, later);
        assert_eq!(lock, None);
    }

    #[test]
    fn attempts_at_once_get_no_more_checks_than_failures_left() {
        let now = t0();
        let (mut s, mut n) = (fresh(now), fresh(now));
        let mut let_through = 0;
        for _ in 0..300 {
            match reserve(s, n, now) {
                Ok((s2, n2)) => {
                    (s, n) = (s2, n2);
                    let_through += 1;
                }
                Err(wait) => assert_eq!(wait, Duration::from_secs(1)),
            }
        }
        assert_eq!(let_through, MAX_FAILURES);
        // After a lockout only one at a time: its failure relocks.
        let (mut s, mut n) = (fresh(now), fresh(now));
        for _ in 0..5 {
            let (s2, n2, _) = wrong(s, n, now);
            (s, n) = (s2, n2);
        }
        let later = now + FIRST_LOCK;
        let (s2, n2) = reserve(s, n, later).unwrap();
        assert!(reserve(s2, n2, later).is_err());
    }

    #[test]
    fn a_reservation_never_judged_is_void_after_a_while() {
        let now = t0();
        let (mut s, mut n) = (fresh(now), fresh(now));
        for _ in 0..5 {
            (s, n) = reserve(s, n, now).unwrap();
        }
        assert!(reserve(s, n, now).is_err());
        assert!(reserve(s, n, now + PENDING_FOR).is_ok());
    }

    #[test]
    fn the_name_ceiling_holds_back_untrusted_addresses_only() {
        let now = t0();
        let mut name = fresh(now);
        let owner = success(fresh(now), fresh(now), false, now).0;
        // 50 failures from 10 addresses: the name is locked.
        let mut lock = None;
        for _ in 0..10 {
            let mut s = fresh(now);
            for _ in 0..5 {
                let (s2, n2, _) = wrong(s, name, now);
                s = s2;
                name = n2;
                lock = name.locked_until;
            }
        }
        assert_eq!(lock, Some(now + FIRST_LOCK));
        let newcomer = fresh(now);
        assert_eq!(locked_for(&newcomer, &name, now), Some(FIRST_LOCK));
        assert_eq!(reserve(newcomer, name, now), Err(FIRST_LOCK));
        // The owner's address is not held back.
        assert_eq!(locked_for(&owner, &name, now), None);
        assert!(reserve(owner, name, now).is_ok());
        // Trust ends.
        let later = now + TRUSTED_FOR;
        assert!(!trusted(&owner, later));
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let mut now = t0();
        let (mut s, mut n) = (fresh(now), fresh(now));
        for _ in 0..4 {
            (s, n, _) = wrong(s, n, now);
        }
        now += WINDOW;
        for _ in 0..4 {
            let lock;
            (s, n, lock) = wrong(s, n, now);
            assert_eq!(lock, None);
        }
        assert_eq!(wrong(s, n, now).2, Some(FIRST_LOCK));
    }

    #[test]
    fn a_lockout_is_forgotten_after_an_hour_without_failures() {
        let now = t0();
        let (mut s, mut n) = (fresh(now), fresh(now));
        for _ in 0..5 {
            (s, n, _) = wrong(s, n, now);
        }
        let later = now + MEMORY + FIRST_LOCK;
        assert_eq!(wrong(s, n, later).2, None, "the back-off starts over");
    }
}
