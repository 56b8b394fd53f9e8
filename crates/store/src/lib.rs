//! Orchestrator state in PostgreSQL: waifus, instances, binds, databases,
//! incidents, certificates.
//!
//! The state lives in the orchestrator's own database, created if missing and
//! migrated under an advisory lock so several orchestrators can start at once.
//! Every connection has bounded connect and statement timeouts, and TCP
//! bounds on unanswered data and silent peers: an unreachable server, or one
//! cut off by a network partition mid-query or while a session idles, turns
//! into a [`StoreError`] within seconds, never a hang.

pub mod acme;
mod audit;
pub mod backups;
mod error;
mod hello;
pub mod history;
pub mod incidents;
mod load;
mod migrate;
pub mod ownership;
mod removal;
pub mod rollouts;
mod switch_row;
pub mod switches;
pub mod tickets;
pub mod versions;

pub use hello::{BindClaim, Granted, HelloRecord};
pub use load::{Pages, RunningRollout, StoredInstance, StoredWaifu};

pub use error::StoreError;

use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use waifus_protocol::Upstream;

/// Bound on connecting and on waiting for a pooled connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on any one statement, set server-side.
const STATEMENT_TIMEOUT_MS: u32 = 4000;
/// Bound on data the server has not acknowledged (`TCP_USER_TIMEOUT`): a
/// partition mid-query breaks the connection instead of leaving the query
/// waiting for the kernel's retransmissions (about 15 minutes).
const UNACKED_TIMEOUT: Duration = Duration::from_secs(6);
/// Keepalive probes on idle connections (the LISTEN session idles): the
/// first after 5 s of silence, then every second, 3 unanswered ones break it.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_RETRIES: u32 = 3;

/// This machine's name (a container's is its id), for [`Store::replica`].
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Handle to the state database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: Pool,
    /// One connection for recording hellos, which the registry takes one
    /// at a time anyway: the hello's large statement is parsed and planned
    /// on one connection instead of on each of the pool's, and again on
    /// one after new statistics (every `ANALYZE` of a table it names costs
    /// the next execution a re-parse of about 4 ms per connection).
    hellos: Pool,
    /// For sessions of their own (LISTEN and the health-check lock).
    config: std::sync::Arc<tokio_postgres::Config>,
    /// This process's tag on its change notifications, so it can skip its
    /// own (it has applied them already).
    origin: std::sync::Arc<str>,
    /// This orchestrator as people tell replicas apart ([`Store::replica`]).
    replica: std::sync::Arc<str>,
}

/// A pool of at most `size` connections made with `config`.
fn pool_of(config: tokio_postgres::Config, size: usize) -> deadpool_postgres::PoolBuilder {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
}

/// The channel every change to waifus, instances, binds or health is
/// announced on, in the transaction that makes it. Payload: `{origin} {name}`,
/// the writing process's [`Store::origin`] and the waifu's name.
pub const CHANGES: &str = "waifus_changes";

impl Store {
    /// Connects, creating the state database if needed, and migrates it.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(StoreError::BadUrl)?;
        if config.get_dbname().is_none() {
            config.dbname(migrate::DEFAULT_STATE_DATABASE);
        }
        // The URL's own (`?application_name=replica-2`) tells replicas
        // apart in `pg_stat_activity`, and in the history and notifications.
        let replica = match config.get_application_name() {
            Some(name) => name.to_owned(),
            None => {
                config.application_name("waifus-orchestrator");
                format!("{}:{}", hostname(), std::process::id())
            }
        };
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .options(format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"))
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES)
            .tcp_user_timeout(UNACKED_TIMEOUT);
        migrate::ensure_database(&config).await?;
        let session_config = std::sync::Arc::new(config.clone());
        let pool = pool_of(config.clone(), 8).build()?;
        let mut client = pool.get().await?;
        migrate::run(&mut client).await?;
        // The hello's statements are prepared as its connection opens, after
        // the migrations (so its tables exist).
        let hellos = pool_of(config, 1)
            .post_create(Hook::async_fn(|client, _| {
                Box::pin(async move {
                    for statement in [hello::UNCHANGED, hello::FIRST, hello::HELLO] {
                        client
                            .prepare_cached(statement)
                            .await
                            .map_err(HookError::Backend)?;
                    }
                    Ok(())
                })
            }))
            .build()?;
        // Opened (and its statement prepared) now, not by the first hello.
        drop(hellos.get().await?);
        Ok(Store {
            pool,
            hellos,
            config: session_config,
            origin: format!("{:016x}", fastrand::u64(..)).into(),
            replica: replica.into(),
        })
    }

    /// This orchestrator as the history and the notifications name it: the
    /// URL's `application_name` when it has one, else `host:pid`.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The tag this process puts on its change notifications.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub(crate) fn change(&self, name: &str) -> String {
        format!("{} {name}", self.origin)
    }

    /// Connection settings for a session outside the pool.
    pub fn session_config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// A dedicated connection, for work that holds session state (locks).
    pub async fn connection(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Every waifu database and its state (`provisioning` or `ready`).
    pub async fn databases(&self) -> Result<Vec<(String, String)>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query("SELECT name, state FROM databases ORDER BY name", &[])
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Remembers an instance's health so a restart routes at once, and a
    /// change of it in the history, `reason` being what the check saw.
    ///
    /// Committed without waiting for the WAL flush: health is re-learned by
    /// the next check, so losing the last change in a crash of PostgreSQL
    /// costs nothing a crash a moment earlier would not, and a hello's first
    /// check no longer adds a second `fsync` to every hello.
    pub async fn set_health(
        &self,
        name: &str,
        instance: &Upstream,
        healthy: bool,
        reason: &str,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                // `set_config(..., true)` lasts until this statement's own
                // transaction commits; it is joined in so that it runs.
                &format!(
                    "WITH changed AS (
                       UPDATE instances SET healthy = $3
                       WHERE name = $1 AND host = $2 AND healthy IS DISTINCT FROM $3
                       RETURNING name),
                     noted AS (
                       INSERT INTO health_history
                         (name, instance, from_state, to_state, reason, origin)
                       SELECT $1, $2, {latest},
                              CASE WHEN $3 THEN 'healthy' ELSE 'unhealthy' END, $6, $7
                       FROM changed),
                     lazily AS (SELECT set_config('synchronous_commit', 'off', true))
                     SELECT pg_notify($4, $5) FROM changed, lazily",
                    latest = history::LATEST
                ),
                &[
                    &name,
                    &instance.to_string(),
                    &healthy,
                    &CHANGES,
                    &self.change(name),
                    &reason,
                    &self.replica(),
                ],
            )
            .await?;
        Ok(())
    }
}
