//! Pausing a waifu: its new requests wait on every orchestrator (none
//! reaches it), a resume lets them on, one held past its bound gets 503
//! with `Retry-After`; from the API and from the command line.

use std::process::Command;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::json;

use crate::harness::{self, Orch};
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

/// `name`'s switch state as `orch` lists it (`open`, `paused`, `maintenance`).
pub(crate) async fn state_of(orch: &Orch, name: &str) -> String {
    let (_, list) = orch
        .internal_json(Method::GET, "/__internal/waifus", String::new())
        .await;
    list.as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == name)
        .map(|w| w["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_waifu_holds_requests_on_every_replica_until_resumed() {
    let db = unique_db("pause");
    let a = harness::start(&db, &[]).await;
    let b = harness::start(&db, &[]).await;
    let w = TestWaifu::start("w").await;
    a.register("w", &w.host(), json!({})).await;
    b.wait_health("w", StatusCode::NO_CONTENT).await;
    let (status, body) = a
        .internal_json(
            Method::PUT,
            "/__internal/waifus/w/pause",
            json!({"maxWait": "20s"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["maxWait"], "20s");
    // Within a second, b holds w's requests too.
    let deadline = Instant::now() + Duration::from_secs(1);
    while state_of(&b, "w").await != "paused" {
        assert!(Instant::now() < deadline, "b did not pause within 1 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen_before = w.seen.lock().unwrap().len();
    let held: Vec<_> = [&a, &b]
        .iter()
        .map(|orch| {
            let public = orch.public;
            tokio::spawn(async move {
                let started = Instant::now();
                let r = harness::send(
                    public,
                    Method::GET,
                    "/w/held",
                    &[("host", "localhost")],
                    bytes::Bytes::new(),
                )
                .await
                .unwrap();
                (r.status, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(held.iter().all(|h| !h.is_finished()), "held");
    assert_eq!(w.seen.lock().unwrap().len(), seen_before, "none reached it");
    let (status, body) = a
        .internal_json(Method::DELETE, "/__internal/waifus/w/pause", String::new())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["wasPaused"], true);
    for h in held {
        let (status, took) = h.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(took >= Duration::from_millis(500), "{took:?}");
    }
    assert_eq!(w.seen.lock().unwrap().len(), seen_before + 2);
    // Held past its bound: 503, Retry-After, nothing reached the waifu.
    let (status, _) = b
        .internal_json(
            Method::PUT,
            "/__internal/waifus/w/pause",
            json!({"maxWait": "300ms"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let started = Instant::now();
    let r = b.get("localhost", "/w/late").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.json()["error"], "paused");
    assert_eq!(w.seen.lock().unwrap().len(), seen_before + 2);
    // Bad input, unknown waifus.
    for (path, body, want) in [
        (
            "/__internal/waifus/w/pause",
            json!({"maxWait": "forever"}),
            "invalid_max_wait",
        ),
        (
            "/__internal/waifus/w/pause",
            json!({"maxWait": "1h"}),
            "invalid_max_wait",
        ),
        (
            "/__internal/waifus/nobody/pause",
            json!({}),
            "unknown_waifu",
        ),
    ] {
        let (status, answer) = a.internal_json(Method::PUT, path, body.to_string()).await;
        assert_eq!(answer["error"], want, "{path} {body}: {status} {answer}");
    }
    // From the command line.
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        cmd.args(args).env("INTERNAL_ADDR", a.internal.to_string());
        // The orchestrators run on this runtime: wait without blocking it.
        tokio::task::block_in_place(|| harness::output_within(&mut cmd, Duration::from_secs(30)))
    };
    let out = cli(&["resume", "w"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("w is resumed"));
    assert_eq!(state_of(&a, "w").await, "open");
    let out = cli(&["pause", "w", "--max-wait", "5s"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("w is paused"),
        "{out:?}"
    );
    assert_eq!(state_of(&a, "w").await, "paused");
    let out = cli(&["resume", "w"]);
    assert!(out.status.success());
    let out = cli(&["resume", "w"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("w was not paused"));
    let (_, audit) = a
        .internal_json(Method::GET, "/__internal/audit?name=w", String::new())
        .await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions[..4],
        [
            "waifu_resumed",
            "waifu_paused",
            "waifu_resumed",
            "waifu_paused"
        ],
        "{actions:?}"
    );
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}
