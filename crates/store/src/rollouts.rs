//! Rollouts in the state database: started, stepped, finished or aborted
//! each in one transaction with its audit row, its history row and its
//! change notification (every orchestrator applies the new share when it
//! hears of it); and the counts each orchestrator publishes of what each
//! version answered, which the health leader judges by.

use std::time::Duration;

use super::error::StoreError;
use super::incidents::{self, NewIncident};
use super::versions::make_newest;
use super::{CHANGES, Store, audit, history};

/// A rollout to start.
#[derive(Debug, Clone, Copy)]
pub struct RolloutPlan<'a> {
    /// The version rolled out (`""`: instances that announce none).
    pub version: &'a str,
    /// Percent of new clients at each step, the last 100.
    pub steps: &'a [i32],
    pub interval: Duration,
    pub max_error_rate: f64,
    pub max_latency_ratio: f64,
}

/// A waifu's latest rollout as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRollout {
    pub name: String,
    pub version: String,
    pub stable: String,
    pub steps: Vec<i32>,
    pub step: i32,
    pub interval: Duration,
    pub max_error_rate: f64,
    pub max_latency_ratio: f64,
    /// `running`, `done` or `aborted`.
    pub state: String,
    pub share: i32,
    pub generation: i64,
    /// RFC 3339.
    pub started_at: String,
    /// Unix milliseconds of the current step's start.
    pub step_at_ms: i64,
    pub judged: Option<String>,
    /// The database's clock when read, Unix milliseconds.
    pub now_ms: i64,
}

/// What a version answered, summed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: i64,
    pub failures: i64,
    pub buckets: Vec<i64>,
}

const COLUMNS: &str = "name, version, stable, steps, step, interval_ms, max_error_rate,
    max_latency_ratio, state, share, generation,
    to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
    floor(extract(epoch FROM step_at) * 1000)::bigint, judged,
    floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

fn rollout_of(r: &tokio_postgres::Row) -> StoredRollout {
    StoredRollout {
        name: r.get(0),
        version: r.get(1),
        stable: r.get(2),
        steps: r.get(3),
        step: r.get(4),
        interval: Duration::from_millis(u64::try_from(r.get::<_, i64>(5)).unwrap_or(0)),
        max_error_rate: r.get(6),
        max_latency_ratio: r.get(7),
        state: r.get(8),
        share: r.get(9),
        generation: r.get(10),
        started_at: r.get(11),
        step_at_ms: r.get(12),
        judged: r.get(13),
        now_ms: r.get(14),
    }
}

/// `""` as people read it.
fn named(version: &str) -> &str {
    if version.is_empty() {
        "no version"
    } else {
        version
    }
}

impl Store {
    /// Starts a rollout of `plan.version` for `name` (replacing any earlier
    /// one), from the version current before it, at the first step.
    pub async fn start_rollout(
        &self,
        name: &str,
        plan: &RolloutPlan<'_>,
        source: &str,
    ) -> Result<StoredRollout, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let interval_ms = i64::try_from(plan.interval.as_millis()).unwrap_or(i64::MAX);
        let row = tx
            .query_one(
                &format!(
                    "WITH stable AS (
                       SELECT version FROM waifu_versions WHERE name = $1 AND version <> $2
                       ORDER BY current_at DESC LIMIT 1)
                     INSERT INTO rollouts (name, version, stable, steps, step, interval_ms,
                       max_error_rate, max_latency_ratio, state, share, generation, started_by)
                     VALUES ($1, $2, coalesce((SELECT version FROM stable), ''), $3, 0, $4, $5,
                       $6, 'running', ($3::integer[])[1], nextval('rollout_generation'), $7)
                     ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version,
                       stable = EXCLUDED.stable, steps = EXCLUDED.steps, step = 0,
                       interval_ms = EXCLUDED.interval_ms,
                       max_error_rate = EXCLUDED.max_error_rate,
                       max_latency_ratio = EXCLUDED.max_latency_ratio, state = 'running',
                       share = EXCLUDED.share, generation = EXCLUDED.generation,
                       started_at = now(), step_at = now(), judged = NULL,
                       started_by = EXCLUDED.started_by
                     RETURNING {COLUMNS}"
                ),
                &[
                    &name,
                    &plan.version,
                    &plan.steps,
                    &interval_ms,
                    &plan.max_error_rate,
                    &plan.max_latency_ratio,
                    &source,
                ],
            )
            .await?;
        let rollout = rollout_of(&row);
        let detail = format!(
            "{} rolls out over {}: steps {:?} % every {}",
            named(&rollout.version),
            named(&rollout.stable),
            rollout.steps,
            humantime::format_duration(rollout.interval)
        );
        audit::append(&tx, "rollout_started", name, source, &detail).await?;
        let reason = format!(
            "{} to {} % of new clients (started by {source})",
            named(&rollout.version),
            rollout.share
        );
        history::note_rollout(&tx, name, &reason, self.replica()).await?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANGES, &self.change(name)])
            .await?;
        tx.commit().await?;
        Ok(rollout)
    }

    /// `name`'s latest rollout, running or over.
    pub async fn rollout(&self, name: &str) -> Result<Option<StoredRollout>, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM rollouts WHERE name = $1"),
                &[&name],
            )
            .await?
            .map(|r| rollout_of(&r)))
    }

    /// Every running rollout.
    pub async fn running_rollouts(&self) -> Result<Vec<StoredRollout>, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .query(
                &format!("SELECT {COLUMNS} FROM rollouts WHERE state = 'running' ORDER BY name"),
                &[],
            )
            .await?
            .iter()
            .map(rollout_of)
            .collect())
    }

    /// Moves rollout `generation` of `name` from step `step` to the next
    /// (or, after the last, ends it as done), with `judged` as its figures;
    /// `false` when it was not at that step any more.
    pub async fn step_rollout(
        &self,
        name: &str,
        generation: i64,
        step: i32,
        judged: &str,
    ) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "UPDATE rollouts SET
                   state = CASE WHEN step + 1 >= cardinality(steps) THEN 'done' ELSE 'running' END,
                   step = least(step + 1, cardinality(steps) - 1),
                   share = CASE WHEN step + 1 >= cardinality(steps) THEN 100
                                ELSE steps[step + 2] END,
                   step_at = now(), judged = $4
                 WHERE name = $1 AND generation = $2 AND step = $3 AND state = 'running'
                 RETURNING state, share, version",
                &[&name, &generation, &step, &judged],
            )
            .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let (state, share, version): (String, i32, String) = (row.get(0), row.get(1), row.get(2));
        if state == "done" {
            // The version rolled out is current from now on (it may not
            // have been the newest: a rollout back to an older build).
            make_newest(&tx, name, &version).await?;
        }
        let (action, reason) = if state == "done" {
            (
                "rollout_done",
                format!(
                    "{} takes every request: rolled out ({judged})",
                    named(&version)
                ),
            )
        } else {
            (
                "rollout_step",
                format!("{} to {share} % of new clients ({judged})", named(&version)),
            )
        };
        audit::append(&tx, action, name, "orchestrator", &reason).await?;
        history::note_rollout(&tx, name, &reason, self.replica()).await?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANGES, &self.change(name)])
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Keeps rollout `generation` of `name` at step `step` (too little
    /// traffic to judge), saying so.
    pub async fn keep_rollout_step(
        &self,
        name: &str,
        generation: i64,
        step: i32,
        judged: &str,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE rollouts SET judged = $4
                 WHERE name = $1 AND generation = $2 AND step = $3 AND state = 'running'",
                &[&name, &generation, &step, &judged],
            )
            .await?;
        Ok(())
    }

    /// Aborts `name`'s running rollout (generation `generation`, or any for
    /// `None`): no new client goes to its version, the version it replaced
    /// is current again, with an audit row from `source`, a history row,
    /// and, when `incident` is given, that incident (and its outbox row
    /// when `webhook`); `None` when no such rollout ran.
    pub async fn abort_rollout(
        &self,
        name: &str,
        generation: Option<i64>,
        why: &str,
        source: &str,
        incident: Option<(&NewIncident, bool)>,
    ) -> Result<Option<StoredRollout>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE rollouts SET state = 'aborted', share = 0, step_at = now(), judged = $3
                     WHERE name = $1 AND state = 'running'
                       AND ($2::bigint IS NULL OR generation = $2)
                     RETURNING {COLUMNS}"
                ),
                &[&name, &generation, &why],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let rollout = rollout_of(&row);
        // The version it replaced is current again (later than any other),
        // so the rolled-out version's instances get no new request while
        // one of it is healthy.
        make_newest(&tx, name, &rollout.stable).await?;
        let detail = format!(
            "{} rolled back to {}: {why}",
            named(&rollout.version),
            named(&rollout.stable)
        );
        audit::append(&tx, "rollout_aborted", name, source, &detail).await?;
        history::note_rollout(&tx, name, &detail, self.replica()).await?;
        if let Some((incident, webhook)) = incident {
            incidents::insert(&tx, incident, webhook).await?;
        }
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANGES, &self.change(name)])
            .await?;
        tx.commit().await?;
        Ok(Some(rollout))
    }

    /// This orchestrator's counts of rollout `generation` of `name`, by
    /// version: `(version, requests, failures, buckets)`, cumulative.
    pub async fn publish_counts(
        &self,
        name: &str,
        generation: i64,
        counts: &[(String, Counts)],
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        for (version, c) in counts {
            client
                .execute(
                    "INSERT INTO rollout_counts
                       (name, generation, version, origin, requests, failures, buckets)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (name, generation, version, origin) DO UPDATE
                     SET requests = EXCLUDED.requests, failures = EXCLUDED.failures,
                         buckets = EXCLUDED.buckets, at = now()",
                    &[
                        &name,
                        &generation,
                        version,
                        &self.origin(),
                        &c.requests,
                        &c.failures,
                        &c.buckets,
                    ],
                )
                .await?;
        }
        Ok(())
    }

    /// What each version answered during rollout `generation` of `name`,
    /// summed over every orchestrator, by origin (to take differences).
    pub async fn rollout_counts(
        &self,
        name: &str,
        generation: i64,
    ) -> Result<Vec<(String, String, Counts)>, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .query(
                "SELECT version, origin, requests, failures, buckets FROM rollout_counts
                 WHERE name = $1 AND generation = $2",
                &[&name, &generation],
            )
            .await?
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    Counts {
                        requests: r.get(2),
                        failures: r.get(3),
                        buckets: r.get(4),
                    },
                )
            })
            .collect())
    }

    /// Forgets the counts of rollouts no longer running.
    pub async fn prune_rollout_counts(&self) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                "DELETE FROM rollout_counts c WHERE NOT EXISTS (
                   SELECT 1 FROM rollouts r WHERE r.name = c.name
                     AND r.generation = c.generation AND r.state = 'running')",
                &[],
            )
            .await?)
    }
}
