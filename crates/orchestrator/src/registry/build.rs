//! The control plane, built and started: the registry loaded from the
//! store, and the tasks that act for it (health checks, draining, following
//! other orchestrators), each with its settings in one struct.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::drain::{self, Leave};
use super::health::{self, Checks, HealthConfig};
use super::{Loaded, Registry, replicas};
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
    /// Cancelled once the listeners have drained: every instance's task
    /// ends.
    pub instances: CancellationToken,
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
    } = parts;
    let (writer, routes) = routing::routes();
    let (leads, leading) = watch::channel(true);
    let instances = CancellationToken::new();
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
    })
}

impl Checks for Registry {
    async fn probe(&self, instance: &Arc<Instance>, timeout: Duration) -> Outcome {
        health::check(instance, timeout).await
    }

    async fn store_health(
        &self,
        name: &str,
        instance: &Arc<Instance>,
        healthy: bool,
    ) -> Result<(), StoreError> {
        self.store
            .set_health(name, &instance.upstream, healthy)
            .await
    }

    async fn deregister(
        &self,
        name: &str,
        instance: &Arc<Instance>,
        why: &str,
    ) -> Result<(), StoreError> {
        Registry::deregister(self, name, instance, why).await
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
        Registry::remove_left(self, name, instance, goodbye_ms, why).await
    }

    async fn forget_empty(&self, after: Duration) -> Result<(), StoreError> {
        Registry::forget_empty(self, after).await
    }
}
