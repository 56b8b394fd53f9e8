//! Rollouts: a new version of a waifu takes a share of new clients, step by
//! step, and is rolled back by itself when it is worse than the version it
//! replaces.
//!
//! The rollout lives in the store; every orchestrator applies its share to
//! the waifu's route when it hears of a change (as any change). Each
//! orchestrator counts what each version answered through it and publishes
//! the counts every [`PUBLISH_EVERY`]; every `interval`, the health leader
//! sums them over all orchestrators since the step began and judges
//! ([`judge`]): worse (error rate above `maxErrorRate` and above the old
//! version's, p99 above `maxLatencyRatio` times the old's, or no healthy
//! instance) is a rollback; too little traffic keeps the step; otherwise the
//! next step, and after the last the version takes every request as any
//! current version does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Entry, Registry};
use crate::ops::incidents::{IncidentKind, Incidents};
use crate::routing::rollout::RolloutRoute;
use crate::routing::stats::rollout_quantile_ms;
use crate::store::incidents::NewIncident;
use crate::store::rollouts::{Counts, RolloutPlan, StoredRollout};
use crate::store::{RunningRollout, StoreError};

/// What every orchestrator published of one rollout: `(version, origin,
/// counts)`.
type Published = Vec<(String, String, Counts)>;

/// This orchestrator's counts of one running rollout: the waifu, the
/// rollout's generation, and the counts by version.
type Own = (String, i64, Vec<(String, Counts)>);

/// How often each orchestrator publishes its counts.
pub(crate) const PUBLISH_EVERY: Duration = Duration::from_secs(2);
/// How often the leader looks at the running rollouts ...
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// ... and, while none runs, whether one started.
const IDLE_LOOK_EVERY: Duration = Duration::from_secs(1);
/// Requests to the new version since its step began below which it is not
/// promoted (a 99th percentile of fewer is about their maximum): the step
/// goes on counting.
pub(crate) const MIN_REQUESTS: i64 = 100;
/// Requests enough to roll back for errors: one in five failing shows in 20.
pub(crate) const MIN_ERROR_REQUESTS: i64 = 20;
/// A p99 this much above the old version's, or less, is never a rollback,
/// whatever the ratio: below it, differences are a busy machine's
/// scheduling, not a slower version.
pub(crate) const LATENCY_FLOOR_MS: f64 = 5.0;

impl Registry {
    /// Makes the route's rollout what the store says; whether it changed
    /// (the route was rebuilt).
    pub(super) fn apply_rollout(
        &self,
        name: &str,
        entry: &mut Entry,
        stored: Option<&RunningRollout>,
    ) -> bool {
        let now = entry.route.rollout.as_deref();
        let same = match (now, stored) {
            (None, None) => true,
            (Some(r), Some(s)) => r.generation == s.generation && i32::from(r.share) == s.share,
            _ => false,
        };
        if same {
            return false;
        }
        let rollout = stored.map(|s| {
            let version = (!s.version.is_empty()).then_some(s.version.as_str());
            let share = u8::try_from(s.share.clamp(0, 100)).unwrap_or(0);
            Arc::new(RolloutRoute::new(name, s.generation, version, share))
        });
        entry.route = Arc::new(entry.route.with_rollout(rollout));
        true
    }

    /// Starts a rollout (an operator's, or the automatic one of a version
    /// announced for the first time), here and on every orchestrator.
    pub(crate) async fn start_rollout(
        &self,
        name: &str,
        plan: &RolloutPlan<'_>,
        source: &str,
    ) -> Result<StoredRollout, StoreError> {
        let rollout = self.store.start_rollout(name, plan, source).await?;
        self.resync_waifu(name).await?;
        info!(name, version = %rollout.version, share = rollout.share, "rollout started");
        Ok(rollout)
    }

    /// Aborts `name`'s running rollout; the rollout aborted, if one ran.
    pub(crate) async fn abort_rollout(
        &self,
        name: &str,
        generation: Option<i64>,
        why: &str,
        source: &str,
        incident: Option<(&NewIncident, bool)>,
    ) -> Result<Option<StoredRollout>, StoreError> {
        let aborted = self
            .store
            .abort_rollout(name, generation, why, source, incident)
            .await?;
        if aborted.is_some() {
            self.resync_waifu(name).await?;
        }
        Ok(aborted)
    }

    /// Whether any waifu's route has a running rollout.
    fn any_rollout(&self) -> bool {
        self.routes.current().any_rollout()
    }

    /// This orchestrator's counts of every running rollout, by version.
    fn counts(&self) -> Vec<Own> {
        let table = self.routes.current();
        let mut out = Vec::new();
        if !table.any_rollout() {
            return out;
        }
        for waifu in table.waifu_routes() {
            let Some(rollout) = &waifu.rollout else {
                continue;
            };
            let mut by_version: HashMap<String, Counts> = HashMap::new();
            for instance in waifu.instances.iter() {
                let Some(stats) = instance.rollout_stats.if_used() else {
                    continue;
                };
                let (requests, failures, buckets) = stats.read();
                let c = by_version
                    .entry(instance.version().unwrap_or("").to_owned())
                    .or_insert_with(|| Counts {
                        buckets: vec![0; buckets.len()],
                        ..Counts::default()
                    });
                c.requests += i64::try_from(requests).unwrap_or(i64::MAX);
                c.failures += i64::try_from(failures).unwrap_or(i64::MAX);
                for (sum, b) in c.buckets.iter_mut().zip(buckets) {
                    *sum += i64::try_from(b).unwrap_or(i64::MAX);
                }
            }
            out.push((
                waifu.name.to_string(),
                rollout.generation,
                by_version.into_iter().collect(),
            ));
        }
        out
    }
}

/// Publishes this orchestrator's counts of every running rollout every
/// [`PUBLISH_EVERY`], until `shutdown`.
pub(crate) async fn publish(registry: Arc<Registry>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(PUBLISH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        for (name, generation, counts) in registry.counts() {
            if counts.is_empty() {
                continue;
            }
            if let Err(e) = registry
                .store
                .publish_counts(&name, generation, &counts)
                .await
            {
                warn!(%name, error = %e, "could not publish a rollout's counts");
            }
        }
    }
}

/// What one version answered in a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Figures {
    pub requests: i64,
    pub error_rate: f64,
    /// Milliseconds; `None` without requests.
    pub p99_ms: Option<f64>,
}

/// The judgement of a step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Worse: roll back, because of this.
    Abort(String),
    /// Too little traffic to judge.
    Keep,
    /// Good: the next step.
    Next,
}

/// Judges the new version's figures against the old's.
pub(crate) fn judge(
    new: Figures,
    old: Figures,
    healthy: bool,
    max_error_rate: f64,
    max_latency_ratio: f64,
) -> Verdict {
    if !healthy {
        return Verdict::Abort("no instance of it is healthy".to_owned());
    }
    if new.requests >= MIN_ERROR_REQUESTS
        && new.error_rate > max_error_rate
        && new.error_rate > old.error_rate
    {
        return Verdict::Abort(format!(
            "error rate {:.1} % over {} requests, above {:.1} % and the old version's {:.1} %",
            new.error_rate * 100.0,
            new.requests,
            max_error_rate * 100.0,
            old.error_rate * 100.0
        ));
    }
    if let (Some(n), Some(o)) = (new.p99_ms, old.p99_ms)
        && new.requests >= MIN_REQUESTS
        && old.requests >= MIN_REQUESTS
        && n > max_latency_ratio * o
        && n - o > LATENCY_FLOOR_MS
    {
        return Verdict::Abort(format!(
            "p99 {n:.1} ms over {} requests, above {max_latency_ratio} × the old version's {o:.1} ms",
            new.requests
        ));
    }
    if new.requests < MIN_REQUESTS {
        return Verdict::Keep;
    }
    Verdict::Next
}

/// `now` minus `then`, per origin, summed: what happened between two reads.
fn since(
    now: &[(String, String, Counts)],
    then: &[(String, String, Counts)],
    version: &str,
) -> Counts {
    let mut out = Counts::default();
    for (v, origin, c) in now.iter().filter(|(v, _, _)| v == version) {
        let before = then
            .iter()
            .find(|(tv, to, _)| tv == v && to == origin)
            .map(|(_, _, c)| c);
        out.requests += c.requests - before.map_or(0, |b| b.requests);
        out.failures += c.failures - before.map_or(0, |b| b.failures);
        if out.buckets.len() < c.buckets.len() {
            out.buckets.resize(c.buckets.len(), 0);
        }
        for (i, b) in c.buckets.iter().enumerate() {
            out.buckets[i] += b - before.and_then(|x| x.buckets.get(i)).copied().unwrap_or(0);
        }
    }
    out
}

#[allow(clippy::cast_precision_loss)]
fn figures(c: &Counts) -> Figures {
    let buckets: Vec<u64> = c
        .buckets
        .iter()
        .map(|b| u64::try_from(*b).unwrap_or(0))
        .collect();
    Figures {
        requests: c.requests,
        error_rate: if c.requests > 0 {
            c.failures as f64 / c.requests as f64
        } else {
            0.0
        },
        p99_ms: rollout_quantile_ms(&buckets, 0.99),
    }
}

fn words(new: Figures, old: Figures) -> String {
    let ms = |p: Option<f64>| p.map_or_else(|| "-".to_owned(), |p| format!("{p:.1} ms"));
    format!(
        "new: {} requests, {:.2} % errors, p99 {}; old: {} requests, {:.2} % errors, p99 {}",
        new.requests,
        new.error_rate * 100.0,
        ms(new.p99_ms),
        old.requests,
        old.error_rate * 100.0,
        ms(old.p99_ms)
    )
}

/// Judges every running rollout at the end of each step, while this
/// orchestrator leads, until `shutdown`.
pub(crate) async fn analyse(
    registry: Arc<Registry>,
    incidents: Incidents,
    mut leading: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    // The counts when each step (or its retry, after too little traffic)
    // began, and when it is judged, by (name, generation, step).
    let mut began: HashMap<(String, i64, i32), (Published, Instant)> = HashMap::new();
    loop {
        if !*leading.borrow() {
            began.clear();
            tokio::select! {
                () = shutdown.cancelled() => return,
                r = leading.wait_for(|l| *l) => if r.is_err() { return },
            }
        }
        // Every orchestrator has each running rollout on its routes: with
        // none there, nothing is asked of PostgreSQL, and less often.
        let idle = began.is_empty() && !registry.any_rollout();
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(if idle { IDLE_LOOK_EVERY } else { LOOK_EVERY }) => {}
        }
        if idle && !registry.any_rollout() {
            continue;
        }
        let running = match registry.store.running_rollouts().await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "the running rollouts cannot be read now");
                continue;
            }
        };
        began.retain(|(n, g, s), _| {
            running
                .iter()
                .any(|r| r.name == *n && r.generation == *g && r.step == *s)
        });
        for r in running {
            let key = (r.name.clone(), r.generation, r.step);
            let counts = match registry.store.rollout_counts(&r.name, r.generation).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(name = %r.name, error = %e, "a rollout's counts cannot be read now");
                    continue;
                }
            };
            let Some((then, due)) = began.get(&key) else {
                // The step's start as this leader saw it: judged when the
                // step's interval is over.
                let interval_ms = i64::try_from(r.interval.as_millis()).unwrap_or(i64::MAX);
                let left = (r.step_at_ms + interval_ms - r.now_ms).max(0);
                let due = Instant::now() + Duration::from_millis(u64::try_from(left).unwrap_or(0));
                began.insert(key, (counts, due));
                continue;
            };
            if Instant::now() < *due {
                continue;
            }
            let new = figures(&since(&counts, then, &r.version));
            let old_counts = {
                let mut all = Counts::default();
                let mut others: Vec<&String> = counts
                    .iter()
                    .map(|(v, _, _)| v)
                    .filter(|v| **v != r.version)
                    .collect();
                others.sort();
                others.dedup();
                for v in others {
                    let c = since(&counts, then, v);
                    all.requests += c.requests;
                    all.failures += c.failures;
                    if all.buckets.len() < c.buckets.len() {
                        all.buckets.resize(c.buckets.len(), 0);
                    }
                    for (i, b) in c.buckets.iter().enumerate() {
                        all.buckets[i] += b;
                    }
                }
                all
            };
            let old = figures(&old_counts);
            let verdict = judge(
                new,
                old,
                healthy(&registry, &r),
                r.max_error_rate,
                r.max_latency_ratio,
            );
            let figures = words(new, old);
            let done = match verdict {
                Verdict::Keep => {
                    // Too little to judge: the same step goes on, counting
                    // from where it began, judged again an interval later.
                    let then = then.clone();
                    began.insert(key, (then, Instant::now() + r.interval));
                    let why = format!("too little traffic to judge, the step goes on ({figures})");
                    if let Err(e) = registry
                        .store
                        .keep_rollout_step(&r.name, r.generation, r.step, &why)
                        .await
                    {
                        warn!(name = %r.name, error = %e, "could not store a rollout's judgement");
                    }
                    continue;
                }
                Verdict::Next => registry
                    .store
                    .step_rollout(&r.name, r.generation, r.step, &figures)
                    .await
                    .map(|_| ()),
                Verdict::Abort(why) => {
                    let detail = format!(
                        "{} rolled back to {}: {why} ({figures})",
                        if r.version.is_empty() {
                            "no version"
                        } else {
                            &r.version
                        },
                        if r.stable.is_empty() {
                            "no version"
                        } else {
                            &r.stable
                        },
                    );
                    let incident = NewIncident {
                        kind: IncidentKind::RolloutAborted.as_str(),
                        name: r.name.clone(),
                        source: registry.store.replica().to_owned(),
                        detail,
                    };
                    let aborted = registry
                        .abort_rollout(
                            &r.name,
                            Some(r.generation),
                            &format!("{why} ({figures})"),
                            "orchestrator",
                            Some((&incident, incidents.webhook())),
                        )
                        .await;
                    if let Ok(Some(_)) = &aborted {
                        incidents.noted(&incident);
                    }
                    aborted.map(|_| ())
                }
            };
            if let Err(e) = done {
                warn!(name = %r.name, error = %e, "could not store a rollout's judgement");
            }
            // Moved on: this orchestrator applies it now (others when they
            // hear of it).
            if let Err(e) = registry.resync_waifu(&r.name).await {
                warn!(name = %r.name, error = %e, "could not reload a waifu after its rollout moved");
            }
        }
    }
}

/// Whether an instance of the version rolled out is healthy (and stays).
fn healthy(registry: &Registry, r: &StoredRollout) -> bool {
    let table = registry.routes.current();
    table.waifu(&r.name).is_some_and(|w| {
        w.instances
            .iter()
            .any(|i| i.version().unwrap_or("") == r.version && i.is_healthy() && !i.is_leaving())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(requests: i64, error_rate: f64, p99_ms: Option<f64>) -> Figures {
        Figures {
            requests,
            error_rate,
            p99_ms,
        }
    }

    #[test]
    fn worse_is_a_rollback_little_is_a_wait_and_good_is_the_next_step() {
        let old = f(1000, 0.0, Some(10.0));
        // One in five failing: seen in 20 requests already.
        assert!(matches!(
            judge(f(20, 0.2, Some(10.0)), old, true, 0.01, 2.0),
            Verdict::Abort(why) if why.contains("error rate 20.0 %")
        ));
        assert_eq!(
            judge(f(19, 0.2, Some(10.0)), old, true, 0.01, 2.0),
            Verdict::Keep
        );
        // Failing no more than the old version: not its fault.
        assert_eq!(
            judge(
                f(100, 0.2, Some(10.0)),
                f(1000, 0.3, Some(10.0)),
                true,
                0.01,
                2.0
            ),
            Verdict::Next
        );
        // Twice as slow with a ratio of 1.5.
        assert!(matches!(
            judge(f(100, 0.0, Some(20.0)), old, true, 0.01, 1.5),
            Verdict::Abort(why) if why.contains("p99")
        ));
        assert_eq!(
            judge(f(100, 0.0, Some(14.0)), old, true, 0.01, 1.5),
            Verdict::Next
        );
        // Too little to judge: never a promotion.
        assert_eq!(
            judge(f(5, 0.0, Some(1.0)), old, true, 0.01, 2.0),
            Verdict::Keep
        );
        // Not healthy: back, whatever the figures.
        assert!(matches!(
            judge(f(0, 0.0, None), old, false, 0.01, 2.0),
            Verdict::Abort(_)
        ));
    }

    #[test]
    fn counts_are_differences_per_origin() {
        let c = |r, f| Counts {
            requests: r,
            failures: f,
            buckets: vec![r],
        };
        let then = vec![("2".to_owned(), "a".to_owned(), c(10, 1))];
        let now = vec![
            ("2".to_owned(), "a".to_owned(), c(30, 2)),
            ("2".to_owned(), "b".to_owned(), c(5, 5)),
            ("1".to_owned(), "a".to_owned(), c(100, 0)),
        ];
        let got = since(&now, &then, "2");
        assert_eq!((got.requests, got.failures), (25, 6));
        assert_eq!(got.buckets, vec![25]);
    }
}
