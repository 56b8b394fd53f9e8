//! Creating the state database and applying the embedded SQL migrations.

use tokio_postgres::NoTls;
use tracing::{info, warn};

use postgres_protocol::escape::escape_identifier;

use super::error::StoreError;

/// Database used for state when `DATABASE_URL` names none.
pub(super) const DEFAULT_STATE_DATABASE: &str = "waifus";

/// Migrations in order; a version is its index + 1. Never change what a
/// shipped one does (its comments aside: versions are not checksummed).
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_registry.sql"),
    include_str!("migrations/0002_databases_incidents.sql"),
    include_str!("migrations/0003_acme.sql"),
    include_str!("migrations/0004_ownership_audit.sql"),
    include_str!("migrations/0005_versions_goodbye.sql"),
    include_str!("migrations/0006_hosts_attempts.sql"),
    include_str!("migrations/0007_switches_backups.sql"),
    include_str!("migrations/0008_versions_forward.sql"),
    include_str!("migrations/0009_health_path.sql"),
    include_str!("migrations/0010_limits.sql"),
    include_str!("migrations/0011_acme_challenges.sql"),
    include_str!("migrations/0012_history.sql"),
    include_str!("migrations/0013_rollouts.sql"),
    include_str!("migrations/0014_ticket_keys.sql"),
];

/// Advisory lock key serialising migrations across orchestrators ("waifus01").
const MIGRATION_LOCK: i64 = 0x7761_6966_7573_3031;

/// Creates the state database when it does not exist yet.
pub(super) async fn ensure_database(config: &tokio_postgres::Config) -> Result<(), StoreError> {
    let dbname = config
        .get_dbname()
        .unwrap_or(DEFAULT_STATE_DATABASE)
        .to_owned();
    match connect(config).await {
        Ok(()) => return Ok(()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) => {}
        Err(e) => return Err(e.into()),
    }
    let mut maintenance = config.clone();
    maintenance.dbname("postgres");
    let (client, conn) = maintenance.connect(NoTls).await?;
    let conn = tokio::spawn(conn);
    let created = client
        .batch_execute(&format!("CREATE DATABASE {}", escape_identifier(&dbname)))
        .await;
    drop(client);
    let _ = conn.await;
    match created {
        Ok(()) => info!(database = %dbname, "created the state database"),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {
            warn!(database = %dbname, "state database was created concurrently");
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

async fn connect(config: &tokio_postgres::Config) -> Result<(), tokio_postgres::Error> {
    let (client, conn) = config.connect(NoTls).await?;
    let conn = tokio::spawn(conn);
    drop(client);
    let _ = conn.await;
    Ok(())
}

/// Applies every migration not applied yet, in one transaction, under a lock.
pub(super) async fn run(client: &mut deadpool_postgres::Client) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer PRIMARY KEY,
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
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        if version <= applied {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        info!(version, "applied migration");
    }
    // Waifu roles must not open the orchestrator's own database.
    let dbname: String = tx.query_one("SELECT current_database()", &[]).await?.get(0);
    tx.batch_execute(&format!(
        "REVOKE ALL ON DATABASE {} FROM PUBLIC",
        escape_identifier(&dbname)
    ))
    .await?;
    tx.commit().await?;
    Ok(())
}
