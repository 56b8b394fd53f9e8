//! Active health checks: when each instance is checked, and what is done
//! with the answer.
//!
//! Every instance gets its own task: `GET {instance}/__internal/health` (or
//! the path its hello declared) every
//! `HEALTH_INTERVAL` (±10 % jitter, so thousands of instances do not beat in
//! step) with `HEALTH_TIMEOUT`, over the same keep-alive connections the
//! proxy uses (so a check also keeps one warm). A new instance's first check
//! runs as soon as it says hello. Any 2xx is a success (204 is what the
//! protocol asks for; the conformance checker is strict about it, routing is
//! not); how outcomes turn into the routing flag is the instance's own rule
//! ([`Instance::record`]). An instance not healthy for `DEREGISTER_AFTER` is
//! deregistered, like Consul's `deregister_critical_service_after`.
//!
//! The checks reach the network and the store through [`Checks`] only (the
//! registry is the one implementation that runs; the tests drive a double
//! on a paused clock).

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::routing::{Instance, Outcome, Routes};
use crate::store::StoreError;
use crate::upstream::{self, Answer, Outgoing, SendError, UpstreamBody};

/// Timing of the checks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HealthConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub deregister_after: Duration,
}

/// A new instance the health checker must start watching.
#[derive(Debug)]
pub(crate) struct Watch {
    pub name: Arc<str>,
    pub instance: Arc<Instance>,
    /// For an instance from a hello still being stored: fires once it is
    /// stored, or is dropped if storing failed. The first check runs while
    /// the transaction commits, so a healthy instance is routable as soon
    /// as it is published; its health is stored only after the commit.
    pub committed: Option<tokio::sync::oneshot::Receiver<()>>,
}

/// What one check saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// An answer with this status (2xx: a success).
    Status(u16),
    /// The connection was refused: nothing listens there.
    Refused,
    /// The connection failed otherwise (no route, reset).
    Unreachable,
    /// The connection was not made in time.
    ConnectTimeout,
    /// No whole answer in time.
    Timeout,
    /// The answer was not HTTP, or the connection broke off.
    Broken,
    /// A 101 to a check that asked for no upgrade.
    Switched,
}

impl Seen {
    /// What it counts as for the instance's health ([`Instance::record`]).
    pub(crate) fn outcome(self) -> Outcome {
        match self {
            Seen::Status(s) if (200..300).contains(&s) => Outcome::Success,
            Seen::Refused | Seen::Unreachable | Seen::ConnectTimeout => Outcome::Down,
            Seen::Status(_) | Seen::Timeout | Seen::Broken | Seen::Switched => Outcome::Failed,
        }
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seen::Status(s) => write!(f, "status {s}"),
            Seen::Refused => f.write_str("refused"),
            Seen::Unreachable => f.write_str("unreachable"),
            Seen::ConnectTimeout => f.write_str("connect timeout"),
            Seen::Timeout => f.write_str("timeout"),
            Seen::Broken => f.write_str("broken answer"),
            Seen::Switched => f.write_str("unasked 101"),
        }
    }
}

/// What a health check asks of the rest of the control plane.
pub(crate) trait Checks: Send + Sync + 'static {
    /// One check of `instance`, the whole exchange within `timeout`.
    fn probe(
        &self,
        instance: &Arc<Instance>,
        timeout: Duration,
    ) -> impl Future<Output = Seen> + Send;

    /// Stores a change of an instance's health, for other orchestrators
    /// and restarts, with the history row saying `reason`.
    fn store_health(
        &self,
        name: &str,
        instance: &Arc<Instance>,
        healthy: bool,
        reason: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A check of an instance of `name` that this orchestrator ran as the
    /// health leader, its outcome recorded: what the outage notifications
    /// go by.
    fn observed(&self, name: &Arc<str>, instance: &Arc<Instance>, seen: Seen);

    /// Drops an instance that stayed critical too long (its waifu and binds
    /// go with its last instance); `why` goes into the audit log.
    fn deregister(
        &self,
        name: &str,
        instance: &Arc<Instance>,
        why: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// What every instance's task shares.
#[derive(Debug)]
struct Shared<C> {
    control: Arc<C>,
    config: HealthConfig,
    /// The start of the checks' grid ([`on_grid`]).
    epoch: Instant,
}

/// Starts a checking task for every instance the registry announces, and
/// closes idle upstream connections of every routed instance past their
/// age.
pub(crate) async fn supervise<C: Checks>(
    control: Arc<C>,
    routes: Routes,
    mut watched: mpsc::UnboundedReceiver<Watch>,
    config: HealthConfig,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    leading: tokio::sync::watch::Receiver<bool>,
) {
    let shared = Arc::new(Shared {
        control,
        config,
        epoch: Instant::now(),
    });
    let mut reap = tokio::time::interval(upstream::IDLE_FOR / 2);
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let watch = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = reap.tick() => {
                // Idle upstream connections past their age are closed here,
                // not only when the next request finds them. Closing ten
                // thousand at once would stall this thread for tens of
                // milliseconds: requests get a turn every few closes.
                let table = routes.load_full();
                let mut since_yield = 0;
                for waifu in table.waifu_routes() {
                    for instance in waifu.instances.iter() {
                        since_yield += 1 + 16 * instance.endpoint.pool.reap(upstream::IDLE_FOR);
                        if since_yield >= 1024 {
                            since_yield = 0;
                            tokio::task::yield_now().await;
                        }
                    }
                }
                continue;
            }
            w = watched.recv() => match w { Some(w) => w, None => return },
        };
        let task = watch_instance(shared.clone(), watch, leading.clone());
        tracker.spawn(task);
    }
}

async fn watch_instance<C: Checks>(
    shared: Arc<Shared<C>>,
    Watch {
        name,
        instance,
        mut committed,
    }: Watch,
    mut leading: tokio::sync::watch::Receiver<bool>,
) {
    let (config, epoch) = (shared.config, shared.epoch);
    // One wait for retirement, registered once, and one timer entry,
    // re-armed for each wait, serve every step below.
    let retired = instance.retired.clone().cancelled_owned();
    let sleep = tokio::time::sleep_until(epoch);
    tokio::pin!(retired, sleep);
    let mut persisted = instance.is_healthy();
    // Since when this task has seen the instance not healthy.
    let mut critical_since = None;
    // The first check of an instance from this process's hello runs here
    // whoever leads: it makes the instance routable at once.
    let mut first = committed.is_some();
    loop {
        if !first && !*leading.borrow() {
            // Another orchestrator checks; health comes from the store,
            // unless a hello here asks for a check now.
            tokio::select! {
                () = &mut retired => return,
                r = leading.wait_for(|l| *l) => if r.is_err() { return },
                () = instance.recheck.notified() => {}
            }
            persisted = instance.is_healthy();
        }
        first = false;
        let seen = tokio::select! {
            () = &mut retired => return,
            o = shared.control.probe(&instance, config.timeout) => o,
        };
        let healthy = instance.record(seen.outcome());
        instance.check_done();
        if *leading.borrow() {
            shared.control.observed(&name, &instance, seen);
        }
        if let Some(stored) = committed.take() {
            // Nothing is stored for an instance whose hello did not commit.
            tokio::select! {
                () = &mut retired => return,
                r = stored => if r.is_err() { return },
            }
        }
        if healthy != persisted {
            if healthy {
                info!(%name, instance = %instance.upstream, "instance is healthy");
            } else {
                warn!(%name, instance = %instance.upstream, check = %seen, "instance is unhealthy");
            }
            // Boxed, as is the deregistration below: these rare awaits
            // (futures of 1.6 and 2.0 KiB) would otherwise set the size of
            // every instance's task, which is 1.3 KiB without them.
            let reason = seen.to_string();
            match Box::pin(
                shared
                    .control
                    .store_health(&name, &instance, healthy, &reason),
            )
            .await
            {
                Ok(()) => persisted = healthy,
                Err(e) => warn!(%name, error = %e, "could not store health state"),
            }
        }
        let critical_for = match (healthy, critical_since) {
            (true, _) => {
                critical_since = None;
                Duration::ZERO
            }
            (false, None) => {
                critical_since = Some(Instant::now());
                Duration::ZERO
            }
            (false, Some(since)) => Instant::now() - since,
        };
        if critical_for >= config.deregister_after {
            let why = format!(
                "no healthy answer for {}",
                humantime::format_duration(config.deregister_after)
            );
            match Box::pin(shared.control.deregister(&name, &instance, &why)).await {
                Ok(()) => return,
                Err(e) => warn!(%name, error = %e, "could not deregister instance"),
            }
        }
        let period = config.interval.mul_f64(0.9 + fastrand::f64() * 0.2);
        let due = on_grid(Instant::now() + period, epoch);
        sleep.as_mut().reset(due);
        tokio::select! {
            () = &mut retired => return,
            () = &mut sleep => {}
            () = instance.recheck.notified() => {
                first = true;
                continue;
            }
        }
        if let Some(pause) = respread(Instant::now() - due, config.interval, fastrand::f64()) {
            sleep.as_mut().reset(Instant::now() + pause);
            tokio::select! {
                () = &mut retired => return,
                () = &mut sleep => {}
            }
        }
    }
}

/// Checks fall due on a grid of this step. With thousands of instances, the
/// checks due in one step go out together and their answers are read in the
/// same turns of the event loop, instead of each one waking this process
/// (and the waifu's) on its own: with 10,000 instances every 5 s, 50 checks
/// a step, the CPU time per check halves (bench/README.md). With a few
/// instances nothing changes but a few milliseconds of delay.
const GRID: Duration = Duration::from_millis(25);

/// The first grid point at or after `t`, the grid starting at `epoch`.
fn on_grid(t: Instant, epoch: Instant) -> Instant {
    let step = GRID.as_nanos();
    let since = t.saturating_duration_since(epoch).as_nanos();
    epoch + Duration::from_nanos(u64::try_from(since.div_ceil(step) * step).unwrap_or(u64::MAX))
}

/// A check that wakes up this late means the process did not run (a stopped
/// or suspended VM, a `SIGSTOP`) or its thread was starved.
const STALLED: Duration = Duration::from_millis(100);

/// After a stall, every check that fell due meanwhile is overdue at once:
/// rather than sending them all in one burst, and keeping them in step from
/// then on, each waits a random part of an interval more, so the checks are
/// spread out again. `late` is how long past its time the check woke up;
/// `unit` is uniform in [0, 1).
fn respread(late: Duration, interval: Duration, unit: f64) -> Option<Duration> {
    (late > STALLED).then(|| interval.mul_f64(unit))
}

/// One check: the request, the response head and its body, all within
/// `timeout` (one timer). A 2xx head counts as a success even if its body
/// is then cut off by the deadline; the body is read only so that the
/// connection can be reused.
///
/// This future is part of every instance's task, so what it holds across
/// its awaits is kept small: the answer is taken apart before the body is
/// read.
pub(super) async fn check(instance: &Arc<Instance>, timeout: Duration) -> Seen {
    let mut seen = Seen::Timeout;
    let exchange = async {
        let request = Outgoing::bodyless(
            Method::GET,
            instance.health_target(),
            &[
                ("host", instance.endpoint.authority.as_str()),
                ("user-agent", "waifus-orchestrator"),
            ],
        );
        let body = match judge(upstream::send(instance, request, timeout).await) {
            Ok((status, body)) => {
                seen = Seen::Status(status);
                body
            }
            Err(failed) => {
                seen = failed;
                return;
            }
        };
        drain(body).await;
    };
    let _ = tokio::time::timeout(timeout, exchange).await;
    seen
}

/// A check's answer: the status and body of a 2xx response, the body still
/// to be read, or what else was seen.
fn judge(answer: Result<Answer, SendError>) -> Result<(u16, UpstreamBody), Seen> {
    match answer {
        Err(SendError::Connect(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(Seen::Refused)
        }
        Err(SendError::Connect(_)) => Err(Seen::Unreachable),
        Err(SendError::ConnectTimeout) => Err(Seen::ConnectTimeout),
        Ok(Answer::Response(response)) => {
            let status = response.status().as_u16();
            if response.status().is_success() {
                Ok((status, response.into_body()))
            } else {
                Err(Seen::Status(status))
            }
        }
        Ok(Answer::Switched { .. }) => Err(Seen::Switched),
        Err(_) => Err(Seen::Broken),
    }
}

/// Reads a check's body to its end, so that its connection goes back to the
/// pool; a body over 4 KiB, or a broken one, is dropped with its connection.
async fn drain(mut body: UpstreamBody) {
    let mut left = 4096usize;
    while let Some(Ok(frame)) = body.frame().await {
        let n = frame.data_ref().map_or(0, bytes::Buf::remaining);
        match left.checked_sub(n) {
            Some(l) => left = l,
            None => return,
        }
    }
}

#[cfg(test)]
mod tests;
