//! One running copy of a waifu, and the rules its health follows.
//!
//! - a new instance is not routed to before its first successful check;
//! - any 2xx is a success;
//! - a refused or failed connection makes the instance unhealthy at once; any
//!   other failure (timeout, non-2xx, broken response) does so after
//!   [`UNHEALTHY_AFTER`] in a row;
//! - one success makes it healthy again.
//!
//! An instance that said goodbye is *leaving*: it gets no new request, its
//! health is no longer checked, and it is removed once the requests in
//! flight to it ([`Busy`]) are done, or its drain time is over.

use std::sync::Arc;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use waifus_protocol::Upstream;

use waifus_upstream::{Endpoint, HasEndpoint};

/// Soft failures in a row that make an instance unhealthy.
pub const UNHEALTHY_AFTER: u32 = 2;

/// What one check (or one proxied request) found out about an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Connection refused or failed: counts at once.
    Down,
    /// Timeout, non-2xx or broken response: counts after a few in a row.
    Failed,
}

/// What an instance's hello said beyond its address.
#[derive(Debug, Default)]
struct Said {
    version: Option<Box<str>>,
    health_path: Option<Box<str>>,
    limits: waifus_protocol::RequestLimits,
}

/// No limits asked for.
static NO_LIMITS: waifus_protocol::RequestLimits = waifus_protocol::RequestLimits {
    max_body_size: None,
    max_in_flight: None,
    timeout: None,
};

/// One running copy of a waifu, shared by the route table and the health checks.
#[derive(Debug)]
pub struct Instance {
    /// Where to connect; its canonical string is the instance's identity.
    pub upstream: Upstream,
    /// Its address, pre-parsed, and its idle keep-alive connections.
    pub endpoint: Endpoint,
    /// Whether the proxy may send traffic here.
    pub healthy: AtomicBool,
    /// Failed checks in a row; drives the healthy → unhealthy transition.
    pub failures: AtomicU32,
    /// Unix milliseconds of the last completed check; 0 before the first.
    pub last_check_ms: AtomicU64,
    /// Set when the instance leaves the registry: its health checks stop.
    retired: AtomicBool,
    /// Checks completed; [`Instance::checked_since`] waits for the next.
    checks: AtomicU64,
    /// Its version, health path and limits, if its hello named any: most
    /// name none, and these three took a quarter of an instance.
    said: Option<Box<Said>>,
    /// Unix milliseconds since which its version is current (first
    /// announced, or made current by an operator): the instance with the
    /// latest names its waifu's current version.
    version_at_ms: AtomicI64,
    /// Unix milliseconds of its goodbye; 0 while it stays.
    goodbye_ms: AtomicI64,
    /// Requests and tunnels in flight to it ([`Busy`]).
    in_flight: AtomicUsize,
    /// Set when its drain time is over: tunnels still open close.
    drained: AtomicBool,
    /// Woken when it retires, its drain time ends, a check completes or
    /// `in_flight` drops to zero; each waiter looks again at what it waits
    /// for ([`Instance::until`]). One for all: with 10,000 instances, the
    /// two cancellation tokens an instance had (a heap node each, and a
    /// place in the parent's list) and three of these weighed more than
    /// the rest of it.
    changed: Notify,
    /// What it answered while a rollout ran (counted only then), for the
    /// rollout's judgement of its version.
    pub rollout_stats: crate::stats::LazyRolloutStats,
}

impl Instance {
    pub fn new(upstream: Upstream, healthy: bool) -> Self {
        // The protocol crate only produces valid authorities.
        let authority = http::uri::Authority::try_from(upstream.authority())
            .unwrap_or_else(|_| http::uri::Authority::from_static("invalid.invalid:1"));
        Instance {
            upstream,
            endpoint: Endpoint::new(authority),
            healthy: AtomicBool::new(healthy),
            failures: AtomicU32::new(0),
            last_check_ms: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            checks: AtomicU64::new(0),
            said: None,
            version_at_ms: AtomicI64::new(0),
            goodbye_ms: AtomicI64::new(0),
            in_flight: AtomicUsize::new(0),
            drained: AtomicBool::new(false),
            changed: Notify::new(),
            rollout_stats: crate::stats::LazyRolloutStats::default(),
        }
    }

    /// What its hello said, made the first time something is set.
    fn said(&mut self) -> &mut Said {
        self.said.get_or_insert_with(Box::default)
    }

    /// The same, checked at `path` (`None`: the protocol's path).
    pub fn with_health_path(mut self, path: Option<&str>) -> Self {
        if let Some(path) = path {
            self.said().health_path = Some(path.into());
        }
        self
    }

    /// The same, with the limits its hello asked for.
    pub fn with_limits(mut self, limits: waifus_protocol::RequestLimits) -> Self {
        if limits != NO_LIMITS {
            self.said().limits = limits;
        }
        self
    }

    /// The version its hello announced.
    pub fn version(&self) -> Option<&str> {
        self.said.as_ref()?.version.as_deref()
    }

    /// Where its health is checked, if its hello named a path; else the
    /// protocol's `/__internal/health` ([`Instance::health_target`]).
    pub fn health_path(&self) -> Option<&str> {
        self.said.as_ref()?.health_path.as_deref()
    }

    /// What its hello asked the proxy to enforce (before the operator's
    /// clamp).
    pub fn limits(&self) -> &waifus_protocol::RequestLimits {
        self.said.as_ref().map_or(&NO_LIMITS, |said| &said.limits)
    }

    /// The target its health checks ask for.
    pub fn health_target(&self) -> &str {
        self.health_path()
            .unwrap_or(waifus_protocol::DEFAULT_HEALTH_PATH)
    }

    /// The same, announcing `version`, current since `at_ms` (Unix
    /// milliseconds).
    pub fn with_version(mut self, version: Option<&str>, at_ms: i64) -> Self {
        if let Some(version) = version {
            self.said().version = Some(version.into());
        }
        *self.version_at_ms.get_mut() = at_ms;
        self
    }

    /// Since when its version is current (Unix milliseconds).
    pub fn version_at(&self) -> i64 {
        self.version_at_ms.load(Acquire)
    }

    /// Its version is current since `at_ms`: whether that changed. The
    /// route must be rebuilt for it to count.
    pub fn set_version_at(&self, at_ms: i64) -> bool {
        self.version_at_ms.swap(at_ms, AcqRel) != at_ms
    }

    /// Marks it as leaving since `goodbye_ms`; whether it was not already.
    pub fn leave(&self, goodbye_ms: i64) -> bool {
        self.goodbye_ms
            .compare_exchange(0, goodbye_ms.max(1), AcqRel, Acquire)
            .is_ok()
    }

    /// Whether it said goodbye.
    pub fn is_leaving(&self) -> bool {
        self.goodbye_ms.load(Acquire) != 0
    }

    /// Requests and tunnels in flight to it now.
    pub fn in_flight(&self) -> usize {
        // SeqCst, as the increment in `Busy::new`: with the switch's own
        // SeqCst state, a pause and a request starting at once cannot both
        // miss each other (the request backs off, or the pause waits).
        self.in_flight.load(SeqCst)
    }

    /// Waits until nothing is in flight to it.
    pub async fn idle(&self) {
        self.until(|i| i.in_flight() == 0).await;
    }

    /// Takes it out of the health checks: it left the registry.
    pub fn retire(&self) {
        self.raise(&self.retired);
    }

    /// Whether it left the registry.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Acquire)
    }

    /// Waits until it leaves the registry.
    pub async fn retired(&self) {
        self.until(Instance::is_retired).await;
    }

    /// Its drain time is over: tunnels still open to it close.
    pub fn end_drain(&self) {
        self.raise(&self.drained);
    }

    /// Sets one of its flags for good and wakes whoever waits.
    fn raise(&self, flag: &AtomicBool) {
        flag.store(true, Release);
        self.changed.notify_waiters();
    }

    /// Whether its drain time is over.
    pub fn is_drained(&self) -> bool {
        self.drained.load(Acquire)
    }

    /// Waits until its drain time is over.
    pub async fn drained(&self) {
        self.until(Instance::is_drained).await;
    }

    /// Waits until `done` holds, looking again each time something about
    /// the instance changes.
    async fn until(&self, done: impl Fn(&Instance) -> bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before looking, so a change in between wakes it.
            notified.as_mut().enable();
            if done(self) {
                return;
            }
            notified.await;
        }
    }

    /// A health check's outcome is recorded: wakes whoever waits for one.
    pub fn check_done(&self) {
        self.checks.fetch_add(1, Release);
        self.changed.notify_waiters();
    }

    /// How many health checks have completed.
    pub fn checks(&self) -> u64 {
        self.checks.load(Acquire)
    }

    /// Waits up to `within` for a check completed after the `seen`th;
    /// whether one was.
    pub async fn checked_since(&self, seen: u64, within: Duration) -> bool {
        tokio::time::timeout(within, self.until(|i| i.checks() > seen))
            .await
            .is_ok()
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// Applies what one check (or one request) found; returns whether the
    /// instance is now healthy.
    pub fn record(&self, outcome: Outcome) -> bool {
        self.last_check_ms.store(now_ms(), Relaxed);
        let healthy = match outcome {
            Outcome::Success => {
                self.failures.store(0, Relaxed);
                true
            }
            Outcome::Down => {
                self.failures.fetch_add(1, Relaxed);
                false
            }
            Outcome::Failed => {
                let failures = self.failures.fetch_add(1, Relaxed) + 1;
                self.is_healthy() && failures < UNHEALTHY_AFTER
            }
        };
        self.set_healthy(healthy);
        healthy
    }

    /// Sets the routing flag.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Relaxed);
    }
}

impl HasEndpoint for Instance {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// A request or a tunnel in flight to an instance: counted while it lives.
/// A response body holds it (as the endpoint's owner) until it ends.
#[derive(Debug)]
pub struct Busy(Arc<Instance>);

impl Busy {
    pub fn new(instance: Arc<Instance>) -> Arc<Busy> {
        instance.in_flight.fetch_add(1, SeqCst);
        Arc::new(Busy(instance))
    }

    /// Counted in flight only if fewer than `max` are: one atomic step, so
    /// however many requests arrive at once, no more than `max` get in.
    pub fn within(instance: Arc<Instance>, max: usize) -> Option<Arc<Busy>> {
        instance
            .in_flight
            .fetch_update(SeqCst, SeqCst, |n| (n < max).then_some(n + 1))
            .ok()?;
        Some(Arc::new(Busy(instance)))
    }

    pub fn instance(&self) -> &Arc<Instance> {
        &self.0
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, SeqCst) == 1 {
            self.0.changed.notify_waiters();
        }
    }
}

impl HasEndpoint for Busy {
    fn endpoint(&self) -> &Endpoint {
        &self.0.endpoint
    }
}

/// Now, in Unix milliseconds, as the store keeps times.
pub fn now_ms_i64() -> i64 {
    i64::try_from(now_ms()).unwrap_or(i64::MAX)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use waifus_protocol::parse_host;

    #[test]
    fn transitions() {
        let i = Instance::new(parse_host("a:1").unwrap(), false);
        assert!(!i.is_healthy(), "new instances start unhealthy");
        assert!(!i.record(Outcome::Failed));
        assert!(
            i.record(Outcome::Success),
            "healthy after the first success"
        );
        assert!(i.record(Outcome::Failed), "one soft failure is tolerated");
        assert!(!i.record(Outcome::Failed), "two soft failures are not");
        assert!(i.record(Outcome::Success));
        assert!(
            !i.record(Outcome::Down),
            "a refused connection counts at once"
        );
    }

    /// What a hello said is read back as said; an instance whose hello
    /// said nothing beyond its address keeps no box for it.
    #[test]
    fn what_a_hello_said_is_kept_only_when_said() {
        let plain = Instance::new(parse_host("a:1").unwrap(), false)
            .with_version(None, 5)
            .with_health_path(None)
            .with_limits(waifus_protocol::RequestLimits::default());
        assert!(plain.said.is_none());
        assert_eq!(plain.version(), None);
        assert_eq!(plain.health_target(), waifus_protocol::DEFAULT_HEALTH_PATH);
        assert_eq!(*plain.limits(), waifus_protocol::RequestLimits::default());
        assert_eq!(plain.version_at(), 5);
        let limits = waifus_protocol::RequestLimits {
            max_in_flight: Some(3),
            ..Default::default()
        };
        let said = Instance::new(parse_host("a:1").unwrap(), false)
            .with_version(Some("v2"), 7)
            .with_health_path(Some("/up"))
            .with_limits(limits);
        assert_eq!(said.version(), Some("v2"));
        assert_eq!(said.health_path(), Some("/up"));
        assert_eq!(said.health_target(), "/up");
        assert_eq!(*said.limits(), limits);
        // Each alone is kept too.
        let only_limits = Instance::new(parse_host("a:1").unwrap(), false).with_limits(limits);
        assert_eq!(
            (only_limits.version(), *only_limits.limits()),
            (None, limits)
        );
        // Without the three inline, an instance is 64 bytes smaller (272
        // before).
        assert!(size_of::<Instance>() <= 208, "{}", size_of::<Instance>());
    }

    /// Each waiter wakes for its own change, and only for it: one `Notify`
    /// serves them all, so a wake-up for another change must not end a
    /// wait early.
    #[tokio::test(start_paused = true)]
    async fn waiters_wake_for_their_own_change() {
        let i = Arc::new(Instance::new(parse_host("a:1").unwrap(), true));
        let busy = Busy::new(i.clone());
        let (a, b, c, d) = (i.clone(), i.clone(), i.clone(), i.clone());
        let retired = tokio::spawn(async move { a.retired().await });
        let drained = tokio::spawn(async move { b.drained().await });
        let idle = tokio::spawn(async move { c.idle().await });
        let checked =
            tokio::spawn(async move { d.checked_since(0, Duration::from_secs(3600)).await });
        let settle = || tokio::time::sleep(Duration::from_millis(1));
        // A wake-up that never comes fails here instead of hanging.
        async fn soon<T>(task: tokio::task::JoinHandle<T>) -> T {
            let done = tokio::time::timeout(Duration::from_secs(1), task).await;
            done.expect("woken").expect("the waiter ran")
        }
        settle().await;
        i.check_done();
        assert!(soon(checked).await, "a check completed");
        settle().await;
        assert!(!retired.is_finished() && !drained.is_finished() && !idle.is_finished());
        i.retire();
        soon(retired).await;
        assert!(i.is_retired());
        settle().await;
        assert!(!drained.is_finished() && !idle.is_finished());
        drop(busy);
        soon(idle).await;
        settle().await;
        assert!(!drained.is_finished());
        i.end_drain();
        soon(drained).await;
        assert!(
            !i.checked_since(1, Duration::from_secs(5)).await,
            "no second check: the wait times out"
        );
    }
}
