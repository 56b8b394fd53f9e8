//! Deregistration: an instance removed, and with its last one the waifu and
//! its binds, audited in the same transaction.

use waifus_protocol::Upstream;

use super::error::StoreError;
use super::{CHANGES, Store, audit};

impl Store {
    /// Drops an instance (and, with its last, the waifu and its binds),
    /// audited in the same transaction as coming from `source` because
    /// `why`.
    pub(crate) async fn remove_instance(
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
}
