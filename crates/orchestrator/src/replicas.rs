//! Several orchestrators on one PostgreSQL (issue 8).
//!
//! Every write to waifus, instances, binds or health sends a notification on
//! [`CHANGES`] in its own transaction. Each orchestrator keeps one session
//! of its own that `LISTEN`s there and reloads the waifu a notification
//! names (skipping its own writes, which it has applied already); it reloads
//! everything after (re)connecting and every `RESYNC_INTERVAL`, so a missed
//! notification heals.
//!
//! Health checks run on one orchestrator at a time: the one holding a
//! session-level advisory lock on that same session. When it dies its
//! session ends, the lock is free, and another takes it within
//! [`TRY_LOCK_EVERY`]. The others route by the health the leader stores.
//! Without a session (PostgreSQL away) an orchestrator cannot know who
//! leads, so it checks on its own: duplicate checks are harmless, none
//! would not be.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::registry::Registry;
use crate::store::{CHANGES, Store, StoreError};

/// How often a follower tries to take the health-check lock.
const TRY_LOCK_EVERY: Duration = Duration::from_secs(1);
/// The health-check leader's advisory lock key ("waifusHC").
const LEADER_LOCK: i64 = 0x7761_6966_7573_4843;

/// Follows other orchestrators' changes and elects the health-check leader
/// until `shutdown`. `leading` starts true (a lone orchestrator checks from
/// its first second) and follows the lock from the first session on.
pub(crate) async fn follow(
    registry: Arc<Registry>,
    store: Store,
    leading: watch::Sender<bool>,
    resync_every: Duration,
    shutdown: CancellationToken,
) {
    let mut pause = Duration::from_millis(250);
    loop {
        let session = tokio::select! {
            () = shutdown.cancelled() => return,
            r = session(&registry, &store, &leading, resync_every) => r,
        };
        // No session: nobody can be known to lead, so check here too.
        if !*leading.borrow() {
            info!("lost the database session: running health checks here until it is back");
        }
        leading.send_replace(true);
        match session {
            Ok(()) => pause = Duration::from_millis(250),
            Err(e) => warn!(error = %e, retry_in = ?pause, "change notifications interrupted"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// One session: listen, lead if possible, resync; returns when it breaks.
async fn session(
    registry: &Registry,
    store: &Store,
    leading: &watch::Sender<bool>,
    resync_every: Duration,
) -> Result<(), StoreError> {
    let (client, mut connection) = store.session_config().connect(NoTls).await?;
    let (names, mut changed) = mpsc::unbounded_channel::<String>();
    let own = format!("{} ", store.origin());
    // The connection must be polled for notifications to arrive (and for
    // queries on `client` to run).
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    // Our own writes are in memory already.
                    let payload = n.payload();
                    if payload.starts_with(&own) {
                        continue;
                    }
                    let name = payload.split_once(' ').map_or(payload, |(_, name)| name);
                    if names.send(name.to_owned()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    debug!(error = %e, "notification session ended");
                    return;
                }
                None => return,
            }
        }
    });
    let _stop_driver = AbortOnDrop(driver);
    client.batch_execute(&format!("LISTEN {CHANGES}")).await?;
    let try_lock = async || -> Result<bool, StoreError> {
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
            .await?;
        Ok(row.get(0))
    };
    let lead = try_lock().await?;
    if lead != *leading.borrow() {
        info!(
            leading = lead,
            "health checks {}",
            if lead {
                "run here"
            } else {
                "run on another orchestrator"
            }
        );
    }
    leading.send_replace(lead);
    // Listening already: nothing that happens from here on is missed.
    registry.resync_all().await?;
    let mut resync = tokio::time::interval(resync_every);
    resync.tick().await;
    let mut lock_retry = tokio::time::interval(TRY_LOCK_EVERY);
    loop {
        tokio::select! {
            name = changed.recv() => {
                // The session ended when the driver stops sending.
                let Some(name) = name else { return Ok(()) };
                let mut batch = vec![name];
                while let Ok(more) = changed.try_recv() {
                    batch.push(more);
                }
                batch.sort_unstable();
                batch.dedup();
                for name in batch {
                    registry.resync_waifu(&name).await?;
                }
            }
            _ = resync.tick() => registry.resync_all().await?,
            _ = lock_retry.tick(), if !*leading.borrow() => {
                if try_lock().await? {
                    // Health was followed until now: lead from the latest.
                    registry.resync_all().await?;
                    info!("took over health checks");
                    leading.send_replace(true);
                }
            }
        }
    }
}

/// Stops the connection task with its session.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
