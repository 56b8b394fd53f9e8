//! Per-route request counters, kept with each waifu's route.
//!
//! The proxy counts every request here with a few relaxed atomic adds: no
//! lock, no label set hashed. The metrics endpoint turns them into
//! Prometheus counters and a histogram when it is scraped.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use http::{Method, StatusCode};

/// Methods counted separately; anything else is `OTHER`.
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
];
/// Status classes.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Upper bounds of the latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Requests one waifu answered, by method and status class, and how long
/// their response headers took.
#[derive(Debug, Default)]
pub struct RequestStats {
    counts: [[AtomicU64; CLASSES.len()]; METHODS.len()],
    /// Non-cumulative; the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    /// Connections to its instances that could not be made.
    connect_errors: AtomicU64,
}

impl RequestStats {
    pub fn record(&self, method: &Method, status: StatusCode, took: Duration) {
        let m = method_index(method);
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.counts[m][class].fetch_add(1, Relaxed);
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    /// A connection to one of its instances could not be made.
    pub fn connect_error(&self) {
        self.connect_errors.fetch_add(1, Relaxed);
    }

    pub fn connect_errors(&self) -> u64 {
        self.connect_errors.load(Relaxed)
    }

    /// Requests answered 5xx, and connections that could not be made.
    pub fn failures(&self) -> u64 {
        self.counts.iter().map(|m| m[4].load(Relaxed)).sum::<u64>() + self.connect_errors()
    }

    /// Every request counted so far.
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().map(|c| c.load(Relaxed)).sum()
    }

    /// Requests with method `METHODS[method]` and status class
    /// `CLASSES[class]`.
    pub fn count(&self, method: usize, class: usize) -> u64 {
        self.counts[method][class].load(Relaxed)
    }

    /// Requests per latency bucket, `LATENCY_BUCKETS` then `+Inf`
    /// (non-cumulative), and the sum of all latencies in seconds.
    pub fn latency(&self) -> ([u64; LATENCY_BUCKETS.len() + 1], f64) {
        let buckets = std::array::from_fn(|i| self.buckets[i].load(Relaxed));
        (buckets, self.sum_micros.load(Relaxed) as f64 / 1e6)
    }
}

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// A waifu's [`RequestStats`], allocated on its first request (most of ten
/// thousand idle waifus never pay for them).
#[derive(Debug, Default)]
pub struct LazyStats(OnceLock<Arc<RequestStats>>);

impl LazyStats {
    /// The counters, made on first use and then known to `all`.
    pub fn get(&self, all: &AllStats) -> &RequestStats {
        self.0.get_or_init(|| {
            let stats = Arc::new(RequestStats::default());
            all.used
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Arc::downgrade(&stats));
            stats
        })
    }

    /// The counters, if any request was counted.
    pub fn if_used(&self) -> Option<&RequestStats> {
        self.0.get().map(|b| &**b)
    }
}

/// The counters of requests no waifu answered, and every waifu's counters
/// that were ever used: the total of all requests, summed every few seconds
/// for the request rate, without a walk over ten thousand idle routes.
#[derive(Debug, Default)]
pub struct AllStats {
    pub unrouted: RequestStats,
    used: Mutex<Vec<Weak<RequestStats>>>,
}

impl AllStats {
    /// Every request counted by waifus still routed to (or still
    /// answering), and every unrouted one; a waifu gone takes its counts.
    pub fn total(&self) -> u64 {
        // Taken out under the lock, summed outside it: a waifu's first
        // request, which adds to the list, never waits for the sum.
        let live: Vec<Arc<RequestStats>> = {
            let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
            used.retain(|stats| stats.strong_count() > 0);
            used.iter().filter_map(Weak::upgrade).collect()
        };
        live.iter().map(|stats| stats.total()).sum::<u64>() + self.unrouted.total()
    }
}

/// Upper bound of rollout latency bucket `i`, in seconds: 0.1 ms growing by
/// a quarter each, to about a minute; the last bucket is everything above.
pub fn rollout_bound(i: usize) -> f64 {
    1e-4 * 1.25f64.powi(i32::try_from(i).unwrap_or(i32::MAX))
}

/// Rollout latency buckets, `+Inf` last: fine enough (25 %) to tell a
/// version twice as slow from the old one at any latency.
pub const ROLLOUT_BUCKETS: usize = 61;

/// What an instance answered while a rollout ran: requests, failures (5xx
/// and connections that could not be made) and a fine latency histogram.
#[derive(Debug)]
pub struct RolloutStats {
    requests: AtomicU64,
    failures: AtomicU64,
    buckets: [AtomicU64; ROLLOUT_BUCKETS],
}

impl Default for RolloutStats {
    fn default() -> Self {
        RolloutStats {
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl RolloutStats {
    pub fn record(&self, status: StatusCode, took: Duration) {
        self.requests.fetch_add(1, Relaxed);
        if status.is_server_error() {
            self.failures.fetch_add(1, Relaxed);
        }
        let secs = took.as_secs_f64();
        let i = (0..ROLLOUT_BUCKETS - 1)
            .find(|&i| secs <= rollout_bound(i))
            .unwrap_or(ROLLOUT_BUCKETS - 1);
        self.buckets[i].fetch_add(1, Relaxed);
    }

    /// A connection to the instance could not be made.
    pub fn connect_error(&self) {
        self.failures.fetch_add(1, Relaxed);
    }

    /// Requests, failures, and the buckets (not cumulative).
    pub fn read(&self) -> (u64, u64, [u64; ROLLOUT_BUCKETS]) {
        (
            self.requests.load(Relaxed),
            self.failures.load(Relaxed),
            std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
        )
    }
}

/// An instance's [`RolloutStats`], allocated when a rollout first counts it.
#[derive(Debug, Default)]
pub struct LazyRolloutStats(OnceLock<Box<RolloutStats>>);

impl LazyRolloutStats {
    pub fn get(&self) -> &RolloutStats {
        self.0.get_or_init(Box::default)
    }

    pub fn if_used(&self) -> Option<&RolloutStats> {
        self.0.get().map(|b| &**b)
    }
}

/// The `q` quantile (0 to 1) of rollout buckets, in milliseconds,
/// interpolated within its bucket; `None` without requests.
#[allow(clippy::cast_precision_loss)]
pub fn rollout_quantile_ms(buckets: &[u64], q: f64) -> Option<f64> {
    let n: u64 = buckets.iter().sum();
    if n == 0 {
        return None;
    }
    let rank = q * n as f64;
    let mut below = 0u64;
    for (i, &count) in buckets.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= rank {
            let upper = rollout_bound(i.min(ROLLOUT_BUCKETS - 2));
            if i >= ROLLOUT_BUCKETS - 1 {
                return Some(upper * 1000.0);
            }
            let lower = if i == 0 { 0.0 } else { rollout_bound(i - 1) };
            let within = (rank - below as f64) / count as f64;
            return Some((lower + (upper - lower) * within) * 1000.0);
        }
        below += count;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counters made by many threads at once are known once each; a
    /// waifu's counters dropped leave the total.
    #[test]
    fn the_total_counts_every_used_counter_once() {
        let all = AllStats::default();
        let mut waifus: Vec<LazyStats> = (0..4).map(|_| LazyStats::default()).collect();
        let ok = |stats: &RequestStats| stats.record(&Method::GET, StatusCode::OK, Duration::ZERO);
        // 300 first requests at once, each waifu's first use raced by all.
        const AT_ONCE: u64 = 300;
        let start = std::sync::Barrier::new(AT_ONCE as usize);
        std::thread::scope(|s| {
            for _ in 0..AT_ONCE {
                s.spawn(|| {
                    start.wait();
                    waifus.iter().for_each(|w| ok(w.get(&all)));
                });
            }
        });
        assert_eq!(all.used.lock().unwrap().len(), 4, "each made known once");
        ok(&all.unrouted);
        assert_eq!(all.total(), AT_ONCE * 4 + 1);
        waifus.truncate(1);
        assert_eq!(all.total(), AT_ONCE + 1);
        assert_eq!(
            all.used.lock().unwrap().len(),
            1,
            "the dropped ones are forgotten"
        );
    }

    #[test]
    fn rollout_buckets_tell_twice_as_slow_apart_at_any_latency() {
        for base_ms in [1.0, 10.0, 20.0, 300.0] {
            let one = RolloutStats::default();
            let two = RolloutStats::default();
            for _ in 0..200 {
                one.record(StatusCode::OK, Duration::from_secs_f64(base_ms / 1000.0));
                two.record(
                    StatusCode::OK,
                    Duration::from_secs_f64(2.0 * base_ms / 1000.0),
                );
            }
            let p = |s: &RolloutStats| rollout_quantile_ms(&s.read().2, 0.99).unwrap();
            let ratio = p(&two) / p(&one);
            assert!((1.5..2.6).contains(&ratio), "{base_ms} ms: {ratio}");
            // Within a bucket's width (25 %) of the truth.
            assert!(
                (p(&one) / base_ms - 1.0).abs() < 0.26,
                "{base_ms}: {}",
                p(&one)
            );
        }
        let s = RolloutStats::default();
        s.record(StatusCode::BAD_GATEWAY, Duration::from_secs(600));
        s.connect_error();
        let (requests, failures, buckets) = s.read();
        assert_eq!(
            (requests, failures, buckets[ROLLOUT_BUCKETS - 1]),
            (1, 2, 1)
        );
        assert_eq!(rollout_quantile_ms(&[0; ROLLOUT_BUCKETS], 0.99), None);
    }

    #[test]
    fn stats_classify_and_bucket() {
        let s = RequestStats::default();
        s.record(&Method::GET, StatusCode::OK, Duration::from_micros(300));
        s.record(
            &Method::GET,
            StatusCode::NOT_FOUND,
            Duration::from_millis(3),
        );
        s.record(
            &Method::from_bytes(b"PROPFIND").unwrap(),
            StatusCode::BAD_GATEWAY,
            Duration::from_secs(60),
        );
        assert_eq!(s.count(0, 1), 1);
        assert_eq!(s.count(0, 3), 1);
        assert_eq!(s.count(7, 4), 1);
        let (buckets, sum) = s.latency();
        assert_eq!(buckets[0], 1, "0.3 ms ≤ 0.5 ms");
        assert_eq!(buckets[3], 1, "3 ms ≤ 5 ms");
        assert_eq!(buckets[LATENCY_BUCKETS.len()], 1, "+Inf");
        assert_eq!(s.total(), 3);
        assert!((sum - 60.0033).abs() < 1e-9, "{sum}");
    }
}
