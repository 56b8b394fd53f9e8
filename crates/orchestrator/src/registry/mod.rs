//! Waifus, instances and binds: the single writer of routing state.
//!
//! A hello ([`hello`]) is validated (protocol crate), recorded in PostgreSQL in one
//! transaction, applied to the in-memory model, and published as a new
//! immutable [`RouteTable`] through the one [`RouteWriter`]. Writers are
//! serialised by one async mutex so memory never disagrees with the
//! database; readers (the proxy, TLS, metrics, health) hold a
//! [`crate::routing::Routes`] handle and never take it. Other orchestrators
//! on the same database are followed by [`replicas`].

mod build;
#[cfg(test)]
mod double;
mod drain;
mod health;
mod hello;
mod replicas;
mod rollout;
mod switches;

pub(crate) use build::{Ceilings, ControlPlane, Parts, Timing, start};
pub(crate) use health::HealthConfig;
pub(crate) use hello::ValidHello;
pub(crate) use rollout::{analyse as analyse_rollouts, publish as publish_rollout_counts};

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::info;
use waifus_protocol::{
    BindInfo, BindKey, HostError, InstanceInfo, NameError, WaifuInfo, parse_host, validate_name,
};

use crate::ops::outages::Observation;
use crate::routing::switch::Setting;
use crate::routing::{BindRoute, Instance, RouteTable, RouteWriter, WaifuRoute};
use crate::store::{Store, StoreError, StoredInstance};
use drain::Leaving;
use health::{Ask, Watch};

/// Why a hello was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HelloError {
    #[error("invalid name: {0}")]
    Name(#[from] NameError),
    #[error("invalid host: {0}")]
    Host(#[from] HostError),
    #[error("invalid version: {0}")]
    Version(#[from] waifus_protocol::VersionError),
    #[error("invalid health path: {0}")]
    Health(#[from] waifus_protocol::HealthPathError),
    #[error("invalid limits: {0}")]
    Limits(#[from] waifus_protocol::LimitsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a goodbye was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GoodbyeError {
    #[error("invalid name: {0}")]
    Name(#[from] NameError),
    #[error("invalid host: {0}")]
    Host(#[from] HostError),
    #[error("no instance of this waifu is registered at this host")]
    UnknownInstance,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A goodbye whose name and host are valid: checked once, before anything
/// else looks at it, and all that [`Registry::goodbye`] takes.
#[derive(Debug)]
pub(crate) struct ValidGoodbye<'a> {
    name: &'a str,
    upstream: waifus_protocol::Upstream,
}

impl<'a> ValidGoodbye<'a> {
    pub(crate) fn check(goodbye: &'a waifus_protocol::Goodbye) -> Result<Self, GoodbyeError> {
        validate_name(&goodbye.name)?;
        let upstream = parse_host(&goodbye.host)?;
        Ok(ValidGoodbye {
            name: &goodbye.name,
            upstream,
        })
    }

    pub(crate) fn name(&self) -> &str {
        self.name
    }
}

/// Longest a hello waits for its instance's first health check.
const MAX_CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Default)]
struct State {
    /// Keyed by the name its route holds (one allocation for both).
    waifus: BTreeMap<Arc<str>, Entry>,
    /// Last change to each waifu made here (hello, deregistration, a
    /// notification applied), by [`Registry::seq`]: a full resync read
    /// before that change must not undo it. Gone waifus stay until the next
    /// full resync.
    touched: std::collections::HashMap<Arc<str>, u64>,
}

#[derive(Debug)]
struct Entry {
    /// Accepted binds with their targets, as stored.
    binds: Vec<(BindKey, String)>,
    /// Its route, which holds its instances ([`Entry::instances`]);
    /// replaced when they change.
    route: Arc<WaifuRoute>,
    /// The generation of the switch setting applied last (`None`: open).
    switch_generation: Option<i64>,
}

impl State {
    /// `name` as the registry keeps it: the key of its entry if it has one.
    fn shared_name(&self, name: &str) -> Arc<str> {
        self.waifus
            .get_key_value(name)
            .map_or_else(|| name.into(), |(key, _)| key.clone())
    }
}

impl Entry {
    fn new(name: &Arc<str>, instances: Vec<Arc<Instance>>, binds: Vec<(BindKey, String)>) -> Self {
        let route = Arc::new(WaifuRoute::new(name.clone(), instances));
        Entry {
            binds,
            route,
            switch_generation: None,
        }
    }

    /// Its instances, leaving ones included (kept by its route only: a
    /// second list here cost a vector per waifu).
    fn instances(&self) -> &[Arc<Instance>] {
        &self.route.instances
    }

    /// Gives it `instances`: its route is rebuilt with them.
    fn set_instances(&mut self, instances: Vec<Arc<Instance>>) {
        self.route = Arc::new(self.route.rebuilt(instances));
    }

    /// Rebuilds its route from the same instances, one of which changed
    /// (it is leaving, or its version became current).
    fn rearrange(&mut self) {
        self.set_instances(self.instances().to_vec());
    }
}

/// What [`Registry::load`] gives.
#[derive(Debug)]
struct Loaded {
    registry: Registry,
    /// Instances for the health checks to watch.
    watched: mpsc::UnboundedReceiver<Ask>,
    /// Instances to drain.
    to_drain: mpsc::UnboundedReceiver<Leaving>,
}

/// Routing state: the published table, the model behind it, and its store.
#[derive(Debug)]
pub(crate) struct Registry {
    routes: RouteWriter,
    state: Mutex<State>,
    store: Store,
    /// `None` for `MAIN_DOMAIN=*`.
    main_domain: Option<String>,
    /// `http://host[:port]` that `/{name}` is appended to in hello answers.
    public_base: String,
    /// Cancelled once the listeners have drained: background work for
    /// instances (a pause waiting for them to go idle) ends.
    shutdown: CancellationToken,
    watch: mpsc::UnboundedSender<Ask>,
    /// Instances that said goodbye, to drain ([`drain`]).
    leaving: mpsc::UnboundedSender<Leaving>,
    /// Whether this orchestrator runs the health checks ([`replicas`]):
    /// if not, instance health comes from the store.
    leading: tokio::sync::watch::Receiver<bool>,
    /// Counts changes applied to memory; see `State::touched`.
    seq: std::sync::atomic::AtomicU64,
    /// How long a hello waits for the first check of its instance (the
    /// health check timeout).
    check_wait: std::time::Duration,
    /// Every instance handed to the drain, by name and address, while
    /// anything (a request in flight here) keeps it alive: another
    /// orchestrator may remove it from the state first, and a goodbye that
    /// waits must still see what is in flight to it here.
    left: std::sync::Mutex<Vec<(Arc<str>, std::sync::Weak<Instance>)>>,
    /// The operator's maximums for hellos' limits.
    ceilings: Ceilings,
    /// Where the health leader's checks go, for the outage notifications.
    outages: mpsc::UnboundedSender<Observation>,
    /// `ROLLOUT=auto`: the steps and interval of the rollout a newly
    /// announced version starts.
    auto_rollout: Option<(Vec<i32>, std::time::Duration)>,
}

/// What [`Registry::load`] is given.
#[derive(Debug)]
struct Setup {
    routes: RouteWriter,
    store: Store,
    main_domain: Option<String>,
    public_base: String,
    /// Cancelled once the listeners have drained.
    instances: CancellationToken,
    leading: tokio::sync::watch::Receiver<bool>,
    /// The health check timeout.
    check_wait: std::time::Duration,
    ceilings: Ceilings,
    outages: mpsc::UnboundedSender<Observation>,
    auto_rollout: Option<(Vec<i32>, std::time::Duration)>,
}

impl Registry {
    /// Loads the stored state and publishes it; returns the registry, the
    /// stream of instances to health-check (starting with every loaded one)
    /// and the stream of instances to drain.
    async fn load(setup: Setup) -> Result<Loaded, StoreError> {
        let Setup {
            routes,
            store,
            main_domain,
            public_base,
            instances: shutdown,
            leading,
            check_wait,
            ceilings,
            outages,
            auto_rollout,
        } = setup;
        let (watch, watched) = mpsc::unbounded_channel();
        let (leaving, to_drain) = mpsc::unbounded_channel();
        let registry = Registry {
            routes,
            state: Mutex::new(State::default()),
            store,
            main_domain,
            public_base,
            shutdown,
            watch,
            leaving,
            leading,
            seq: std::sync::atomic::AtomicU64::new(0),
            // The internal API answers within 5 s: a slow first check is
            // not waited out (the instance is routed once it passes).
            check_wait: check_wait.min(MAX_CHECK_WAIT),
            left: std::sync::Mutex::default(),
            ceilings,
            outages,
            auto_rollout,
        };
        let loaded = {
            let mut state = registry.state.lock().await;
            let mut pages = registry.store.pages(replicas::PAGE);
            while let Some(page) = pages.next().await? {
                for stored in page {
                    let name: Arc<str> = stored.name.as_str().into();
                    let instances: Vec<_> = stored
                        .instances
                        .iter()
                        .map(|s| registry.adopt(&name, s))
                        .collect();
                    let mut entry = Entry::new(&name, instances, stored.binds);
                    registry.apply_switch(&name, &mut entry, stored.switch.as_ref());
                    registry.apply_rollout(&name, &mut entry, stored.rollout.as_ref());
                    state.waifus.insert(name, entry);
                }
            }
            registry.publish(&state);
            state.waifus.len()
        };
        info!(waifus = loaded, "loaded state");
        Ok(Loaded {
            registry,
            watched,
            to_drain,
        })
    }

    /// An instance as stored, in memory: watched by the health checks, or
    /// drained if it said goodbye.
    fn adopt(&self, name: &Arc<str>, stored: &StoredInstance) -> Arc<Instance> {
        let instance = Arc::new(
            Instance::new(stored.upstream.clone(), stored.healthy)
                .with_version(stored.version.as_deref(), stored.version_at_ms)
                .with_health_path(stored.health_path.as_deref())
                .with_limits(stored.limits),
        );
        match stored.goodbye_ms {
            Some(ms) => {
                instance.leave(ms);
                self.drain(name, &instance, ms);
            }
            None => {
                let _ = self.watch.send(Ask::Watch(Watch {
                    name: name.clone(),
                    instance: instance.clone(),
                    committed: None,
                }));
            }
        }
        instance
    }

    /// Stops checking a leaving instance, closes its idle connections (so a
    /// waifu waiting for them can exit) and hands it to the drain.
    fn drain(&self, name: &Arc<str>, instance: &Arc<Instance>, goodbye_ms: i64) {
        self.note_left(name, instance);
        instance.retire();
        instance.endpoint.pool.close();
        let _ = self.leaving.send(Leaving {
            name: name.clone(),
            instance: instance.clone(),
            goodbye_ms,
        });
    }

    /// Whether this orchestrator runs the health checks now.
    pub(crate) fn leads_health_checks(&self) -> bool {
        *self.leading.borrow()
    }

    /// Handles `POST /__internal/goodbye` from `source`, whose ownership of
    /// the name was checked before: the instance gets no new request here
    /// at once (and on other orchestrators when they hear of it), and drains.
    /// Returns the instance, which knows what is in flight to it here.
    pub(crate) async fn goodbye(
        &self,
        goodbye: ValidGoodbye<'_>,
        source: std::net::IpAddr,
    ) -> Result<Arc<Instance>, GoodbyeError> {
        let ValidGoodbye { name, upstream } = goodbye;
        let mut state = self.state.lock().await;
        let instance = state
            .waifus
            .get(name)
            .and_then(|e| e.instances().iter().find(|i| i.upstream == upstream))
            .cloned()
            .ok_or(GoodbyeError::UnknownInstance)?;
        let source = source.to_canonical().to_string();
        let goodbye_ms = self
            .store
            .goodbye(name, &upstream, &source)
            .await?
            .ok_or(GoodbyeError::UnknownInstance)?;
        if instance.leave(goodbye_ms) {
            info!(name, instance = %instance.upstream, "instance said goodbye: draining");
            self.rebuild(&mut state, name);
            self.drain(&name.into(), &instance, goodbye_ms);
        }
        self.touch(&mut state, name);
        Ok(instance)
    }

    /// Remembers a leaving instance for as long as something holds it.
    fn note_left(&self, name: &Arc<str>, instance: &Arc<Instance>) {
        let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        left.retain(|(_, i)| i.strong_count() > 0);
        if !left
            .iter()
            .any(|(_, i)| std::ptr::eq(i.as_ptr(), Arc::as_ptr(instance)))
        {
            left.push((name.clone(), Arc::downgrade(instance)));
        }
    }

    /// An instance of `name` at `upstream` that left the state (drained,
    /// or removed by another orchestrator) while something here still
    /// holds it, such as a request in flight.
    pub(crate) fn still_leaving(&self, goodbye: &ValidGoodbye<'_>) -> Option<Arc<Instance>> {
        let left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        left.iter()
            .filter(|(name, _)| **name == *goodbye.name)
            .filter_map(|(_, i)| i.upgrade())
            .find(|i| i.upstream == goodbye.upstream)
    }

    /// Rebuilds and publishes a waifu's route after one of its instances
    /// started leaving (its binds are unchanged).
    fn rebuild(&self, state: &mut State, name: &str) {
        let Some(entry) = state.waifus.get_mut(name) else {
            return;
        };
        entry.rearrange();
        self.publish_entry(state, name);
    }

    /// Publishes a waifu's route, its binds unchanged.
    fn publish_entry(&self, state: &State, name: &str) {
        let Some(entry) = state.waifus.get(name) else {
            return;
        };
        let hosts: Vec<String> = entry.binds.iter().map(|(k, _)| k.host.clone()).collect();
        self.publish_waifu(state, name, hosts.iter().map(String::as_str));
    }

    /// Makes `version` the current version of `name` in the store (audited
    /// from `source`, announced to the other orchestrators) and here.
    pub(crate) async fn make_current(
        &self,
        name: &str,
        version: &str,
        source: &str,
    ) -> Result<crate::store::versions::MadeCurrent, StoreError> {
        let made = self.store.make_current(name, version, source).await?;
        if matches!(made, crate::store::versions::MadeCurrent::Changed { .. }) {
            self.resync_waifu(name).await?;
        }
        Ok(made)
    }

    /// Records that `name` changed in memory now.
    fn touch(&self, state: &mut State, name: &str) {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let name = state.shared_name(name);
        state.touched.insert(name, seq);
    }

    /// Publishes the table after a change to one waifu only; `old_hosts`
    /// are the hosts it was bound on before. Writers hold the state lock, so
    /// the table read here is the latest.
    fn publish_waifu<'a>(
        &self,
        state: &State,
        name: &str,
        old_hosts: impl IntoIterator<Item = &'a str>,
    ) {
        let now = state
            .waifus
            .get(name)
            .map(|e| (&e.route, e.binds.as_slice()));
        let table = self.routes.current().with_waifu(name, now, old_hosts);
        self.routes.publish(table);
    }

    fn publish(&self, state: &State) {
        let binds = state.waifus.values().flat_map(|entry| {
            entry.binds.iter().map(|(key, target)| {
                (
                    key.host.clone(),
                    BindRoute::new(key, target, entry.route.clone()),
                )
            })
        });
        let waifus = state.waifus.values().map(|e| e.route.clone());
        let table = RouteTable::new(self.main_domain.as_deref(), waifus, binds);
        self.routes.publish(table);
    }

    /// Handles `GET /__internal/waifus`.
    pub(crate) async fn list(&self) -> Vec<WaifuInfo> {
        let state = self.state.lock().await;
        self.infos(&state)
    }

    /// As [`Registry::list`], or `None` if a change holds the model longer
    /// than `wait` (it waits for PostgreSQL).
    pub(crate) async fn list_within(&self, wait: std::time::Duration) -> Option<Vec<WaifuInfo>> {
        let state = tokio::time::timeout(wait, self.state.lock()).await.ok()?;
        Some(self.infos(&state))
    }

    fn infos(&self, state: &State) -> Vec<WaifuInfo> {
        state
            .waifus
            .iter()
            .map(|(name, entry)| WaifuInfo {
                name: name.to_string(),
                url: format!("{}/{}", self.public_base, name),
                instances: entry
                    .instances()
                    .iter()
                    .map(|i| instance_info(i, entry.route.draining(i), self.ceilings))
                    .collect(),
                binds: entry
                    .binds
                    .iter()
                    .map(|(key, target)| BindInfo {
                        bind: key.canonical(),
                        target: if target.is_empty() {
                            "/".to_owned()
                        } else {
                            target.clone()
                        },
                    })
                    .collect(),
                state: match entry.route.switch().setting() {
                    Setting::Open => "open",
                    Setting::Paused { .. } => "paused",
                    Setting::Maintenance { .. } => "maintenance",
                }
                .to_owned(),
            })
            .collect()
    }
}

fn instance_info(instance: &Instance, draining: bool, ceilings: Ceilings) -> InstanceInfo {
    use std::sync::atomic::Ordering::Relaxed;
    let last = instance.last_check_ms.load(Relaxed);
    InstanceInfo {
        host: instance.upstream.to_string(),
        healthy: instance.is_healthy(),
        last_check: (last != 0).then(|| {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(last);
            humantime::format_rfc3339_millis(t).to_string()
        }),
        version: instance.version().map(str::to_owned),
        draining,
        limits: Some(
            instance
                .limits()
                .clamped(ceilings.max_body_size, ceilings.timeout)
                .to_wire(),
        ),
    }
}
