//! The audit log: one appended row per change of routing or data state.
//!
//! Rows are written in the transaction (or the statement) that makes the
//! change, so the log never claims a change that did not happen, nor misses
//! one that did. Nothing here updates a row; only the retention pruner
//! deletes, and only rows older than `AUDIT_RETENTION`.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use waifus_protocol::AuditEntry;

use super::Store;
use super::error::StoreError;

/// Appends one row through `client` (a transaction of the caller's).
pub(super) async fn append(
    client: &impl GenericClient,
    action: &str,
    name: &str,
    source: &str,
    detail: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO audit (action, name, source, detail) VALUES ($1, $2, $3, $4)",
            &[&action, &name, &source, &detail],
        )
        .await?;
    Ok(())
}

impl Store {
    /// Appends one row on its own (a change made outside the state
    /// database, such as a restore).
    pub async fn record_audit(
        &self,
        name: &str,
        action: &str,
        source: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        append(&client, action, name, source, detail).await
    }

    /// The newest `limit` rows, newest first, of one waifu or of all.
    pub async fn audit(
        &self,
        name: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                        action, name, source, detail
                 FROM audit WHERE $1::text IS NULL OR name = $1
                 ORDER BY id DESC LIMIT $2",
                &[&name, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                time: r.get(0),
                action: r.get(1),
                name: r.get(2),
                source: r.get(3),
                detail: r.get(4),
            })
            .collect())
    }

    /// Deletes rows older than `keep`; returns how many.
    pub async fn prune_audit(&self, keep: Duration) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let seconds = keep.as_secs_f64();
        Ok(client
            .execute(
                "DELETE FROM audit WHERE time < now() - $1 * interval '1 second'",
                &[&seconds],
            )
            .await?)
    }
}
