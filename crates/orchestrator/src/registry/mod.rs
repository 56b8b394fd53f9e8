//! Waifus, instances and binds: the single writer of routing state.
//!
//! A hello is validated (protocol crate), recorded in PostgreSQL in one
//! transaction, applied to the in-memory model, and published as a new
//! immutable [`RouteTable`] through the one [`RouteWriter`]. Writers are
//! serialised by one async mutex so memory never disagrees with the
//! database; readers (the proxy, TLS, metrics, health) hold a
//! [`crate::routing::Routes`] handle and never take it. Other orchestrators
//! on the same database are followed by [`replicas`].

pub(crate) mod replicas;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use waifus_protocol::{
    BindError, BindInfo, BindKey, BindOutcome, Hello, HelloResponse, HostError, InstanceInfo,
    NameError, RefusalReason, WaifuInfo, parse_bind_key, parse_bind_target, parse_host,
    validate_name,
};

use crate::health::Watch;
use crate::routing::{BindRoute, Instance, RouteTable, RouteWriter, WaifuRoute};
use crate::store::{BindClaim, Store, StoreError};

/// Why a hello was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HelloError {
    #[error("invalid name: {0}")]
    Name(#[from] NameError),
    #[error("invalid host: {0}")]
    Host(#[from] HostError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Default)]
struct State {
    waifus: BTreeMap<String, Entry>,
    /// Last change to each waifu made here (hello, deregistration, a
    /// notification applied), by [`Registry::seq`]: a full resync read
    /// before that change must not undo it. Gone waifus stay until the next
    /// full resync.
    touched: std::collections::HashMap<String, u64>,
}

#[derive(Debug)]
struct Entry {
    instances: Vec<Arc<Instance>>,
    /// Accepted binds with their targets, as stored.
    binds: Vec<(BindKey, String)>,
    /// The route built from `instances`; replaced when they change.
    route: Arc<WaifuRoute>,
}

impl Entry {
    fn new(name: &str, instances: Vec<Arc<Instance>>, binds: Vec<(BindKey, String)>) -> Self {
        let route = Arc::new(WaifuRoute::new(name, instances.clone()));
        Entry {
            instances,
            binds,
            route,
        }
    }
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
    /// Parent of every instance's `retired` token.
    shutdown: CancellationToken,
    watch: mpsc::UnboundedSender<Watch>,
    /// Whether this orchestrator runs the health checks ([`replicas`]):
    /// if not, instance health comes from the store.
    leading: tokio::sync::watch::Receiver<bool>,
    /// Counts changes applied to memory; see `State::touched`.
    seq: std::sync::atomic::AtomicU64,
    /// How long a hello waits for the first check of its instance (the
    /// health check timeout).
    check_wait: std::time::Duration,
}

impl crate::health::Deregister for Registry {
    async fn deregister(
        &self,
        name: &str,
        instance: &Arc<Instance>,
        why: &str,
    ) -> Result<(), StoreError> {
        Registry::deregister(self, name, instance, why).await
    }
}

impl Registry {
    /// Loads the stored state and publishes it; returns the registry and the
    /// stream of instances to health-check (starting with every loaded one).
    pub(crate) async fn load(
        routes: RouteWriter,
        store: Store,
        main_domain: Option<String>,
        public_base: String,
        shutdown: CancellationToken,
        leading: tokio::sync::watch::Receiver<bool>,
        check_wait: std::time::Duration,
    ) -> Result<(Registry, mpsc::UnboundedReceiver<Watch>), StoreError> {
        let (watch, watched) = mpsc::unbounded_channel();
        let mut state = State::default();
        for stored in store.load().await? {
            let instances: Vec<_> = stored
                .instances
                .into_iter()
                .map(|(up, healthy)| Arc::new(Instance::new(up, healthy, &shutdown)))
                .collect();
            let name: Arc<str> = stored.name.as_str().into();
            for instance in &instances {
                let _ = watch.send(Watch {
                    name: name.clone(),
                    instance: instance.clone(),
                    committed: None,
                });
            }
            let entry = Entry::new(&stored.name, instances, stored.binds);
            state.waifus.insert(stored.name, entry);
        }
        let registry = Registry {
            routes,
            state: Mutex::new(state),
            store,
            main_domain,
            public_base,
            shutdown,
            watch,
            leading,
            seq: std::sync::atomic::AtomicU64::new(0),
            check_wait,
        };
        let loaded = {
            let state = registry.state.lock().await;
            registry.publish(&state);
            state.waifus.len()
        };
        info!(waifus = loaded, "loaded state");
        Ok((registry, watched))
    }

    /// Whether this orchestrator runs the health checks now.
    pub(crate) fn leads_health_checks(&self) -> bool {
        *self.leading.borrow()
    }

    /// Handles `POST /__internal/hello`.
    /// Handles `POST /__internal/hello` from `source`, whose ownership of
    /// the name was checked before.
    pub(crate) async fn hello(
        &self,
        hello: &Hello,
        source: std::net::IpAddr,
    ) -> Result<HelloResponse, HelloError> {
        validate_name(&hello.name)?;
        let upstream = parse_host(&hello.host)?;
        let mut outcomes = Vec::with_capacity(hello.additional_binds.len());
        let mut parsed: Vec<Option<(BindKey, String)>> = Vec::new();
        let mut seen = HashSet::new();
        for (bind, target) in &hello.additional_binds {
            let checked = self.check_bind(bind, target);
            let checked = checked.and_then(|(key, target)| {
                // Two spellings of one (host, prefix) in a single hello.
                if seen.insert((key.host.clone(), key.prefix.clone())) {
                    Ok((key, target))
                } else {
                    Err(RefusalReason::Invalid)
                }
            });
            outcomes.push(BindOutcome {
                bind: bind.clone(),
                target: target.clone(),
                accepted: checked.is_ok(),
                reason: checked.as_ref().err().copied(),
            });
            parsed.push(checked.ok());
        }
        let claims: Vec<BindClaim<'_>> = parsed
            .iter()
            .flatten()
            .map(|(key, target)| BindClaim { key, target })
            .collect();

        let mut state = self.state.lock().await;
        let known = state
            .waifus
            .get(&hello.name)
            .and_then(|e| e.instances.iter().find(|i| i.upstream == upstream))
            .cloned();
        // An instance that is not healthy (it may just have restarted) is
        // checked now, and a new one gets its first check, while the hello
        // commits; the answer waits for that check, so a waifu that is up is
        // routable once its hello is answered.
        let mut awaited = None;
        if let Some(instance) = &known
            && !instance.is_healthy()
        {
            awaited = Some((instance.clone(), instance.checks()));
            instance.recheck.notify_one();
        }
        let mut fresh = None;
        if known.is_none() {
            let instance = Arc::new(Instance::new(upstream.clone(), false, &self.shutdown));
            let (committed, on_commit) = oneshot::channel();
            let _ = self.watch.send(Watch {
                name: hello.name.as_str().into(),
                instance: instance.clone(),
                committed: Some(on_commit),
            });
            fresh = Some((instance, committed));
        }
        let source = source.to_canonical().to_string();
        let granted = self
            .store
            .hello(&hello.name, &upstream, &claims, &source)
            .await?;
        let mut granted = granted.into_iter();
        // Kept as the waifu's binds: sized exactly, as a pushed-to vector
        // would hold room for four (240 bytes too many per waifu).
        let mut accepted = Vec::with_capacity(claims.len());
        for (outcome, parsed) in outcomes.iter_mut().zip(parsed) {
            let Some(bind) = parsed else { continue };
            if granted.next().unwrap_or(false) {
                accepted.push(bind);
            } else {
                warn!(name = %hello.name, bind = %outcome.bind, "bind refused: taken by another waifu");
                outcome.accepted = false;
                outcome.reason = Some(RefusalReason::Taken);
            }
        }
        let before = state.waifus.get(&hello.name).map(|e| e.binds.clone());
        let (new_instance, committed) = fresh.unzip();
        Self::apply_hello(&mut state, &hello.name, accepted, new_instance.clone());
        self.touch(&mut state, &hello.name);
        let after = state.waifus.get(&hello.name).map(|e| &e.binds);
        // A repeated hello (SDKs re-hello every 30 s) changes nothing.
        if new_instance.is_some() || before.as_ref() != after {
            let old = before.iter().flatten().map(|(key, _)| key.host.as_str());
            self.publish_waifu(&state, &hello.name, old);
        }
        drop(state);
        if let Some(instance) = &new_instance {
            info!(name = %hello.name, instance = %instance.upstream, "new instance");
            if instance.upstream.scheme == waifus_protocol::Scheme::Https {
                warn!(
                    name = %hello.name,
                    instance = %instance.upstream,
                    "TLS to instances is not supported yet: this instance will fail its \
                     health checks and not be routed to; register it with http://"
                );
            }
        }
        if let Some(committed) = committed {
            let _ = committed.send(());
        }
        let awaited = awaited.or_else(|| new_instance.map(|i| (i, 0)));
        if let Some((instance, seen)) = awaited {
            instance.checked_since(seen, self.check_wait).await;
        }
        Ok(HelloResponse {
            name: hello.name.clone(),
            url: format!("{}/{}", self.public_base, hello.name),
            binds: outcomes,
        })
    }

    fn check_bind(&self, bind: &str, target: &str) -> Result<(BindKey, String), RefusalReason> {
        let refusal = |e: BindError| match e {
            BindError::InternalPath => RefusalReason::InternalPath,
            _ => RefusalReason::Invalid,
        };
        let key = parse_bind_key(bind).map_err(refusal)?;
        let target = parse_bind_target(target).map_err(refusal)?;
        if self.main_domain.as_deref() == Some(key.host.as_str()) {
            return Err(RefusalReason::MainDomain);
        }
        Ok((key, target.0))
    }

    /// Applies a recorded hello to memory: its binds, and its instance if new.
    fn apply_hello(
        state: &mut State,
        name: &str,
        binds: Vec<(BindKey, String)>,
        new_instance: Option<Arc<Instance>>,
    ) {
        let entry = state
            .waifus
            .entry(name.to_owned())
            .or_insert_with(|| Entry::new(name, Vec::new(), Vec::new()));
        entry.binds = binds;
        if let Some(instance) = new_instance {
            entry.instances.push(instance);
            entry.route = Arc::new(entry.route.rebuilt(entry.instances.clone()));
        }
    }

    /// Records that `name` changed in memory now.
    fn touch(&self, state: &mut State, name: &str) {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        state.touched.insert(name.to_owned(), seq);
    }

    /// Drops an instance that stayed critical too long; its waifu and binds
    /// go with its last instance. Memory follows only once the store agreed.
    pub(crate) async fn deregister(
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
            entry.instances.retain(|i| !Arc::ptr_eq(i, instance));
            if entry.instances.is_empty() {
                state.waifus.remove(name);
            } else {
                entry.route = Arc::new(entry.route.rebuilt(entry.instances.clone()));
            }
        }
        self.touch(&mut state, name);
        self.publish_waifu(&state, name, old_hosts.iter().map(String::as_str));
        instance.retired.cancel();
        info!(name, instance = %instance.upstream, "deregistered instance");
        Ok(())
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
                let route = BindRoute {
                    prefix: key.prefix.as_str().into(),
                    target: target.as_str().into(),
                    waifu: entry.route.clone(),
                    tls: key.scheme == waifus_protocol::Scheme::Https,
                };
                (key.host.clone(), route)
            })
        });
        let waifus = state.waifus.values().map(|e| e.route.clone());
        let table = RouteTable::new(self.main_domain.as_deref(), waifus, binds);
        self.routes.publish(table);
    }

    /// Handles `GET /__internal/waifus`.
    pub(crate) async fn list(&self) -> Vec<WaifuInfo> {
        let state = self.state.lock().await;
        state
            .waifus
            .iter()
            .map(|(name, entry)| WaifuInfo {
                name: name.clone(),
                url: format!("{}/{}", self.public_base, name),
                instances: entry.instances.iter().map(|i| instance_info(i)).collect(),
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
            })
            .collect()
    }
}

fn instance_info(instance: &Instance) -> InstanceInfo {
    use std::sync::atomic::Ordering::Relaxed;
    let last = instance.last_check_ms.load(Relaxed);
    InstanceInfo {
        host: instance.upstream.to_string(),
        healthy: instance.is_healthy(),
        last_check: (last != 0).then(|| {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(last);
            humantime::format_rfc3339_millis(t).to_string()
        }),
    }
}
