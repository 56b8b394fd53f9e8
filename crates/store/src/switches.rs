//! Waifus' switches in the state database: set and cleared with their audit
//! row and change notification in one transaction; the acknowledgements of
//! a pause, and the heartbeat that says which orchestrators must give one.

use std::time::Duration;

use super::error::StoreError;
use super::switch_row::{SWITCH_COLUMNS, switch_of};
pub use super::switch_row::{StoredSwitch, SwitchMode};
use super::{CHANGES, Store, audit, history};

/// How long an orchestrator counts as alive after its last heartbeat.
pub const ALIVE_FOR: Duration = Duration::from_secs(10);

impl Store {
    /// Sets `name`'s switch (audited from `source`, announced); returns its
    /// generation.
    pub async fn set_switch(
        &self,
        name: &str,
        mode: &SwitchMode,
        source: &str,
    ) -> Result<i64, StoreError> {
        let (kind, message, retry_after, max_wait, action, detail) = match mode {
            SwitchMode::Paused { max_wait } => (
                "paused",
                None,
                5,
                *max_wait,
                "waifu_paused",
                format!("new requests wait, each at most {} s", max_wait.as_secs()),
            ),
            SwitchMode::Maintenance {
                message,
                retry_after,
            } => (
                "maintenance",
                message.clone(),
                retry_after.as_secs(),
                Duration::ZERO,
                "maintenance_on",
                format!(
                    "new requests are answered 503 (Retry-After: {} s){}",
                    retry_after.as_secs(),
                    message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
            ),
        };
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_one(
                "INSERT INTO switches (name, mode, message, retry_after_s, max_wait_ms, generation, set_by)
                 VALUES ($1, $2, $3, $4, $5, nextval('switch_generation'), $6)
                 ON CONFLICT (name) DO UPDATE SET mode = EXCLUDED.mode, message = EXCLUDED.message,
                   retry_after_s = EXCLUDED.retry_after_s, max_wait_ms = EXCLUDED.max_wait_ms,
                   generation = EXCLUDED.generation, set_at = now(), set_by = EXCLUDED.set_by
                 RETURNING generation",
                &[
                    &name,
                    &kind,
                    &message,
                    &i32::try_from(retry_after).unwrap_or(i32::MAX),
                    &i64::try_from(max_wait.as_millis()).unwrap_or(i64::MAX),
                    &source,
                ],
            )
            .await?;
        audit::append(&tx, action, name, source, &detail).await?;
        let reason = format!("{action} by {source}");
        history::note(&tx, name, None, kind, &reason, self.replica()).await?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANGES, &self.change(name)])
            .await?;
        tx.commit().await?;
        Ok(row.get(0))
    }

    /// Opens `name`'s switch (audited, announced); whether it was set.
    pub async fn clear_switch(&self, name: &str, source: &str) -> Result<bool, StoreError> {
        self.clear_switch_in(name, None, source).await
    }

    /// Opens `name`'s switch only if it is in `mode` (`paused` or
    /// `maintenance`): ending maintenance never releases a restore's pause.
    pub async fn clear_switch_if(
        &self,
        name: &str,
        mode: &str,
        source: &str,
    ) -> Result<bool, StoreError> {
        self.clear_switch_in(name, Some(mode), source).await
    }

    async fn clear_switch_in(
        &self,
        name: &str,
        mode: Option<&str>,
        source: &str,
    ) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let cleared = tx
            .query_opt(
                "DELETE FROM switches WHERE name = $1 AND ($2::text IS NULL OR mode = $2)
                 RETURNING mode",
                &[&name, &mode],
            )
            .await?;
        let Some(row) = cleared else {
            return Ok(false);
        };
        let action = match row.get::<_, &str>(0) {
            "paused" => "waifu_resumed",
            _ => "maintenance_off",
        };
        audit::append(&tx, action, name, source, "new requests go through again").await?;
        let reason = format!("{action} by {source}");
        history::note(&tx, name, None, "open", &reason, self.replica()).await?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANGES, &self.change(name)])
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// `name`'s switch, if set.
    pub async fn switch(&self, name: &str) -> Result<Option<StoredSwitch>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!("SELECT {SWITCH_COLUMNS} FROM switches s WHERE s.name = $1"),
                &[&name],
            )
            .await?;
        Ok(row.and_then(|r| switch_of(&r, 0)))
    }

    /// This orchestrator holds `name`'s new requests (pause `generation`)
    /// and has none in flight to it.
    pub async fn ack_switch(&self, name: &str, generation: i64) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO switch_acks (name, origin, generation) VALUES ($1, $2, $3)
                 ON CONFLICT (name, origin) DO UPDATE SET generation = EXCLUDED.generation, at = now()",
                &[&name, &self.origin(), &generation],
            )
            .await?;
        Ok(())
    }

    /// This orchestrator is alive (every few seconds); rows of the long
    /// dead are forgotten.
    pub async fn heartbeat(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "WITH gone AS (DELETE FROM orchestrators WHERE seen_at < now() - interval '1 day')
                 INSERT INTO orchestrators (origin, seen_at) VALUES ($1, now())
                 ON CONFLICT (origin) DO UPDATE SET seen_at = now()",
                &[&self.origin()],
            )
            .await?;
        Ok(())
    }

    /// This orchestrator stops: it need not acknowledge anything any more.
    pub async fn farewell(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "DELETE FROM orchestrators WHERE origin = $1",
                &[&self.origin()],
            )
            .await?;
        Ok(())
    }

    /// The orchestrators alive that have not acknowledged pause
    /// `generation` of `name` yet (none when no waifu of that name is
    /// registered: nothing can be in flight to it).
    pub async fn unacknowledged(
        &self,
        name: &str,
        generation: i64,
    ) -> Result<Vec<String>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT o.origin FROM orchestrators o
                 WHERE o.seen_at > now() - $3 * interval '1 millisecond'
                   -- a waifu nobody routes has nothing in flight anywhere
                   AND EXISTS (SELECT 1 FROM waifus w WHERE w.name = $1)
                   AND NOT EXISTS (SELECT 1 FROM switch_acks a WHERE a.name = $1
                                   AND a.origin = o.origin AND a.generation >= $2)
                 ORDER BY 1",
                &[&name, &generation, &(ALIVE_FOR.as_millis() as f64)],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
