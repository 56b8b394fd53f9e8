//! Scheduled backups that are proven to restore.
//!
//! With `BACKUP_DIR`, the orchestrator that runs the health checks (one at
//! a time) dumps every waifu database once per `BACKUP_INTERVAL`, one at a
//! time and spread over the interval (the most overdue first), into
//! `BACKUP_DIR/{name}/{name}-{time}.dump` with the figures of its snapshot
//! beside it (`….figures.json`). Each dump is then checked: restored into a
//! scratch database, its figures computed there and compared, the scratch
//! database dropped. Only a verified backup counts: it advances the
//! metrics, and the newest `BACKUP_KEEP` verified files of each waifu are
//! kept, older ones deleted. A dump that cannot be written is a
//! `backup_failed` incident, one that does not restore to what it was taken
//! from a `backup_unverified` incident (each once, until a backup of that
//! waifu succeeds again), and its file is deleted: a good file is never
//! deleted to make room for a bad one. Dumps run as child processes, so
//! proxying and hellos go on meanwhile.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::error::DataError;
use super::server::Data;
use crate::ops::incidents::{IncidentKind, Incidents};
use crate::ops::metrics::Metrics;

/// `BACKUP_DIR`, `BACKUP_INTERVAL`, `BACKUP_KEEP`.
#[derive(Debug, Clone)]
pub(crate) struct BackupSettings {
    pub dir: PathBuf,
    pub every: Duration,
    pub keep: usize,
}

/// What incidents name as their source.
const SOURCE: &str = "orchestrator (scheduled backup)";

/// The scheduler's parts.
#[derive(Debug)]
pub(crate) struct Backups {
    pub data: Data,
    pub settings: BackupSettings,
    pub incidents: Incidents,
    pub metrics: Arc<Metrics>,
}

impl Backups {
    /// Takes backups while this orchestrator leads, until `shutdown`.
    pub(crate) async fn run(self, mut leading: watch::Receiver<bool>, shutdown: CancellationToken) {
        loop {
            if !*leading.borrow() {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = leading.wait_for(|l| *l) => if r.is_err() { return },
                }
            }
            let wait = match self.next().await {
                Ok(wait) => wait,
                Err(e) => {
                    warn!(error = %e, "the backup schedule could not be read");
                    Duration::from_secs(5).min(self.settings.every)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                _ = leading.changed() => {}
            }
        }
    }

    /// Backs up the most overdue waifu, if one is due; how long until the
    /// next should be looked at.
    async fn next(&self) -> Result<Duration, DataError> {
        let store = self.data.store();
        for (name, at) in store.last_verified().await? {
            self.metrics.backup_verified(&name, at);
        }
        let names: Vec<String> = store
            .databases()
            .await?
            .into_iter()
            .filter(|(_, state)| state == "ready")
            .map(|(name, _)| name)
            .collect();
        // New databases are looked for at least this often.
        let poll = self.settings.every.min(NEW_DATABASES_EVERY);
        if names.is_empty() {
            return Ok(poll);
        }
        let ages: std::collections::HashMap<String, f64> =
            store.backup_ages().await?.into_iter().collect();
        let every = self.settings.every.as_secs_f64();
        // Never backed up: overdue for ever.
        let overdue = |name: &String| ages.get(name).map_or(f64::INFINITY, |age| age - every);
        let most = names
            .iter()
            .max_by(|a, b| overdue(a).total_cmp(&overdue(b)))
            .cloned();
        let spacing = self.settings.every / u32::try_from(names.len()).unwrap_or(u32::MAX).max(1);
        match most {
            Some(name) if overdue(&name) >= 0.0 => {
                self.back_up(&name).await;
                // A database made meanwhile is not left a whole spacing
                // (an interval, with one database) without a backup.
                Ok(spacing.min(poll))
            }
            _ => {
                let soonest = names.iter().map(|n| -overdue(n)).fold(every, f64::min);
                Ok(Duration::from_secs_f64(soonest.max(0.05))
                    .min(spacing.max(Duration::from_millis(50))))
            }
        }
    }

    /// One backup of `name`: taken, checked, recorded; the old ones pruned.
    async fn back_up(&self, name: &str) {
        let store = self.data.store();
        let dir = self.settings.dir.join(name);
        let file = match self.data.stamp_now().await {
            Ok(stamp) => dir.join(format!("{name}-{stamp}.dump")),
            Err(e) => return self.failed(name, None, &e).await,
        };
        let id = match store
            .backup_started(name, &file.display().to_string())
            .await
        {
            Ok(id) => id,
            Err(e) => return warn!(name, error = %e, "a backup could not be recorded"),
        };
        if let Err(e) = create_private_dir(&dir) {
            return self.failed(name, Some(id), &e).await;
        }
        let dumped = match self.data.dump(name, &file).await {
            Ok(dumped) => dumped,
            Err(e) => return self.failed(name, Some(id), &e).await,
        };
        let figures = serde_json::to_string(&dumped.figures).unwrap_or_default();
        let size = i64::try_from(dumped.size).ok();
        if let Err(e) = write_figures(&file, &figures) {
            remove(&file);
            return self.failed(name, Some(id), &e).await;
        }
        match self.data.verify(name, &file, &dumped.figures).await {
            Ok(()) => {
                if let Err(e) = store
                    .backup_ended(id, "verified", size, Some(&figures), None)
                    .await
                {
                    return warn!(name, error = %e, "a verified backup could not be recorded");
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                self.metrics.backup_verified(name, now);
                info!(name, file = %file.display(), size = dumped.size, "backup taken and verified");
                self.prune(name).await;
            }
            Err(e) => {
                remove(&file);
                let detail = format!(
                    "{}: the dump does not restore to what it was taken from: {e}",
                    file.display()
                );
                let _ = store
                    .backup_ended(id, "unverified", size, Some(&figures), Some(&detail))
                    .await;
                self.report(
                    name,
                    id,
                    "unverified",
                    IncidentKind::BackupUnverified,
                    detail,
                )
                .await;
            }
        }
    }

    /// A backup that could not be taken.
    async fn failed(&self, name: &str, id: Option<i64>, e: &DataError) {
        let detail = format!("the backup could not be taken: {e}");
        warn!(name, error = %e, "backup failed");
        let Some(id) = id else {
            // Not even recorded: report it on its own.
            let _ = self
                .incidents
                .record_own(IncidentKind::BackupFailed, name, SOURCE, detail)
                .await;
            return;
        };
        let _ = self
            .data
            .store()
            .backup_ended(id, "failed", None, None, Some(&detail))
            .await;
        self.report(name, id, "failed", IncidentKind::BackupFailed, detail)
            .await;
    }

    /// An incident for a bad backup, unless the one before was bad the
    /// same way (one incident per run of failures).
    async fn report(&self, name: &str, id: i64, outcome: &str, kind: IncidentKind, detail: String) {
        let store = self.data.store();
        let again = store
            .previous_outcome(name, id)
            .await
            .ok()
            .flatten()
            .is_some_and(|previous| previous == outcome);
        if !again && let Err(e) = self.incidents.record_own(kind, name, SOURCE, detail).await {
            warn!(name, error = %e, "a backup incident could not be stored");
        }
    }

    /// Deletes verified backups of `name` beyond the newest `keep`, and
    /// forgets bad ones beyond the newest few.
    async fn prune(&self, name: &str) {
        let store = self.data.store();
        let Ok(rows) = store.backups_of(name).await else {
            return;
        };
        let (good, bad): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.outcome == "verified");
        for old in good.iter().skip(self.settings.keep) {
            remove(&old.file);
            let _ = store.forget_backup(old.id).await;
        }
        for old in bad.iter().filter(|r| r.outcome != "taking").skip(BAD_KEPT) {
            let _ = store.forget_backup(old.id).await;
        }
    }
}

/// How often the scheduler looks for databases that never had a backup.
const NEW_DATABASES_EVERY: Duration = Duration::from_secs(10);

/// Records of failed or unverified backups kept per waifu, for the listing.
const BAD_KEPT: usize = 10;

/// The figures beside a dump: `FILE.figures.json`.
pub(crate) fn figures_file(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".figures.json");
    PathBuf::from(name)
}

fn write_figures(file: &Path, figures: &str) -> Result<(), DataError> {
    let side = figures_file(file);
    let partial = side.with_extension("partial");
    std::fs::write(&partial, figures).map_err(|source| DataError::Io {
        what: "write",
        path: partial.clone(),
        source,
    })?;
    super::dump::persist(&partial, &side).map(|_| ())
}

/// A dump and its figures, gone.
fn remove(file: &Path) {
    let _ = std::fs::remove_file(file);
    let _ = std::fs::remove_file(figures_file(file));
}

fn create_private_dir(dir: &Path) -> Result<(), DataError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what: &'static str| {
        let path = dir.to_owned();
        move |source| DataError::Io { what, path, source }
    };
    std::fs::create_dir_all(dir).map_err(io("create"))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io("set permissions on"))
}
