//! Instances leaving: after a goodbye, an instance gets no new request (its
//! route no longer picks it) and is removed once nothing is in flight to it
//! here, or once `DRAIN_TIMEOUT` has passed since its goodbye, when tunnels
//! still open to it are closed. Every orchestrator drains the instances it
//! knows to be leaving, by the goodbye's stored time, so all of them close
//! their tunnels at the same moment; removing is idempotent, and whichever
//! is first removes the row.
//!
//! A waifu whose last instance left stays, answering 503, until it says
//! hello again; after `DEREGISTER_AFTER` without any instance the
//! orchestrator that runs the health checks forgets it, with its binds.
//!
//! The writes go through [`Leave`], which the registry implements.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::routing::Instance;
use crate::store::StoreError;

/// How often (at most) the health leader looks for waifus to forget.
const FORGET_EVERY: Duration = Duration::from_secs(30);

/// An instance that said goodbye, to drain.
#[derive(Debug)]
pub(crate) struct Leaving {
    pub name: Arc<str>,
    pub instance: Arc<Instance>,
    /// When it said goodbye, Unix milliseconds (the stored time).
    pub goodbye_ms: i64,
}

/// The writes draining makes.
pub(crate) trait Leave: Send + Sync + 'static {
    /// Removes an instance that said goodbye at `goodbye_ms` (not one that
    /// has said hello again since); `why` goes into the audit log.
    fn remove_left(
        &self,
        name: &str,
        instance: &Arc<Instance>,
        goodbye_ms: i64,
        why: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Forgets waifus without an instance for `after`.
    fn forget_empty(&self, after: Duration) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// How long draining and forgetting wait.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// `DRAIN_TIMEOUT`: a leaving instance is removed after this even if
    /// busy (its tunnels closed).
    pub drain_timeout: Duration,
    /// `DEREGISTER_AFTER`: a waifu without an instance this long is
    /// forgotten.
    pub forget_after: Duration,
}

/// Drains every instance announced on `leaving`, and forgets empty waifus
/// while this orchestrator leads, until `shutdown`.
pub(crate) async fn supervise<R: Leave>(
    registry: Arc<R>,
    mut leaving: mpsc::UnboundedReceiver<Leaving>,
    timing: Timing,
    leading: tokio::sync::watch::Receiver<bool>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let Timing {
        drain_timeout: timeout,
        forget_after,
    } = timing;
    let mut forget = tokio::time::interval(FORGET_EVERY.min(forget_after));
    forget.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = forget.tick() => {
                if *leading.borrow()
                    && let Err(e) = registry.forget_empty(forget_after).await
                {
                    warn!(error = %e, "could not forget waifus without instances");
                }
            }
            l = leaving.recv() => {
                let Some(l) = l else { return };
                tracker.spawn(drain(registry.clone(), l, timeout, shutdown.clone()));
            }
        }
    }
}

/// Waits until nothing is in flight to the instance here or its drain time
/// is over (then closes its tunnels), and removes it.
async fn drain<R: Leave>(
    registry: Arc<R>,
    Leaving {
        name,
        instance,
        goodbye_ms,
    }: Leaving,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let ends = UNIX_EPOCH + Duration::from_millis(u64::try_from(goodbye_ms).unwrap_or(0)) + timeout;
    let left = ends
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    let deadline = tokio::time::Instant::now() + left;
    let why = tokio::select! {
        () = shutdown.cancelled() => return,
        () = instance.idle() => "it said goodbye and nothing is in flight to it".to_owned(),
        () = tokio::time::sleep_until(deadline) => {
            instance.end_drain();
            format!(
                "it said goodbye and DRAIN_TIMEOUT ({}) has passed",
                humantime::format_duration(timeout)
            )
        }
    };
    // Removed by the first orchestrator to get here; retried while the
    // database is away.
    let mut pause = Duration::from_millis(250);
    loop {
        match registry
            .remove_left(&name, &instance, goodbye_ms, &why)
            .await
        {
            Ok(()) => break,
            Err(e) => {
                warn!(%name, instance = %instance.upstream, error = %e, "could not remove a drained instance; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
    info!(%name, instance = %instance.upstream, "instance drained and removed");
}

#[cfg(test)]
mod tests;
