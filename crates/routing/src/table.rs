//! The immutable route table: which waifu a host and path go to.
//!
//! The registry builds a new [`RouteTable`] after every change and swaps it
//! in ([`super::Routes`]); a request loads the current table once and
//! resolves against it. Instance health lives in atomics inside each
//! [`Instance`], so the health checker changes routing without rebuilding
//! the table.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use waifus_protocol::BindKey;

use super::instance::Instance;
use super::rollout::{RolloutRoute, Side};
use super::shards::Shards;
use super::stats::LazyStats;
use super::switch::Switch;

/// Everything the proxy needs to send a request to a waifu.
///
/// Of its instances, those that did not say goodbye are routable; of those,
/// the current version's (the version that became current last: first
/// announced, or chosen by an operator) get every request while one of
/// them is healthy, and the others only when none is: a deploy never serves
/// old and new answers interleaved, a new version that fails leaves the old
/// one serving, and a restarted process of an older version does not take
/// over.
#[derive(Debug)]
pub struct WaifuRoute {
    /// Shared with the registry's and the table's keys: one allocation
    /// per waifu name, not one per place it is kept.
    pub name: Arc<str>,
    /// Every registered instance, leaving ones included.
    pub instances: Box<[Arc<Instance>]>,
    /// The routable instances, the newest version's first; `None` when
    /// they are `instances` in the same order (most waifus: a second list
    /// of the same instances cost an allocation each).
    routable: Option<Box<[Arc<Instance>]>>,
    /// How many of `routable` are of the newest version.
    newest: usize,
    /// Round-robin cursor.
    next: AtomicUsize,
    /// Its counters and switch, kept across rebuilds of the route.
    pub lasting: Arc<Lasting>,
    /// A rollout running: new clients split between the version rolled
    /// out and the others by its share, each kept on its side.
    pub rollout: Option<Arc<RolloutRoute>>,
}

/// What a waifu's route keeps across its rebuilds, in one allocation.
#[derive(Debug, Default)]
pub struct Lasting {
    /// Its request counters.
    pub stats: LazyStats,
    /// Open, paused or in maintenance.
    pub switch: Switch,
}

impl WaifuRoute {
    /// Its request counters.
    pub fn stats(&self) -> &LazyStats {
        &self.lasting.stats
    }

    /// Open, paused or in maintenance.
    pub fn switch(&self) -> &Switch {
        &self.lasting.switch
    }

    pub fn new(name: impl Into<Arc<str>>, instances: Vec<Arc<Instance>>) -> Self {
        let (routable, newest) = arrange(&instances);
        WaifuRoute {
            name: name.into(),
            instances: instances.into_boxed_slice(),
            routable,
            newest,
            next: AtomicUsize::new(0),
            lasting: Arc::default(),
            rollout: None,
        }
    }

    /// The same waifu with other instances (or the same ones, one of them
    /// now leaving); its counters carry over.
    pub fn rebuilt(&self, instances: Vec<Arc<Instance>>) -> Self {
        let (routable, newest) = arrange(&instances);
        WaifuRoute {
            name: self.name.clone(),
            instances: instances.into_boxed_slice(),
            routable,
            newest,
            next: AtomicUsize::new(0),
            lasting: self.lasting.clone(),
            rollout: self.rollout.clone(),
        }
    }

    /// The same route with `rollout` (or none).
    pub fn with_rollout(&self, rollout: Option<Arc<RolloutRoute>>) -> Self {
        let mut route = self.rebuilt(self.instances.to_vec());
        route.rollout = rollout;
        route
    }

    /// The routable instances, the newest version's first.
    fn routable(&self) -> &[Arc<Instance>] {
        self.routable.as_deref().unwrap_or(&self.instances)
    }

    /// During a rollout: a healthy instance of `side`, round robin, or of
    /// the other side when none of it is healthy; as [`WaifuRoute::pick`]
    /// without a rollout.
    pub fn pick_side(&self, side: Side) -> Option<&Arc<Instance>> {
        let Some(rollout) = &self.rollout else {
            return self.pick();
        };
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let on_side = |i: &Arc<Instance>| rollout.is_new(i.version()) == (side == Side::New);
        round(self.routable(), start, &on_side)
            .or_else(|| round(self.routable(), start, &|i| !on_side(i)))
    }

    /// Picks a healthy instance, round robin, of the newest version if one
    /// of it is healthy; `None` when none is healthy.
    pub fn pick(&self) -> Option<&Arc<Instance>> {
        match self.routable() {
            [] => None,
            [only] => only.is_healthy().then_some(only),
            _ => self.pick_where(|_| true),
        }
    }

    /// As [`WaifuRoute::pick`], other than those in `tried`.
    pub fn pick_except(&self, tried: &[Arc<Instance>]) -> Option<&Arc<Instance>> {
        self.pick_where(|i| !tried.iter().any(|t| Arc::ptr_eq(t, i)))
    }

    fn pick_where(&self, allowed: impl Fn(&Arc<Instance>) -> bool) -> Option<&Arc<Instance>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let (newest, older) = self.routable().split_at(self.newest);
        // An older instance serves only while no newest one is healthy,
        // whether or not `allowed` takes it.
        round(newest, start, &allowed).or_else(|| {
            if newest.iter().any(|i| i.is_healthy()) {
                None
            } else {
                round(older, start, &allowed)
            }
        })
    }

    /// Whether `instance` gets no new request: it said goodbye, or it is of
    /// an older version while one of the newest is healthy (and no rollout
    /// runs).
    pub fn draining(&self, instance: &Instance) -> bool {
        if instance.is_leaving() {
            return true;
        }
        if self.rollout.is_some() {
            return false;
        }
        let (newest, _) = self.routable().split_at(self.newest);
        !newest.iter().any(|i| std::ptr::eq(&**i, instance))
            && newest.iter().any(|i| i.is_healthy())
    }
}

/// The first healthy instance of `group` that `allowed` takes, from the
/// `start`th on, round the end.
fn round<'a>(
    group: &'a [Arc<Instance>],
    start: usize,
    allowed: &impl Fn(&Arc<Instance>) -> bool,
) -> Option<&'a Arc<Instance>> {
    (0..group.len())
        .map(|i| &group[(start + i) % group.len()])
        .find(|inst| inst.is_healthy() && allowed(inst))
}

/// The routable instances of `instances`, the newest version's first
/// (`None`: all of them, in their order), and
/// how many those are.
fn arrange(instances: &[Arc<Instance>]) -> (Option<Box<[Arc<Instance>]>>, usize) {
    let staying = || instances.iter().filter(|i| !i.is_leaving());
    let Some(latest) = staying().max_by_key(|i| i.version_at()) else {
        return (Some(Box::default()), 0);
    };
    let newest_version = latest.version();
    let is_newest = |i: &&Arc<Instance>| i.version() == newest_version;
    let newest = staying().filter(is_newest).count();
    let in_order = staying()
        .filter(is_newest)
        .chain(staying().filter(|i| !is_newest(i)));
    if in_order.clone().count() == instances.len()
        && in_order.zip(instances).all(|(a, b)| Arc::ptr_eq(a, b))
    {
        return (None, newest);
    }
    let mut routable: Vec<Arc<Instance>> = Vec::with_capacity(instances.len());
    routable.extend(staying().filter(is_newest).cloned());
    routable.extend(staying().filter(|i| !is_newest(i)).cloned());
    (Some(routable.into_boxed_slice()), newest)
}

/// One accepted bind, as the proxy matches it.
#[derive(Debug, Clone)]
pub struct BindRoute {
    /// `""` or `/a/b`: matched on whole segments of the canonical path.
    pub prefix: Arc<str>,
    /// `""` or `/t`: prepended to what follows the prefix.
    pub target: Arc<str>,
    pub waifu: Arc<WaifuRoute>,
    /// An `https://` bind: served on the TLS listener only.
    pub tls: bool,
}

impl BindRoute {
    /// The bind of `key` to `target` (`""` or `/t`), routed to `waifu`.
    pub fn new(key: &BindKey, target: &str, waifu: Arc<WaifuRoute>) -> BindRoute {
        BindRoute {
            prefix: shared(&key.prefix),
            target: shared(target),
            waifu,
            tls: key.scheme == waifus_protocol::Scheme::Https,
        }
    }
}

/// `s` as an `Arc`; the empty string (most binds' prefix and target) is
/// one allocation for all of them, not one each.
fn shared(s: &str) -> Arc<str> {
    static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
    if s.is_empty() {
        EMPTY.clone()
    } else {
        s.into()
    }
}

/// Where a request goes.
#[derive(Debug)]
pub struct Resolved<'a> {
    pub waifu: &'a Arc<WaifuRoute>,
    /// Canonical path to send upstream.
    pub path: Cow<'a, str>,
    /// The part of the public path that was stripped (`X-Forwarded-Prefix`).
    pub prefix: &'a str,
    /// Matched an `https://` bind.
    pub tls: bool,
}

/// A waifu's current route and accepted binds (with their targets).
pub type WaifuNow<'a> = (&'a Arc<WaifuRoute>, &'a [(BindKey, String)]);

/// An immutable snapshot of all routes.
///
/// Both maps are [`Shards`], so deriving the next table after a change to
/// one waifu ([`RouteTable::with_waifu`]) copies a few hundred pointers and
/// the shards it touches, not every route: hellos stay cheap with tens of
/// thousands of routes.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// `None` means `MAIN_DOMAIN=*`: every host not claimed by a bind.
    main_domain: Option<Arc<str>>,
    waifus: Shards<Arc<WaifuRoute>>,
    /// Lowercase host → binds, longest prefix first.
    hosts: Shards<Arc<[BindRoute]>>,
    /// Whether the main domain has binds (stored before it became the main
    /// domain): they win there, as on any host. Without, a request for the
    /// main domain is resolved with one lookup, not two.
    main_bound: bool,
    /// How many of the routes have a rollout: periodic work that only
    /// matters during one asks this instead of walking every route.
    rollouts: usize,
}

impl RouteTable {
    pub fn new(
        main_domain: Option<&str>,
        waifus: impl IntoIterator<Item = Arc<WaifuRoute>>,
        binds: impl IntoIterator<Item = (String, BindRoute)>,
    ) -> Self {
        let waifus = waifus
            .into_iter()
            .map(|w| (w.name.clone(), w))
            .collect::<Shards<_>>();
        let mut by_host: HashMap<Arc<str>, Vec<BindRoute>> = HashMap::new();
        for (host, bind) in binds {
            by_host.entry(host.into()).or_default().push(bind);
        }
        let hosts = by_host
            .into_iter()
            .map(|(host, binds)| (host, sorted(binds)))
            .collect();
        let rollouts = waifus.values().filter(|w| w.rollout.is_some()).count();
        let main_domain: Option<Arc<str>> = main_domain.map(Into::into);
        RouteTable {
            main_bound: bound(main_domain.as_deref(), &hosts),
            main_domain,
            waifus,
            hosts,
            rollouts,
        }
    }

    /// The table after one waifu changed: `now` is its route and binds
    /// (`None` once it is gone), `old_hosts` the hosts it was bound on.
    /// Only those hosts' bind lists are rebuilt.
    pub fn with_waifu<'o>(
        &self,
        name: &str,
        now: Option<WaifuNow<'_>>,
        old_hosts: impl IntoIterator<Item = &'o str>,
    ) -> RouteTable {
        let mut waifus = self.waifus.clone();
        let mut hosts = self.hosts.clone();
        let had = self.waifus.get(name).is_some_and(|w| w.rollout.is_some());
        let has = now.is_some_and(|(route, _)| route.rollout.is_some());
        let rollouts = self.rollouts - usize::from(had) + usize::from(has);
        match now {
            Some((route, _)) => {
                waifus.insert(route.name.clone(), route.clone());
            }
            None => {
                waifus.remove(name);
            }
        }
        let binds = now.map_or(&[][..], |(_, b)| b);
        let mut affected: Vec<&str> = binds.iter().map(|(key, _)| key.host.as_str()).collect();
        for host in old_hosts {
            affected.push(host);
        }
        affected.sort_unstable();
        affected.dedup();
        for host in affected {
            let mut list: Vec<BindRoute> = hosts
                .get(host)
                .map(|l| {
                    l.iter()
                        .filter(|b| &*b.waifu.name != name)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            if let Some((route, _)) = now {
                for (key, target) in binds.iter().filter(|(k, _)| k.host == host) {
                    list.push(BindRoute::new(key, target, route.clone()));
                }
            }
            if list.is_empty() {
                hosts.remove(host);
            } else {
                hosts.insert(host.into(), sorted(list));
            }
        }
        RouteTable {
            main_bound: bound(self.main_domain.as_deref(), &hosts),
            main_domain: self.main_domain.clone(),
            waifus,
            hosts,
            rollouts,
        }
    }

    /// Whether any waifu's route has a rollout running (no walk).
    pub fn any_rollout(&self) -> bool {
        self.rollouts > 0
    }

    /// Every waifu's route.
    pub fn waifu_routes(&self) -> impl Iterator<Item = &Arc<WaifuRoute>> {
        self.waifus.values()
    }

    /// The route of a waifu by name (used by the internal API).
    pub fn waifu(&self, name: &str) -> Option<&Arc<WaifuRoute>> {
        self.waifus.get(name)
    }

    /// Whether requests for this lowercase host are routed at all (a bind
    /// host or the main domain).
    pub fn serves_host(&self, host: &str) -> bool {
        self.hosts.contains_key(host) || self.main_domain.as_deref().is_none_or(|m| m == host)
    }

    /// The main domain; `None` for `MAIN_DOMAIN=*`.
    pub fn main_domain(&self) -> Option<&str> {
        self.main_domain.as_deref()
    }

    /// Hosts with at least one `https://` bind.
    pub fn tls_hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts
            .iter()
            .filter(|(_, binds)| binds.iter().any(|b| b.tls))
            .map(|(host, _)| &**host)
    }

    /// Resolves a lowercase host without port and a canonical path.
    pub fn resolve<'a>(&'a self, host: &str, path: &'a str) -> Option<Resolved<'a>> {
        if !self.main_bound && self.main_domain.as_deref() == Some(host) {
            return self.resolve_main(path);
        }
        if let Some(binds) = self.hosts.get(host) {
            return binds.iter().find_map(|b| resolve_bind(b, path));
        }
        match &self.main_domain {
            Some(main) if **main != *host => None,
            _ => self.resolve_main(path),
        }
    }

    fn resolve_main<'a>(&'a self, path: &'a str) -> Option<Resolved<'a>> {
        let after = path.strip_prefix('/')?;
        // A byte loop: `find(char)` sets up a searcher for a short name.
        let end = after.bytes().position(|b| b == b'/').unwrap_or(after.len());
        let waifu = self.waifus.get(&after[..end])?;
        let rest = &after[end..];
        Some(Resolved {
            waifu,
            path: Cow::Borrowed(if rest.is_empty() { "/" } else { rest }),
            prefix: &path[..=end],
            tls: false,
        })
    }
}

/// Whether `main_domain` has binds in `hosts`.
fn bound(main_domain: Option<&str>, hosts: &Shards<Arc<[BindRoute]>>) -> bool {
    main_domain.is_some_and(|main| hosts.get(main).is_some())
}

/// Longest prefix first, so the most specific bind wins.
fn sorted(mut binds: Vec<BindRoute>) -> Arc<[BindRoute]> {
    binds.sort_by_key(|b| std::cmp::Reverse(b.prefix.len()));
    binds.into()
}

fn resolve_bind<'a>(bind: &'a BindRoute, path: &'a str) -> Option<Resolved<'a>> {
    let rest = path.strip_prefix(&*bind.prefix)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    // The bind's root (`link.waifu`, `link.waifu/`) is exactly the target:
    // `POST https://link.waifu/` reaches `POST /link`, as a framework with
    // strict trailing slashes routes it.
    let path = match (&*bind.target, rest) {
        ("", "") => Cow::Borrowed("/"),
        ("", rest) => Cow::Borrowed(rest),
        (target, "" | "/") => Cow::Borrowed(target),
        (target, rest) => Cow::Owned(format!("{target}{rest}")),
    };
    Some(Resolved {
        waifu: &bind.waifu,
        path,
        prefix: &bind.prefix,
        tls: bind.tls,
    })
}

#[cfg(test)]
mod tests;
