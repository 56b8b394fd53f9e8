//! Incidents in the state database, and the outbox their webhook deliveries
//! go through.
//!
//! An incident is one row; with a webhook configured, the same transaction
//! adds an outbox row, so a delivery is never lost between the two. The
//! deliverer claims due rows (`FOR UPDATE SKIP LOCKED`, then pushed forward
//! while it sends), so two orchestrators never send one row at once, and a
//! crash in the middle only means one more delivery: at least once.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use waifus_protocol::IncidentInfo;

use super::Store;
use super::error::StoreError;

/// An incident about to be stored.
#[derive(Debug, Clone)]
pub struct NewIncident {
    pub kind: &'static str,
    pub name: String,
    /// The client address it came from.
    pub source: String,
    /// One human sentence; never a secret.
    pub detail: String,
}

/// An incident whose webhook delivery is due.
#[derive(Debug)]
pub struct Due {
    pub id: i64,
    pub incident: IncidentInfo,
    /// Attempts made before this one.
    pub attempts: i32,
    /// How long ago it happened.
    pub age: Duration,
}

/// How long a claimed delivery is hidden from other deliverers.
const CLAIM_FOR: &str = "60 seconds";

/// The incident's columns as `IncidentInfo`, in one `SELECT` list.
const COLUMNS: &str = "to_char(i.time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                       i.kind, i.name, i.source, i.detail, i.delivered_at IS NOT NULL";

fn info(row: &tokio_postgres::Row, at: usize) -> IncidentInfo {
    IncidentInfo {
        time: row.get(at),
        kind: row.get(at + 1),
        name: row.get(at + 2),
        source: row.get(at + 3),
        detail: row.get(at + 4),
        delivered: row.get(at + 5),
    }
}

/// Stores an incident (and its outbox row when `webhook`) through `client`,
/// which may be a transaction of the caller's.
pub(super) async fn insert(
    client: &impl GenericClient,
    incident: &NewIncident,
    webhook: bool,
) -> Result<(), StoreError> {
    client
        .execute(
            "WITH incident AS (
               INSERT INTO incidents (time, kind, name, source, detail)
               VALUES (now(), $1, $2, $3, $4) RETURNING id)
             INSERT INTO webhook_outbox (incident_id)
             SELECT id FROM incident WHERE $5",
            &[
                &incident.kind,
                &incident.name,
                &incident.source,
                &incident.detail,
                &webhook,
            ],
        )
        .await?;
    Ok(())
}

impl Store {
    /// The newest `limit` incidents, newest first.
    pub async fn incidents(&self, limit: i64) -> Result<Vec<IncidentInfo>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM incidents i ORDER BY i.time DESC, i.id DESC LIMIT $1"
                ),
                &[&limit],
            )
            .await?;
        Ok(rows.iter().map(|r| info(r, 0)).collect())
    }

    /// Claims up to `limit` deliveries that are due, oldest first.
    pub async fn due_deliveries(&self, limit: i64) -> Result<Vec<Due>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "WITH due AS (
                       SELECT incident_id FROM webhook_outbox
                       WHERE next_attempt <= now()
                       ORDER BY next_attempt LIMIT $1
                       FOR UPDATE SKIP LOCKED),
                     claimed AS (
                       UPDATE webhook_outbox o SET next_attempt = now() + interval '{CLAIM_FOR}'
                       FROM due WHERE o.incident_id = due.incident_id
                       RETURNING o.incident_id, o.attempts)
                     SELECT c.incident_id, c.attempts,
                            EXTRACT(EPOCH FROM now() - i.time)::float8, {COLUMNS}
                     FROM claimed c JOIN incidents i ON i.id = c.incident_id
                     ORDER BY i.id"
                ),
                &[&limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Due {
                id: r.get(0),
                attempts: r.get(1),
                age: Duration::from_secs_f64(r.get::<_, f64>(2).max(0.0)),
                incident: info(r, 3),
            })
            .collect())
    }

    /// A delivery went through.
    pub async fn delivered(&self, id: i64) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "WITH gone AS (DELETE FROM webhook_outbox WHERE incident_id = $1)
                 UPDATE incidents SET delivered_at = now() WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(())
    }

    /// A delivery failed: tried again after `retry_in`, or never again
    /// (`None`).
    pub async fn delivery_failed(
        &self,
        id: i64,
        retry_in: Option<Duration>,
        error: &str,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        match retry_in {
            Some(wait) => {
                let millis = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                client
                    .execute(
                        "UPDATE webhook_outbox
                         SET attempts = attempts + 1, last_error = $2,
                             next_attempt = now() + $3 * interval '1 millisecond'
                         WHERE incident_id = $1",
                        &[&id, &error, &(millis as f64)],
                    )
                    .await?;
            }
            None => {
                client
                    .execute(
                        "WITH gone AS (DELETE FROM webhook_outbox WHERE incident_id = $1)
                         UPDATE incidents SET given_up_at = now() WHERE id = $1",
                        &[&id],
                    )
                    .await?;
            }
        }
        Ok(())
    }
}
