//! Health transitions, load balancing, failover and deregistration.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::json;

use crate::harness::{self, Orch};
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

async fn ids(orch: &Orch, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let r = orch.get("localhost", "/lb/x").await;
        assert_eq!(r.status, StatusCode::OK);
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    ids
}

#[tokio::test]
async fn health_transitions_both_ways() {
    let orch = harness::start(&unique_db("transitions"), &[]).await;
    let w = TestWaifu::start("w").await;
    // Not healthy yet when it says hello: not routed before the first 204.
    w.healthy.store(false, Ordering::SeqCst);
    let (status, _) = orch.hello(json!({"name": "w", "host": w.host()})).await;
    assert_eq!(status, StatusCode::OK);
    // Its first check has answered 503: it stays out of the route.
    orch.wait_checked("w").await;
    assert_eq!(
        orch.get("localhost", "/w/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // healthy → unhealthy → healthy again: the waifu's health endpoint and
    // the proxy follow each transition.
    for (healthy, health, proxied) in [
        (true, StatusCode::NO_CONTENT, StatusCode::OK),
        (
            false,
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (true, StatusCode::NO_CONTENT, StatusCode::OK),
    ] {
        w.healthy.store(healthy, Ordering::SeqCst);
        orch.wait_health("w", health).await;
        assert_eq!(orch.get("localhost", "/w/").await.status, proxied);
    }
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn instances_are_load_balanced_with_failover() {
    let orch = harness::start(&unique_db("lb"), &[]).await;
    let a = TestWaifu::start("a").await;
    let b = TestWaifu::start("b").await;
    orch.register("lb", &a.host(), json!({})).await;
    orch.register("lb", &b.host(), json!({})).await;
    // Wait until both are in rotation.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen: HashSet<String> = ids(&orch, 4).await.into_iter().collect();
        if seen.len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "b never joined the rotation");
    }
    let got = ids(&orch, 10).await;
    let a_count = got.iter().filter(|i| *i == "a").count();
    assert!((4..=6).contains(&a_count), "round robin: {got:?}");

    // a dies: once noticed, every request goes to b.
    let a_addr = a.addr;
    a.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, list) = orch
            .internal_json(Method::GET, "/__internal/waifus", String::new())
            .await;
        let down = list[0]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["host"] == format!("http://{a_addr}") && i["healthy"] == false);
        if down {
            break;
        }
        assert!(Instant::now() < deadline, "a was never marked down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ids(&orch, 10).await.iter().all(|i| i == "b"));

    // a comes back on the same address: it rejoins without a new hello.
    let _a = TestWaifu::start_on(a_addr, "a").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if ids(&orch, 4).await.iter().any(|i| i == "a") {
            break;
        }
        assert!(Instant::now() < deadline, "a never rejoined");
    }
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn critical_instances_are_deregistered() {
    let orch = harness::start(&unique_db("dereg"), &["--deregister-after", "500ms"]).await;
    let stays = TestWaifu::start("stays").await;
    let goes = TestWaifu::start("goes").await;
    orch.register("d", &stays.host(), json!({})).await;
    orch.register("gone", &goes.host(), json!({"http://gone.test": "/"}))
        .await;
    orch.register("d", &goes.host(), json!({})).await;
    goes.kill();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, list) = orch
            .internal_json(Method::GET, "/__internal/waifus", String::new())
            .await;
        let names: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap())
            .collect();
        let d_instances = list
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == "d")
            .map(|w| w["instances"].as_array().unwrap().len());
        if names == ["d"] && d_instances == Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "not deregistered: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        orch.get("localhost", "/gone/").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        orch.get("gone.test", "/").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(orch.get("localhost", "/d/").await.status, StatusCode::OK);
    // The bind is free again for another waifu.
    let body = orch
        .register("d", &stays.host(), json!({"http://gone.test": "/"}))
        .await;
    assert_eq!(body["binds"][0]["accepted"], true, "{body}");
    orch.stop().await.unwrap();
}

/// How [`raw_waifu`] answers its health checks.
const ANSWER: u8 = 0;
const HANG: u8 = 1;
const STALL_BODY: u8 = 2;

/// A waifu on a bare socket whose health endpoint answers 204, never
/// answers, or sends a 200 head and then stalls in its body, as `mode` says.
async fn raw_waifu(mode: std::sync::Arc<std::sync::atomic::AtomicU8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut io, _)) = listener.accept().await {
            let mode = mode.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = io.read(&mut buf).await {
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let answer: &[u8] = match mode.load(Ordering::SeqCst) {
                            ANSWER => b"HTTP/1.1 204 No Content\r\n\r\n",
                            STALL_BODY => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nok",
                            _ => b"",
                        };
                        if io.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    host
}

#[tokio::test]
async fn a_check_must_answer_within_its_timeout() {
    let orch = harness::start(&unique_db("check_timeout"), &["--health-timeout", "300ms"]).await;
    let mode = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(STALL_BODY));
    let host = raw_waifu(mode.clone()).await;
    let (status, _) = orch.hello(json!({"name": "t", "host": host})).await;
    assert_eq!(status, StatusCode::OK);
    // A 2xx head is a success even if the body then stalls past the
    // deadline: the instance becomes healthy and stays so over several
    // checks (each of which times out reading the body).
    orch.wait_health("t", StatusCode::NO_CONTENT).await;
    let window = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < window {
        let path = "/__internal/waifus/t/health";
        let r = harness::send(orch.internal, Method::GET, path, &[], bytes::Bytes::new()).await;
        assert_eq!(
            r.map(|r| r.status),
            Some(StatusCode::NO_CONTENT),
            "healthy throughout"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // No answer at all within the timeout is a failure.
    mode.store(HANG, Ordering::SeqCst);
    orch.wait_health("t", StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(
        orch.get("localhost", "/t/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    mode.store(ANSWER, Ordering::SeqCst);
    orch.wait_health("t", StatusCode::NO_CONTENT).await;
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn a_declared_health_path_is_checked_instead_of_the_protocols() {
    let db = unique_db("health_path");
    let orch = harness::start(&db, &[]).await;
    let w = TestWaifu::start("w").await;
    // The protocol's path answers 500 throughout; the declared one 200.
    w.healthy.store(false, Ordering::SeqCst);
    let hello = |path: &str| json!({"name": "w", "host": w.host(), "health": path});
    let (status, body) = orch.hello(hello("/status?code=200")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    orch.wait_health("w", StatusCode::NO_CONTENT).await;
    assert_eq!(orch.get("localhost", "/w/x").await.status, StatusCode::OK);
    // Stored: a restarted orchestrator checks the same path.
    orch.stop().await.unwrap();
    let orch = harness::start(&db, &[]).await;
    orch.wait_health("w", StatusCode::NO_CONTENT).await;
    assert_eq!(orch.get("localhost", "/w/x").await.status, StatusCode::OK);
    // A declared path that fails keeps the instance out, whatever the
    // protocol's path says.
    w.healthy.store(true, Ordering::SeqCst);
    let (status, _) = orch.hello(hello("/status?code=503")).await;
    assert_eq!(status, StatusCode::OK);
    orch.wait_health("w", StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(
        orch.get("localhost", "/w/x").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    for bad in ["healthz", "/health z", "/a#b"] {
        let (status, body) = orch.hello(hello(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_health", "{bad}");
    }
    orch.stop().await.unwrap();
}
