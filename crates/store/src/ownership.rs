//! Name ownership in the state database: each name's secret (a hash), the
//! attempts made on it per source address and over all of them, claims
//! and their release. A change of the attempts is made, with the incident
//! it may bring, in one transaction that holds both rows locked, and
//! commits before the caller answers.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use super::Store;
use super::audit;
use super::error::StoreError;
use super::incidents::{self, NewIncident};

/// Attempts on a name, from one source or over all, as stored (the
/// throttle's rules work on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureRecord {
    pub failures: u32,
    pub window_start: SystemTime,
    pub last_failure: SystemTime,
    /// Length of the last lockout; zero before the first.
    pub last_lock: Duration,
    pub locked_until: Option<SystemTime>,
    /// Attempts reserved for a check and not judged yet.
    pub pending: u32,
    pub pending_at: Option<SystemTime>,
    /// When the source last showed the right secret.
    pub trusted_at: Option<SystemTime>,
}

/// A name's two records as stored (absent ones as `fresh` makes them), and
/// the database's clock: every orchestrator judges lockouts by it.
#[derive(Debug, Clone, Copy)]
pub struct Attempts {
    /// This source address's record.
    pub source: FailureRecord,
    /// The name's record over every address.
    pub name: FailureRecord,
    pub now: SystemTime,
}

/// What is stored about a name's ownership.
#[derive(Debug)]
pub struct OwnerState {
    pub secret_hash: Option<String>,
    pub attempts: Attempts,
    /// Whether the source has a record at all (a first success writes one).
    pub source_known: bool,
}

/// What a change of the attempts makes of them: both records to store, what
/// to tell the caller, and the incident to store with them.
#[derive(Debug)]
pub struct AttemptsChange<T> {
    pub source: FailureRecord,
    pub name: FailureRecord,
    pub outcome: T,
    pub incident: Option<NewIncident>,
}

impl FailureRecord {
    /// A record with nothing in it, at `now`.
    pub fn empty(now: SystemTime) -> FailureRecord {
        FailureRecord {
            failures: 0,
            window_start: now,
            last_failure: now,
            last_lock: Duration::ZERO,
            locked_until: None,
            pending: 0,
            pending_at: None,
            trusted_at: None,
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn count(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The record in the columns `RECORD` lists, from `at`.
fn record(row: &tokio_postgres::Row, at: usize) -> FailureRecord {
    let n = |i: usize| u32::try_from(row.get::<_, i32>(at + i)).unwrap_or(0);
    FailureRecord {
        failures: n(0),
        window_start: row.get(at + 1),
        last_failure: row.get(at + 2),
        last_lock: Duration::from_millis(u64::try_from(row.get::<_, i64>(at + 3)).unwrap_or(0)),
        locked_until: row.get(at + 4),
        pending: n(5),
        pending_at: row.get(at + 6),
        trusted_at: row.get(at + 7),
    }
}

const RECORD: &str = "failures, window_start, last_failure, last_lock_ms, locked_until,
                      pending, pending_at, trusted_at";

impl Store {
    /// A name's secret hash and the records of `source` and of the name, in
    /// one round trip.
    pub async fn owner_state(&self, name: &str, source: &str) -> Result<OwnerState, StoreError> {
        // Asked before every hello: prepared once per connection, one round
        // trip each time after that.
        static OWNER_STATE: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT now(), (SELECT secret_hash FROM waifu_secrets WHERE name = $1),
                        a.source, {RECORD}
                 FROM (SELECT 1) one
                 LEFT JOIN attempts a ON a.name = $1 AND a.source IN ('', $2)"
            )
        });
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(&OWNER_STATE).await?;
        let rows = client.query(&statement, &[&name, &source]).await?;
        let first = rows.first().ok_or_else(|| StoreError::Corrupt {
            what: "the ownership query returned no row".into(),
        })?;
        let now: SystemTime = first.get(0);
        let mut state = OwnerState {
            secret_hash: first.get(1),
            attempts: Attempts {
                source: FailureRecord::empty(now),
                name: FailureRecord::empty(now),
                now,
            },
            source_known: false,
        };
        for row in &rows {
            match row.get::<_, Option<&str>>(2) {
                Some("") => state.attempts.name = record(row, 3),
                Some(_) => {
                    state.attempts.source = record(row, 3);
                    state.source_known = true;
                }
                None => {}
            }
        }
        Ok(state)
    }

    /// Changes the attempts of `source` on `name` as `change` says, with the
    /// incident it makes, in one transaction holding both rows locked, so
    /// calls on every orchestrator at once each see the others' changes.
    /// Returns what `change` said to tell the caller.
    pub async fn change_attempts<T>(
        &self,
        name: &str,
        source: &str,
        change: impl FnOnce(Attempts) -> AttemptsChange<T>,
        webhook: bool,
    ) -> Result<(T, Option<NewIncident>), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Inserted if absent and locked either way (DO UPDATE locks the row
        // and returns its latest version); '' sorts first, so every caller
        // locks in one order.
        let rows = tx
            .query(
                &format!(
                    "INSERT INTO attempts (name, source) VALUES ($1, ''), ($1, $2)
                     ON CONFLICT (name, source) DO UPDATE SET name = attempts.name
                     RETURNING now(), source, {RECORD}"
                ),
                &[&name, &source],
            )
            .await?;
        let mut now = SystemTime::UNIX_EPOCH;
        let (mut source_rec, mut name_rec) = (None, None);
        for row in &rows {
            now = row.get(0);
            match row.get::<_, &str>(1) {
                "" => name_rec = Some(record(row, 2)),
                _ => source_rec = Some(record(row, 2)),
            }
        }
        let (Some(source_rec), Some(name_rec)) = (source_rec, name_rec) else {
            return Err(StoreError::Corrupt {
                what: format!("the attempts of {name:?} from {source:?} are missing"),
            });
        };
        let changed = change(Attempts {
            source: source_rec,
            name: name_rec,
            now,
        });
        for (who, r) in [(source, &changed.source), ("", &changed.name)] {
            tx.execute(
                "UPDATE attempts SET failures = $3, window_start = $4, last_failure = $5,
                                     last_lock_ms = $6, locked_until = $7, pending = $8,
                                     pending_at = $9, trusted_at = $10
                 WHERE name = $1 AND source = $2",
                &[
                    &name,
                    &who,
                    &count(r.failures),
                    &r.window_start,
                    &r.last_failure,
                    &millis(r.last_lock),
                    &r.locked_until,
                    &count(r.pending),
                    &r.pending_at,
                    &r.trusted_at,
                ],
            )
            .await?;
        }
        if let Some(incident) = &changed.incident {
            incidents::insert(&tx, incident, webhook).await?;
        }
        tx.commit().await?;
        Ok((changed.outcome, changed.incident))
    }

    /// Stores an incident on its own; committed when this returns.
    pub async fn insert_incident(
        &self,
        incident: &NewIncident,
        webhook: bool,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        incidents::insert(&client, incident, webhook).await
    }

    /// Forgets attempts nobody needs any more: no failure within `memory`,
    /// no reservation, no trust within `trusted_for`. Returns how many.
    pub async fn prune_attempts(
        &self,
        memory: Duration,
        trusted_for: Duration,
    ) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                "DELETE FROM attempts
                 WHERE last_failure < now() - $1 * interval '1 second'
                   AND coalesce(locked_until < now(), true)
                   AND (pending = 0 OR pending_at < now() - interval '1 minute')
                   AND coalesce(trusted_at < now() - $2 * interval '1 second', true)",
                &[&memory.as_secs_f64(), &trusted_for.as_secs_f64()],
            )
            .await?)
    }

    /// Claims `name` for the secret `hash` stands for, unless it is claimed
    /// already; the claim is audited in the same transaction, and when
    /// instances registered without a secret serve the name, a
    /// `name_claimed` incident lists them (the claim may be someone else's
    /// than theirs).
    pub async fn claim(
        &self,
        name: &str,
        hash: &str,
        source: &str,
        via: &str,
        webhook: bool,
    ) -> Result<Claim, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let claimed = tx
            .query_opt(
                "INSERT INTO waifu_secrets (name, secret_hash) VALUES ($1, $2)
                 ON CONFLICT (name) DO NOTHING
                 RETURNING (SELECT string_agg(host, ', ' ORDER BY host) FROM instances
                            WHERE name = $1 AND goodbye_at IS NULL)",
                &[&name, &hash],
            )
            .await?;
        let Some(claimed) = claimed else {
            let row = tx
                .query_one(
                    "SELECT secret_hash FROM waifu_secrets WHERE name = $1",
                    &[&name],
                )
                .await?;
            return Ok(Claim::Taken(row.get(0)));
        };
        let detail = format!("the name is claimed by the secret of its first {via}");
        audit::append(&tx, "secret_claimed", name, source, &detail).await?;
        let serving: Option<String> = claimed.get(0);
        let incident = serving.map(|instances| NewIncident {
            kind: "name_claimed",
            name: name.to_owned(),
            source: source.to_owned(),
            detail: format!(
                "the name was claimed by a {via} from {source} while instances registered \
                 without a secret serve it ({instances}); hellos without the secret are \
                 refused from now on. If the claim is not their owner's, release it: \
                 orchestrator claim release {name}"
            ),
        });
        if let Some(incident) = &incident {
            incidents::insert(&tx, incident, webhook).await?;
        }
        tx.commit().await?;
        Ok(Claim::Claimed(incident))
    }

    /// Frees a claimed name (an operator's act): its secret is forgotten,
    /// with an audit row and a `claim_released` incident, and the database
    /// it may have is marked to take a new password from the next secret
    /// it is asked with. Returns whether it was claimed.
    pub async fn release_claim(
        &self,
        name: &str,
        source: &str,
        webhook: bool,
    ) -> Result<Option<NewIncident>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let released = tx
            .execute("DELETE FROM waifu_secrets WHERE name = $1", &[&name])
            .await?;
        if released == 0 {
            return Ok(None);
        }
        // A key id no key has: the next database call derives the password
        // from the new secret and sets it on the role.
        tx.execute("UPDATE databases SET key_id = '' WHERE name = $1", &[&name])
            .await?;
        let detail = "the claim was released by an operator: the next hello or database call \
                      with a secret claims the name again";
        audit::append(&tx, "claim_released", name, source, detail).await?;
        tx.execute("DELETE FROM attempts WHERE name = $1", &[&name])
            .await?;
        let incident = NewIncident {
            kind: "claim_released",
            name: name.to_owned(),
            source: source.to_owned(),
            detail: detail.to_owned(),
        };
        incidents::insert(&tx, &incident, webhook).await?;
        tx.commit().await?;
        Ok(Some(incident))
    }
}

/// What came of a claim.
#[derive(Debug)]
pub enum Claim {
    /// This call claimed the name; the `name_claimed` incident it stored,
    /// if instances without a secret were serving it.
    Claimed(Option<NewIncident>),
    /// Another call claimed it first: its hash.
    Taken(String),
}
