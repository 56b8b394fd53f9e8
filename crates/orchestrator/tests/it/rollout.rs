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

pub(crate) async fn metric(orch: &harness::Orch, series: &str) -> Option<f64> {
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
pub(crate) async fn listed(orch: &harness::Orch, name: &str) -> Vec<(String, Value, bool, bool)> {
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

pub(crate) async fn goodbye(orch: &harness::Orch, body: Value) -> (StatusCode, Value) {
    orch.internal_json(Method::POST, "/__internal/goodbye", body.to_string())
        .await
}

/// Who answered `GET /w/who` through the proxy.
pub(crate) async fn who(orch: &harness::Orch) -> String {
    let r = orch.get("localhost", "/w/who").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.json()["id"].as_str().unwrap().to_owned()
}

pub(crate) async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
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
async fn a_goodbye_that_waits_answers_once_nothing_is_in_flight() {
    let orch = harness::start(&unique_db("goodbyewait"), &["--upstream-timeout", "10s"]).await;
    let a = TestWaifu::start("a").await;
    orch.register("w", &a.host(), json!({})).await;
    let public = orch.public;
    let slow = |ms: u64| {
        tokio::spawn(async move {
            harness::send(
                public,
                Method::GET,
                &format!("/w/slow?ms={ms}"),
                &[("host", "localhost")],
                Bytes::new(),
            )
            .await
        })
    };
    let in_flight = async || {
        a.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.starts_with("/slow"))
            .count()
    };
    // A request longer than one wait: the answer comes after about 4 s
    // with it still counted, and asking again is answered the same way.
    let long = slow(6_000);
    wait_until("the long request reached A", async || {
        in_flight().await == 1
    })
    .await;
    let started = std::time::Instant::now();
    let (status, body) = goodbye(&orch, json!({"name": "w", "host": a.host(), "wait": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["inFlight"], 1, "{body} after {:?}", started.elapsed());
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(3),
        "{body}"
    );
    // Once it is done, the next goodbye says so (or the instance is gone).
    assert_eq!(
        long.await.unwrap().expect("an answer").status,
        StatusCode::OK
    );
    let (status, body) = goodbye(&orch, json!({"name": "w", "host": a.host(), "wait": true})).await;
    match status {
        StatusCode::OK => assert_eq!(body["inFlight"], 0, "{body}"),
        StatusCode::NOT_FOUND => assert_eq!(body["error"], "unknown_instance", "{body}"),
        other => panic!("{other}: {body}"),
    }

    // A goodbye that waits is answered as soon as the request in flight
    // ends, not at the end of the wait.
    let b = TestWaifu::start("b").await;
    orch.register("w", &b.host(), json!({})).await;
    let public = orch.public;
    let short = tokio::spawn(async move {
        harness::send(
            public,
            Method::GET,
            "/w/slow?ms=1200",
            &[("host", "localhost")],
            Bytes::new(),
        )
        .await
    });
    wait_until("the request reached B", async || {
        b.seen
            .lock()
            .unwrap()
            .iter()
            .any(|t| t.starts_with("/slow"))
    })
    .await;
    let (status, body) = goodbye(&orch, json!({"name": "w", "host": b.host(), "wait": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["inFlight"], 0, "{body}");
    // It was answered by then, and never cut.
    let r = short.await.unwrap().expect("an answer");
    assert_eq!(
        (r.status, &r.body[..]),
        (StatusCode::OK, &b"slept 1200"[..])
    );
    // Without `wait` the answer is as before.
    orch.register("w", &a.host(), json!({})).await;
    let (_, body) = goodbye(&orch, json!({"name": "w", "host": a.host()})).await;
    assert!(body.get("inFlight").is_none(), "{body}");
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn a_goodbye_that_waits_counts_what_is_in_flight_here_after_another_orchestrator_removed_it()
{
    // Two orchestrators on one state: a long request goes through `b`;
    // the goodbye through `a`, where nothing is in flight, so `a` removes
    // the instance at once, and `b` hears of it. A goodbye that waits, sent
    // to `b`, must still count `b`'s request, not answer 404 (a program
    // such as waifu-run would then stop its app under that request).
    let db = unique_db("goodbyeelsewhere");
    let flags = ["--upstream-timeout", "20s"];
    let a = harness::start(&db, &flags).await;
    let b = harness::start(&db, &flags).await;
    let w = TestWaifu::start("w").await;
    a.register("w", &w.host(), json!({})).await;
    wait_until("b routes to w", async || {
        b.get("localhost", "/w/who").await.status == StatusCode::OK
    })
    .await;
    let public = b.public;
    let long = tokio::spawn(async move {
        harness::send(
            public,
            Method::GET,
            "/w/slow?ms=7000",
            &[("host", "localhost")],
            Bytes::new(),
        )
        .await
    });
    wait_until("the long request reached w", async || {
        w.seen
            .lock()
            .unwrap()
            .iter()
            .any(|t| t.starts_with("/slow"))
    })
    .await;
    let (status, body) = goodbye(&a, json!({"name": "w", "host": w.host()})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_until("b no longer lists w's instance", async || {
        listed(&b, "w").await.is_empty()
    })
    .await;
    let (status, body) = goodbye(&b, json!({"name": "w", "host": w.host(), "wait": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["inFlight"], 1, "{body}");
    // Without `wait` nothing changed: the instance is unknown.
    let (status, _) = goodbye(&b, json!({"name": "w", "host": w.host()})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        long.await.unwrap().expect("an answer").status,
        StatusCode::OK
    );
    let (status, body) = goodbye(&b, json!({"name": "w", "host": w.host(), "wait": true})).await;
    assert!(
        status == StatusCode::NOT_FOUND || body["inFlight"] == 0,
        "{status} {body}"
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
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
