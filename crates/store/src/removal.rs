//! Instances leaving: deregistration after failed health checks (with the
//! last instance go the waifu and its binds), goodbye and its drain (the
//! waifu stays, answering 503, until it says hello again or is forgotten),
//! each audited in the transaction that makes it.

use std::time::Duration;

use waifus_protocol::Upstream;

use super::error::StoreError;
use super::{CHANGES, Store, audit, history};

/// A goodbye's time as milliseconds, in SQL.
const GOODBYE_MS: &str = "floor(extract(epoch FROM goodbye_at) * 1000)::bigint";

impl Store {
    /// Drops an instance (and, with its last, the waifu and its binds),
    /// audited in the same transaction as coming from `source` because
    /// `why`.
    pub async fn remove_instance(
        &self,
        name: &str,
        instance: &Upstream,
        source: &str,
        why: &str,
    ) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let host = instance.to_string();
        let removed = tx
            .execute(
                "DELETE FROM instances WHERE name = $1 AND host = $2",
                &[&name, &host],
            )
            .await?;
        if removed > 0 {
            let detail = format!("instance {host} removed: {why}");
            audit::append(&tx, "instance_removed", name, source, &detail).await?;
            history::note(&tx, name, Some(&host), "removed", why, self.replica()).await?;
        }
        let last = tx
            .query_opt(
                "SELECT 1 FROM waifus WHERE name = $1
                   AND NOT EXISTS (SELECT 1 FROM instances WHERE name = $1)",
                &[&name],
            )
            .await?
            .is_some();
        if last {
            for row in tx
                .query("DELETE FROM binds WHERE name = $1 RETURNING bind", &[&name])
                .await?
            {
                let bind: String = row.get(0);
                let detail = format!("bind {bind} released: its waifu has no instance left");
                audit::append(&tx, "bind_released", name, source, &detail).await?;
            }
            tx.execute("DELETE FROM waifus WHERE name = $1", &[&name])
                .await?;
            audit::append(
                &tx,
                "waifu_removed",
                name,
                source,
                "its last instance was removed",
            )
            .await?;
        }
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANGES, &self.change(name)])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks an instance as leaving (audited, from `source`); returns its
    /// goodbye's time in Unix milliseconds (the first goodbye's, when it
    /// said one before), or `None` when no such instance is stored.
    pub async fn goodbye(
        &self,
        name: &str,
        instance: &Upstream,
        source: &str,
    ) -> Result<Option<i64>, StoreError> {
        let client = self.pool.get().await?;
        let host = instance.to_string();
        let row = client
            .query_one(
                &format!(
                    "WITH leaving AS (
                       UPDATE instances SET goodbye_at = date_trunc('milliseconds', now())
                       WHERE name = $1 AND host = $2 AND goodbye_at IS NULL
                       RETURNING {GOODBYE_MS} AS ms),
                     audited AS (
                       INSERT INTO audit (action, name, source, detail)
                       SELECT 'goodbye', $1, $3, 'instance ' || $2 || ' said goodbye: draining'
                       FROM leaving),
                     noted AS (
                       INSERT INTO health_history
                         (name, instance, from_state, to_state, reason, origin)
                       SELECT $1, $2, {latest}, 'draining', 'goodbye from ' || $3, $6
                       FROM leaving)
                     SELECT coalesce((SELECT ms FROM leaving),
                                     (SELECT {GOODBYE_MS} FROM instances
                                      WHERE name = $1 AND host = $2)),
                            pg_notify($4, $5)",
                    latest = history::LATEST
                ),
                &[
                    &name,
                    &host,
                    &source,
                    &CHANGES,
                    &self.change(name),
                    &self.replica(),
                ],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Removes an instance that said goodbye at `goodbye_ms` and has
    /// drained (not one that said hello again since); the waifu stays, and
    /// with its last instance gone it is marked empty.
    pub async fn remove_left(
        &self,
        name: &str,
        instance: &Upstream,
        goodbye_ms: i64,
        why: &str,
    ) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let host = instance.to_string();
        let removed = tx
            .execute(
                &format!(
                    "DELETE FROM instances WHERE name = $1 AND host = $2
                       AND goodbye_at IS NOT NULL AND {GOODBYE_MS} = $3"
                ),
                &[&name, &host, &goodbye_ms],
            )
            .await?;
        if removed == 0 {
            return Ok(());
        }
        let detail = format!("instance {host} removed: {why}");
        audit::append(&tx, "instance_removed", name, "orchestrator", &detail).await?;
        history::note(&tx, name, Some(&host), "removed", why, self.replica()).await?;
        tx.execute(
            "UPDATE waifus SET empty_since = now() WHERE name = $1 AND empty_since IS NULL
               AND NOT EXISTS (SELECT 1 FROM instances WHERE name = $1)",
            &[&name],
        )
        .await?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANGES, &self.change(name)])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets waifus without an instance for `after` (their last one said
    /// goodbye and none came back), with their binds; returns their names.
    pub async fn forget_empty(&self, after: Duration) -> Result<Vec<String>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let millis = after.as_secs_f64() * 1000.0;
        let names: Vec<String> = tx
            .query(
                "SELECT name FROM waifus w
                 WHERE empty_since < now() - $1 * interval '1 millisecond'
                   AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.name = w.name)
                 ORDER BY name FOR UPDATE SKIP LOCKED",
                &[&millis],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let why = format!(
            "no instance for {} after the last one said goodbye",
            humantime::format_duration(after)
        );
        for name in &names {
            for row in tx
                .query("DELETE FROM binds WHERE name = $1 RETURNING bind", &[name])
                .await?
            {
                let bind: String = row.get(0);
                let detail = format!("bind {bind} released: {why}");
                audit::append(&tx, "bind_released", name, "orchestrator", &detail).await?;
            }
            tx.execute("DELETE FROM waifus WHERE name = $1", &[name])
                .await?;
            audit::append(&tx, "waifu_removed", name, "orchestrator", &why).await?;
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANGES, &self.change(name)])
                .await?;
        }
        tx.commit().await?;
        Ok(names)
    }
}
