//! What the operator sees of waifu databases, and dropping one.

use postgres_protocol::escape::escape_identifier;
use serde::Serialize;

use super::error::DataError;
use super::restore::{copy_marker, drop_database, end_sessions};
use super::server::Data;
use crate::provision::{NameLock, identifier};

/// One waifu database, as `orchestrator db list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseInfo {
    pub name: String,
    pub database: String,
    /// `ready`, `provisioning`, or `missing` (a row without a database).
    pub state: String,
    pub size_bytes: Option<i64>,
    pub connections: i64,
    /// Kept copies (`…_before_…`), newest first.
    pub copies: Vec<String>,
    /// The newest scheduled backup: its time and outcome.
    pub last_backup: Option<String>,
    /// When the newest verified backup was checked.
    pub last_verified: Option<String>,
}

impl Data {
    /// Every waifu database with its size, its sessions and its kept copies.
    pub(crate) async fn list(&self) -> Result<Vec<DatabaseInfo>, DataError> {
        let admin = self.connect(self.state_database()).await?;
        let rows = admin
            .query("SELECT name, state FROM databases ORDER BY name", &[])
            .await?;
        let summary = self.store.backup_summary().await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.get(0);
            let database = identifier(&name);
            let live = admin
                .query_opt(
                    "SELECT pg_database_size(oid),
                            (SELECT count(*) FROM pg_stat_activity WHERE datname = $1)
                     FROM pg_database WHERE datname = $1",
                    &[&database],
                )
                .await?;
            let copies = admin
                .query(
                    "SELECT datname FROM pg_database
                     WHERE shobj_description(oid, 'pg_database') = $1 ORDER BY datname DESC",
                    &[&copy_marker(&name)],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let backups = summary.iter().find(|(n, _, _)| *n == row.get::<_, &str>(0));
            out.push(DatabaseInfo {
                last_backup: backups.and_then(|b| b.1.clone()),
                last_verified: backups.and_then(|b| b.2.clone()),
                state: match &live {
                    Some(_) => row.get(1),
                    None => "missing".to_owned(),
                },
                size_bytes: live.as_ref().map(|r| r.get(0)),
                connections: live.as_ref().map_or(0, |r| r.get(1)),
                name,
                database,
                copies,
            });
        }
        Ok(out)
    }

    /// Drops `name`'s database, its kept copies, its role and its stored
    /// secret (the name is free to be claimed again); refused while the
    /// waifu has instances. Backup files stay. One audit row.
    pub(crate) async fn drop_waifu_data(&self, name: &str, source: &str) -> Result<(), DataError> {
        let lock = NameLock::acquire(&self.store, name).await?;
        let result = async {
            let admin = self.connect(self.state_database()).await?;
            let instances: i64 = admin
                .query_one("SELECT count(*) FROM instances WHERE name = $1", &[&name])
                .await?
                .get(0);
            if instances > 0 {
                return Err(DataError::HasInstances {
                    name: name.to_owned(),
                    count: instances,
                });
            }
            let database = identifier(name);
            let known = admin
                .query_opt("SELECT 1 FROM databases WHERE name = $1", &[&name])
                .await?
                .is_some();
            let exists = admin
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
                .await?
                .is_some();
            if !known && !exists {
                return Err(DataError::NoDatabase {
                    name: name.to_owned(),
                });
            }
            if exists {
                admin
                    .batch_execute(&format!(
                        "ALTER DATABASE {} ALLOW_CONNECTIONS false",
                        escape_identifier(&database)
                    ))
                    .await?;
                end_sessions(&admin, &database).await?;
                drop_database(&admin, &database).await?;
            }
            let copies: Vec<String> = admin
                .query(
                    "SELECT datname FROM pg_database WHERE shobj_description(oid, 'pg_database') = $1",
                    &[&copy_marker(name)],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for copy in &copies {
                drop_database(&admin, copy).await?;
            }
            admin
                .batch_execute(&format!("DROP ROLE IF EXISTS {}", escape_identifier(&database)))
                .await?;
            admin
                .execute(
                    "WITH d AS (DELETE FROM databases WHERE name = $1),
                          s AS (DELETE FROM waifu_secrets WHERE name = $1)
                     DELETE FROM attempts WHERE name = $1",
                    &[&name],
                )
                .await?;
            let detail = format!(
                "database {database}, {} kept cop{}, the role and the stored secret dropped",
                copies.len(),
                if copies.len() == 1 { "y" } else { "ies" }
            );
            self.store
                .record_audit(name, "database_dropped", source, &detail)
                .await?;
            Ok(())
        }
        .await;
        lock.release().await?;
        result
    }
}
