//! What happened: the health history (one row per change of an instance's
//! state, and of a waifu's switch), the notifications of a waifu going down
//! and up (one of each per outage, from one replica, damped while it
//! flaps, none in maintenance), uptime, and the status page's graphs.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::harness::{self, Orch};
use crate::pg;
use crate::waifu::TestWaifu;

/// A webhook receiver that accepts everything and keeps the bodies.
pub(crate) struct Hook {
    pub(crate) url: String,
    pub(crate) bodies: Arc<Mutex<Vec<Value>>>,
}

impl Hook {
    pub(crate) async fn start() -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let seen = bodies.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            seen.lock()
                                .unwrap()
                                .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::new(),
                            )))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Hook { url, bodies }
    }

    /// The bodies received about `name`'s state, oldest first.
    fn notices(&self, name: &str) -> Vec<Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|b| {
                b["name"] == name && b["kind"].as_str().is_some_and(|k| k.starts_with("waifu_"))
            })
            .cloned()
            .collect()
    }

    /// Waits until `n` notices about `name` arrived; them.
    async fn wait_notices(&self, name: &str, n: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.notices(name);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{n} notice(s) about {name} expected, got {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn kinds(notices: &[Value]) -> Vec<&str> {
    notices
        .iter()
        .map(|n| n["kind"].as_str().unwrap())
        .collect()
}

async fn history(orch: &Orch, name: &str, query: &str) -> (StatusCode, Value) {
    orch.internal_json(
        Method::GET,
        &format!("/__internal/waifus/{name}/history{query}"),
        String::new(),
    )
    .await
}

/// Waits until `name`'s history has a row into `to`; the newest such.
async fn wait_row(orch: &Orch, name: &str, to: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, h) = history(orch, name, "").await;
        if status == StatusCode::OK
            && let Some(row) = h["transitions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["to"] == to)
        {
            return row.clone();
        }
        assert!(Instant::now() < deadline, "no row to {to}: {h}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until `orch` has checked `name`'s first instance `n` more times.
async fn checks_pass(orch: &Orch, name: &str, n: usize) {
    let last = || async {
        let (_, list) = orch
            .internal_json(Method::GET, "/__internal/waifus", String::new())
            .await;
        list.as_array()
            .and_then(|l| l.iter().find(|w| w["name"] == name).cloned())
            .and_then(|w| w["instances"][0]["lastCheck"].as_str().map(str::to_owned))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = last().await;
    let mut passed = 0;
    while passed < n {
        assert!(Instant::now() < deadline, "{name} is not checked any more");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = last().await;
        if now != seen {
            passed += 1;
            seen = now;
        }
    }
}

fn time_of(row: &Value) -> SystemTime {
    humantime::parse_rfc3339(row["time"].as_str().unwrap()).unwrap()
}

/// `hello` (the SDK's example, a process of its own) as `name` on `port`,
/// saying hello to `orch`.
fn hello_process(orch: &Orch, name: &str, port: u16) -> waifus_testkit::Proc {
    let cache = harness::temp_dir("hello-cache");
    waifus_testkit::Proc::spawn(
        Command::new(waifus_testkit::workspace_binary("hello"))
            .env("ORCHESTRATOR_URL", format!("http://{}", orch.internal))
            .env("WAIFU_NAME", name)
            .env("PORT", port.to_string())
            .env("LISTEN_ADDR", "127.0.0.1")
            .env("WAIFU_HOST", format!("127.0.0.1:{port}"))
            .env("WAIFU_CACHE_DIR", cache)
            .env("RUST_LOG", "warn"),
    )
}

/// `kill -9` of a waifu's only instance (two orchestrators, one database):
/// one history row within two health intervals, exactly one `waifu_down`
/// webhook from one replica naming it and why; the waifu back, exactly one
/// `waifu_up`. `orchestrator history` prints it all.
#[tokio::test]
async fn a_killed_instance_is_one_row_one_down_and_one_up_from_one_replica() {
    const INTERVAL: Duration = Duration::from_secs(1);
    let hook = Hook::start().await;
    let url = pg::cluster().url(&pg::unique_db("hist_kill"));
    let flags = [
        "--health-interval",
        "1s",
        "--incident-webhook-url",
        hook.url.as_str(),
    ];
    let a = harness::start_with_url(&format!("{url}?application_name=replica-a"), &flags).await;
    let b = harness::start_with_url(&format!("{url}?application_name=replica-b"), &flags).await;
    let name = "hello-kill";
    let port = waifus_testkit::free_port();
    let first = hello_process(&a, name, port);
    a.wait_health(name, StatusCode::NO_CONTENT).await;
    b.wait_health(name, StatusCode::NO_CONTENT).await;
    wait_row(&a, name, "healthy", Duration::from_secs(10)).await;

    let killed = SystemTime::now();
    first.signal("-KILL");
    let row = wait_row(&a, name, "unhealthy", Duration::from_secs(10)).await;
    let after = time_of(&row).duration_since(killed).unwrap_or_default();
    assert!(after <= 2 * INTERVAL, "{row} came {after:?} after the kill");
    assert_eq!(row["from"], "healthy", "{row}");
    assert_eq!(row["reason"], "refused", "{row}");
    assert_eq!(row["instance"], format!("http://127.0.0.1:{port}"));
    assert!(["replica-a", "replica-b"].contains(&row["origin"].as_str().unwrap()));

    let down = hook.wait_notices(name, 1, Duration::from_secs(15)).await;
    assert_eq!(kinds(&down), ["waifu_down"]);
    let source = down[0]["source"].as_str().unwrap();
    assert!(["replica-a", "replica-b"].contains(&source), "{down:?}");
    let detail = down[0]["detail"].as_str().unwrap();
    assert!(detail.contains("refused"), "{detail}");
    assert!(
        !detail.contains("https://"),
        "links nothing outside: {detail}"
    );

    let _second = hello_process(&a, name, port);
    let both = hook.wait_notices(name, 2, Duration::from_secs(15)).await;
    assert_eq!(kinds(&both), ["waifu_down", "waifu_up"]);
    assert_eq!(both[1]["source"], source, "the same replica sends");
    // Some checks later, still one of each (the incidents table holds what
    // either replica stored).
    checks_pass(&a, name, 3).await;
    assert_eq!(kinds(&hook.notices(name)), ["waifu_down", "waifu_up"]);
    let (_, incidents) = a
        .internal_json(Method::GET, "/__internal/incidents", String::new())
        .await;
    let stored: Vec<&str> = incidents
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"] == name)
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    assert_eq!(stored, ["waifu_up", "waifu_down"]);

    let (status, h) = history(&b, name, "").await;
    assert_eq!(status, StatusCode::OK);
    let tos: Vec<&str> = h["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|t| t["to"].as_str().unwrap())
        .collect();
    assert_eq!(tos, ["added", "healthy", "unhealthy", "healthy"], "{h}");
    let up = h["uptime"]["24h"].as_f64().unwrap();
    assert!(up > 0.0 && up < 1.0, "{h}");
    assert_eq!(h["availability"]["24h"]["outages"], 1, "{h}");

    // On a thread of its own: the orchestrators answer on this one.
    let internal = b.internal.to_string();
    let out = tokio::task::spawn_blocking(move || {
        harness::output_within(
            Command::new(waifus_testkit::workspace_binary("orchestrator")).args([
                "history",
                name,
                "--internal-addr",
                &internal,
            ]),
            Duration::from_secs(30),
        )
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with(&format!("{name}: up ")), "{text}");
    assert!(
        text.contains("over 24h") && text.contains("over 30d"),
        "{text}"
    );
    assert!(text.contains("1 outage(s)"), "{text}");
    assert!(text.contains("TIME") && text.contains("refused"), "{text}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// Five short flaps within a minute: one `waifu_flapping`, then, once it
/// was stable for the flap window, one `waifu_up` saying how many changes
/// went unreported; nothing else.
#[tokio::test]
async fn flapping_is_two_notifications() {
    let hook = Hook::start().await;
    let orch = harness::start(
        &pg::unique_db("hist_flap"),
        // A second between checks: time enough, however loaded the
        // machine, to make the waifu healthy again before a second failed
        // check would make a flap an outage.
        &[
            "--health-interval",
            "1s",
            "--flap-window",
            "20s",
            "--incident-webhook-url",
            &hook.url,
        ],
    )
    .await;
    let name = "flappy";
    let w = TestWaifu::start(name).await;
    orch.register(name, &w.host(), json!({})).await;
    wait_row(&orch, name, "healthy", Duration::from_secs(10)).await;
    let started = Instant::now();
    for _ in 0..5 {
        w.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
        orch.wait_health(name, StatusCode::SERVICE_UNAVAILABLE)
            .await;
        w.healthy.store(true, std::sync::atomic::Ordering::SeqCst);
        orch.wait_health(name, StatusCode::NO_CONTENT).await;
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    let got = hook.wait_notices(name, 2, Duration::from_secs(60)).await;
    assert_eq!(kinds(&got), ["waifu_flapping", "waifu_up"], "{got:?}");
    assert!(
        got[0]["detail"].as_str().unwrap().contains("20s"),
        "{got:?}"
    );
    let settled = got[1]["detail"].as_str().unwrap();
    assert!(
        settled.contains("after flapping") && settled.contains("5 change(s) were not notified"),
        "{settled}"
    );
    checks_pass(&orch, name, 3).await;
    assert_eq!(hook.notices(name).len(), 2);
    // Every change is in the history, all the same.
    let (_, h) = history(&orch, name, "").await;
    let unhealthy = h["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["to"] == "unhealthy")
        .count();
    assert_eq!(unhealthy, 5, "{h}");
    orch.stop().await.unwrap();
}

/// A waifu in maintenance sends no `waifu_down` whatever its instances do,
/// and that time is apart from outages; once maintenance ends with no
/// healthy instance, the outage is reported.
#[tokio::test]
async fn maintenance_is_quiet_and_kept_apart() {
    let hook = Hook::start().await;
    let orch = harness::start(
        &pg::unique_db("hist_quiet"),
        &[
            "--health-interval",
            "200ms",
            "--incident-webhook-url",
            &hook.url,
        ],
    )
    .await;
    let name = "quiet";
    let w = TestWaifu::start(name).await;
    orch.register(name, &w.host(), json!({})).await;
    wait_row(&orch, name, "healthy", Duration::from_secs(10)).await;
    let (status, body) = orch
        .internal_json(
            Method::PUT,
            &format!("/__internal/waifus/{name}/maintenance"),
            json!({"message": "moving house"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    w.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    orch.wait_health(name, StatusCode::SERVICE_UNAVAILABLE)
        .await;
    checks_pass(&orch, name, 5).await;
    assert!(hook.notices(name).is_empty(), "{:?}", hook.notices(name));

    let (status, _) = orch
        .internal_json(
            Method::DELETE,
            &format!("/__internal/waifus/{name}/maintenance"),
            String::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let got = hook.wait_notices(name, 1, Duration::from_secs(10)).await;
    assert_eq!(kinds(&got), ["waifu_down"]);
    assert!(got[0]["detail"].as_str().unwrap().contains("status 500"));

    let (_, h) = history(&orch, name, "").await;
    let switch: Vec<&str> = h["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter(|t| t["instance"].is_null())
        .map(|t| t["to"].as_str().unwrap())
        .collect();
    assert_eq!(switch, ["maintenance", "open"], "{h}");
    let day = &h["availability"]["24h"];
    assert!(day["maintenance"].as_f64().unwrap() > 0.5, "{h}");
    assert!(day["up"].as_f64().unwrap() > 0.0, "{h}");
    orch.stop().await.unwrap();
}

/// The endpoint's refusals: an unknown waifu is 404, a bad `since` 400;
/// `since` keeps only newer rows.
#[tokio::test]
async fn history_queries_are_checked() {
    let orch = harness::start(&pg::unique_db("hist_query"), &[]).await;
    let (status, body) = history(&orch, "nobody", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "unknown_waifu");
    let w = TestWaifu::start("q").await;
    orch.register("q", &w.host(), json!({})).await;
    wait_row(&orch, "q", "healthy", Duration::from_secs(10)).await;
    for bad in [
        "?since=yesterday",
        "?since=2026-13-01T00:00:00Z",
        "?limit=0",
    ] {
        let (status, body) = history(&orch, "q", bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"], "bad_query");
    }
    let (_, all) = history(&orch, "q", "?since=1h").await;
    assert_eq!(all["transitions"].as_array().unwrap().len(), 2, "{all}");
    let (_, none) = history(&orch, "q", "?since=2999-01-01T00:00:00Z").await;
    assert!(none["transitions"].as_array().unwrap().is_empty());
    orch.stop().await.unwrap();
}

/// Binds the latest hello was refused are listed with why, on the page and
/// in its JSON, until a hello no longer asks for them.
#[tokio::test]
async fn refused_binds_of_the_latest_hello_are_listed() {
    let orch = harness::start(&pg::unique_db("hist_refused"), &[]).await;
    let holder = TestWaifu::start("holder").await;
    let (status, _) = orch
        .hello(
            json!({"name": "holder", "host": holder.host(), "secret": "holder-secret",
                      "additionalBinds": {"http://taken.test": "/"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let other = TestWaifu::start("other").await;
    orch.register(
        "other",
        &other.host(),
        json!({"http://taken.test/x": "/", "ftp://bad.test": "/"}),
    )
    .await;
    let refused = || async {
        let status = orch.status_json().await;
        status["waifus"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == "other")
            .map(|w| w["refused"].clone())
            .unwrap()
    };
    let got = refused().await;
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    let reasons: Vec<&str> = got.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("invalid")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("taken") && r.contains("holder")),
        "{reasons:?}"
    );
    let page = harness::send(
        orch.internal,
        Method::GET,
        "/__internal/status",
        &[],
        Bytes::new(),
    )
    .await
    .unwrap()
    .text();
    assert!(
        page.contains(r#"<div class="refused"><code>ftp://bad.test</code>"#),
        "{page}"
    );
    orch.register("other", &other.host(), json!({})).await;
    assert!(refused().await.as_array().unwrap().is_empty());
    orch.stop().await.unwrap();
}
