//! Name ownership in the state database: each name's secret (a hash), its
//! shared failure record, and refusals, each stored with its incident in
//! one transaction that commits before the caller answers.

use std::time::{Duration, SystemTime};

use super::Store;
use super::audit;
use super::error::StoreError;
use super::incidents::{self, NewIncident};

/// A name's failures, as stored (the throttle's rules work on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FailureRecord {
    pub failures: u32,
    pub window_start: SystemTime,
    pub last_failure: SystemTime,
    /// Length of the last lockout; zero before the first.
    pub last_lock: Duration,
    pub locked_until: Option<SystemTime>,
}

/// What is stored about a name's ownership, and the database's clock.
#[derive(Debug)]
pub(crate) struct OwnerState {
    pub secret_hash: Option<String>,
    pub failures: Option<FailureRecord>,
    /// `now()` on the database: every orchestrator judges lockouts by it.
    pub now: SystemTime,
}

/// The next record after one more failure, and the lockout it starts.
pub(crate) type NextFailure =
    fn(Option<FailureRecord>, SystemTime) -> (FailureRecord, Option<Duration>);

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn record(row: &tokio_postgres::Row, at: usize) -> Option<FailureRecord> {
    let failures: Option<i32> = row.get(at);
    Some(FailureRecord {
        failures: u32::try_from(failures?).unwrap_or(0),
        window_start: row.get(at + 1),
        last_failure: row.get(at + 2),
        last_lock: Duration::from_millis(u64::try_from(row.get::<_, i64>(at + 3)).unwrap_or(0)),
        locked_until: row.get(at + 4),
    })
}

const READ: &str = "SELECT now(), s.secret_hash, t.failures, t.window_start, t.last_failure,
                           t.last_lock_ms, t.locked_until
                    FROM (SELECT $1::text AS name) q
                    LEFT JOIN waifu_secrets s USING (name)
                    LEFT JOIN throttle t USING (name)";

impl Store {
    /// A name's secret hash and failure record, in one round trip.
    pub(crate) async fn owner_state(&self, name: &str) -> Result<OwnerState, StoreError> {
        let client = self.pool.get().await?;
        let row = client.query_one(READ, &[&name]).await?;
        Ok(OwnerState {
            now: row.get(0),
            secret_hash: row.get(1),
            failures: record(&row, 2),
        })
    }

    /// Claims `name` for the secret `hash` stands for, unless it is claimed
    /// already; the claim is audited in the same transaction. `Ok(None)`:
    /// this call claimed it; `Ok(Some(hash))`: another did first.
    pub(crate) async fn claim(
        &self,
        name: &str,
        hash: &str,
        source: &str,
        via: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let claimed = tx
            .query_opt(
                "INSERT INTO waifu_secrets (name, secret_hash) VALUES ($1, $2)
                 ON CONFLICT (name) DO NOTHING RETURNING name",
                &[&name, &hash],
            )
            .await?;
        if claimed.is_none() {
            let row = tx
                .query_one(
                    "SELECT secret_hash FROM waifu_secrets WHERE name = $1",
                    &[&name],
                )
                .await?;
            return Ok(Some(row.get(0)));
        }
        let detail = format!("the name is claimed by the secret of its first {via}");
        audit::append(&tx, "secret_claimed", name, source, &detail).await?;
        tx.commit().await?;
        Ok(None)
    }

    /// A right secret: the name's failures are forgotten.
    pub(crate) async fn forget_failures(&self, name: &str) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute("DELETE FROM throttle WHERE name = $1", &[&name])
            .await?;
        Ok(())
    }

    /// A refused attempt on `name`: counted as one more failure when `count`
    /// (`next` says what that makes of the record), and stored as the
    /// incident `incident` makes of the lockout it starts, in one
    /// transaction. Returns that lockout.
    pub(crate) async fn refuse(
        &self,
        name: &str,
        count: Option<NextFailure>,
        incident: impl FnOnce(Option<Duration>) -> NewIncident,
        webhook: bool,
    ) -> Result<Option<Duration>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut lock = None;
        if let Some(next) = count {
            // The row is locked: two orchestrators counting at once add up.
            tx.execute(
                "INSERT INTO throttle (name, failures, window_start, last_failure, last_lock_ms)
                 VALUES ($1, 0, now(), now(), 0) ON CONFLICT (name) DO NOTHING",
                &[&name],
            )
            .await?;
            let row = tx
                .query_one(
                    "SELECT now(), failures, window_start, last_failure, last_lock_ms, locked_until
                     FROM throttle WHERE name = $1 FOR UPDATE",
                    &[&name],
                )
                .await?;
            let now: SystemTime = row.get(0);
            let stored = record(&row, 1).filter(|r| r.failures > 0 || r.last_lock > Duration::ZERO);
            let (updated, started) = next(stored, now);
            lock = started;
            tx.execute(
                "UPDATE throttle SET failures = $2, window_start = $3, last_failure = $4,
                                     last_lock_ms = $5, locked_until = $6
                 WHERE name = $1",
                &[
                    &name,
                    &i32::try_from(updated.failures).unwrap_or(i32::MAX),
                    &updated.window_start,
                    &updated.last_failure,
                    &millis(updated.last_lock),
                    &updated.locked_until,
                ],
            )
            .await?;
        }
        incidents::insert(&tx, &incident(lock), webhook).await?;
        tx.commit().await?;
        Ok(lock)
    }
}
