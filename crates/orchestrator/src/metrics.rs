//! Prometheus metrics (issue 8), served at `GET /__internal/metrics`.
//!
//! The proxy's per-request counters are plain atomics kept with each waifu's
//! route ([`RequestStats`], allocated on a waifu's first request) and turned
//! into metrics only when scraped, so a request takes no lock and hashes no
//! label set. Rarer events (hellos, database calls, incidents, connect
//! errors) use prometheus-client's labelled families.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as PromRegistry;

use crate::registry::Registry;

/// Methods counted separately; anything else is `OTHER`.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Requests one waifu answered, by method and status class, and how long
/// their response headers took.
#[derive(Debug, Default)]
pub(crate) struct RequestStats {
    counts: [[AtomicU64; CLASSES.len()]; METHODS.len()],
    /// Non-cumulative; the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl RequestStats {
    pub(crate) fn record(&self, method: &Method, status: StatusCode, took: Duration) {
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

    /// Every request counted so far.
    pub(crate) fn total(&self) -> u64 {
        self.counts.iter().flatten().map(|c| c.load(Relaxed)).sum()
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
pub(crate) struct LazyStats(OnceLock<Box<RequestStats>>);

impl LazyStats {
    pub(crate) fn get(&self) -> &RequestStats {
        self.0.get_or_init(Box::default)
    }

    fn if_used(&self) -> Option<&RequestStats> {
        self.0.get().map(|b| &**b)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WaifuLabel {
    waifu: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

/// Every metric the orchestrator exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: PromRegistry,
    hellos: Family<OutcomeLabel, Counter>,
    database_calls: Family<OutcomeLabel, Counter>,
    incidents: Family<KindLabel, Counter>,
    connect_errors: Family<WaifuLabel, Counter>,
    connections: Family<ListenerLabel, Gauge>,
    /// Requests that matched no waifu (404s, 400s, redirects).
    pub unrouted: Arc<RequestStats>,
    routes: Arc<Registry>,
    started: std::time::Instant,
    /// Requests per second over the last sample (f64 bits), see [`sample_rate`].
    rate: AtomicU64,
}

impl Metrics {
    pub(crate) fn new(routes: Arc<Registry>) -> Arc<Metrics> {
        let mut registry = PromRegistry::with_prefix("waifus");
        let hellos = Family::default();
        registry.register(
            "hellos",
            "Hellos on the internal API, by outcome (ok, invalid, unavailable)",
            hellos.clone(),
        );
        let database_calls = Family::default();
        registry.register(
            "database_calls",
            "Database credential calls, by outcome (ok, invalid, wrong_secret, throttled, conflict, unavailable)",
            database_calls.clone(),
        );
        let incidents = Family::default();
        registry.register(
            "incidents",
            "Incidents reported, by kind",
            incidents.clone(),
        );
        let connect_errors = Family::default();
        registry.register(
            "upstream_connect_errors",
            "Failed connections to a waifu's instances",
            connect_errors.clone(),
        );
        let connections = Family::default();
        registry.register(
            "open_connections",
            "Client connections open now, by listener",
            connections.clone(),
        );
        let unrouted = Arc::new(RequestStats::default());
        registry.register_collector(Box::new(ProxyCollector {
            routes: routes.clone(),
            unrouted: unrouted.clone(),
        }));
        Arc::new(Metrics {
            registry,
            hellos,
            database_calls,
            incidents,
            connect_errors,
            connections,
            unrouted,
            routes,
            started: std::time::Instant::now(),
            rate: AtomicU64::new(0),
        })
    }

    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Proxied requests per second, as last sampled.
    pub(crate) fn request_rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Relaxed))
    }

    /// Client connections open on every listener.
    pub(crate) fn open_connections(&self) -> i64 {
        ["public", "tls", "internal"]
            .into_iter()
            .map(|l| self.connections(l).get())
            .sum()
    }

    pub(crate) fn hello(&self, outcome: &'static str) {
        self.hellos.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub(crate) fn database_call(&self, outcome: &'static str) {
        self.database_calls
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub(crate) fn incident(&self, kind: &'static str) {
        self.incidents.get_or_create(&KindLabel { kind }).inc();
    }

    pub(crate) fn connect_error(&self, waifu: &str) {
        let label = WaifuLabel {
            waifu: waifu.to_owned(),
        };
        self.connect_errors.get_or_create(&label).inc();
    }

    /// The open-connections gauge of one listener (`public`, `tls`, `internal`).
    pub(crate) fn connections(&self, listener: &'static str) -> Gauge {
        self.connections
            .get_or_create(&ListenerLabel { listener })
            .clone()
    }

    /// Every proxied request counted so far.
    pub(crate) fn requests_total(&self) -> u64 {
        let routes = self.routes.routes();
        routes
            .waifu_routes()
            .filter_map(|w| w.stats.if_used())
            .map(RequestStats::total)
            .sum::<u64>()
            + self.unrouted.total()
    }

    /// The text exposition (OpenMetrics).
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::warn!("could not encode metrics");
        }
        out
    }
}

/// Scrape-time view of the route table: requests, latency, instance health.
#[derive(Debug)]
struct ProxyCollector {
    routes: Arc<Registry>,
    unrouted: Arc<RequestStats>,
}

impl Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let routes = self.routes.routes();
        let mut waifus: Vec<(&str, &RequestStats)> = routes
            .waifu_routes()
            .filter_map(|w| Some((&*w.name, w.stats.if_used()?)))
            .collect();
        waifus.push(("-", &self.unrouted));
        waifus.sort_unstable_by_key(|(name, _)| *name);

        let mut requests = encoder.encode_descriptor(
            "requests",
            "Proxied requests by waifu (\"-\": none matched), method and status class",
            None,
            MetricType::Counter,
        )?;
        for (waifu, stats) in &waifus {
            for (m, method) in METHODS.iter().enumerate() {
                for (c, class) in CLASSES.iter().enumerate() {
                    let n = stats.counts[m][c].load(Relaxed);
                    if n == 0 {
                        continue;
                    }
                    let labels = [("waifu", *waifu), ("method", *method), ("status", *class)];
                    requests
                        .encode_family(&labels)?
                        .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                            &n, None,
                        )?;
                }
            }
        }

        let mut latency = encoder.encode_descriptor(
            "request_duration_seconds",
            "Time from a request's arrival to its response headers, by waifu",
            None,
            MetricType::Histogram,
        )?;
        for (waifu, stats) in &waifus {
            let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
                .iter()
                .zip(&stats.buckets)
                .map(|(&le, n)| (le, n.load(Relaxed)))
                .collect();
            let inf = stats.buckets[LATENCY_BUCKETS.len()].load(Relaxed);
            buckets.push((f64::MAX, inf));
            let count = buckets.iter().map(|(_, n)| n).sum();
            // Microseconds to seconds; exact enough for a sum.
            #[allow(clippy::cast_precision_loss)]
            let sum = stats.sum_micros.load(Relaxed) as f64 / 1e6;
            latency
                .encode_family(&[("waifu", *waifu)])?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum, count, &buckets, None,
                )?;
        }

        let mut leader = encoder.encode_descriptor(
            "health_leader",
            "1 when this orchestrator runs the health checks (one does at a time)",
            None,
            MetricType::Gauge,
        )?;
        leader.encode_gauge(&i64::from(self.routes.leads_health_checks()))?;

        let mut health = encoder.encode_descriptor(
            "instance_healthy",
            "1 when an instance passes its health checks and receives traffic",
            None,
            MetricType::Gauge,
        )?;
        for waifu in routes.waifu_routes() {
            for instance in waifu.instances.iter() {
                let upstream = instance.upstream.to_string();
                let labels = [("waifu", &*waifu.name), ("instance", upstream.as_str())];
                health
                    .encode_family(&labels)?
                    .encode_gauge(&i64::from(instance.is_healthy()))?;
            }
        }
        Ok(())
    }
}

/// How often [`sample_rate`] measures the request rate.
const RATE_EVERY: Duration = Duration::from_secs(2);

/// Keeps [`Metrics::request_rate`] current until `shutdown`.
pub(crate) async fn sample_rate(
    metrics: Arc<Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut last = (std::time::Instant::now(), metrics.requests_total());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RATE_EVERY) => {}
        }
        let now = (std::time::Instant::now(), metrics.requests_total());
        let secs = now.0.duration_since(last.0).as_secs_f64();
        // A waifu that left takes its counts along: never report a negative rate.
        #[allow(clippy::cast_precision_loss)]
        let rate = now.1.saturating_sub(last.1) as f64 / secs.max(1e-3);
        metrics.rate.store(rate.to_bits(), Relaxed);
        last = now;
    }
}

/// Counts a connection in a gauge for as long as it lives.
#[derive(Debug)]
pub(crate) struct Open(Gauge);

impl Open {
    pub(crate) fn new(gauge: &Gauge) -> Open {
        gauge.inc();
        Open(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(s.counts[0][1].load(Relaxed), 1);
        assert_eq!(s.counts[0][3].load(Relaxed), 1);
        assert_eq!(s.counts[7][4].load(Relaxed), 1);
        assert_eq!(s.buckets[0].load(Relaxed), 1, "0.3 ms ≤ 0.5 ms");
        assert_eq!(s.buckets[3].load(Relaxed), 1, "3 ms ≤ 5 ms");
        assert_eq!(s.buckets[LATENCY_BUCKETS.len()].load(Relaxed), 1, "+Inf");
        assert_eq!(s.total(), 3);
        assert_eq!(s.sum_micros.load(Relaxed), 60_003_300);
    }
}
