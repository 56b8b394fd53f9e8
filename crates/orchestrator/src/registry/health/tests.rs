use super::*;

#[test]
fn checks_fall_due_on_the_grid() {
    let epoch = Instant::now();
    let grid = Grid { epoch };
    let on_grid = |t| grid.at(grid.after(t));
    let ms = |n| epoch + Duration::from_millis(n);
    assert_eq!(on_grid(epoch), epoch);
    assert_eq!(on_grid(ms(1)), ms(25));
    assert_eq!(on_grid(ms(25)), ms(25));
    assert_eq!(on_grid(ms(4_990)), ms(5_000));
    assert_eq!(on_grid(ms(5_001)), ms(5_025));
    assert_eq!(grid.at(grid.before(ms(5_024))), ms(5_000));
    assert_eq!(grid.at(grid.before(ms(5_025))), ms(5_025));
    // Never earlier than asked (`after`) or later (`before`), and never
    // more than a step off; ticks keep the order of times.
    let mut last = grid.before(epoch);
    for n in [
        0,
        7,
        24_999,
        25_001,
        26_000,
        333_333,
        12_345_678,
        86_400_000_000 * 365 * 10,
    ] {
        let t = epoch + Duration::from_micros(n);
        let (up, down) = (grid.at(grid.after(t)), grid.at(grid.before(t)));
        assert!(up >= t && up - t < GRID, "{n} µs");
        assert!(down <= t && t - down < GRID, "{n} µs");
        assert!(grid.before(t) >= last && grid.after(t) >= grid.before(t));
        last = grid.before(t);
    }
    // A time before the grid began is its start.
    assert_eq!(grid.before(epoch), grid.after(epoch));
}

#[test]
fn only_a_stall_respreads_the_checks() {
    let interval = Duration::from_secs(5);
    for late in [Duration::ZERO, Duration::from_millis(3), STALLED] {
        assert_eq!(respread(late, interval, 0.7), None, "{late:?} late");
    }
    let stalled = Duration::from_secs(20);
    assert_eq!(respread(stalled, interval, 0.0), Some(Duration::ZERO));
    assert_eq!(
        respread(stalled, interval, 0.5),
        Some(Duration::from_millis(2500))
    );
    assert!(respread(stalled, interval, 0.999_999).unwrap() < interval);
}

use tokio::sync::{mpsc, oneshot, watch};

use super::super::double::{Call, Double, instance};

const CONFIG: HealthConfig = HealthConfig {
    interval: Duration::from_secs(5),
    timeout: Duration::from_secs(1),
    deregister_after: Duration::from_secs(30),
};

/// The schedule, run against `double`; what the registry would send it.
struct Running {
    asks: mpsc::UnboundedSender<Ask>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn new(double: &Arc<Double>, leading: watch::Receiver<bool>) -> Running {
        let (asks, asked) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let (_writer, routes) = crate::routing::routes();
        let task = tokio::spawn(supervise(
            double.clone(),
            routes,
            asked,
            CONFIG,
            TaskTracker::new(),
            stop.clone(),
            leading,
        ));
        Running { asks, stop, task }
    }

    fn watch(&self, instance: &Arc<Instance>, committed: Option<oneshot::Receiver<()>>) {
        self.asks
            .send(Ask::Watch(Watch {
                name: "w".into(),
                instance: instance.clone(),
                committed,
            }))
            .unwrap();
    }

    fn recheck(&self, instance: &Arc<Instance>) {
        self.asks.send(Ask::Recheck(instance.clone())).unwrap();
    }

    /// How many instances the schedule holds.
    async fn count(&self) -> usize {
        let (answer, count) = oneshot::channel();
        self.asks.send(Ask::Count(answer)).unwrap();
        count.await.unwrap()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

/// Runs one instance's checks against `double`.
fn watch(
    double: &Arc<Double>,
    instance: &Arc<Instance>,
    committed: Option<oneshot::Receiver<()>>,
    leading: watch::Receiver<bool>,
) -> Running {
    let running = Running::new(double, leading);
    running.watch(instance, committed);
    running
}

fn leading(leads: bool) -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(leads)
}

#[tokio::test(start_paused = true)]
async fn an_instance_down_is_deregistered_after_deregister_after_and_not_before() {
    let double = Double::new(&[Outcome::Down]);
    let instance = instance(true);
    let (_leads, leading) = leading(true);
    let running = watch(&double, &instance, None, leading);
    double
        .until(|c| c.iter().any(|(_, c)| matches!(c, Call::Deregistered(_))))
        .await;
    let probes = double.probes();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(double.probes(), probes, "not checked once deregistered");
    assert_eq!(running.count().await, 0, "forgotten once deregistered");
    running.stop().await;
    let writes = double.writes();
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert_eq!(writes[0], (Duration::ZERO, Call::Stored(false)));
    let (at, Call::Deregistered(why)) = &writes[1] else {
        panic!("{writes:?}")
    };
    // Critical since the first check (at 0); checked every 5 s ± 10 % on a
    // 25 ms grid: the first check at or past 30 s deregisters.
    assert!(*at >= CONFIG.deregister_after, "deregistered at {at:?}");
    assert!(*at <= CONFIG.deregister_after + CONFIG.interval.mul_f64(1.1) + GRID);
    assert_eq!(why, "no healthy answer for 30s");
    assert!(
        double.probes() >= 6,
        "checked every interval: {:?}",
        double.calls()
    );
}

#[tokio::test(start_paused = true)]
async fn health_changes_are_stored_once_each_way_and_one_soft_failure_is_tolerated() {
    use Outcome::{Failed, Success};
    let double = Double::new(&[
        Success, Success, Failed, Success, Failed, Failed, Failed, Success,
    ]);
    let instance = instance(false);
    let (_leads, leading) = leading(true);
    let running = watch(&double, &instance, None, leading);
    double.until(|_| double.probes() >= 10).await;
    instance.retire();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(running.count().await, 0, "forgotten once retired");
    running.stop().await;
    let stored: Vec<Call> = double.writes().into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        stored,
        [Call::Stored(true), Call::Stored(false), Call::Stored(true)]
    );
    // Checks every 4.5–5.5 s, never two in one interval.
    let calls = double.calls();
    let times: Vec<Duration> = calls
        .iter()
        .filter(|(_, c)| *c == Call::Probe)
        .map(|(t, _)| *t)
        .collect();
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= CONFIG.interval.mul_f64(0.9) && gap <= CONFIG.interval.mul_f64(1.1) + GRID,
            "{times:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_hellos_first_check_routes_at_once_and_is_stored_only_once_committed() {
    let double = Double::new(&[Outcome::Success]);
    let instance = instance(false);
    let (commit, committed) = oneshot::channel();
    // A follower too runs the first check of a hello it took.
    let (_leads, leading) = leading(false);
    let running = watch(&double, &instance, Some(committed), leading);
    double.until(|_| double.probes() == 1).await;
    assert!(instance.is_healthy(), "routable before the commit");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(double.writes(), [], "nothing stored before the commit");
    commit.send(()).unwrap();
    double
        .until(|c| c.iter().any(|(_, c)| *c == Call::Stored(true)))
        .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(double.probes(), 1, "a follower checks no more");
    assert_eq!(running.count().await, 1, "still held, for the lead");
    instance.retire();
    // Forgotten by the next sweep (every 15 s), though never due again.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(running.count().await, 0, "forgotten once retired");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_hello_that_did_not_commit_stores_nothing_and_stops_its_checks() {
    let double = Double::new(&[Outcome::Success]);
    let instance = instance(false);
    let (commit, committed) = oneshot::channel::<()>();
    let (_leads, leading) = leading(true);
    let running = watch(&double, &instance, Some(committed), leading);
    double.until(|_| double.probes() == 1).await;
    drop(commit);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(double.probes(), 1, "no check after the failed hello");
    assert_eq!(running.count().await, 0);
    assert_eq!(double.writes(), []);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_follower_checks_when_asked_and_all_the_time_once_it_leads() {
    let double = Double::new(&[Outcome::Success]);
    let instance = instance(true);
    let (leads, leading) = leading(false);
    let running = watch(&double, &instance, None, leading);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(double.probes(), 0, "health comes from the store");
    running.recheck(&instance);
    double.until(|_| double.probes() == 1).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(double.probes(), 1, "one check per request");
    leads.send(true).unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let probes = double.probes();
    assert!(
        (12..=15).contains(&probes),
        "{probes} checks in a minute of leading"
    );
    assert_eq!(double.writes(), [], "healthy all along: nothing to store");
    instance.retire();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(running.count().await, 0);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_recheck_during_a_check_runs_another_right_after() {
    let double = Double::new(&[Outcome::Success]).slow(Duration::from_millis(200));
    let instance = instance(true);
    let (_leads, leading) = leading(true);
    let running = watch(&double, &instance, None, leading);
    double.until(|_| double.probes() == 1).await;
    // The first check is still waiting for its answer.
    running.recheck(&instance);
    double.until(|_| double.probes() == 2).await;
    let calls = double.calls();
    assert!(
        calls[1].0 < Duration::from_secs(1),
        "the second check came at once: {calls:?}"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_thousand_instances_are_each_checked_every_interval_on_one_task() {
    let double = Double::new(&[Outcome::Success]);
    let (leads, leading) = leading(true);
    let running = Running::new(&double, leading);
    let instances: Vec<_> = (0..1000).map(|_| instance(true)).collect();
    for i in &instances {
        running.watch(i, None);
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    // Each: one check at once, then one every 4.5–5.5 s.
    let probes = double.probes();
    assert!((11_000..=14_500).contains(&probes), "{probes} checks");
    assert_eq!(running.count().await, 1000);
    // Half retire; a follower then holds the rest without checking them.
    for i in instances.iter().step_by(2) {
        i.retire();
    }
    leads.send(false).unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(running.count().await, 500);
    let probes = double.probes();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(double.probes(), probes, "a follower checks nothing");
    leads.send(true).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        double.probes(),
        probes + 500,
        "the new leader checks all at once"
    );
    running.stop().await;
}

/// Checks every 5 s keep their connection for the next check; hourly ones
/// close theirs at once (it would only sit idle until reaped).
#[tokio::test]
async fn only_checks_that_come_back_soon_keep_their_connection() {
    for (interval, kept) in [(Duration::from_secs(5), 1), (Duration::from_secs(3600), 0)] {
        let (port, waifu) = waifus_testkit::http::bare_waifu(
            vec![b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()],
            true,
        )
        .await;
        let upstream = waifus_protocol::parse_host(&format!("127.0.0.1:{port}")).unwrap();
        let instance = Arc::new(Instance::new(upstream, false));
        let keep = keeps_connections(interval);
        let seen = check(&instance, Duration::from_secs(5), keep).await;
        assert_eq!(seen, Seen::Status(204));
        assert_eq!(instance.endpoint.pool.idle(), kept, "every {interval:?}");
        drop(instance);
        waifu.await.unwrap();
    }
}

/// 10,000 instances keep a slot each (16,384 in the table): it stays small.
#[test]
fn a_slot_is_small() {
    // 80 bytes with `Instant`s and the hello's receiver inside.
    assert!(size_of::<Slot>() <= 56, "{}", size_of::<Slot>());
    assert_eq!(size_of::<Option<Tick>>(), 8);
}
