//! The health history, the state of each waifu's outage notifications, and
//! the binds each waifu's latest hello was refused.
//!
//! A history row is written in the statement or transaction that makes the
//! change it records (a hello, a goodbye, a removal, a switch), or with the
//! stored health of an instance; its `from` is the instance's (or the
//! switch's) latest row, so whoever writes it needs to know nothing else.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use waifus_protocol::Transition;

use super::Store;
use super::error::StoreError;
use super::incidents::{self, NewIncident};

/// The latest state recorded for `name`'s instance `$2` (the switch for a
/// NULL one), in SQL: the `from` of the next row. A rollout's rows (no
/// instance, `rollout`) are no state of the switch.
pub(super) const LATEST: &str = "(SELECT h.to_state FROM health_history h
      WHERE h.name = $1 AND h.instance IS NOT DISTINCT FROM $2 AND h.to_state <> 'rollout'
      ORDER BY h.time DESC, h.id DESC LIMIT 1)";

/// Appends one row through `client` (a transaction of the caller's):
/// `instance` (or the switch, for `None`) is now `to`, because `reason`.
pub(super) async fn note(
    client: &impl GenericClient,
    name: &str,
    instance: Option<&str>,
    to: &str,
    reason: &str,
    origin: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            &format!(
                "INSERT INTO health_history (name, instance, from_state, to_state, reason, origin)
                 VALUES ($1, $2, {LATEST}, $3, $4, $5)"
            ),
            &[&name, &instance, &to, &reason, &origin],
        )
        .await?;
    Ok(())
}

/// Appends a rollout's row through `client`: a step, its end or its
/// abort, in words.
pub(super) async fn note_rollout(
    client: &impl GenericClient,
    name: &str,
    reason: &str,
    origin: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO health_history (name, instance, from_state, to_state, reason, origin)
             VALUES ($1, NULL, NULL, 'rollout', $2, $3)",
            &[&name, &reason, &origin],
        )
        .await?;
    Ok(())
}

/// One state a waifu's instance (or its switch) entered, for computing
/// availability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    /// `None`: the waifu's switch.
    pub instance: Option<String>,
    pub state: String,
    /// Unix milliseconds.
    pub at_ms: i64,
}

/// What the notifications last said of a waifu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alert {
    /// Whether it was last said to be up.
    pub up: bool,
    /// Whether it was said to flap, and nothing since.
    pub flapping: bool,
}

impl Alert {
    fn state(self) -> &'static str {
        if self.up { "up" } else { "down" }
    }
}

/// The binds a waifu's latest hello did not get, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusals {
    pub name: String,
    /// (bind as asked, reason)
    pub binds: Vec<(String, String)>,
}

const TIME: &str = "to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";

impl Store {
    /// `name`'s newest `limit` rows at or after `since_ms` (Unix
    /// milliseconds; all kept rows for `None`), newest first.
    pub async fn history(
        &self,
        name: &str,
        since_ms: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Transition>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {TIME}, instance, from_state, to_state, reason, origin
                     FROM health_history
                     WHERE name = $1 AND ($2::bigint IS NULL
                       OR time >= timestamptz 'epoch' + $2::bigint * interval '1 millisecond')
                     ORDER BY time DESC, id DESC LIMIT $3"
                ),
                &[&name, &since_ms, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Transition {
                time: r.get(0),
                instance: r.get(1),
                from: r.get(2),
                to: r.get(3),
                reason: r.get(4),
                origin: r.get(5),
            })
            .collect())
    }

    /// Every state entered at or after `since_ms` by `name`'s instances and
    /// switch (every waifu's for `None`), each instance's and switch's
    /// state at `since_ms` first (stamped `since_ms`), ordered by waifu and
    /// time; and the database's clock now, Unix milliseconds.
    pub async fn steps(
        &self,
        name: Option<&str>,
        since_ms: i64,
    ) -> Result<(Vec<Step>, i64), StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "WITH since AS (
                   SELECT timestamptz 'epoch' + $2::bigint * interval '1 millisecond' AS t),
                 before AS (
                   SELECT DISTINCT ON (name, instance) name, instance, to_state, id
                   FROM health_history
                   WHERE ($1::text IS NULL OR name = $1) AND time < (SELECT t FROM since)
                     AND to_state <> 'rollout'
                   ORDER BY name, instance, time DESC, id DESC),
                 steps AS (
                   SELECT name, instance, to_state, $2::bigint AS ms, 0 AS o, id FROM before
                   WHERE to_state <> 'removed' AND to_state <> 'open'
                   UNION ALL
                   SELECT name, instance, to_state,
                          floor(extract(epoch FROM time) * 1000)::bigint, 1, id
                   FROM health_history
                   WHERE ($1::text IS NULL OR name = $1) AND time >= (SELECT t FROM since)
                     AND to_state <> 'rollout')
                 SELECT name, instance, to_state, ms,
                        floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint
                 FROM steps ORDER BY name, ms, o, id",
                &[&name, &since_ms],
            )
            .await?;
        let now = match rows.first() {
            Some(r) => r.get(4),
            None => client
                .query_one(
                    "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint",
                    &[],
                )
                .await?
                .get(0),
        };
        let steps = rows
            .iter()
            .map(|r| Step {
                name: r.get(0),
                instance: r.get(1),
                state: r.get(2),
                at_ms: r.get(3),
            })
            .collect();
        Ok((steps, now))
    }

    /// Deletes history older than `keep`, and what the notifications said of
    /// waifus gone that long; returns how many history rows went.
    pub async fn prune_history(&self, keep: Duration) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let seconds = keep.as_secs_f64();
        let pruned = client
            .execute(
                "DELETE FROM health_history WHERE time < now() - $1 * interval '1 second'",
                &[&seconds],
            )
            .await?;
        client
            .execute(
                "DELETE FROM waifu_alerts a
                 WHERE changed_at < now() - $1 * interval '1 second'
                   AND NOT EXISTS (SELECT 1 FROM waifus w WHERE w.name = a.name)",
                &[&seconds],
            )
            .await?;
        Ok(pruned)
    }

    /// What the notifications last said of every waifu they spoke of.
    pub async fn alerts(&self) -> Result<Vec<(String, Alert)>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query("SELECT name, state, flapping FROM waifu_alerts", &[])
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let state: &str = r.get(1);
                (
                    r.get(0),
                    Alert {
                        up: state == "up",
                        flapping: r.get(2),
                    },
                )
            })
            .collect())
    }

    /// Moves what the notifications say of `name` from `was` (`None`:
    /// nothing yet) to `now`, with `incident` (and its outbox row when
    /// `webhook`), in one transaction; `false`, and nothing stored, when
    /// the stored state was not `was` (another orchestrator moved it).
    pub async fn alert(
        &self,
        name: &str,
        was: Option<Alert>,
        now: Alert,
        incident: Option<&NewIncident>,
        webhook: bool,
    ) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let moved = match was {
            None => {
                tx.execute(
                    "INSERT INTO waifu_alerts (name, state, flapping) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO NOTHING",
                    &[&name, &now.state(), &now.flapping],
                )
                .await?
            }
            Some(was) => {
                tx.execute(
                    "UPDATE waifu_alerts SET state = $2, flapping = $3, changed_at = now()
                     WHERE name = $1 AND state = $4 AND flapping = $5",
                    &[
                        &name,
                        &now.state(),
                        &now.flapping,
                        &was.state(),
                        &was.flapping,
                    ],
                )
                .await?
            }
        };
        if moved == 0 {
            return Ok(false);
        }
        if let Some(incident) = incident {
            incidents::insert(&tx, incident, webhook).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Every waifu whose latest hello was refused a bind, with the binds.
    pub async fn refusals(&self) -> Result<Vec<Refusals>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT name, binds, reasons FROM hello_refusals
                 WHERE cardinality(binds) > 0 ORDER BY name",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let binds: Vec<String> = r.get(1);
                let reasons: Vec<String> = r.get(2);
                Refusals {
                    name: r.get(0),
                    binds: binds.into_iter().zip(reasons).collect(),
                }
            })
            .collect())
    }
}
