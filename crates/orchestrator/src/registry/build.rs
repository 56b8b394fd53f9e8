//! The control plane, built and started: the registry loaded from the
//! store, and the tasks that act for it (health checks, draining, following
//! other orchestrators), each with its settings in one struct; and the
//! registry's side of their seams: the writes health checks and draining
//! ask for.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use super::drain::{self, Leave};
use super::health::{self, Checks, HealthConfig, Seen};
use super::{Loaded, Registry, replicas};
use crate::ops::outages::Observation;
use crate::routing::{self, Instance, Outcome, Routes};
use crate::store::{Store, StoreError};

/// What the control plane is built from.
#[derive(Debug)]
pub(crate) struct Parts {
    pub store: Store,
    /// `None` for `MAIN_DOMAIN=*`.
    pub main_domain: Option<String>,
    /// `http://host[:port]` that `/{name}` is appended to in hello answers.
    pub public_base: String,
    pub timing: Timing,
    /// `MAX_BODY_SIZE` and `UPSTREAM_TIMEOUT`: what no hello's limits
    /// exceed (shown clamped in the list of waifus).
    pub ceilings: Ceilings,
    /// `ROLLOUT=auto`: `ROLLOUT_STEPS` and `ROLLOUT_INTERVAL`.
    pub auto_rollout: Option<(Vec<i32>, Duration)>,
}

/// The operator's maximums for what a hello's limits may ask.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ceilings {
    pub max_body_size: u64,
    pub timeout: Duration,
}

/// The control plane's clocks, from the settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// `HEALTH_INTERVAL`, `HEALTH_TIMEOUT`, `DEREGISTER_AFTER`.
    pub health: HealthConfig,
    /// `DRAIN_TIMEOUT`.
    pub drain_timeout: Duration,
    /// `RESYNC_INTERVAL`: how often the whole state is read again.
    pub resync_every: Duration,
}

/// The running control plane.
#[derive(Debug)]
pub(crate) struct ControlPlane {
    pub registry: Arc<Registry>,
    /// The published routes, for their readers.
    pub routes: Routes,
    /// Whether this orchestrator leads (runs the health checks, the
    /// deliveries and the scheduled jobs).
    pub leading: watch::Receiver<bool>,
    /// Cancelled once the listeners have drained: background work for
    /// instances ends.
    pub instances: CancellationToken,
    /// The health leader's checks, for the outage notifications.
    pub observations: mpsc::UnboundedReceiver<Observation>,
}

/// Loads the stored state, publishes it, and starts the tasks that keep it
/// current, on `tasks` until `shutdown`.
pub(crate) async fn start(
    parts: Parts,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<ControlPlane, StoreError> {
    let Parts {
        store,
        main_domain,
        public_base,
        timing,
        ceilings,
        auto_rollout,
    } = parts;
    let (writer, routes) = routing::routes();
    let (leads, leading) = watch::channel(true);
    let instances = CancellationToken::new();
    let (outages, observations) = mpsc::unbounded_channel();
    let Loaded {
        registry,
        watched,
        to_drain,
    } = Registry::load(super::Setup {
        routes: writer,
        store: store.clone(),
        main_domain,
        public_base,
        instances: instances.clone(),
        leading: leading.clone(),
        check_wait: timing.health.timeout,
        ceilings,
        outages,
        auto_rollout,
    })
    .await?;
    let registry = Arc::new(registry);
    tasks.spawn(health::supervise(
        registry.clone(),
        routes.clone(),
        watched,
        timing.health,
        tasks.clone(),
        shutdown.clone(),
        leading.clone(),
    ));
    tasks.spawn(drain::supervise(
        registry.clone(),
        to_drain,
        drain::Timing {
            drain_timeout: timing.drain_timeout,
            forget_after: timing.health.deregister_after,
        },
        leading.clone(),
        tasks.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(replicas::follow(
        registry.clone(),
        store,
        leads,
        timing.resync_every,
        shutdown.clone(),
    ));
    Ok(ControlPlane {
        registry,
        routes,
        leading,
        instances,
        observations,
    })
}

impl Checks for Registry {
    async fn probe(&self, instance: &Arc<Instance>, timeout: Duration, keep: bool) -> Seen {
        health::check(instance, timeout, keep).await
    }

    async fn store_health(
        &self,
        name: &str,
        instance: &Arc<Instance>,
        healthy: bool,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.store
            .set_health(name, &instance.upstream, healthy, reason)
            .await
    }

    fn observed(&self, name: &Arc<str>, instance: &Arc<Instance>, seen: Seen) {
        let ok = seen.outcome() == Outcome::Success;
        let table = self.routes.current();
        // The first check of a new waifu's instance runs before its hello
        // is published: this check alone says whether it is up.
        let (available, quiet) = table.waifu(name).map_or((ok, false), |waifu| {
            let available = waifu
                .instances
                .iter()
                .any(|i| i.is_healthy() && !i.is_leaving());
            (available, !waifu.switch().is_open())
        });
        let failure = (!ok).then(|| format!("{}: {seen}", instance.upstream));
        let _ = self.outages.send(Observation {
            name: name.clone(),
            available,
            quiet,
            failure,
            at: tokio::time::Instant::now(),
        });
    }

    async fn deregister(
        &self,
        name: &str,
        instance: &Arc<Instance>,
        why: &str,
    ) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        self.store
            .remove_instance(name, &instance.upstream, "orchestrator", why)
            .await?;
        let old_hosts: Vec<String> = state.waifus.get(name).map_or_else(Vec::new, |e| {
            e.binds.iter().map(|(key, _)| key.host.clone()).collect()
        });
        if let Some(entry) = state.waifus.get_mut(name) {
            let others = without(entry.instances(), instance);
            if others.is_empty() {
                state.waifus.remove(name);
            } else {
                entry.set_instances(others);
            }
        }
        self.touch(&mut state, name);
        self.publish_waifu(&state, name, old_hosts.iter().map(String::as_str));
        instance.retire();
        info!(name, instance = %instance.upstream, "deregistered instance");
        Ok(())
    }
}

impl Leave for Registry {
    async fn remove_left(
        &self,
        name: &str,
        instance: &Arc<Instance>,
        goodbye_ms: i64,
        why: &str,
    ) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        self.store
            .remove_left(name, &instance.upstream, goodbye_ms, why)
            .await?;
        let removed = state.waifus.get_mut(name).is_some_and(|entry| {
            let others = without(entry.instances(), instance);
            let removed = others.len() != entry.instances().len();
            if removed {
                entry.set_instances(others);
            }
            removed
        });
        if removed {
            self.publish_entry(&state, name);
            self.touch(&mut state, name);
        }
        Ok(())
    }

    async fn forget_empty(&self, after: Duration) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        for name in self.store.forget_empty(after).await? {
            let Some(entry) = state.waifus.remove(name.as_str()) else {
                continue;
            };
            let hosts: Vec<String> = entry.binds.iter().map(|(k, _)| k.host.clone()).collect();
            self.touch(&mut state, &name);
            self.publish_waifu(&state, &name, hosts.iter().map(String::as_str));
            info!(%name, "forgot a waifu that has had no instance since its last goodbye");
        }
        Ok(())
    }
}

/// `instances` other than `instance`.
fn without(instances: &[Arc<Instance>], instance: &Arc<Instance>) -> Vec<Arc<Instance>> {
    instances
        .iter()
        .filter(|i| !Arc::ptr_eq(i, instance))
        .cloned()
        .collect()
}
