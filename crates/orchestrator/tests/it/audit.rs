//! Incidents delivered to the webhook, and the audit log: one row per change, append-only, pruned.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::harness::{self, Orch};
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

use crate::ownership::*;

/// A webhook receiver whose port is open from the start but which resets
/// every connection until `up` is set; then it records each delivery.
struct Receiver {
    url: String,
    up: Arc<std::sync::atomic::AtomicBool>,
    bodies: Arc<Mutex<Vec<Value>>>,
}

async fn receiver() -> Receiver {
    use std::sync::atomic::Ordering;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let (up2, seen) = (up.clone(), bodies.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if !up2.load(Ordering::SeqCst) {
                let _ = stream.set_zero_linger();
                drop(stream); // reset: down
                continue;
            }
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        seen.lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
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
    Receiver { url, up, bodies }
}

#[tokio::test]
async fn webhook_deliveries_survive_a_receiver_outage_and_a_restart() {
    let started = Instant::now();
    let hook = receiver().await;
    let db = unique_db("outbox");
    let data = harness::temp_dir("outbox");
    let flags = [
        "--incident-webhook-url",
        &hook.url,
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let w = TestWaifu::start("w").await;
    let wrong = |name: &str| json!({"name": name, "host": w.host(), "secret": "wrong"});
    let orch = harness::start(&db, &flags).await;
    for name in ["one", "two"] {
        let r = hello(
            &orch,
            json!({"name": name, "host": w.host(), "secret": "right"}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let r = hello(&orch, wrong(name)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
    // Some attempts fail while this orchestrator runs; then it restarts.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let undelivered = list(&orch, "/__internal/incidents").await;
    assert_eq!(undelivered.len(), 2);
    assert!(
        undelivered.iter().all(|i| i["delivered"] == false),
        "{undelivered:?}"
    );
    orch.stop().await.unwrap();
    let orch = harness::start(&db, &flags).await;
    let r = hello(&orch, wrong("one")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let details: Vec<String> = list(&orch, "/__internal/incidents")
        .await
        .iter()
        .map(|i| format!("{}|{}", i["time"], i["name"]))
        .collect();
    assert_eq!(details.len(), 3);

    // The receiver comes up 12 s after the first incident: several
    // deliveries have failed by then (1 s, 2 s, 4 s … apart), across the
    // restart.
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(started.elapsed())).await;
    assert!(hook.bodies.lock().unwrap().is_empty());
    hook.up.store(true, std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got: BTreeMap<String, usize> =
            hook.bodies
                .lock()
                .unwrap()
                .iter()
                .fold(BTreeMap::new(), |mut m, b| {
                    *m.entry(format!("{}|{}", b["time"], b["name"])).or_default() += 1;
                    m
                });
        let listed = list(&orch, "/__internal/incidents").await;
        if details.iter().all(|d| got.contains_key(d))
            && listed.iter().all(|i| i["delivered"] == true)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every incident was delivered: got {got:?}, listed {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    orch.stop().await.unwrap();
}

/// The audit rows for `name`, oldest first, as `action detail` lines.
async fn audit_of(orch: &Orch, name: &str) -> Vec<String> {
    let mut rows: Vec<String> = list(orch, &format!("/__internal/audit?name={name}&limit=1000"))
        .await
        .iter()
        .map(|a| {
            assert_eq!(a["name"], name);
            assert!(a["time"].as_str().unwrap().ends_with('Z'));
            format!(
                "{} {}",
                a["action"].as_str().unwrap(),
                a["detail"].as_str().unwrap()
            )
        })
        .collect();
    rows.reverse();
    rows
}

fn actions(rows: &[String]) -> Vec<&str> {
    rows.iter().map(|r| r.split(' ').next().unwrap()).collect()
}

#[tokio::test]
async fn every_change_is_one_audit_row_and_repeats_are_none() {
    let orch = harness::start(&unique_db("audit"), &["--deregister-after", "500ms"]).await;
    let (one, two) = (TestWaifu::start("one").await, TestWaifu::start("two").await);
    let first =
        json!({"name": "aud", "host": one.host(), "additionalBinds": {"http://a.test": "/"}});
    assert_eq!(hello(&orch, first.clone()).await.status, StatusCode::OK);
    let rows = audit_of(&orch, "aud").await;
    assert_eq!(
        actions(&rows),
        ["waifu_added", "instance_added", "bind_accepted"],
        "{rows:?}"
    );
    assert!(rows[2].contains("http://a.test"), "{rows:?}");
    let source = &list(&orch, "/__internal/audit?name=aud&limit=1").await[0]["source"];
    assert_eq!(source, "127.0.0.1");

    // Repeated hellos change nothing and write nothing.
    for _ in 0..3 {
        assert_eq!(hello(&orch, first.clone()).await.status, StatusCode::OK);
    }
    assert_eq!(audit_of(&orch, "aud").await.len(), 3);

    // The first secret claims the name, once.
    let mut claimed = first.clone();
    claimed["secret"] = json!("aud-secret");
    for _ in 0..2 {
        assert_eq!(hello(&orch, claimed.clone()).await.status, StatusCode::OK);
    }
    // A second instance; binds moved from a.test to b.test.
    let second = json!({"name": "aud", "host": two.host(), "secret": "aud-secret",
                        "additionalBinds": {"http://b.test": "/"}});
    for _ in 0..2 {
        assert_eq!(hello(&orch, second.clone()).await.status, StatusCode::OK);
    }
    // A database, once.
    for _ in 0..2 {
        let r = database(&orch, json!({"name": "aud", "secret": "aud-secret"})).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // A refused bind changes nothing: it is an incident, and a
    // `bind_refused` row under both names.
    let r = hello(
        &orch,
        json!({"name": "other", "host": one.host(), "additionalBinds": {"http://b.test": "/"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let rows = audit_of(&orch, "aud").await;
    assert_eq!(
        actions(&rows)[3..],
        [
            "secret_claimed",
            "instance_added",
            "bind_accepted",
            "bind_released",
            "database_created",
            "bind_refused"
        ],
        "{rows:?}"
    );
    assert!(
        rows[5].contains("http://b.test") && rows[6].contains("http://a.test"),
        "{rows:?}"
    );
    assert_eq!(
        actions(&audit_of(&orch, "other").await),
        ["waifu_added", "instance_added", "bind_refused"]
    );

    // Both instances die: each removal, the bind and the waifu, once.
    one.kill();
    two.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !list(&orch, "/__internal/waifus")
        .await
        .iter()
        .all(|w| w["name"] != "aud")
    {
        assert!(Instant::now() < deadline, "aud was never deregistered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = audit_of(&orch, "aud").await;
    let tail: Vec<&str> = actions(&rows)[9..].to_vec();
    assert_eq!(
        tail.iter().filter(|a| **a == "instance_removed").count(),
        2,
        "{rows:?}"
    );
    assert_eq!(
        tail.iter().filter(|a| **a == "bind_released").count(),
        1,
        "{rows:?}"
    );
    assert_eq!(tail.last(), Some(&"waifu_removed"), "{rows:?}");
    assert_eq!(tail.len(), 4, "{rows:?}");
    let removal = list(&orch, "/__internal/audit?name=aud&limit=1").await;
    assert_eq!(removal[0]["source"], "orchestrator");

    // The listing's own rules.
    let r = call(
        &orch,
        Method::GET,
        "/__internal/audit?limit=0",
        None,
        Value::Null,
    )
    .await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "bad_query");
    for bad in ["Bad_Name", ""] {
        let path = format!("/__internal/audit?name={bad}");
        let r = call(&orch, Method::GET, &path, None, Value::Null).await;
        assert_refused(&r, StatusCode::BAD_REQUEST, "bad_query");
    }
    assert!(
        list(&orch, "/__internal/audit?name=nobody")
            .await
            .is_empty()
    );
    let all = list(&orch, "/__internal/audit?limit=2").await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["action"], "waifu_removed", "newest first");
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn audit_rows_cannot_be_changed() {
    let db = unique_db("appendonly");
    let orch = harness::start(&db, &[]).await;
    let w = TestWaifu::start("w").await;
    assert_eq!(
        hello(&orch, json!({"name": "w", "host": w.host()}))
            .await
            .status,
        StatusCode::OK
    );
    orch.stop().await.unwrap();
    let client = crate::pg::cluster().superuser(&db).await;
    let e = client
        .execute("UPDATE audit SET detail = 'nothing happened'", &[])
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("append-only"), "{e:?}");
}

#[tokio::test]
async fn old_audit_rows_are_pruned_and_new_ones_kept() {
    let db = unique_db("prune");
    let data = harness::temp_dir("prune");
    let data = data.to_str().unwrap();
    let w = TestWaifu::start("w").await;
    let orch = harness::start(&db, &["--data-dir", data]).await;
    let r = hello(&orch, json!({"name": "old", "host": w.host()})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(audit_of(&orch, "old").await.len(), 2);
    orch.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Kept for one second: the leader prunes when it starts to lead.
    let orch = harness::start(&db, &["--data-dir", data, "--audit-retention", "1s"]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !audit_of(&orch, "old").await.is_empty() {
        assert!(Instant::now() < deadline, "old rows were never pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = hello(&orch, json!({"name": "new", "host": w.host()})).await;
    assert_eq!(r.status, StatusCode::OK);
    // Past their retention, the new rows stay: the leader prunes only
    // hourly (a window in which nothing may happen, not a wait).
    let window = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < window {
        assert_eq!(audit_of(&orch, "new").await.len(), 2, "pruned only hourly");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    orch.stop().await.unwrap();
}
