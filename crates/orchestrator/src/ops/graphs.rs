//! The status page's traffic graphs: per waifu, requests per second and
//! the 99th percentile of latency, one point a step (a minute) over the
//! last hour, kept in memory by each orchestrator for the requests it
//! proxied.
//!
//! A sampler reads the counters the proxy keeps anyway (requests and the
//! latency histogram of each waifu's route) once a step and keeps the
//! differences. Only waifus that served a request have a series: ten
//! thousand idle ones cost nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::routing::Lasting;
use crate::routing::Routes;
use crate::routing::stats::{LATENCY_BUCKETS, RequestStats};

/// One point per waifu this often.
pub(crate) const STEP: Duration = Duration::from_secs(60);
/// Points kept per waifu: an hour of minutes.
pub(crate) const POINTS: usize = 60;

/// Buckets of the latency histogram, `+Inf` last.
pub(crate) const BUCKETS: usize = LATENCY_BUCKETS.len() + 1;

/// One step of one waifu's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// The step's end, Unix milliseconds.
    pub time: i64,
    /// Requests per second over the step.
    pub rate: f64,
    /// The 99th percentile of the time to the response head, milliseconds;
    /// `None` for a step without requests.
    pub p99_ms: Option<f64>,
}

/// What the counters said at the last sample.
#[derive(Debug)]
struct Series {
    /// The counters sampled (a waifu that left and came back has new ones).
    stats: Weak<Lasting>,
    total: u64,
    buckets: [u64; BUCKETS],
    at: std::time::Instant,
    points: VecDeque<Point>,
}

/// Every waifu's series; cheap to share.
#[derive(Debug)]
pub(crate) struct Graphs {
    step: Duration,
    series: Mutex<HashMap<Arc<str>, Series>>,
}

impl Graphs {
    pub(crate) fn new(step: Duration) -> Arc<Graphs> {
        Arc::new(Graphs {
            step,
            series: Mutex::default(),
        })
    }

    /// Samples every step until `shutdown`.
    pub(crate) async fn run(self: Arc<Self>, routes: Routes, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(self.step);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => self.sample(&routes),
            }
        }
    }

    /// One sample of every waifu that served requests.
    fn sample(&self, routes: &Routes) {
        let table = routes.load();
        let now = std::time::Instant::now();
        let time = unix_ms();
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series.retain(|name, s| {
            table
                .waifu(name)
                .is_some_and(|w| std::ptr::eq(s.stats.as_ptr(), Arc::as_ptr(&w.lasting)))
        });
        for waifu in table.waifu_routes() {
            let Some(stats) = waifu.stats().if_used() else {
                continue;
            };
            let (total, buckets) = read(stats);
            match series.get_mut(&*waifu.name) {
                Some(s) => {
                    let point = point(s, total, &buckets, now, time);
                    if s.points.len() == POINTS {
                        s.points.pop_front();
                    }
                    s.points.push_back(point);
                    (s.total, s.buckets, s.at) = (total, buckets, now);
                }
                None => {
                    // Counted since its first request, which came within
                    // this step: its first point is this step's.
                    let first = Point {
                        time,
                        rate: rate(total, self.step),
                        p99_ms: p99_ms(&buckets),
                    };
                    series.insert(
                        waifu.name.clone(),
                        Series {
                            stats: Arc::downgrade(&waifu.lasting),
                            total,
                            buckets,
                            at: now,
                            points: VecDeque::from([first]),
                        },
                    );
                }
            }
        }
    }

    /// Every waifu's points, oldest first, with the step under way as the
    /// last one.
    pub(crate) fn points(&self, routes: &Routes) -> HashMap<String, Vec<Point>> {
        let table = routes.load();
        let now = std::time::Instant::now();
        let time = unix_ms();
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = HashMap::with_capacity(series.len());
        for waifu in table.waifu_routes() {
            let Some(stats) = waifu.stats().if_used() else {
                continue;
            };
            let (total, buckets) = read(stats);
            let mut points: Vec<Point> = Vec::with_capacity(POINTS + 1);
            match series.get(&*waifu.name) {
                Some(s) if std::ptr::eq(s.stats.as_ptr(), Arc::as_ptr(&waifu.lasting)) => {
                    points.extend(s.points.iter().copied());
                    if now.duration_since(s.at) >= Duration::from_secs(1) {
                        points.push(point(s, total, &buckets, now, time));
                    }
                }
                _ => points.push(Point {
                    time,
                    rate: rate(total, self.step),
                    p99_ms: p99_ms(&buckets),
                }),
            }
            out.insert(waifu.name.to_string(), points);
        }
        out
    }
}

/// The counters now: requests, and the latency buckets.
fn read(stats: &RequestStats) -> (u64, [u64; BUCKETS]) {
    (stats.total(), stats.latency().0)
}

/// The point from `s`'s sample to now.
fn point(
    s: &Series,
    total: u64,
    buckets: &[u64; BUCKETS],
    now: std::time::Instant,
    time: i64,
) -> Point {
    let delta: [u64; BUCKETS] = std::array::from_fn(|i| buckets[i].saturating_sub(s.buckets[i]));
    Point {
        time,
        rate: rate(total.saturating_sub(s.total), now.duration_since(s.at)),
        p99_ms: p99_ms(&delta),
    }
}

#[allow(clippy::cast_precision_loss)]
fn rate(requests: u64, over: Duration) -> f64 {
    requests as f64 / over.as_secs_f64().max(1e-3)
}

/// The 99th percentile of a histogram of the buckets' counts, interpolated
/// within its bucket as Prometheus's `histogram_quantile` does; the last
/// finite bound for the `+Inf` bucket.
#[allow(clippy::cast_precision_loss)]
pub(crate) fn p99_ms(buckets: &[u64; BUCKETS]) -> Option<f64> {
    let n: u64 = buckets.iter().sum();
    if n == 0 {
        return None;
    }
    let rank = 0.99 * n as f64;
    let mut below = 0u64;
    for (i, &count) in buckets.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= rank {
            let upper = LATENCY_BUCKETS
                .get(i)
                .copied()
                .unwrap_or(LATENCY_BUCKETS[BUCKETS - 2]);
            if i == BUCKETS - 1 {
                return Some(upper * 1000.0);
            }
            let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
            let within = (rank - below as f64) / count as f64;
            return Some((lower + (upper - lower) * within) * 1000.0);
        }
        below += count;
    }
    None
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{RouteTable, WaifuRoute};
    use http::{Method, StatusCode};

    #[test]
    fn only_waifus_with_traffic_have_points_and_a_waifu_back_starts_afresh() {
        let (writer, routes) = crate::routing::routes();
        let idle = Arc::new(WaifuRoute::new("idle", Vec::new()));
        let busy = Arc::new(WaifuRoute::new("busy", Vec::new()));
        writer.publish(RouteTable::new(
            None,
            [idle.clone(), busy.clone()],
            std::iter::empty(),
        ));
        let graphs = Graphs::new(STEP);
        let all = crate::routing::stats::AllStats::default();
        graphs.sample(&routes);
        assert!(graphs.points(&routes).is_empty());
        for _ in 0..120 {
            busy.stats()
                .get(&all)
                .record(&Method::GET, StatusCode::OK, Duration::from_millis(3));
        }
        // Its first point is the step it began in: 120 requests over a
        // minute, 2 a second, p99 within the 2.5–5 ms bucket.
        graphs.sample(&routes);
        let points = graphs.points(&routes);
        assert_eq!(points.len(), 1, "{points:?}");
        let first = points["busy"][0];
        assert!((first.rate - 2.0).abs() < 1e-9, "{first:?}");
        assert!((2.5..=5.0).contains(&first.p99_ms.unwrap()), "{first:?}");
        // The next step without requests: a point of 0, no p99.
        graphs.sample(&routes);
        let second = graphs.points(&routes)["busy"][1];
        assert_eq!((second.rate, second.p99_ms), (0.0, None));
        // Gone and back (new counters): its old points go with it.
        let back = Arc::new(WaifuRoute::new("busy", Vec::new()));
        writer.publish(RouteTable::new(None, [back.clone()], std::iter::empty()));
        graphs.sample(&routes);
        assert!(graphs.points(&routes).is_empty());
        back.stats()
            .get(&all)
            .record(&Method::GET, StatusCode::OK, Duration::from_millis(1));
        graphs.sample(&routes);
        assert_eq!(graphs.points(&routes)["busy"].len(), 1);
        // An hour at most.
        for _ in 0..100 {
            graphs.sample(&routes);
        }
        assert_eq!(graphs.points(&routes)["busy"].len(), POINTS);
    }

    #[test]
    fn p99_interpolates_within_its_bucket() {
        let mut b = [0u64; BUCKETS];
        assert_eq!(p99_ms(&b), None);
        // 100 requests within 0.5 ms: the 99th is 0.495 ms.
        b[0] = 100;
        let p = p99_ms(&b).unwrap();
        assert!((p - 0.495).abs() < 1e-9, "{p}");
        // One slow request in 100 (in 0.25–0.5 s) does not move p99 off the
        // fast bucket; two do.
        b[0] = 99;
        b[9] = 1;
        assert!(p99_ms(&b).unwrap() < 1.0);
        b[0] = 98;
        b[9] = 2;
        let p = p99_ms(&b).unwrap();
        assert!((250.0..=500.0).contains(&p), "{p}");
        // Beyond the last bound: the last bound.
        let mut inf = [0u64; BUCKETS];
        inf[BUCKETS - 1] = 5;
        assert_eq!(p99_ms(&inf), Some(10_000.0));
    }
}
