//! Replacing instances without failed requests: requests that could not be
//! sent go elsewhere, restarted instances are routable at once, goodbye and
//! drain, versions.

use std::collections::HashMap;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness;
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

async fn metric(orch: &harness::Orch, series: &str) -> Option<f64> {
    harness::sample(&orch.scrape().await, series)
}

#[tokio::test]
async fn a_request_that_could_not_be_sent_goes_to_another_instance() {
    // Checks once an hour: the dead instance stays in the table as healthy
    // until a request finds it down.
    let orch = harness::start(&unique_db("unsent"), &["--health-interval", "1h"]).await;
    let (alive, dead) = (
        TestWaifu::start("alive").await,
        TestWaifu::start("dead").await,
    );
    orch.register("w", &alive.host(), json!({})).await;
    orch.register("w", &dead.host(), json!({})).await;
    // Both have served (and left a kept-alive connection in the pool).
    for _ in 0..4 {
        assert_eq!(
            orch.get("localhost", "/w/warm").await.status,
            StatusCode::OK
        );
    }
    assert!(!dead.seen.lock().unwrap().is_empty());
    dead.kill();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // POSTs with bodies larger than one write: none may fail, each is
    // executed once, by the live instance.
    let body = Bytes::from(vec![b'x'; 100 * 1024]);
    for n in 0..8 {
        let r = orch
            .request(
                Method::POST,
                "localhost",
                &format!("/w/echo?n={n}"),
                &[],
                body.clone(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "request {n}");
        assert_eq!(r.body, body, "request {n}");
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for target in alive.seen.lock().unwrap().iter() {
        *counts.entry(target.clone()).or_default() += 1;
    }
    for n in 0..8 {
        assert_eq!(counts.get(&format!("/echo?n={n}")), Some(&1), "{counts:?}");
    }
    // The failed connection was counted, and the instance marked down.
    let errors = metric(&orch, r#"waifus_upstream_connect_errors_total{waifu="w"}"#).await;
    assert_eq!(errors, Some(1.0));
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn with_no_other_instance_an_unsent_request_is_502() {
    let orch = harness::start(&unique_db("unsent1"), &["--health-interval", "1h"]).await;
    let only = TestWaifu::start("only").await;
    orch.register("w", &only.host(), json!({})).await;
    only.kill();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let r = orch
        .request(Method::POST, "localhost", "/w/echo", &[], Bytes::from("x"))
        .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn a_restarted_instance_is_routable_once_its_hello_is_answered() {
    // Checks once an hour: only the hello can make it routable again.
    let orch = harness::start(&unique_db("restart1"), &["--health-interval", "1h"]).await;
    let first = TestWaifu::start("first").await;
    let addr = first.addr;
    orch.register("w", &first.host(), json!({})).await;
    first.kill();
    for round in 0..3 {
        // Stopped: the proxy finds it down.
        assert_eq!(
            orch.get("localhost", "/w/x").await.status,
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            orch.get("localhost", "/w/x").await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // Restarted at the same address: routable as soon as the hello is
        // answered.
        let again = TestWaifu::start_on(addr, &format!("again-{round}")).await;
        let (status, _) = orch.hello(json!({"name": "w", "host": again.host()})).await;
        assert_eq!(status, StatusCode::OK);
        let r = orch.get("localhost", "/w/x").await;
        assert_eq!(r.status, StatusCode::OK, "round {round}");
        assert_eq!(r.json()["id"], format!("again-{round}"));
        again.kill();
    }
    orch.stop().await.unwrap();
}

/// The instances of `name` as listed: (host, version, healthy, draining).
async fn listed(orch: &harness::Orch, name: &str) -> Vec<(String, Value, bool, bool)> {
    let (status, list) = orch
        .internal_json(Method::GET, "/__internal/waifus", String::new())
        .await;
    assert_eq!(status, StatusCode::OK);
    list.as_array()
        .unwrap()
        .iter()
        .filter(|w| w["name"] == name)
        .flat_map(|w| w["instances"].as_array().unwrap().clone())
        .map(|i| {
            (
                i["host"].as_str().unwrap().to_owned(),
                i["version"].clone(),
                i["healthy"].as_bool().unwrap(),
                i["draining"].as_bool().unwrap(),
            )
        })
        .collect()
}

async fn goodbye(orch: &harness::Orch, body: Value) -> (StatusCode, Value) {
    orch.internal_json(Method::POST, "/__internal/goodbye", body.to_string())
        .await
}

/// Who answered `GET /w/who` through the proxy.
async fn who(orch: &harness::Orch) -> String {
    let r = orch.get("localhost", "/w/who").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.json()["id"].as_str().unwrap().to_owned()
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !done().await {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn goodbye_stops_new_requests_and_lets_those_in_flight_finish() {
    let orch = harness::start(&unique_db("goodbye"), &[]).await;
    let (a, b) = (TestWaifu::start("a").await, TestWaifu::start("b").await);
    orch.register("w", &a.host(), json!({})).await;
    // A slow request on A, the only instance.
    let public = orch.public;
    let slow = tokio::spawn(async move {
        harness::send(
            public,
            Method::GET,
            "/w/slow?ms=1500",
            &[("host", "localhost")],
            Bytes::new(),
        )
        .await
    });
    wait_until("the slow request reached A", async || {
        a.seen
            .lock()
            .unwrap()
            .iter()
            .any(|t| t.starts_with("/slow"))
    })
    .await;
    orch.register("w", &b.host(), json!({})).await;
    let (status, body) = goodbye(&orch, json!({"name": "w", "host": a.host()})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"name": "w", "host": format!("http://{}", a.host()), "draining": true})
    );
    // From now on only B gets requests; A is listed as draining.
    let before = a.seen.lock().unwrap().len();
    for _ in 0..20 {
        assert_eq!(who(&orch).await, "b");
    }
    assert_eq!(a.seen.lock().unwrap().len(), before);
    let list = listed(&orch, "w").await;
    let a_host = format!("http://{}", a.host());
    assert!(
        list.iter().any(|(h, _, _, d)| *h == a_host && *d),
        "{list:?}"
    );
    // Its idle kept-alive connections are closed at once (only the slow
    // request's is left), so a waifu can exit without waiting for them.
    wait_until("idle connections to A were closed", async || {
        a.conns.load(std::sync::atomic::Ordering::SeqCst) <= 1
    })
    .await;
    // The request in flight completes; then A is removed.
    let r = slow.await.unwrap().expect("an answer");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "slept 1500");
    wait_until("A was removed once drained", async || {
        listed(&orch, "w").await.len() == 1
    })
    .await;
    assert_eq!(a.conns.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Each step is in the audit log.
    let (_, audit) = orch
        .internal_json(Method::GET, "/__internal/audit?name=w", String::new())
        .await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions[..2], ["instance_removed", "goodbye"], "{actions:?}");
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn a_waifu_whose_last_instance_left_is_503_until_it_returns() {
    let orch = harness::start(&unique_db("lastleft"), &[]).await;
    let a = TestWaifu::start("a").await;
    orch.register("w", &a.host(), json!({"http://w.test": "/"}))
        .await;
    let (status, _) = goodbye(&orch, json!({"name": "w", "host": a.host()})).await;
    assert_eq!(status, StatusCode::OK);
    for (host, path) in [("localhost", "/w/x"), ("w.test", "/x")] {
        let r = orch.get(host, path).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{host}{path}");
        assert!(r.headers.contains_key("retry-after"));
    }
    wait_until("A was removed", async || {
        listed(&orch, "w").await.is_empty()
    })
    .await;
    // Still known, with its bind: 503, never 404.
    for (host, path) in [("localhost", "/w/x"), ("w.test", "/x")] {
        let r = orch.get(host, path).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{host}{path}");
    }
    // Back at the same address: routable once the hello is answered.
    let (status, _) = orch
        .hello(json!({"name": "w", "host": a.host(), "additionalBinds": {"http://w.test": "/"}}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(orch.get("w.test", "/x").await.status, StatusCode::OK);
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn a_waifu_without_instances_is_forgotten_after_deregister_after() {
    let orch = harness::start(&unique_db("forget"), &["--deregister-after", "1s"]).await;
    let a = TestWaifu::start("a").await;
    orch.register("w", &a.host(), json!({"http://w.test": "/"}))
        .await;
    let (status, _) = goodbye(&orch, json!({"name": "w", "host": a.host()})).await;
    assert_eq!(status, StatusCode::OK);
    wait_until("w was forgotten", async || {
        orch.get("localhost", "/w/x").await.status == StatusCode::NOT_FOUND
    })
    .await;
    // Its bind is free again.
    let b = TestWaifu::start("b").await;
    let body = orch
        .register("other", &b.host(), json!({"http://w.test": "/"}))
        .await;
    assert_eq!(body["binds"][0]["accepted"], true, "{body}");
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn goodbyes_are_checked_like_hellos() {
    let orch = harness::start(&unique_db("byecheck"), &[]).await;
    let a = TestWaifu::start("a").await;
    let (status, _) = orch
        .hello(json!({"name": "w", "host": a.host(), "secret": "w-secret"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let cases = [
        (
            json!({"name": "w", "host": a.host()}),
            401,
            "secret_required",
        ),
        (
            json!({"name": "w", "host": a.host(), "secret": "guess"}),
            403,
            "wrong_secret",
        ),
        (
            json!({"name": "w", "host": "127.0.0.1:1", "secret": "w-secret"}),
            404,
            "unknown_instance",
        ),
        (
            json!({"name": "nobody", "host": a.host()}),
            404,
            "unknown_instance",
        ),
        (
            json!({"name": "Bad", "host": a.host()}),
            400,
            "invalid_name",
        ),
        (json!({"name": "w", "host": "a:99999"}), 400, "invalid_host"),
        (json!({"name": "w"}), 400, "invalid_json"),
    ];
    for (body, want, code) in cases {
        let (status, answer) = goodbye(&orch, body.clone()).await;
        assert_eq!(status.as_u16(), want, "{body}: {answer}");
        assert_eq!(answer["error"], code, "{body}: {answer}");
    }
    // Nothing changed.
    assert!(!listed(&orch, "w").await[0].3);
    let (status, _) = goodbye(
        &orch,
        json!({"name": "w", "host": a.host(), "secret": "w-secret"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Twice is fine.
    let (status, _) = goodbye(
        &orch,
        json!({"name": "w", "host": a.host(), "secret": "w-secret"}),
    )
    .await;
    assert!(
        status == StatusCode::OK || status == StatusCode::NOT_FOUND,
        "{status}"
    );
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn a_websocket_outlives_route_changes_and_goodbye_until_the_drain_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let orch = harness::start(&unique_db("wsdrain"), &["--drain-timeout", "3s"]).await;
    let a = TestWaifu::start("a").await;
    orch.register("w", &a.host(), json!({})).await;
    let mut ws = tokio::net::TcpStream::connect(orch.public).await.unwrap();
    harness::upgrade_and_echo(&mut ws, "/w/ws", b"first").await;
    let echo = async |ws: &mut tokio::net::TcpStream, msg: &[u8]| {
        ws.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(std::time::Duration::from_secs(5), ws.read_exact(&mut got))
            .await
            .expect("echo in time")
            .expect("tunnel open");
        assert_eq!(got, msg);
    };
    // 50 hellos of other waifus: route tables come and go.
    let others = TestWaifu::start("others").await;
    for n in 0..50 {
        let (status, _) = orch
            .hello(json!({"name": format!("o{n}"), "host": others.host(),
                          "additionalBinds": {format!("http://o{n}.test"): "/"}}))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    echo(&mut ws, b"after fifty hellos").await;
    // A says goodbye: the tunnel stays, and keeps A draining.
    let said = std::time::Instant::now();
    let (status, _) = goodbye(&orch, json!({"name": "w", "host": a.host()})).await;
    assert_eq!(status, StatusCode::OK);
    echo(&mut ws, b"after goodbye").await;
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    echo(&mut ws, b"still draining").await;
    assert_eq!(
        listed(&orch, "w").await.len(),
        1,
        "removed while a tunnel is open"
    );
    // At DRAIN_TIMEOUT the orchestrator closes it, and A is removed.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), ws.read(&mut buf))
        .await
        .expect("closed by the drain timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let took = said.elapsed();
    assert!(took >= std::time::Duration::from_millis(2900), "{took:?}");
    wait_until("A was removed", async || {
        listed(&orch, "w").await.is_empty()
    })
    .await;
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn the_newest_version_gets_every_request_while_it_is_healthy() {
    let orch = harness::start(&unique_db("versions"), &[]).await;
    let (a, b, c) = (
        TestWaifu::start("a").await,
        TestWaifu::start("b").await,
        TestWaifu::start("c").await,
    );
    let hello = async |w: &TestWaifu, version: &str| {
        let (status, body) = orch
            .hello(json!({"name": "w", "host": w.host(), "version": version}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    };
    hello(&a, "1").await;
    orch.wait_health("w", StatusCode::NO_CONTENT).await;
    assert_eq!(who(&orch).await, "a");
    // Version 2 is routable once its hello is answered: from then on,
    // every request goes to it.
    hello(&b, "2").await;
    for _ in 0..20 {
        assert_eq!(who(&orch).await, "b");
    }
    let list = listed(&orch, "w").await;
    let state = |w: &TestWaifu| {
        list.iter()
            .find(|(h, ..)| *h == format!("http://{}", w.host()))
            .cloned()
            .unwrap()
    };
    assert_eq!(state(&a).1, "1");
    assert!(state(&a).3, "version 1 drains while 2 is healthy");
    assert!(!state(&b).3);
    // Re-hellos of version 1 do not make it the newest.
    hello(&a, "1").await;
    assert_eq!(who(&orch).await, "b");
    // Version 2 fails: version 1 serves again; it recovers: 2 again.
    b.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_until("version 1 serves again", async || who(&orch).await == "a").await;
    assert!(
        !listed(&orch, "w").await.iter().any(|i| i.3),
        "nobody drains"
    );
    b.healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    wait_until("version 2 serves again", async || who(&orch).await == "b").await;
    // A superseded version on a new instance (an old process restarted)
    // joins as older: version 2 keeps every request.
    hello(&c, "1").await;
    for _ in 0..20 {
        assert_eq!(who(&orch).await, "b");
    }
    // Going back is the operator's call: then version 1 serves, on both.
    let (status, body) = orch
        .internal_json(
            Method::PUT,
            "/__internal/waifus/w/version",
            json!({"version": "1"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["changed"], true);
    assert_eq!(body["from"], "2");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        seen.insert(who(&orch).await);
    }
    assert_eq!(seen, ["a", "c"].map(String::from).into(), "{seen:?}");
    // Versions are on the status page's JSON and in the metrics.
    let text = orch.scrape().await;
    let b_host = format!("http://{}", b.host());
    assert!(
        text.contains(&format!(
            r#"waifus_instance_version{{waifu="w",instance="{b_host}",version="2"}} 1"#
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            r#"waifus_instance_draining{{waifu="w",instance="{b_host}"}} 1"#
        )),
        "{text}"
    );
    // A bad version is refused.
    let (status, body) = orch
        .hello(json!({"name": "w", "host": a.host(), "version": "has space"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_version");
    orch.stop().await.unwrap();
}

/// A restarted process of a superseded version (a restart policy brings
/// it back) never takes over; going back is `orchestrator version`, seen by
/// every orchestrator within a second, and every change of the current
/// version is one audit row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_move_forward_alone_and_back_only_when_an_operator_says_so() {
    let db = unique_db("versionsback");
    let one = harness::start(&db, &[]).await;
    let two = harness::start(&db, &[]).await;
    let (a, b) = (TestWaifu::start("a").await, TestWaifu::start("b").await);
    let hello = async |orch: &harness::Orch, w: &TestWaifu, version: &str| {
        let (status, body) = orch
            .hello(json!({"name": "w", "host": w.host(), "version": version}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    };
    hello(&one, &a, "v1").await;
    two.wait_health("w", StatusCode::NO_CONTENT).await;
    hello(&two, &b, "v2").await;
    for orch in [&one, &two] {
        wait_until("v2 serves everywhere", async || who(orch).await == "b").await;
    }
    // The v1 process stops (goodbye, gone) and its restart policy brings
    // it back at the same address: it joins as older, on both.
    let (status, _) = goodbye(&one, json!({"name": "w", "host": a.host()})).await;
    assert_eq!(status, StatusCode::OK);
    let a_host = format!("http://{}", a.host());
    wait_until("a is gone", async || {
        !listed(&one, "w").await.iter().any(|i| i.0 == a_host)
    })
    .await;
    hello(&one, &a, "v1").await;
    wait_until("a is back on two", async || {
        listed(&two, "w").await.iter().any(|i| i.0 == a_host && i.2)
    })
    .await;
    for orch in [&one, &two] {
        for _ in 0..20 {
            assert_eq!(who(orch).await, "b", "a restarted v1 took over");
        }
    }
    // The operator goes back to v1 from the command line (on two): one
    // sees it within a second.
    let cli = |orch: &harness::Orch, args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        cmd.args(args)
            .env("INTERNAL_ADDR", orch.internal.to_string());
        tokio::task::block_in_place(|| {
            harness::output_within(&mut cmd, std::time::Duration::from_secs(30))
        })
    };
    let out = cli(&two, &["version", "w", "v1"]);
    let said = std::time::Instant::now();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("w v1 is current") && stdout.contains("was v2"),
        "{stdout}"
    );
    wait_until("one routes to v1", async || who(&one).await == "a").await;
    let took = said.elapsed();
    assert!(took < std::time::Duration::from_secs(1), "{took:?}");
    for orch in [&one, &two] {
        for _ in 0..20 {
            assert_eq!(who(orch).await, "a");
        }
    }
    let out = cli(&two, &["version", "w", "v1"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("was current already"),
        "{out:?}"
    );
    // A version never announced, a bad one, an unknown waifu.
    for (path, version, status, code) in [
        (
            "/__internal/waifus/w/version",
            json!("v9"),
            StatusCode::NOT_FOUND,
            "unknown_version",
        ),
        (
            "/__internal/waifus/w/version",
            json!("has space"),
            StatusCode::BAD_REQUEST,
            "invalid_version",
        ),
        (
            "/__internal/waifus/nobody/version",
            json!("v1"),
            StatusCode::NOT_FOUND,
            "unknown_waifu",
        ),
    ] {
        let (got, body) = one
            .internal_json(Method::PUT, path, json!({"version": version}).to_string())
            .await;
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    let (_, body) = one
        .internal_json(
            Method::PUT,
            "/__internal/waifus/w/version",
            json!({"version": "v9"}).to_string(),
        )
        .await;
    assert!(
        body["message"].as_str().unwrap().contains("known: v1, v2"),
        "{body}"
    );
    let out = cli(&one, &["version", "w", "v9"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown_version"),
        "{out:?}"
    );
    // Each change of the current version is one audit row: v1 first, v2
    // announced, v1 by the operator; the restart and the no-op none.
    let (_, audit) = one
        .internal_json(Method::GET, "/__internal/audit?name=w", String::new())
        .await;
    let changes: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "version_current")
        .map(|r| r["detail"].as_str().unwrap())
        .collect();
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert!(
        changes[0].starts_with("from v2 to v1: made current by an operator"),
        "{changes:?}"
    );
    assert!(
        changes[1].starts_with("from v1 to v2: first announced"),
        "{changes:?}"
    );
    assert!(
        changes[2].starts_with("from no version to v1: first announced"),
        "{changes:?}"
    );
    one.stop().await.unwrap();
    two.stop().await.unwrap();
}

#[tokio::test]
async fn a_goodbye_reaches_every_orchestrator_within_a_second() {
    let db = unique_db("byereplica");
    let one = harness::start(&db, &[]).await;
    let two = harness::start(&db, &[]).await;
    let (a, b) = (TestWaifu::start("a").await, TestWaifu::start("b").await);
    one.register("w", &a.host(), json!({})).await;
    one.register("w", &b.host(), json!({})).await;
    two.wait_health("w", StatusCode::NO_CONTENT).await;
    wait_until("two routes to both", async || {
        listed(&two, "w").await.len() == 2
    })
    .await;
    let said = std::time::Instant::now();
    let (status, _) = goodbye(&one, json!({"name": "w", "host": a.host()})).await;
    assert_eq!(status, StatusCode::OK);
    // A is draining there, or already gone (drained on one: nothing was in
    // flight to it).
    let a_host = format!("http://{}", a.host());
    wait_until("two no longer routes to A", async || {
        !listed(&two, "w")
            .await
            .iter()
            .any(|i| i.0 == a_host && !i.3)
    })
    .await;
    let took = said.elapsed();
    assert!(took < std::time::Duration::from_secs(1), "{took:?}");
    for _ in 0..20 {
        assert_eq!(who(&two).await, "b");
    }
    one.stop().await.unwrap();
    two.stop().await.unwrap();
}

#[tokio::test]
async fn a_drain_goes_on_after_an_orchestrator_restart() {
    let db = unique_db("drainrestart");
    let data = harness::temp_dir("drainrestart");
    let flags = [
        "--data-dir",
        data.to_str().unwrap(),
        "--shutdown-timeout",
        "1s",
    ];
    let orch = harness::start(&db, &flags).await;
    let (a, b) = (TestWaifu::start("a").await, TestWaifu::start("b").await);
    orch.register("w", &a.host(), json!({})).await;
    // A tunnel keeps A draining while the orchestrator stops.
    let mut ws = tokio::net::TcpStream::connect(orch.public).await.unwrap();
    harness::upgrade_and_echo(&mut ws, "/w/ws", b"hi").await;
    orch.register("w", &b.host(), json!({})).await;
    let (status, _) = goodbye(&orch, json!({"name": "w", "host": a.host()})).await;
    assert_eq!(status, StatusCode::OK);
    orch.stop().await.unwrap();
    drop(ws);
    // The new process knows A is leaving: no request goes there, and
    // nothing being in flight to it here, it is removed.
    let orch = harness::start(&db, &flags).await;
    for _ in 0..10 {
        assert_eq!(who(&orch).await, "b");
    }
    wait_until("A was removed after the restart", async || {
        listed(&orch, "w").await.len() == 1
    })
    .await;
    orch.stop().await.unwrap();
}
