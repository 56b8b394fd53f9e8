//! Prometheus metrics, served at `GET /__internal/metrics`.
//!
//! The proxy's per-request counters are plain atomics kept with each waifu's
//! route ([`crate::routing::stats`]) and turned into metrics only when
//! scraped, so a request takes no lock and hashes no label set. Rarer events
//! (hellos, database calls, incidents) use prometheus-client's labelled
//! families.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as PromRegistry;

use crate::routing::stats::{AllStats, CLASSES, LATENCY_BUCKETS, METHODS, RequestStats};
use crate::routing::switch::Found;
use crate::routing::{Instance, RouteTable, Routes, WaifuRoute};

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
    connections: Family<ListenerLabel, Gauge>,
    /// Unix time of each waifu's newest backup that passed its check (the
    /// only kind that counts as a success), on the orchestrator that takes
    /// them.
    backup_success: Family<WaifuLabel, Gauge>,
    backup_verified: Family<WaifuLabel, Gauge>,
    /// Requests that matched no waifu (404s, 400s, redirects), counted by
    /// the proxy, and every waifu's counters once used.
    pub stats: Arc<AllStats>,
    started: std::time::Instant,
    /// Requests per second over the last sample (f64 bits), see [`sample_rate`].
    rate: AtomicU64,
}

impl Metrics {
    /// `leading` says whether this orchestrator runs the health checks.
    pub(crate) fn new(routes: Routes, leading: tokio::sync::watch::Receiver<bool>) -> Arc<Metrics> {
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
        let connections = Family::default();
        registry.register(
            "open_connections",
            "Client connections open now, by listener",
            connections.clone(),
        );
        let backup_success = Family::default();
        registry.register(
            "backup_last_success_timestamp_seconds",
            "Unix time of each waifu's newest successful (taken and verified) backup",
            backup_success.clone(),
        );
        let backup_verified = Family::default();
        registry.register(
            "backup_last_verified_timestamp_seconds",
            "Unix time of each waifu's newest backup whose restore gave what it was taken from",
            backup_verified.clone(),
        );
        let stats = Arc::new(AllStats::default());
        registry.register_collector(Box::new(ProxyCollector {
            routes,
            stats: stats.clone(),
            leading,
        }));
        Arc::new(Metrics {
            registry,
            hellos,
            database_calls,
            incidents,
            connections,
            backup_success,
            backup_verified,
            stats,
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

    /// A backup of `waifu` taken and verified at `unix_seconds`.
    pub(crate) fn backup_verified(&self, waifu: &str, unix_seconds: i64) {
        let label = WaifuLabel {
            waifu: waifu.to_owned(),
        };
        for family in [&self.backup_success, &self.backup_verified] {
            let gauge = family.get_or_create(&label);
            if gauge.get() < unix_seconds {
                gauge.set(unix_seconds);
            }
        }
    }

    /// The open-connections gauge of one listener (`public`, `tls`, `internal`).
    pub(crate) fn connections(&self, listener: &'static str) -> Gauge {
        self.connections
            .get_or_create(&ListenerLabel { listener })
            .clone()
    }

    /// Every proxied request counted so far.
    pub(crate) fn requests_total(&self) -> u64 {
        self.stats.total()
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
    routes: Routes,
    stats: Arc<AllStats>,
    leading: tokio::sync::watch::Receiver<bool>,
}

impl Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let routes = self.routes.load();
        let mut waifus: Vec<(&str, &RequestStats)> = routes
            .waifu_routes()
            .filter_map(|w| Some((&*w.name, w.stats().if_used()?)))
            .collect();
        waifus.push(("-", &self.stats.unrouted));
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
                    let n = stats.count(m, c);
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
            let (counts, sum) = stats.latency();
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
                .iter()
                .chain([&f64::MAX])
                .zip(counts)
                .map(|(&le, n)| (le, n))
                .collect();
            let count = buckets.iter().map(|(_, n)| n).sum();
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
        leader.encode_gauge(&i64::from(*self.leading.borrow()))?;

        for (metric, help, is) in [
            (
                "waifu_maintenance",
                "1 while a waifu is in maintenance: its requests are answered 503",
                (|f: &Found| matches!(f, Found::Maintenance { .. })) as fn(&Found) -> bool,
            ),
            (
                "waifu_paused",
                "1 while a waifu is paused: its new requests wait",
                |f: &Found| matches!(f, Found::Paused(_)),
            ),
        ] {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Gauge)?;
            for waifu in routes.waifu_routes() {
                let on = is(&waifu.switch().find());
                family
                    .encode_family(&[("waifu", &*waifu.name)])?
                    .encode_gauge(&i64::from(on))?;
            }
        }

        let mut share = encoder.encode_descriptor(
            "rollout_share",
            "Percent of a waifu's new clients sent to the version rolled out, while a rollout runs",
            None,
            MetricType::Gauge,
        )?;
        for waifu in routes.waifu_routes() {
            if let Some(rollout) = &waifu.rollout {
                share
                    .encode_family(&[
                        ("waifu", &*waifu.name),
                        ("version", rollout.version.as_deref().unwrap_or("")),
                    ])?
                    .encode_gauge(&i64::from(rollout.share))?;
            }
        }

        let mut errors = encoder.encode_descriptor(
            "upstream_connect_errors",
            "Failed connections to a waifu's instances",
            None,
            MetricType::Counter,
        )?;
        for (waifu, stats) in &waifus {
            let n = stats.connect_errors();
            if n > 0 && *waifu != "-" {
                errors
                    .encode_family(&[("waifu", *waifu)])?
                    .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&n, None)?;
            }
        }

        instance_gauge(
            &mut encoder,
            &routes,
            "instance_healthy",
            "1 when an instance passes its health checks and receives traffic",
            |_, instance| instance.is_healthy(),
        )?;
        instance_gauge(
            &mut encoder,
            &routes,
            "instance_draining",
            "1 when an instance gets no new request: it said goodbye, or a newer version serves",
            |waifu, instance| waifu.draining(instance),
        )?;
        let mut info = encoder.encode_descriptor(
            "instance_version",
            "the version an instance announced (always 1; the version is the label)",
            None,
            MetricType::Gauge,
        )?;
        for waifu in routes.waifu_routes() {
            for instance in waifu.instances.iter() {
                let Some(version) = instance.version() else {
                    continue;
                };
                let upstream = instance.upstream.to_string();
                // Versions are any visible ASCII and the encoder writes label
                // values as they are: quotes and backslashes are escaped
                // here (names and addresses never hold them).
                let version = label_value(version);
                let labels = [
                    ("waifu", &*waifu.name),
                    ("instance", upstream.as_str()),
                    ("version", version.as_ref()),
                ];
                info.encode_family(&labels)?.encode_gauge(&1i64)?;
            }
        }
        Ok(())
    }
}

/// One 0/1 gauge per instance, labelled by waifu and instance.
fn instance_gauge(
    encoder: &mut DescriptorEncoder<'_>,
    routes: &RouteTable,
    name: &str,
    help: &str,
    value: impl Fn(&WaifuRoute, &Instance) -> bool,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for waifu in routes.waifu_routes() {
        for instance in waifu.instances.iter() {
            let upstream = instance.upstream.to_string();
            let labels = [("waifu", &*waifu.name), ("instance", upstream.as_str())];
            family
                .encode_family(&labels)?
                .encode_gauge(&i64::from(value(waifu, instance)))?;
        }
    }
    Ok(())
}

/// A label value in the exposition format's escaping (`\\`, `\"`, `\n`).
fn label_value(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    let mut out = String::with_capacity(value.len() + 4);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.into()
}

/// How often [`sample_rate`] measures the request rate.
const RATE_EVERY: Duration = Duration::from_secs(2);

/// Keeps [`Metrics::request_rate`] current until `shutdown`.
pub(crate) async fn sample_rate(
    metrics: Arc<Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    // The runtime's clock: a test may pause it.
    let mut last = (tokio::time::Instant::now(), metrics.requests_total());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RATE_EVERY) => {}
        }
        let now = (tokio::time::Instant::now(), metrics.requests_total());
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
    use http::{Method, StatusCode};

    /// The rate counts every waifu's requests (counters made by the
    /// proxy, found without the route table) and the unrouted ones.
    #[tokio::test(start_paused = true)]
    async fn the_request_rate_counts_every_request() {
        let (_writer, routes) = crate::routing::routes();
        let (_leading, leading) = tokio::sync::watch::channel(true);
        let metrics = Metrics::new(routes, leading);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let sampler = tokio::spawn(sample_rate(metrics.clone(), shutdown.clone()));
        // Its first reading: nothing yet.
        tokio::task::yield_now().await;
        let ok = |stats: &RequestStats| stats.record(&Method::GET, StatusCode::OK, Duration::ZERO);
        let (a, b) = (
            WaifuRoute::new("a", Vec::new()),
            WaifuRoute::new("b", Vec::new()),
        );
        for _ in 0..10 {
            ok(a.stats().get(&metrics.stats));
        }
        ok(b.stats().get(&metrics.stats));
        for _ in 0..3 {
            ok(&metrics.stats.unrouted);
        }
        for _ in 0..100 {
            if metrics.request_rate() != 0.0 {
                break;
            }
            tokio::time::sleep(RATE_EVERY / 10).await;
        }
        assert!(
            (metrics.request_rate() - 14.0 / RATE_EVERY.as_secs_f64()).abs() < 1e-9,
            "{}",
            metrics.request_rate()
        );
        shutdown.cancel();
        sampler.await.unwrap();
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("1.4.2"), "1.4.2");
        assert_eq!(label_value(r#"1"} evil 1"#), r#"1\"} evil 1"#);
        assert_eq!(label_value(r"a\b"), r"a\\b");
    }
}
