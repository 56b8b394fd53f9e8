//! Maintenance: set through one orchestrator, every public request for the
//! waifu is answered 503 `maintenance` with the operator's message and
//! `Retry-After` by every orchestrator within a second, on the main domain
//! and on its binds, while none reaches the waifu and its health checks go
//! on; off again, requests go through within a second. Maintenance and
//! pause are two states of one switch: ending one never ends the other.

use std::process::Command;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::json;

use crate::harness::{self, Orch};
use crate::pause::state_of;
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

/// Waits until `GET host/path` through `orch` answers `want`; how long that took.
async fn until_status(orch: &Orch, host: &str, path: &str, want: StatusCode) -> Duration {
    let started = Instant::now();
    loop {
        if orch.get(host, path).await.status == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{host}{path} never answered {want}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `w`'s instance's last check as `orch` lists it.
async fn last_check(orch: &Orch) -> Option<String> {
    let (_, list) = orch
        .internal_json(Method::GET, "/__internal/waifus", String::new())
        .await;
    let w = list.as_array()?.iter().find(|w| w["name"] == "w")?;
    w["instances"][0]["lastCheck"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_set_on_one_orchestrator_answers_503_on_every_one_within_a_second() {
    let db = unique_db("maint");
    let a = harness::start(&db, &[]).await;
    let b = harness::start(&db, &[]).await;
    let w = TestWaifu::start("w").await;
    a.register("w", &w.host(), json!({"http://w.test": "/"}))
        .await;
    until_status(&b, "w.test", "/x", StatusCode::OK).await;
    until_status(&b, "localhost", "/w/x", StatusCode::OK).await;

    let (status, answer) = a
        .internal_json(
            Method::PUT,
            "/__internal/waifus/w/maintenance",
            json!({"message": "back at five", "retryAfter": 120}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["maintenance"], true);
    let took = until_status(&b, "localhost", "/w/x", StatusCode::SERVICE_UNAVAILABLE).await;
    eprintln!("maintenance reached the other orchestrator after {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let seen = w.seen.lock().unwrap().len();
    for (orch, host, path) in [
        (&a, "localhost", "/w/x"),
        (&b, "localhost", "/w/x"),
        (&b, "w.test", "/anything"),
    ] {
        let r = orch.get(host, path).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{host}{path}");
        assert_eq!(r.json()["error"], "maintenance", "{host}{path}");
        assert_eq!(r.json()["message"], "back at five", "{host}{path}");
        assert_eq!(r.header("retry-after").as_deref(), Some("120"));
    }
    assert_eq!(state_of(&b, "w").await, "maintenance");
    let metrics = b.scrape().await;
    assert!(
        metrics.contains("waifus_waifu_maintenance{waifu=\"w\"} 1"),
        "{metrics}"
    );
    // Health checks go on: the instance's last check moves on the
    // orchestrator that runs them (one of the two).
    let before = (last_check(&a).await, last_check(&b).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while (last_check(&a).await, last_check(&b).await) == before {
        assert!(
            Instant::now() < deadline,
            "no health check during maintenance"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // With no healthy instance it is still the operator's answer.
    w.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    b.wait_health("w", StatusCode::SERVICE_UNAVAILABLE).await;
    let r = b.get("localhost", "/w/x").await;
    assert_eq!(r.json()["error"], "maintenance");
    w.healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    b.wait_health("w", StatusCode::NO_CONTENT).await;
    assert_eq!(w.seen.lock().unwrap().len(), seen, "none reached the waifu");

    // Off again through `a`: `b` lets requests through within a second.
    let (status, answer) = a
        .internal_json(
            Method::DELETE,
            "/__internal/waifus/w/maintenance",
            String::new(),
        )
        .await;
    assert_eq!((status, &answer["wasOn"]), (StatusCode::OK, &json!(true)));
    let took = until_status(&b, "localhost", "/w/x", StatusCode::OK).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    until_status(&b, "w.test", "/x", StatusCode::OK).await;
    assert_eq!(state_of(&b, "w").await, "open");

    // One switch: a pause replaces nothing it should not, and ending
    // maintenance never releases a pause.
    let (status, _) = a
        .internal_json(Method::PUT, "/__internal/waifus/w/pause", "{}".into())
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, answer) = a
        .internal_json(
            Method::DELETE,
            "/__internal/waifus/w/maintenance",
            String::new(),
        )
        .await;
    assert_eq!(answer["wasOn"], false, "{answer}");
    assert_eq!(state_of(&a, "w").await, "paused");
    let (status, _) = a
        .internal_json(Method::DELETE, "/__internal/waifus/w/pause", String::new())
        .await;
    assert_eq!(status, StatusCode::OK);

    // Bad input is named.
    for (path, body, want) in [
        (
            "/__internal/waifus/w/maintenance",
            json!({"retryAfter": 0}),
            "invalid_maintenance",
        ),
        (
            "/__internal/waifus/w/maintenance",
            json!({"retryAfter": 86401}),
            "invalid_maintenance",
        ),
        (
            "/__internal/waifus/w/maintenance",
            json!({"message": "a\u{7}b"}),
            "invalid_maintenance",
        ),
        (
            "/__internal/waifus/w/maintenance",
            json!({"message": "x".repeat(513)}),
            "invalid_maintenance",
        ),
        (
            "/__internal/waifus/w/maintenance",
            json!({"retry_after": 5}),
            "invalid_json",
        ),
        (
            "/__internal/waifus/nobody/maintenance",
            json!({}),
            "unknown_waifu",
        ),
    ] {
        let (status, answer) = a.internal_json(Method::PUT, path, body.to_string()).await;
        assert_eq!(answer["error"], want, "{path} {body}: {status} {answer}");
    }
    assert_eq!(state_of(&a, "w").await, "open");

    // From the command line.
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        cmd.args(args).env("INTERNAL_ADDR", a.internal.to_string());
        tokio::task::block_in_place(|| harness::output_within(&mut cmd, Duration::from_secs(30)))
    };
    let out = cli(&[
        "maintenance",
        "w",
        "on",
        "--message",
        "upgrading",
        "--retry-after",
        "30",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("w is in maintenance"),
        "{out:?}"
    );
    until_status(&b, "localhost", "/w/x", StatusCode::SERVICE_UNAVAILABLE).await;
    let r = b.get("localhost", "/w/x").await;
    assert_eq!(r.json()["message"], "upgrading");
    assert_eq!(r.header("retry-after").as_deref(), Some("30"));
    let out = cli(&["maintenance", "w", "off"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("out of maintenance"),
        "{out:?}"
    );
    let out = cli(&["maintenance", "w", "off"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("was not in maintenance"),
        "{out:?}"
    );
    let out = cli(&["maintenance", "w", "maybe"]);
    assert!(!out.status.success());

    let (_, audit) = a
        .internal_json(Method::GET, "/__internal/audit?name=w", String::new())
        .await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .filter(|a| a.starts_with("maintenance"))
        .collect();
    assert_eq!(
        actions,
        [
            "maintenance_off",
            "maintenance_on",
            "maintenance_off",
            "maintenance_on"
        ],
        "{audit}"
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
