//! Schema migrations for a waifu's database: an ordered list of SQL
//! scripts, each applied once, in one transaction under an advisory lock,
//! so instances starting together apply each exactly once.

use tracing::{info, warn};

use crate::database::{Database, DatabaseError};
use crate::{Waifu, backoff};

/// Why migrations could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// No connection to the database.
    #[error("could not get a database connection: {0}")]
    Connection(#[from] deadpool_postgres::PoolError),
    /// A statement failed; nothing of this run was kept.
    #[error("migration failed (nothing of this run was applied): {0}")]
    Sql(#[from] tokio_postgres::Error),
    /// The database holds more migrations than this program knows: an
    /// older version started after a newer one migrated.
    #[error("the database is at migration {applied}, this program knows only {known}")]
    Ahead {
        /// The newest migration applied in the database.
        applied: i32,
        /// How many this program has.
        known: usize,
    },
}

impl Database {
    /// Applies the `migrations` not applied yet, in order, recording each
    /// in `schema_migrations` (migration `n` is `migrations[n - 1]`), all
    /// in one transaction that holds an advisory lock: instances that
    /// start together apply each once, and a failure leaves nothing half
    /// done. Never edit or remove a migration that has shipped; add one.
    /// Returns how many were applied now.
    ///
    /// ```no_run
    /// # async fn f(db: waifu::Database) -> Result<(), waifu::MigrateError> {
    /// db.migrate(&["CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL)"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn migrate(&self, migrations: &[&str]) -> Result<usize, MigrateError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // The lock first: two sessions creating the table at once collide
        // even with IF NOT EXISTS. Advisory locks are per database.
        tx.batch_execute(
            "SELECT pg_advisory_xact_lock(hashtext('waifu schema_migrations'));
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version int PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
        let applied: i32 = tx
            .query_one(
                "SELECT COALESCE(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await?
            .get(0);
        let known = migrations.len();
        if usize::try_from(applied).is_ok_and(|a| a > known) {
            return Err(MigrateError::Ahead { applied, known });
        }
        let mut count = 0;
        for (version, sql) in (1..).zip(migrations) {
            if version > applied {
                tx.batch_execute(sql).await?;
                tx.execute(
                    "INSERT INTO schema_migrations (version) VALUES ($1)",
                    &[&version],
                )
                .await?;
                info!(version, "applied migration");
                count += 1;
            }
        }
        tx.commit().await?;
        Ok(count)
    }
}

impl Waifu {
    /// The database, with `migrations` applied ([`Database::migrate`]):
    /// while the orchestrator or PostgreSQL is not ready (or the migration
    /// fails), tries again with [`backoff`]; a missing or wrong secret fails
    /// at once, since waiting cannot fix it.
    pub async fn migrated_database(&self, migrations: &[&str]) -> Result<Database, DatabaseError> {
        let mut attempt = 0;
        loop {
            let failure = match self.database().await {
                Ok(db) => match db.migrate(migrations).await {
                    Ok(_) => return Ok(db),
                    Err(e) => e.to_string(),
                },
                Err(e @ (DatabaseError::NoSecret | DatabaseError::WrongSecret)) => return Err(e),
                Err(e) => e.to_string(),
            };
            let wait = backoff(attempt);
            warn!(error = %failure, retry_in = ?wait, "database not ready");
            attempt = attempt.saturating_add(1);
            tokio::time::sleep(wait).await;
        }
    }
}
