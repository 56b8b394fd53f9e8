//! Replacing instances without failed requests: requests that could not be
//! sent go elsewhere, restarted instances are routable at once, goodbye and
//! drain, versions.

use std::collections::HashMap;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;

use crate::harness;
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

async fn metric(orch: &harness::Orch, series: &str) -> Option<f64> {
    let r = harness::send(
        orch.internal,
        Method::GET,
        "/__internal/metrics",
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    String::from_utf8_lossy(&r.body)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
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
