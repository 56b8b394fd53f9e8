//! Restoring a dump: into a fresh database of the waifu's role, checked,
//! then swapped in; the old one kept aside.

use std::ffi::OsStr;
use std::path::Path;

use postgres_protocol::escape::{escape_identifier, escape_literal};

use super::error::DataError;
use super::figures::{self, Figures};
use super::server::{Data, TOOL_LIMIT, copy_name};
use crate::provision::sql::marker;
use crate::provision::{NameLock, identifier};
use crate::store::switches::{StoredSwitch, SwitchMode};

/// A restore done.
#[derive(Debug, Clone)]
pub(crate) struct Restored {
    /// What the restored database holds.
    pub figures: Figures,
    /// The previous database, kept closed under this name; `None` when
    /// there was none (a first restore on a new machine).
    pub before: Option<String>,
}

/// The comment that marks a kept copy of `name`'s database.
pub(crate) fn copy_marker(name: &str) -> String {
    format!("waifus:{name}:before")
}

impl Data {
    /// Restores `file` into `name`'s database, checked against `expected`
    /// when given, under the name's lock (no provisioning meanwhile); an
    /// audit row from `source`.
    ///
    /// For the swap, the waifu is paused on every orchestrator (unless an
    /// operator paused it or put it in maintenance already): its new
    /// requests wait, each at most `max_wait`; the swap waits until every
    /// live orchestrator says nothing is in flight to the waifu from it (at
    /// most `max_wait` too), and the waifu is resumed right after.
    pub(crate) async fn restore(
        &self,
        name: &str,
        file: &Path,
        expected: Option<&Figures>,
        max_wait: std::time::Duration,
        source: &str,
    ) -> Result<Restored, DataError> {
        std::fs::File::open(file).map_err(|source| DataError::Io {
            what: "open",
            path: file.to_owned(),
            source,
        })?;
        let lock = NameLock::acquire(&self.store, name).await?;
        let result = self
            .restore_locked(name, file, expected, max_wait, source)
            .await;
        lock.release().await?;
        result
    }

    async fn restore_locked(
        &self,
        name: &str,
        file: &Path,
        expected: Option<&Figures>,
        max_wait: std::time::Duration,
        source: &str,
    ) -> Result<Restored, DataError> {
        let live = identifier(name);
        let admin = self.connect(self.state_database()).await?;
        self.ensure_role(&admin, name).await?;
        let (role, _) = self.act_as(&admin, name).await?;
        let stamp = self.stamp(&admin).await?.to_ascii_lowercase();
        let fresh = copy_name(&live, &format!("_restore_{stamp}"));
        let restored = self
            .restore_fresh(&admin, &fresh, Some(&role), name, file, expected)
            .await;
        let figures = restored?;
        let paused = self.pause_for_swap(name, max_wait, source).await?;
        let swapped = self.swap(&admin, name, &fresh, &stamp).await;
        if paused {
            // Only its own pause: maintenance an operator set meanwhile stays.
            self.store.clear_switch_if(name, "paused", source).await?;
        }
        let before = match swapped {
            Ok(before) => before,
            Err(e) => {
                let _ = drop_database(&admin, &fresh).await;
                return Err(e);
            }
        };
        let detail = match &before {
            Some(copy) => format!(
                "restored from {}; the previous database is kept as {copy}",
                file.display()
            ),
            None => format!(
                "restored from {} (there was no database before)",
                file.display()
            ),
        };
        self.store
            .record_audit(name, "database_restored", source, &detail)
            .await?;
        Ok(Restored { figures, before })
    }

    /// Restores `file` into a new database `fresh` (owned by `owner`, or by
    /// this user), closed to everyone else, and computes its figures,
    /// checked against `expected` when given. `fresh` is dropped again if
    /// anything fails.
    pub(super) async fn restore_fresh(
        &self,
        admin: &tokio_postgres::Client,
        fresh: &str,
        owner: Option<&str>,
        name: &str,
        file: &Path,
        expected: Option<&Figures>,
    ) -> Result<Figures, DataError> {
        let quoted = escape_identifier(fresh);
        let owner_clause = owner
            .map(|o| format!(" OWNER {}", escape_identifier(o)))
            .unwrap_or_default();
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {quoted}{owner_clause} TEMPLATE template0"
            ))
            .await?;
        let restored = async {
            admin
                .batch_execute(&format!(
                    "REVOKE ALL ON DATABASE {quoted} FROM PUBLIC;
                     COMMENT ON DATABASE {quoted} IS {}",
                    escape_literal(&format!("waifus:{name}:restoring"))
                ))
                .await?;
            let role_arg = owner.map(|o| format!("--role={o}"));
            let dbname_arg = format!("--dbname={fresh}");
            let mut args: Vec<&OsStr> = vec![
                OsStr::new(&dbname_arg),
                OsStr::new("--exit-on-error"),
                OsStr::new("--single-transaction"),
                OsStr::new("--no-owner"),
                OsStr::new("--no-privileges"),
            ];
            if let Some(role) = &role_arg {
                args.push(OsStr::new(role));
            }
            args.push(file.as_os_str());
            self.tools
                .run("pg_restore", &args, &self.target(fresh), TOOL_LIMIT)
                .await?;
            let client = self.connect(fresh).await?;
            let got = figures::compute(&client).await?;
            drop(client);
            if let Some(want) = expected {
                let differences = figures::differences(want, &got);
                if !differences.is_empty() {
                    return Err(DataError::Mismatch(differences));
                }
            }
            Ok(got)
        }
        .await;
        if restored.is_err()
            && let Err(dropped) = drop_database(admin, fresh).await
        {
            tracing::warn!(database = %fresh, error = %dropped, "could not drop a failed restore's database");
        }
        restored
    }

    /// Checks a dump: restored into a scratch database (dropped after), it
    /// must give `expected`.
    pub(crate) async fn verify(
        &self,
        name: &str,
        file: &Path,
        expected: &Figures,
    ) -> Result<(), DataError> {
        let admin = self.connect(self.state_database()).await?;
        let stamp = self.stamp(&admin).await?.to_ascii_lowercase();
        let scratch = copy_name(&identifier(name), &format!("_verify_{stamp}"));
        let checked = self
            .restore_fresh(&admin, &scratch, None, name, file, Some(expected))
            .await;
        if checked.is_ok() {
            drop_database(&admin, &scratch).await?;
        }
        checked.map(|_| ())
    }

    /// Pauses `name` for a swap, unless it is paused or in maintenance
    /// already, and waits until every live orchestrator holds its requests
    /// with none in flight (at most `max_wait`). Whether it paused it.
    async fn pause_for_swap(
        &self,
        name: &str,
        max_wait: std::time::Duration,
        source: &str,
    ) -> Result<bool, DataError> {
        let (generation, paused_here) = match self.store.switch(name).await? {
            Some(StoredSwitch {
                mode: SwitchMode::Maintenance { .. },
                ..
            }) => return Ok(false),
            Some(StoredSwitch {
                mode: SwitchMode::Paused { .. },
                generation,
            }) => (generation, false),
            None => {
                let mode = SwitchMode::Paused { max_wait };
                (self.store.set_switch(name, &mode, source).await?, true)
            }
        };
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            let missing = self.store.unacknowledged(name, generation).await?;
            if missing.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    name,
                    orchestrators = ?missing,
                    "not every orchestrator acknowledged the pause in time: swapping anyway"
                );
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        Ok(paused_here)
    }

    /// Puts `fresh` in place of `name`'s live database, whose sessions are
    /// ended; the live one is kept, closed, as `…_before_{stamp}`. The two
    /// renames are one transaction.
    async fn swap(
        &self,
        admin: &tokio_postgres::Client,
        name: &str,
        fresh: &str,
        stamp: &str,
    ) -> Result<Option<String>, DataError> {
        let live = identifier(name);
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&live])
            .await?
            .is_some();
        let (ql, qf) = (escape_identifier(&live), escape_identifier(fresh));
        if !exists {
            admin
                .batch_execute(&format!(
                    "ALTER DATABASE {qf} RENAME TO {ql};
                     COMMENT ON DATABASE {ql} IS {}",
                    escape_literal(&marker(name))
                ))
                .await?;
            self.record_database(admin, name).await?;
            return Ok(None);
        }
        let before = copy_name(&live, &format!("_before_{stamp}"));
        let qb = escape_identifier(&before);
        admin
            .batch_execute(&format!("ALTER DATABASE {ql} ALLOW_CONNECTIONS false"))
            .await?;
        let swapped = async {
            end_sessions(admin, &live).await?;
            admin
                .batch_execute(&format!(
                    "BEGIN;
                     ALTER DATABASE {ql} RENAME TO {qb};
                     ALTER DATABASE {qf} RENAME TO {ql};
                     COMMIT"
                ))
                .await?;
            Ok::<_, DataError>(())
        }
        .await;
        if let Err(e) = swapped {
            let _ = admin.batch_execute("ROLLBACK").await;
            let _ = admin
                .batch_execute(&format!("ALTER DATABASE {ql} ALLOW_CONNECTIONS true"))
                .await;
            return Err(e);
        }
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {ql} ALLOW_CONNECTIONS true;
                 COMMENT ON DATABASE {ql} IS {};
                 COMMENT ON DATABASE {qb} IS {}",
                escape_literal(&marker(name)),
                escape_literal(&copy_marker(name))
            ))
            .await?;
        Ok(Some(before))
    }

    /// The role of `name`, made (without a password) if it does not exist:
    /// a first restore on a new machine. The waifu's next database call
    /// sets its password from its secret.
    async fn ensure_role(
        &self,
        admin: &tokio_postgres::Client,
        name: &str,
    ) -> Result<(), DataError> {
        let role = identifier(name);
        let exists = admin
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
            .await?
            .is_some();
        if !exists {
            let q = escape_identifier(&role);
            admin
                .batch_execute(&format!(
                    "CREATE ROLE {q} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
                     NOBYPASSRLS CONNECTION LIMIT 20 PASSWORD NULL;
                     COMMENT ON ROLE {q} IS {}",
                    escape_literal(&marker(name))
                ))
                .await?;
        }
        Ok(())
    }

    /// A `databases` row for a database made by a restore, not by a
    /// database call: ready, with no password yet (no key has id ''), so
    /// the next call with the waifu's secret sets one.
    async fn record_database(
        &self,
        admin: &tokio_postgres::Client,
        name: &str,
    ) -> Result<(), DataError> {
        admin
            .execute(
                "INSERT INTO databases (name, scram_verifier, key_id, state, ready_at)
                 VALUES ($1, '', '', 'ready', now()) ON CONFLICT (name) DO NOTHING",
                &[&name],
            )
            .await?;
        Ok(())
    }
}

/// Ends every session on `database` (none can start: it is closed) and
/// waits until they are gone.
pub(crate) async fn end_sessions(
    admin: &tokio_postgres::Client,
    database: &str,
) -> Result<(), DataError> {
    for _ in 0..100 {
        let left: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&database],
            )
            .await?
            .get(0);
        if left == 0 {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Drops `database` if it exists, its sessions ended first.
pub(crate) async fn drop_database(
    admin: &tokio_postgres::Client,
    database: &str,
) -> Result<(), DataError> {
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            escape_identifier(database)
        ))
        .await?;
    Ok(())
}
