//! Active health checks: when each instance is checked, and what is done
//! with the answer.
//!
//! Every instance is checked with `GET {instance}/__internal/health` (or
//! the path its hello declared) every `HEALTH_INTERVAL` (±10 % jitter, so thousands of instances do not beat in
//! step) with `HEALTH_TIMEOUT`, over the same keep-alive connections the
//! proxy uses (so a check also keeps one warm). A new instance's first check
//! runs as soon as it says hello. Any 2xx is a success (204 is what the
//! protocol asks for; the conformance checker is strict about it, routing is
//! not); how outcomes turn into the routing flag is the instance's own rule
//! ([`Instance::record`]). An instance not healthy for `DEREGISTER_AFTER` is
//! deregistered, like Consul's `deregister_critical_service_after`.
//!
//! One task keeps every instance's next check in a queue ([`Schedule`]);
//! a check runs as a task of its own only while it runs.
//!
//! The checks reach the network and the store through [`Checks`] only (the
//! registry is the one implementation that runs; the tests drive a double
//! on a paused clock).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};
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
    pub committed: Option<oneshot::Receiver<()>>,
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
    /// One check of `instance`, the whole exchange within `timeout`; its
    /// connection is kept for reuse only if `keep`.
    fn probe(
        &self,
        instance: &Arc<Instance>,
        timeout: Duration,
        keep: bool,
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

/// What the health checks are asked to do.
#[derive(Debug)]
pub(crate) enum Ask {
    /// Start checking an instance.
    Watch(Watch),
    /// Check this instance now, whoever leads, after any check already
    /// running (a hello for an instance that is not healthy: it may just
    /// have restarted).
    Recheck(Arc<Instance>),
    /// How many instances the schedule holds (for the tests).
    #[cfg(test)]
    Count(oneshot::Sender<usize>),
}

/// What every check shares.
#[derive(Debug)]
struct Shared<C> {
    control: Arc<C>,
    config: HealthConfig,
    /// The checks' times ([`Grid`]).
    grid: Grid,
    leading: tokio::sync::watch::Receiver<bool>,
    /// Where each check hands its instance back to the schedule.
    done: mpsc::UnboundedSender<Done>,
    /// Cancelled when the process stops: checks still running end.
    stop: CancellationToken,
}

/// An instance checked, as the schedule keeps it between checks: 40
/// bytes, where a task of its own took 1.5 KB.
#[derive(Debug)]
struct Watched {
    name: Arc<str>,
    instance: Arc<Instance>,
    /// The health last stored (or, while another orchestrator leads, read
    /// from the store).
    persisted: bool,
    /// Since when its checks have seen it not healthy.
    critical_since: Option<Tick>,
}

/// Where an instance is in its round.
#[derive(Debug)]
enum Slot {
    /// Its next check falls due at `due`, or, with `None`, when this
    /// orchestrator leads the checks or a recheck is asked for (another
    /// orchestrator checks it; its health comes from the store).
    Waiting {
        watched: Watched,
        due: Option<Tick>,
        /// Due now whoever leads (a first check, a recheck), not at the
        /// end of an interval.
        now: bool,
    },
    /// A check runs; `again` if a recheck was asked for meanwhile.
    Checking { again: bool },
}

/// A check's end: the instance handed back, or `None` if it is no longer
/// checked (retired, deregistered, its hello not stored).
#[derive(Debug)]
struct Done {
    key: usize,
    watched: Option<Watched>,
}

/// Every instance's next check, in one place. One task for all instances
/// instead of one each: with 10,000 instances the tasks were the largest
/// part of the heap. A check runs as a task of its own only while it runs.
struct Schedule<C> {
    shared: Arc<Shared<C>>,
    /// By the address of the instance (each is in the map at most once,
    /// and its `Arc` is held while it is: the address is not reused).
    slots: HashMap<usize, Slot>,
    /// (due, key), soonest first; an entry whose slot is no longer
    /// waiting for that time is skipped.
    queue: BinaryHeap<Reverse<(Tick, usize)>>,
    tracker: TaskTracker,
}

fn key(instance: &Arc<Instance>) -> usize {
    Arc::as_ptr(instance) as usize
}

impl<C: Checks> Schedule<C> {
    fn leading(&self) -> bool {
        *self.shared.leading.borrow()
    }

    /// The grid point at or before now: a check set for it is due at once.
    fn now(&self) -> Tick {
        self.shared.grid.before(Instant::now())
    }

    fn watch(&mut self, watch: Watch) {
        let watched = Watched {
            persisted: watch.instance.is_healthy(),
            name: watch.name,
            instance: watch.instance,
            critical_since: None,
        };
        let key = key(&watched.instance);
        if let Some(committed) = watch.committed {
            // The first check of an instance from this process's hello
            // runs at once, whoever leads: it makes the instance routable.
            self.start(key, watched, Some(committed));
            return;
        }
        // A stored instance is checked at once by the leader.
        let due = self.leading().then(|| self.now());
        self.wait(key, watched, due, false);
    }

    /// Puts an instance back to wait for `due` (`None`: for the lead).
    fn wait(&mut self, key: usize, watched: Watched, due: Option<Tick>, now: bool) {
        if let Some(due) = due {
            self.queue.push(Reverse((due, key)));
        }
        self.slots.insert(key, Slot::Waiting { watched, due, now });
    }

    fn recheck(&mut self, instance: &Arc<Instance>) {
        let key = key(instance);
        match self.slots.get_mut(&key) {
            Some(Slot::Checking { again }) => *again = true,
            Some(Slot::Waiting { due, now, .. }) => {
                let at = self.shared.grid.before(Instant::now());
                *due = Some(at);
                *now = true;
                self.queue.push(Reverse((at, key)));
            }
            None => {}
        }
    }

    /// A check ended: schedules the instance's next one.
    fn finished(&mut self, Done { key, watched }: Done) {
        let again = matches!(self.slots.get(&key), Some(Slot::Checking { again: true }));
        let Some(watched) = watched else {
            self.slots.remove(&key);
            return;
        };
        if again {
            self.wait(key, watched, Some(self.now()), true);
            return;
        }
        let config = self.shared.config;
        let period = config.interval.mul_f64(0.9 + fastrand::f64() * 0.2);
        let due = self.shared.grid.after(Instant::now() + period);
        self.wait(key, watched, Some(due), false);
    }

    /// When the next check falls due.
    fn next(&self) -> Option<Instant> {
        self.queue
            .peek()
            .map(|Reverse((due, _))| self.shared.grid.at(*due))
    }

    /// Starts every check due by now.
    fn start_due(&mut self) {
        let now = Instant::now();
        let grid = self.shared.grid;
        let due_by = grid.before(now);
        let leading = self.leading();
        while let Some(&Reverse((at, key))) = self.queue.peek() {
            if at > due_by {
                return;
            }
            self.queue.pop();
            // Only the entry of the time the slot waits for is live.
            let live =
                matches!(self.slots.get(&key), Some(Slot::Waiting { due, .. }) if *due == Some(at));
            if !live {
                continue;
            }
            let Some(Slot::Waiting {
                watched,
                now: asked,
                ..
            }) = self.slots.remove(&key)
            else {
                continue;
            };
            if watched.instance.is_retired() {
                continue;
            }
            if !asked && !leading {
                // Another orchestrator checks; health comes from the store.
                self.wait(key, watched, None, false);
                continue;
            }
            if !asked
                && let Some(pause) = respread(
                    now.saturating_duration_since(grid.at(at)),
                    self.shared.config.interval,
                    fastrand::f64(),
                )
            {
                self.wait(key, watched, Some(grid.after(now + pause)), true);
                continue;
            }
            self.start(key, watched, None);
        }
    }

    /// Starts a check; `committed` for the first check of an instance
    /// from a hello still being stored ([`Watch`]).
    fn start(&mut self, key: usize, watched: Watched, committed: Option<oneshot::Receiver<()>>) {
        self.slots.insert(key, Slot::Checking { again: false });
        self.tracker
            .spawn(check_once(self.shared.clone(), key, watched, committed));
    }

    /// This orchestrator leads the checks now: every instance waiting for
    /// the lead is checked at once.
    fn lead(&mut self) {
        let at = self.now();
        for (key, slot) in &mut self.slots {
            if let Slot::Waiting {
                watched,
                due: due @ None,
                ..
            } = slot
            {
                // What the store said while another orchestrator led.
                watched.persisted = watched.instance.is_healthy();
                *due = Some(at);
                self.queue.push(Reverse((at, *key)));
            }
        }
    }

    /// Forgets retired instances waiting for the lead (the others are
    /// forgotten when their check falls due).
    fn sweep(&mut self) {
        self.slots.retain(|_, slot| match slot {
            Slot::Waiting {
                watched, due: None, ..
            } => !watched.instance.is_retired(),
            _ => true,
        });
        if self.slots.capacity() > 2 * self.slots.len() + 64 {
            self.slots.shrink_to_fit();
        }
        if self.queue.capacity() > 2 * self.queue.len() + 64 {
            self.queue.shrink_to_fit();
        }
    }
}

/// Checks every instance the registry announces on its schedule, and
/// closes idle upstream connections of every routed instance past their
/// age.
pub(crate) async fn supervise<C: Checks>(
    control: Arc<C>,
    routes: Routes,
    mut asked: mpsc::UnboundedReceiver<Ask>,
    config: HealthConfig,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    mut leading: tokio::sync::watch::Receiver<bool>,
) {
    let (done, mut finished) = mpsc::unbounded_channel();
    let mut schedule = Schedule {
        shared: Arc::new(Shared {
            control,
            config,
            grid: Grid {
                epoch: Instant::now(),
            },
            leading: leading.clone(),
            done,
            stop: shutdown.clone(),
        }),
        slots: HashMap::new(),
        queue: BinaryHeap::new(),
        tracker,
    };
    let mut reap = tokio::time::interval(upstream::IDLE_FOR / 2);
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One timer entry, re-armed for each wait.
    let sleep = tokio::time::sleep_until(Instant::now());
    tokio::pin!(sleep);
    leading.borrow_and_update();
    loop {
        schedule.start_due();
        let next = schedule.next();
        if let Some(next) = next
            && sleep.deadline() != next
        {
            sleep.as_mut().reset(next);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = &mut sleep, if next.is_some() => {}
            d = finished.recv() => if let Some(d) = d { schedule.finished(d) },
            a = asked.recv() => match a {
                Some(Ask::Watch(w)) => schedule.watch(w),
                Some(Ask::Recheck(i)) => schedule.recheck(&i),
                #[cfg(test)]
                Some(Ask::Count(answer)) => { let _ = answer.send(schedule.slots.len()); }
                None => return,
            },
            r = leading.changed() => {
                if r.is_err() {
                    return;
                }
                // Only instances parked while another orchestrator led
                // are moved: a repeated `true` moves none.
                if *leading.borrow_and_update() {
                    schedule.lead();
                }
            }
            _ = reap.tick() => {
                schedule.sweep();
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
            }
        }
    }
}

/// One check of an instance and what follows from it (the routing flag,
/// the stored health, a deregistration); hands the instance back to the
/// schedule, unless it is no longer checked.
async fn check_once<C: Checks>(
    shared: Arc<Shared<C>>,
    key: usize,
    mut watched: Watched,
    committed: Option<oneshot::Receiver<()>>,
) {
    let kept = follow_up(&shared, &mut watched, committed).await;
    let _ = shared.done.send(Done {
        key,
        watched: kept.then_some(watched),
    });
}

/// The check itself; whether the instance is still checked after it.
async fn follow_up<C: Checks>(
    shared: &Shared<C>,
    watched: &mut Watched,
    committed: Option<oneshot::Receiver<()>>,
) -> bool {
    let config = shared.config;
    let Watched {
        name,
        instance,
        persisted,
        critical_since,
    } = watched;
    let instance: &Arc<Instance> = instance;
    // It left the registry, or the process stops.
    let gone = || async {
        tokio::select! {
            () = instance.retired() => {}
            () = shared.stop.cancelled() => {}
        }
    };
    if !*shared.leading.borrow() {
        // Health came from the store while another orchestrator led.
        *persisted = instance.is_healthy();
    }
    let seen = tokio::select! {
        () = gone() => return false,
        o = shared.control.probe(instance, config.timeout, keeps_connections(config.interval)) => o,
    };
    let healthy = instance.record(seen.outcome());
    instance.check_done();
    if *shared.leading.borrow() {
        shared.control.observed(name, instance, seen);
    }
    if let Some(stored) = committed {
        // Nothing is stored for an instance whose hello did not commit.
        tokio::select! {
            () = gone() => return false,
            r = stored => if r.is_err() { return false },
        }
    }
    if healthy != *persisted {
        if healthy {
            info!(%name, instance = %instance.upstream, "instance is healthy");
        } else {
            warn!(%name, instance = %instance.upstream, check = %seen, "instance is unhealthy");
        }
        let reason = seen.to_string();
        match shared
            .control
            .store_health(name, instance, healthy, &reason)
            .await
        {
            Ok(()) => *persisted = healthy,
            Err(e) => warn!(%name, error = %e, "could not store health state"),
        }
    }
    let critical_for = match (healthy, *critical_since) {
        (true, _) => {
            *critical_since = None;
            Duration::ZERO
        }
        (false, None) => {
            // The grid point after now: what is counted is never more
            // than the time it has been critical.
            *critical_since = Some(shared.grid.after(Instant::now()));
            Duration::ZERO
        }
        (false, Some(since)) => Instant::now().saturating_duration_since(shared.grid.at(since)),
    };
    if critical_for >= config.deregister_after {
        let why = format!(
            "no healthy answer for {}",
            humantime::format_duration(config.deregister_after)
        );
        match shared.control.deregister(name, instance, &why).await {
            Ok(()) => return false,
            Err(e) => warn!(%name, error = %e, "could not deregister instance"),
        }
    }
    true
}

/// Checks fall due on a grid of this step. With thousands of instances, the
/// checks due in one step go out together and their answers are read in the
/// same turns of the event loop, instead of each one waking this process
/// (and the waifu's) on its own: with 10,000 instances every 5 s, 50 checks
/// a step, the CPU time per check halves (bench/README.md). With a few
/// instances nothing changes but a few milliseconds of delay.
const GRID: Duration = Duration::from_millis(25);

/// A point of the grid: the steps of [`GRID`] since the schedule started,
/// plus one (so an `Option<Tick>` is no larger). 8 bytes where an
/// `Instant` takes 16: the schedule keeps one or two per instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Tick(std::num::NonZeroU64);

/// The grid the checks fall due on, from `epoch`.
#[derive(Debug, Clone, Copy)]
struct Grid {
    epoch: Instant,
}

impl Grid {
    /// The last grid point at or before `t` (a time already due stays due).
    fn before(self, t: Instant) -> Tick {
        self.tick(t, u128::div_euclid)
    }

    /// The first grid point at or after `t`.
    fn after(self, t: Instant) -> Tick {
        self.tick(t, u128::div_ceil)
    }

    fn tick(self, t: Instant, round: fn(u128, u128) -> u128) -> Tick {
        let steps = round(
            t.saturating_duration_since(self.epoch).as_nanos(),
            GRID.as_nanos(),
        );
        let steps = u64::try_from(steps).unwrap_or(u64::MAX - 1);
        Tick(std::num::NonZeroU64::MIN.saturating_add(steps))
    }

    /// When `tick` is.
    fn at(self, tick: Tick) -> Instant {
        let nanos = u128::from(tick.0.get() - 1) * GRID.as_nanos();
        self.epoch + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
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
/// What it holds across its awaits is kept small (thousands may run at
/// once when instances time out): the answer is taken apart before the
/// body is read.
pub(super) async fn check(instance: &Arc<Instance>, timeout: Duration, keep: bool) -> Seen {
    let mut seen = Seen::Timeout;
    let exchange = async {
        let mut request = Outgoing::bodyless(
            Method::GET,
            instance.health_target(),
            &[
                ("host", instance.endpoint.authority.as_str()),
                ("user-agent", "waifus-orchestrator"),
            ],
        );
        if !keep {
            request = request.closing();
        }
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

/// Whether a check's connection is worth keeping for the next check: not
/// when the next one comes after an idle connection's age is over (ten
/// thousand instances checked hourly would otherwise hold ten thousand
/// descriptors and their buffers for nothing, half a minute after each).
fn keeps_connections(interval: Duration) -> bool {
    interval.mul_f64(0.9) < upstream::IDLE_FOR
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
