//! Faults under load: a waifu killed and brought back, a slow
//! waifu, the database going away, all while a steady load runs.
//!
//! Latency bounds here are generous on purpose (seconds where the proxy
//! needs milliseconds), so they hold on a loaded 2-core machine; speed
//! itself is measured by bench/, not by tests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::harness;
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

/// One request of the load: which path, its status (0: transport error),
/// how long it took and when it started.
#[derive(Debug, Clone)]
pub struct Sample {
    pub path: &'static str,
    pub status: u16,
    pub took: Duration,
    pub at: Instant,
}

/// Workers sending GETs round the given paths until stopped.
pub struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: CancellationToken,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(public: SocketAddr, paths: &[&'static str], workers: usize) -> Load {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let workers = (0..workers)
            .map(|i| {
                let (samples, stop, client) = (samples.clone(), stop.clone(), client.clone());
                let paths = paths.to_vec();
                tokio::spawn(async move {
                    let mut n = i;
                    while !stop.is_cancelled() {
                        let path = paths[n % paths.len()];
                        n += 1;
                        let req = http::Request::get(format!("http://{public}{path}"))
                            .header("host", "localhost")
                            .body(Empty::new())
                            .unwrap();
                        let at = Instant::now();
                        let sent =
                            tokio::time::timeout(Duration::from_secs(10), client.request(req));
                        let status = match sent.await {
                            Ok(Ok(r)) => {
                                let status = r.status().as_u16();
                                let _ = tokio::time::timeout(
                                    Duration::from_secs(10),
                                    r.into_body().collect(),
                                )
                                .await;
                                status
                            }
                            _ => 0,
                        };
                        samples.lock().unwrap().push(Sample {
                            path,
                            status,
                            took: at.elapsed(),
                            at,
                        });
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Load {
            samples,
            stop,
            workers,
        }
    }

    pub async fn finish(self) -> Vec<Sample> {
        self.stop.cancel();
        for w in self.workers {
            w.await.unwrap();
        }
        self.samples.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_killed_waifu_fails_fast_others_see_nothing_and_it_comes_back() {
    let orch = harness::start(&unique_db("killed"), &[]).await;
    let a = TestWaifu::start("a").await;
    let b = TestWaifu::start("b").await;
    orch.register("a", &a.host(), json!({})).await;
    orch.register("b", &b.host(), json!({})).await;
    let load = Load::start(orch.public, &["/a/x", "/b/x"], 8);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let killed_at = Instant::now();
    a.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let addr = a.addr;
    drop(a);
    let a = TestWaifu::start_on(addr, "a").await;
    let hello_at = Instant::now();
    let (status, _) = orch.hello(json!({"name": "a", "host": a.host()})).await;
    assert_eq!(status, http::StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let samples = load.finish().await;

    let b_samples: Vec<_> = samples.iter().filter(|s| s.path == "/b/x").collect();
    assert!(b_samples.len() > 50, "too little load: {}", b_samples.len());
    let b_bad: Vec<_> = b_samples.iter().filter(|s| s.status != 200).collect();
    assert!(b_bad.is_empty(), "the other waifu saw errors: {b_bad:?}");

    let a_down: Vec<_> = samples
        .iter()
        .filter(|s| s.path == "/a/x" && s.at >= killed_at && s.at < hello_at)
        .collect();
    assert!(
        a_down.len() > 10,
        "too little load while down: {}",
        a_down.len()
    );
    for s in &a_down {
        assert!(
            matches!(s.status, 200 | 502 | 503),
            "unexpected answer while down: {s:?}"
        );
        assert!(s.took < Duration::from_secs(3), "a request hung: {s:?}");
    }
    assert!(
        a_down.iter().filter(|s| s.status == 503).count() > 5,
        "a dead waifu must be marked down and answered 503 at once"
    );

    let back = samples
        .iter()
        .filter(|s| s.path == "/a/x" && s.at >= hello_at && s.status == 200)
        .map(|s| s.at + s.took - hello_at)
        .min()
        .expect("traffic to the waifu resumed");
    assert!(back < Duration::from_secs(2), "resumed only after {back:?}");
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn a_slow_waifu_times_out_without_holding_other_traffic() {
    let orch = harness::start(&unique_db("slowwaifu"), &["--upstream-timeout", "1s"]).await;
    let slow = TestWaifu::start("slow").await;
    let fast = TestWaifu::start("fast").await;
    orch.register("slow", &slow.host(), json!({})).await;
    orch.register("fast", &fast.host(), json!({})).await;
    let load = Load::start(orch.public, &["/fast/x"], 4);
    let slow_calls = Load::start(orch.public, &["/slow/slow?ms=5000"], 4);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let slow_samples = slow_calls.finish().await;
    let samples = load.finish().await;

    assert!(!slow_samples.is_empty());
    for s in &slow_samples {
        assert_eq!(s.status, 504, "{s:?}");
        assert!(s.took < Duration::from_secs(4), "{s:?}");
    }
    assert!(samples.len() > 20, "too little load: {}", samples.len());
    let bad: Vec<_> = samples.iter().filter(|s| s.status != 200).collect();
    assert!(bad.is_empty(), "{bad:?}");
    let slowest = samples.iter().map(|s| s.took).max().unwrap();
    assert!(
        slowest < Duration::from_secs(1),
        "fast traffic was held: {slowest:?}"
    );
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn proxying_never_stops_while_the_database_is_away() {
    let (orch, relay) = harness::start_behind_relay(&unique_db("pgload")).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;
    let load = Load::start(orch.public, &["/w/x"], 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.cut();
    // Health checks keep running and try to store transitions meanwhile.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    relay.restore();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = load.finish().await;
    assert!(samples.len() > 50, "too little load: {}", samples.len());
    let bad: Vec<_> = samples.iter().filter(|s| s.status != 200).collect();
    assert!(bad.is_empty(), "{bad:?}");
    orch.stop().await.unwrap();
}
