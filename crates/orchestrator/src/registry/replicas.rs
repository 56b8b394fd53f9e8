//! Several orchestrators on one PostgreSQL.
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

use std::collections::HashSet;

use waifus_protocol::BindKey;

use super::{Entry, Registry, State};
use crate::routing::Instance;
use crate::store::{CHANGES, Store, StoreError};
use crate::store::{StoredInstance, StoredWaifu};

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

/// Waifus read from the store at a time, on a resync and at start.
pub(super) const PAGE: usize = 512;

/// Waifus a resync brings in line per hold of the state lock.
const HOLD: usize = 64;

/// Stops the connection task with its session.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Following the store: what another orchestrator (or a missed
/// notification) changed is brought into memory here.
impl Registry {
    /// Brings every waifu in memory in line with the store (another
    /// orchestrator may have changed them, or a notification was missed).
    /// The store is read a page at a time ([`PAGE`] waifus), without the
    /// state lock, so hellos are not held up and only a page is in memory
    /// at once; waifus changed here since the read began are left as they
    /// are. The table is published only if something differed.
    pub(crate) async fn resync_all(&self) -> Result<(), StoreError> {
        let since = self.seq.load(std::sync::atomic::Ordering::SeqCst);
        let fresh = |state: &State, name: &str| state.touched.get(name).is_some_and(|s| *s > since);
        // The names the store holds, as the registry's own shared names
        // (no string is copied).
        let mut stored_names: HashSet<Arc<str>> =
            HashSet::with_capacity(self.state.lock().await.waifus.len());
        let mut changed = false;
        let mut pages = self.store.pages(PAGE);
        while let Some(page) = pages.next().await? {
            // The state lock is held for a few dozen waifus at a time, so
            // a hello arriving meanwhile waits for those, not for a page.
            let mut page = page.into_iter().peekable();
            while page.peek().is_some() {
                let mut state = self.state.lock().await;
                for waifu in page.by_ref().take(HOLD) {
                    let name = state.shared_name(&waifu.name);
                    if !fresh(&state, &name) {
                        changed |= self.apply_stored(&mut state, &name, Some(waifu));
                    }
                    stored_names.insert(name);
                }
                drop(state);
                tokio::task::yield_now().await;
            }
        }
        // The names in memory are copied (pointers) under the lock and
        // looked up in the store's outside it.
        let known: Vec<Arc<str>> = self.state.lock().await.waifus.keys().cloned().collect();
        let gone: Vec<Arc<str>> = known
            .into_iter()
            .filter(|n| !stored_names.contains(&**n))
            .collect();
        drop(stored_names);
        let mut state = self.state.lock().await;
        for name in gone {
            if !fresh(&state, &name) {
                changed |= self.apply_stored(&mut state, &name, None);
            }
        }
        state.touched.retain(|_, seq| *seq > since);
        // After thousands of hellos the map would keep their room for good.
        state.touched.shrink_to_fit();
        if changed {
            self.publish(&state);
        }
        Ok(())
    }

    /// Brings one waifu in line with the store (after a change notification).
    /// Read under the state lock: nothing of this process falls in between.
    pub(crate) async fn resync_waifu(&self, name: &str) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        let stored = self.store.load_waifu(name).await?;
        let old_hosts = state.waifus.get(name).map_or_else(Vec::new, |e| {
            e.binds.iter().map(|(key, _)| key.host.clone()).collect()
        });
        let changed = self.apply_stored(&mut state, name, stored);
        self.touch(&mut state, name);
        if changed {
            self.publish_waifu(&state, name, old_hosts.iter().map(String::as_str));
        }
        Ok(())
    }

    /// Makes one waifu in memory what the store says; returns whether
    /// anything differed. Instances keep their identity (connections,
    /// counters) while their address, version and its announcement are the
    /// same; their health is taken from the store unless this process runs
    /// the checks; a goodbye stored by another orchestrator starts their
    /// drain here too.
    fn apply_stored(&self, state: &mut State, name: &str, stored: Option<StoredWaifu>) -> bool {
        let Some(stored) = stored else {
            let Some(entry) = state.waifus.remove(name) else {
                return false;
            };
            for instance in entry.instances() {
                instance.retire();
            }
            return true;
        };
        let leading = *self.leading.borrow();
        let mut changed = !state.waifus.contains_key(name);
        let shared_name = state.shared_name(name);
        let entry = state
            .waifus
            .entry(shared_name.clone())
            .or_insert_with(|| Entry::new(&shared_name, Vec::new(), Vec::new()));
        let same = |i: &Instance, s: &StoredInstance| {
            i.upstream == s.upstream && i.version() == s.version.as_deref()
        };
        let mut instances_changed = false;
        let mut instances = entry.instances().to_vec();
        instances.retain(|i| {
            let keep = stored.instances.iter().any(|s| same(i, s));
            if !keep {
                i.retire();
                // Removed elsewhere (it drained there first): requests in
                // flight to it here still count for a goodbye that waits.
                self.note_left(&shared_name, i);
                instances_changed = true;
            }
            keep
        });
        for s in &stored.instances {
            match instances.iter().find(|i| same(i, s)) {
                Some(instance) => {
                    // An operator made another version current.
                    if instance.set_version_at(s.version_at_ms) {
                        instances_changed = true;
                    }
                    if let Some(ms) = s.goodbye_ms {
                        if instance.leave(ms) {
                            self.drain(&shared_name, instance, ms);
                            instances_changed = true;
                        }
                    } else if !leading && instance.is_healthy() != s.healthy {
                        instance.set_healthy(s.healthy);
                        // Routing reads the flag itself: nothing to publish.
                    } else if leading && s.healthy && !instance.is_healthy() {
                        // Another orchestrator found it healthy (a hello
                        // after a restart, checked there): see for ourselves
                        // now rather than at the next interval.
                        let _ = self
                            .watch
                            .send(super::health::Ask::Recheck(instance.clone()));
                    }
                }
                None => {
                    instances.push(self.adopt(&shared_name, s));
                    instances_changed = true;
                }
            }
        }
        // Most often the same binds in the same order: no copy to compare.
        if entry.binds != stored.binds && sorted_binds(&entry.binds) != sorted_binds(&stored.binds)
        {
            entry.binds = stored.binds;
            changed = true;
        }
        if instances_changed {
            entry.set_instances(instances);
            changed = true;
        }
        changed |= self.apply_rollout(name, entry, stored.rollout.as_ref());
        // The switch lives in the route: nothing to publish.
        self.apply_switch(&shared_name, entry, stored.switch.as_ref());
        changed
    }
}

/// Binds in a canonical order, for comparing two lists.
fn sorted_binds(binds: &[(BindKey, String)]) -> Vec<(String, &str)> {
    let mut v: Vec<(String, &str)> = binds
        .iter()
        .map(|(k, t)| (k.canonical(), t.as_str()))
        .collect();
    v.sort_unstable();
    v
}
