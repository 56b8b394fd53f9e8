use tokio::sync::watch;
use tokio::time::Instant;

use super::super::double::{Call, Double, instance};
use super::*;
use crate::routing::{Busy, now_ms_i64};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Drains one instance that said goodbye just now.
fn drain_one(double: &Arc<Double>, instance: &Arc<Instance>) -> tokio::task::JoinHandle<()> {
    let leaving = Leaving {
        name: "w".into(),
        instance: instance.clone(),
        goodbye_ms: now_ms_i64(),
    };
    tokio::spawn(drain(
        double.clone(),
        leaving,
        TIMEOUT,
        CancellationToken::new(),
    ))
}

#[tokio::test(start_paused = true)]
async fn an_idle_instance_is_removed_at_once() {
    let double = Double::new(&[]);
    let instance = instance(true);
    drain_one(&double, &instance).await.unwrap();
    let writes = double.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert!(writes[0].0 < Duration::from_millis(10), "{writes:?}");
    assert_eq!(
        writes[0].1,
        Call::Removed("it said goodbye and nothing is in flight to it".to_owned())
    );
    assert!(!instance.is_drained(), "no tunnel is cut");
}

#[tokio::test(start_paused = true)]
async fn a_busy_instance_is_removed_when_its_last_request_ends() {
    let double = Double::new(&[]);
    let instance = instance(true);
    let busy = Busy::new(instance.clone());
    let task = drain_one(&double, &instance);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(double.writes(), [], "not removed while busy");
    drop(busy);
    task.await.unwrap();
    let writes = double.writes();
    assert!(
        writes[0].0 >= Duration::from_secs(10) && writes[0].0 < Duration::from_secs(11),
        "{writes:?}"
    );
    assert!(!instance.is_drained());
}

#[tokio::test(start_paused = true)]
async fn an_instance_still_busy_at_the_drain_timeout_is_removed_with_its_tunnels_cut() {
    let double = Double::new(&[]);
    let instance = instance(true);
    let _tunnel = Busy::new(instance.clone());
    drain_one(&double, &instance).await.unwrap();
    let writes = double.writes();
    let (at, Call::Removed(why)) = &writes[0] else {
        panic!("{writes:?}")
    };
    // The deadline counts from the goodbye's stored (wall-clock) time.
    assert!(
        *at > TIMEOUT - Duration::from_secs(1) && *at <= TIMEOUT,
        "removed at {at:?}"
    );
    assert_eq!(why, "it said goodbye and DRAIN_TIMEOUT (30s) has passed");
    assert!(instance.is_drained(), "its tunnels are cut");
}

#[tokio::test(start_paused = true)]
async fn a_removal_the_store_refuses_is_retried_with_a_growing_pause() {
    let double = Double::new(&[]).failing(4);
    let instance = instance(true);
    let start = Instant::now();
    drain_one(&double, &instance).await.unwrap();
    // Four failures: 0.25 + 0.5 + 1 + 2 s of pauses.
    let writes = double.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    let at = writes[0].0;
    assert!(
        at >= Duration::from_millis(3750) && at < Duration::from_millis(3800),
        "removed at {at:?} ({:?} after the start)",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn only_the_leader_forgets_waifus_left_without_instances() {
    let double = Double::new(&[]);
    let (leads, leading) = watch::channel(false);
    let (_leave, leaving) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let timing = Timing {
        drain_timeout: TIMEOUT,
        forget_after: Duration::from_secs(600),
    };
    let task = tokio::spawn(supervise(
        double.clone(),
        leaving,
        timing,
        leading,
        TaskTracker::new(),
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(double.writes(), [], "a follower forgets nothing");
    leads.send(true).unwrap();
    tokio::time::sleep(Duration::from_secs(100)).await;
    let forgot: Vec<Duration> = double.writes().into_iter().map(|(t, _)| t).collect();
    // Every 30 s from the start, while leading: at 120, 150 and 180 s.
    assert_eq!(
        forgot,
        [120, 150, 180].map(Duration::from_secs),
        "{:?}",
        double.writes()
    );
    assert!(
        double
            .writes()
            .iter()
            .all(|(_, c)| *c == Call::Forgot(Duration::from_secs(600)))
    );
    shutdown.cancel();
    task.await.unwrap();
}
