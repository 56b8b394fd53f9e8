//! The orchestrator's own background jobs: the heartbeat, pruning, the
//! webhook deliveries and scheduled backups, and opening the store.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::Settings;
use crate::data::{self, DataError};
use crate::ops::incidents::{self, Incidents};
use crate::ops::metrics::Metrics;
use crate::store::{self, StoreError};

/// What the jobs share.
#[derive(Debug)]
pub(super) struct Jobs<'a> {
    pub settings: &'a Settings,
    pub store: &'a store::Store,
    pub incidents: &'a Incidents,
    pub metrics: &'a Arc<Metrics>,
    pub leading: &'a watch::Receiver<bool>,
}

impl Jobs<'_> {
    /// Starts every job on `tasks`, until `shutdown`.
    pub(super) fn spawn(
        &self,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<(), DataError> {
        let config = &self.settings.config;
        if let Some(url) = self.settings.webhook.clone() {
            tasks.spawn(incidents::deliver(
                url,
                self.store.clone(),
                self.leading.clone(),
                self.incidents.wake(),
                shutdown.clone(),
            ));
        }
        tasks.spawn(heartbeat(self.store.clone(), shutdown.clone()));
        if let Some(dir) = &config.backup_dir {
            let backups = data::backup::Backups {
                data: data::Data::new(self.store.clone())?,
                settings: data::backup::BackupSettings {
                    dir: dir.clone(),
                    every: config.backup_interval,
                    keep: config.backup_keep as usize,
                },
                incidents: self.incidents.clone(),
                metrics: self.metrics.clone(),
            };
            info!(dir = %dir.display(), every = ?config.backup_interval, keep = config.backup_keep, "scheduled backups on");
            tasks.spawn(backups.run(self.leading.clone(), shutdown.clone()));
        }
        tasks.spawn(prune_audit(
            self.store.clone(),
            Retention {
                audit: config.audit_retention,
                history: config.history_retention,
            },
            self.leading.clone(),
            shutdown.clone(),
        ));
        Ok(())
    }
}

/// Says every [`HEARTBEAT_EVERY`] that this orchestrator is alive (so a
/// pause waits for its acknowledgement), and that it is gone on shutdown.
async fn heartbeat(store: store::Store, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = every.tick() => {
                if let Err(e) = store.heartbeat().await {
                    debug!(error = %e, "heartbeat not stored");
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), store.farewell()).await;
}

/// How often an orchestrator says it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// How long the audit log and the health history are kept.
#[derive(Debug, Clone, Copy)]
struct Retention {
    audit: Duration,
    history: Duration,
}

/// Deletes audit rows and history older than they are kept, and attempt
/// records nobody needs any more, when this orchestrator starts to lead
/// (one does at a time) and hourly while it does, until `shutdown`.
async fn prune_audit(
    store: store::Store,
    keep: Retention,
    mut leading: tokio::sync::watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    loop {
        if !*leading.borrow() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                r = leading.wait_for(|l| *l) => if r.is_err() { return },
            }
        }
        match store.prune_audit(keep.audit).await {
            Ok(0) => {}
            Ok(n) => info!(rows = n, "pruned the audit log"),
            Err(e) => warn!(error = %e, "could not prune the audit log"),
        }
        if let Err(e) = store.prune_rollout_counts().await {
            warn!(error = %e, "could not prune the counts of rollouts over");
        }
        match store.prune_history(keep.history).await {
            Ok(0) => {}
            Ok(n) => info!(rows = n, "pruned the health history"),
            Err(e) => warn!(error = %e, "could not prune the health history"),
        }
        let (memory, trusted_for) = (
            crate::ownership::throttle::MEMORY,
            crate::ownership::throttle::TRUSTED_FOR,
        );
        if let Err(e) = store.prune_attempts(memory, trusted_for).await {
            warn!(error = %e, "could not prune old attempt records");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(60 * 60)) => {}
        }
    }
}

/// Opens the store, retrying while the server is unreachable (it may still be
/// starting); `None` if shutdown came first. A malformed URL fails at once.
pub(super) async fn open_store(
    url: &str,
    shutdown: &CancellationToken,
) -> Result<Option<store::Store>, StoreError> {
    let mut delay = Duration::from_millis(250);
    loop {
        match store::Store::open(url).await {
            Ok(store) => return Ok(Some(store)),
            Err(e @ StoreError::BadUrl(_)) => return Err(e),
            Err(e) => warn!(error = %e, retry_in = ?delay, "PostgreSQL is not available yet"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
