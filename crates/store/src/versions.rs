//! Which version of a waifu is current. Versions move forward by
//! themselves: a version never announced before becomes current with the
//! hello that announces it ([`super::Store::hello`]); an older one becomes
//! current again only when an operator says so, here.

use super::error::StoreError;
use super::{CHANGES, Store, audit};

/// What making a version current came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MadeCurrent {
    /// No instance of the waifu ever announced that version.
    Unknown { known: Vec<String> },
    /// It was current already: nothing changed.
    Already,
    /// It is current now; `from` was (`None`: no version).
    Changed { from: Option<String> },
}

/// Makes `version` of `name` current: later than any other version's time
/// (even if the clock went back), its instances' announcement with it.
pub(super) async fn make_newest(
    tx: &tokio_postgres::Transaction<'_>,
    name: &str,
    version: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "WITH at AS (
           SELECT greatest(date_trunc('milliseconds', clock_timestamp()),
                           max(current_at) + interval '1 millisecond') AS t
           FROM waifu_versions WHERE name = $1),
         v AS (
           UPDATE waifu_versions SET current_at = (SELECT t FROM at)
           WHERE name = $1 AND version = $2 RETURNING current_at)
         UPDATE instances SET version_at = (SELECT current_at FROM v)
         WHERE name = $1 AND coalesce(version, '') = $2 AND EXISTS (SELECT 1 FROM v)",
        &[&name, &version],
    )
    .await?;
    Ok(())
}

impl Store {
    /// Makes `version` (one `name`'s instances announced before) its
    /// current version: its instances get every request while one of them
    /// is healthy. Audited as `version_current` from `source`, announced to
    /// the other orchestrators, in one transaction.
    pub async fn make_current(
        &self,
        name: &str,
        version: &str,
        source: &str,
    ) -> Result<MadeCurrent, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Two operators at once: one after the other.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('waifus-version:' || $1, 0))",
            &[&name],
        )
        .await?;
        let rows = tx
            .query(
                "SELECT version FROM waifu_versions WHERE name = $1 ORDER BY current_at DESC",
                &[&name],
            )
            .await?;
        let known: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        if !known.iter().any(|v| v == version) {
            let known = known.into_iter().filter(|v| !v.is_empty()).collect();
            return Ok(MadeCurrent::Unknown { known });
        }
        if known.first().map(String::as_str) == Some(version) {
            return Ok(MadeCurrent::Already);
        }
        let from = known.first().filter(|v| !v.is_empty()).cloned();
        make_newest(&tx, name, version).await?;
        let detail = format!(
            "from {} to {version}: made current by an operator",
            from.as_deref().unwrap_or("no version")
        );
        audit::append(&tx, "version_current", name, source, &detail).await?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANGES, &self.change(name)])
            .await?;
        tx.commit().await?;
        Ok(MadeCurrent::Changed { from })
    }
}
