//! Versions: the newest takes every request while healthy; goodbyes across orchestrators and restarts.

use http::{Method, StatusCode};
use serde_json::json;

use crate::harness;
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

use crate::rollout::*;

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
