//! Rollouts: a new version takes a share of new clients, each client kept
//! on its side by a cookie, step by step; a worse one (errors, latency) is
//! rolled back at its first judgement, with an incident and an audit row.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{self, Orch};
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

/// One request of a client through the proxy: which waifu answered
/// (`None` for anything but a 200), and the cookie it was given.
async fn visit(
    public: SocketAddr,
    cookie: Option<&str>,
) -> (StatusCode, Option<String>, Option<String>) {
    let mut headers = vec![("host", "localhost")];
    if let Some(c) = cookie {
        headers.push(("cookie", c));
    }
    let r = harness::send(public, Method::GET, "/cn/x", &headers, Bytes::new())
        .await
        .expect("public listener reachable");
    let id = (r.status == StatusCode::OK).then(|| r.json()["id"].as_str().unwrap().to_owned());
    let set = r
        .headers
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    (r.status, id, set)
}

async fn rollout(orch: &Orch, method: Method, body: Value) -> (StatusCode, Value) {
    orch.internal_json(method, "/__internal/waifus/cn/rollout", body.to_string())
        .await
}

/// v1 serving; a rollout of v2 started; v2's instance says hello and is
/// healthy.
async fn two_versions(orch: &Orch, plan: Value) -> (TestWaifu, TestWaifu) {
    let v1 = TestWaifu::start("v1").await;
    let (status, body) = orch
        .hello(json!({"name": "cn", "host": v1.host(), "version": "1"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    orch.wait_health("cn", StatusCode::NO_CONTENT).await;
    let (status, started) = rollout(orch, Method::PUT, plan).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    assert_eq!(started["state"], "running");
    assert_eq!(started["from"], "1");
    let v2 = TestWaifu::start("v2").await;
    let (status, body) = orch
        .hello(json!({"name": "cn", "host": v2.host(), "version": "2"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    orch.wait_checked("cn").await;
    (v1, v2)
}

/// New clients, one request each, until `stop`: the answers by waifu, and
/// how many failed.
fn load(
    public: SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize, Vec<String>)> {
    tokio::spawn(async move {
        let (mut v1, mut v2, mut failed) = (0, 0, Vec::new());
        while !stop.load(Ordering::SeqCst) {
            match visit(public, None).await {
                (_, Some(id), _) if id == "v1" => v1 += 1,
                (_, Some(_), _) => v2 += 1,
                (status, None, _) => failed.push(status.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (v1, v2, failed)
    })
}

async fn wait_state(orch: &Orch, want: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, r) = rollout(orch, Method::GET, Value::Null).await;
        if r["state"] == want {
            return r;
        }
        assert!(Instant::now() < deadline, "no {want} rollout: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_rollout_splits_new_clients_keeps_each_on_its_side_and_ends_on_the_new_version() {
    let orch = harness::start(&unique_db("canary_split"), &[]).await;
    // A step long enough for 2,000 clients on a loaded machine; then the
    // same rollout again with short steps, to see them go by.
    let (_v1, _v2) = two_versions(
        &orch,
        json!({"version": "2", "steps": [10, 50, 100], "interval": "10m"}),
    )
    .await;
    // 2,000 new clients, 50 at a time, each coming back with its cookie.
    let on_new = Arc::new(AtomicUsize::new(0));
    for _ in 0..40 {
        let batch: Vec<_> = (0..50)
            .map(|_| {
                let (public, on_new) = (orch.public, on_new.clone());
                tokio::spawn(async move {
                    let (status, first, cookie) = visit(public, None).await;
                    assert_eq!(status, StatusCode::OK);
                    let cookie = cookie.expect("a new client gets the cookie");
                    assert!(cookie.starts_with("waifus_rollout_cn="), "{cookie}");
                    let (_, again, set) = visit(public, Some(&cookie)).await;
                    assert_eq!(first, again, "a client sees one version");
                    assert_eq!(set, None, "a client with the cookie keeps it");
                    if first.as_deref() == Some("v2") {
                        on_new.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for client in batch {
            client.await.unwrap();
        }
    }
    let share = on_new.load(Ordering::SeqCst) as f64 / 2000.0;
    assert!(
        (0.07..=0.13).contains(&share),
        "{share} of new clients on v2 at 10 %"
    );
    let (_, now) = rollout(&orch, Method::GET, Value::Null).await;
    assert_eq!(now["share"], 10, "{now}");
    // Visible: metrics, the status page, the CLI.
    let metrics = orch.scrape().await;
    assert_eq!(
        harness::sample(&metrics, r#"waifus_rollout_share{waifu="cn",version="2"}"#),
        Some(10.0),
        "{metrics}"
    );
    let status = orch.status_json().await;
    assert_eq!(status["rollouts"][0]["version"], "2", "{status}");
    let internal = orch.internal.to_string();
    let out =
        tokio::task::spawn_blocking(move || {
            harness::output_within(
                std::process::Command::new(waifus_testkit::workspace_binary("orchestrator"))
                    .args(["rollout", "cn", "--internal-addr", &internal]),
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
    assert!(
        text.starts_with("cn: 2 over 1, running: step 1 of 3"),
        "{text}"
    );
    assert!(text.contains("10 % of new clients"), "{text}");

    // Traffic on, the steps go by: 50, then 100 and done; nothing fails.
    let (status, again) = rollout(
        &orch,
        Method::PUT,
        json!({"version": "2", "steps": [10, 50, 100], "interval": "3s"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(orch.public, stop.clone());
    let done = wait_state(&orch, "done", Duration::from_secs(60)).await;
    assert_eq!(done["share"], 100, "{done}");
    assert!(done["judged"].as_str().unwrap().contains("new:"), "{done}");
    // The old version drains as after any deploy.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, list) = orch
            .internal_json(Method::GET, "/__internal/waifus", String::new())
            .await;
        let v1_draining = list[0]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["version"] == "1" && i["draining"] == true);
        if v1_draining {
            break;
        }
        assert!(Instant::now() < deadline, "v1 does not drain: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (v1, v2, failed) = traffic.await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(v1 > 0 && v2 > 0, "{v1} {v2}");
    let (_, audit) = orch
        .internal_json(Method::GET, "/__internal/audit?name=cn", String::new())
        .await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    for want in ["rollout_started", "rollout_step", "rollout_done"] {
        assert!(actions.contains(&want), "{actions:?}");
    }
    // Each step in the history too, with the figures it was judged on.
    let (_, history) = orch
        .internal_json(Method::GET, "/__internal/waifus/cn/history", String::new())
        .await;
    let steps: Vec<&str> = history["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter(|t| t["to"] == "rollout")
        .map(|t| t["reason"].as_str().unwrap())
        .skip(1)
        .collect();
    assert_eq!(steps.len(), 4, "{steps:?}");
    for (step, starts) in steps.iter().zip([
        "2 to 10 % of new clients",
        "2 to 50 % of new clients (new:",
        "2 to 100 % of new clients (new:",
        "2 takes every request",
    ]) {
        assert!(step.starts_with(starts), "{steps:?}");
    }
    orch.stop().await.unwrap();
}

/// New clients at a time while a rollout is judged.
const LOADERS: usize = 4;

/// A new version worse than the old one, by errors or by latency: rolled
/// back at its first judgement; every client is on the old version at once
/// (its cookie for the new side notwithstanding); the only failures are the
/// new version's own answers before that.
async fn rolled_back(db: &str, plan: Value, worse: impl FnOnce(&TestWaifu, &TestWaifu), why: &str) {
    let hook = crate::history::Hook::start().await;
    let orch = harness::start(&unique_db(db), &["--incident-webhook-url", &hook.url]).await;
    let (v1, v2) = two_versions(&orch, plan).await;
    worse(&v1, &v2);
    let stop = Arc::new(AtomicBool::new(false));
    // Several new clients at a time: a step is judged once each side has
    // served 100 requests, which one client after another, each waiting
    // 30–60 ms for its answer, barely reached in the 30 s allowed on a
    // loaded machine.
    let traffic: Vec<_> = (0..LOADERS)
        .map(|_| load(orch.public, stop.clone()))
        .collect();
    // A client on the new side.
    let cookie = loop {
        let (_, id, cookie) = visit(orch.public, None).await;
        if id.as_deref() == Some("v2") {
            break cookie.unwrap();
        }
    };
    let aborted = wait_state(&orch, "aborted", Duration::from_secs(30)).await;
    let at = Instant::now();
    assert_eq!(aborted["share"], 0);
    assert_eq!(
        aborted["step"], 0,
        "rolled back at its first judgement: {aborted}"
    );
    let judged = aborted["judged"].as_str().unwrap();
    assert!(judged.contains(why), "{judged}");
    // Back on v1 within a second, cookie or not.
    loop {
        let (_, id, _) = visit(orch.public, Some(&cookie)).await;
        if id.as_deref() == Some("v1") {
            break;
        }
        assert!(at.elapsed() < Duration::from_secs(1), "still on v2");
    }
    let reached = v2.seen.lock().unwrap().len();
    for _ in 0..20 {
        let (_, id, set) = visit(orch.public, Some(&cookie)).await;
        assert_eq!(id.as_deref(), Some("v1"));
        assert_eq!(set, None, "no cookie once the rollout is over");
    }
    stop.store(true, Ordering::SeqCst);
    for loader in traffic {
        let (_, _, failed) = loader.await.unwrap();
        // Only v2 ever failed.
        assert!(failed.iter().all(|s| s.starts_with("500")), "{failed:?}");
    }
    // Nothing reached v2 once everyone was back (but a request each
    // client had sent before).
    assert!(
        v2.seen.lock().unwrap().len() <= reached + LOADERS,
        "requests reached v2 after the rollback"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !hook
        .bodies
        .lock()
        .unwrap()
        .iter()
        .any(|b| b["kind"] == "rollout_aborted" && b["name"] == "cn")
    {
        assert!(Instant::now() < deadline, "no rollout_aborted webhook");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (_, incidents) = orch
        .internal_json(Method::GET, "/__internal/incidents", String::new())
        .await;
    let incident = incidents
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "rollout_aborted")
        .unwrap_or_else(|| panic!("{incidents}"));
    assert_eq!(incident["name"], "cn");
    assert!(incident["detail"].as_str().unwrap().contains(why));
    let (_, audit) = orch
        .internal_json(Method::GET, "/__internal/audit?name=cn", String::new())
        .await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "rollout_aborted" && a["source"] == "orchestrator"),
        "{audit}"
    );
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn a_version_failing_one_request_in_five_is_rolled_back() {
    rolled_back(
        "canary_errors",
        json!({"version": "2", "steps": [10, 50, 100], "interval": "3s"}),
        |_, v2| v2.fail_every.store(5, Ordering::SeqCst),
        "error rate",
    )
    .await;
}

#[tokio::test]
async fn a_version_twice_as_slow_is_rolled_back() {
    rolled_back(
        "canary_slow",
        json!({"version": "2", "steps": [20, 100], "interval": "3s", "maxLatencyRatio": 1.5}),
        |v1, v2| {
            v1.delay_ms.store(30, Ordering::SeqCst);
            v2.delay_ms.store(60, Ordering::SeqCst);
        },
        "p99",
    )
    .await;
}

#[tokio::test]
async fn rollout_requests_are_checked() {
    let orch = harness::start(&unique_db("canary_bad"), &[]).await;
    let (status, body) = rollout(&orch, Method::PUT, json!({"version": "2"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let w = TestWaifu::start("w").await;
    orch.register("cn", &w.host(), json!({})).await;
    for bad in [
        json!({"version": "2", "steps": [50, 10, 100]}),
        json!({"version": "2", "steps": [10, 50]}),
        json!({"version": "2", "steps": []}),
        json!({"version": "2", "interval": "0s"}),
        json!({"version": "2", "maxErrorRate": 2}),
        json!({"version": "2", "maxLatencyRatio": 0.5}),
        json!({"version": "two words"}),
        json!({"version": "2", "surprise": true}),
    ] {
        let (status, body) = rollout(&orch, Method::PUT, bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["message"].is_string(), "{body}");
    }
    let (status, body) = rollout(&orch, Method::GET, Value::Null).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_rollout"))
    );
    let (status, _) = rollout(&orch, Method::DELETE, Value::Null).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, started) = rollout(&orch, Method::PUT, json!({"version": "2"})).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    assert_eq!(started["steps"], json!([10, 50, 100]));
    assert_eq!(started["interval"], "1m");
    let (status, aborted) = rollout(&orch, Method::DELETE, Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{aborted}");
    assert_eq!(aborted["state"], "aborted");
    orch.stop().await.unwrap();
}

/// `ROLLOUT=auto`: a version announced for the first time rolls out by
/// itself over the one that served, from its first route on (never every
/// request first), and ends as current; the first version of a waifu does
/// not roll out over nothing.
#[tokio::test]
async fn with_rollout_auto_a_new_version_rolls_out_by_itself() {
    let orch = harness::start(
        &unique_db("canary_auto"),
        &[
            "--rollout",
            "auto",
            "--rollout-steps",
            "20,100",
            "--rollout-interval",
            "3s",
        ],
    )
    .await;
    let v1 = TestWaifu::start("v1").await;
    let (status, _) = orch
        .hello(json!({"name": "cn", "host": v1.host(), "version": "1"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    orch.wait_health("cn", StatusCode::NO_CONTENT).await;
    let (status, _) = rollout(&orch, Method::GET, Value::Null).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the first version rolls out over nothing"
    );

    let v2 = TestWaifu::start("v2").await;
    let (status, _) = orch
        .hello(json!({"name": "cn", "host": v2.host(), "version": "2"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, started) = rollout(&orch, Method::GET, Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    assert_eq!(
        (&started["version"], &started["from"], &started["share"]),
        (&json!("2"), &json!("1"), &json!(20)),
        "{started}"
    );
    // From the hello's answer on, new clients split; none is on v2 without
    // its share.
    let mut on_v2 = 0;
    for _ in 0..200 {
        let (status, id, cookie) = visit(orch.public, None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(cookie.is_some());
        on_v2 += usize::from(id.as_deref() == Some("v2"));
    }
    assert!((10..=75).contains(&on_v2), "{on_v2} of 200 on v2 at 20 %");
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(orch.public, stop.clone());
    wait_state(&orch, "done", Duration::from_secs(30)).await;
    // Within a second every new client goes to v2, with no cookie.
    let done = Instant::now();
    loop {
        let (_, id, cookie) = visit(orch.public, None).await;
        if (id.as_deref(), &cookie) == (Some("v2"), &None) {
            break;
        }
        assert!(done.elapsed() < Duration::from_secs(1), "{id:?} {cookie:?}");
    }
    for _ in 0..20 {
        let (_, id, cookie) = visit(orch.public, None).await;
        assert_eq!((id.as_deref(), cookie), (Some("v2"), None));
    }
    stop.store(true, Ordering::SeqCst);
    let (_, _, failed) = traffic.await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    orch.stop().await.unwrap();
}

/// HAProxy in front of two orchestrators on one PostgreSQL, round robin,
/// for the clients of a rollout whose new version fails one request in
/// five: both apply the share set through either; the counts of both are
/// judged together, once; the rollback is applied by both within a second.
#[tokio::test]
async fn two_orchestrators_behind_haproxy_share_one_rollout() {
    let found = std::process::Command::new("haproxy")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !harness::tool_present(found, "HAProxy (apt-get install haproxy)") {
        return;
    }
    let db = unique_db("canary_ha");
    let url = crate::pg::cluster().url(&db);
    let a = harness::start_with_url(&format!("{url}?application_name=replica-a"), &[]).await;
    let b = harness::start_with_url(&format!("{url}?application_name=replica-b"), &[]).await;
    let front = waifus_testkit::free_addr();
    let dir = harness::temp_dir("haproxy");
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 2048\ndefaults\n  mode http\n  timeout connect 2s\n  \
             timeout client 30s\n  timeout server 30s\nfrontend f\n  bind {front}\n  \
             default_backend orchestrators\nbackend orchestrators\n  balance roundrobin\n  \
             server a {}\n  server b {}\n",
            a.public, b.public
        ),
    )
    .unwrap();
    let _haproxy = waifus_testkit::Proc::spawn(
        std::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config),
    );
    // HAProxy binds soon after it starts; on a busy machine, later than the
    // first request below would be sent.
    let listening = Instant::now();
    while tokio::net::TcpStream::connect(front).await.is_err() {
        assert!(
            listening.elapsed() < Duration::from_secs(30),
            "HAProxy does not listen on {front}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let v1 = TestWaifu::start("v1").await;
    let (status, _) = a
        .hello(json!({"name": "cn", "host": v1.host(), "version": "1"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    a.wait_health("cn", StatusCode::NO_CONTENT).await;
    b.wait_health("cn", StatusCode::NO_CONTENT).await;
    // Started through b; both apply its share within a second.
    let (status, started) = rollout(
        &b,
        Method::PUT,
        json!({"version": "2", "steps": [20, 100], "interval": "3s"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let set = Instant::now();
    for orch in [&a, &b] {
        loop {
            let metrics = orch.scrape().await;
            let series = r#"waifus_rollout_share{waifu="cn",version="2"}"#;
            if harness::sample(&metrics, series) == Some(20.0) {
                break;
            }
            assert!(set.elapsed() < Duration::from_secs(1), "{metrics}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let v2 = TestWaifu::start("v2").await;
    v2.fail_every.store(5, Ordering::SeqCst);
    let (status, _) = a
        .hello(json!({"name": "cn", "host": v2.host(), "version": "2"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    a.wait_checked("cn").await;

    // New clients through HAProxy; one client on the new side.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(front, stop.clone());
    let cookie = loop {
        let (_, id, cookie) = visit(front, None).await;
        if id.as_deref() == Some("v2") {
            break cookie.unwrap();
        }
    };
    wait_state(&a, "aborted", Duration::from_secs(30)).await;
    let aborted = Instant::now();
    for orch in [&a, &b] {
        loop {
            let (_, id, _) = visit(orch.public, Some(&cookie)).await;
            if id.as_deref() == Some("v1") {
                break;
            }
            assert!(aborted.elapsed() < Duration::from_secs(1), "still on v2");
        }
    }
    stop.store(true, Ordering::SeqCst);
    let (_, _, failed) = traffic.await.unwrap();
    assert!(failed.iter().all(|s| s.starts_with("500")), "{failed:?}");

    // One judgement: one abort in the audit log, one incident; counts from
    // both orchestrators.
    let (_, audit) = a
        .internal_json(Method::GET, "/__internal/audit?name=cn", String::new())
        .await;
    let aborts = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "rollout_aborted")
        .count();
    assert_eq!(aborts, 1, "{audit}");
    let (_, incidents) = b
        .internal_json(Method::GET, "/__internal/incidents", String::new())
        .await;
    let n = incidents
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "rollout_aborted")
        .count();
    assert_eq!(n, 1, "{incidents}");
    let sql = crate::pg::cluster().superuser(&db).await;
    let origins: i64 = sql
        .query_one(
            "SELECT count(DISTINCT origin) FROM rollout_counts WHERE name = 'cn'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(origins, 2, "counts from both orchestrators");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// Without traffic there is nothing to judge: the step goes on, never a
/// promotion, and says why.
#[tokio::test]
async fn without_traffic_a_rollout_keeps_its_step() {
    let orch = harness::start(&unique_db("canary_idle"), &[]).await;
    let (_v1, _v2) = two_versions(
        &orch,
        json!({"version": "2", "steps": [10, 100], "interval": "1s"}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let kept = loop {
        let (_, r) = rollout(&orch, Method::GET, Value::Null).await;
        if r["judged"]
            .as_str()
            .is_some_and(|j| j.contains("too little traffic"))
        {
            break r;
        }
        assert!(Instant::now() < deadline, "never judged: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (&kept["state"], &kept["step"], &kept["share"]),
        (&json!("running"), &json!(0), &json!(10)),
        "{kept}"
    );
    orch.stop().await.unwrap();
}

/// A rollout back to an older build (one already seen) ends with that
/// build current, not the newer one it rolled out over.
#[tokio::test]
async fn a_rollout_of_an_older_version_ends_with_it_current() {
    let orch = harness::start(&unique_db("canary_back"), &[]).await;
    let v1 = TestWaifu::start("v1").await;
    let v2 = TestWaifu::start("v2").await;
    for (w, version) in [(&v1, "1"), (&v2, "2")] {
        let (status, _) = orch
            .hello(json!({"name": "cn", "host": w.host(), "version": version}))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    orch.wait_checked("cn").await;
    let (status, started) = rollout(
        &orch,
        Method::PUT,
        json!({"version": "1", "steps": [50, 100], "interval": "2s"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    assert_eq!(started["from"], "2");
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(orch.public, stop.clone());
    wait_state(&orch, "done", Duration::from_secs(30)).await;
    let done = Instant::now();
    loop {
        let (_, id, cookie) = visit(orch.public, None).await;
        if (id.as_deref(), &cookie) == (Some("v1"), &None) {
            break;
        }
        assert!(done.elapsed() < Duration::from_secs(1), "{id:?} {cookie:?}");
    }
    for _ in 0..20 {
        let (_, id, _) = visit(orch.public, None).await;
        assert_eq!(id.as_deref(), Some("v1"));
    }
    stop.store(true, Ordering::SeqCst);
    let (_, _, failed) = traffic.await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    orch.stop().await.unwrap();
}
