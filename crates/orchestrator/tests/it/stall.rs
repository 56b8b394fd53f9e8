//! A PostgreSQL that stalls (stopped with SIGSTOP: its sockets stay open
//! and the kernel acknowledges every byte, so no TCP bound notices) never
//! hangs the internal API: every call answers within the deadline, a
//! refusal is never answered without its incident, and proxying goes on;
//! resyncs that start meanwhile hold nothing up.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{self, Orch, Reply, send};
use crate::pg::{self, unique_db};
use crate::waifu::TestWaifu;

const TOKEN: &str = "internal-token-0123456789";
const ADMIN: &str = "admin-token-9876543210";

/// A call to the internal API with `token`; the answer and how long it took.
async fn timed(
    orch: &Orch,
    method: Method,
    path: &str,
    token: &str,
    body: Value,
) -> (Reply, Duration) {
    timed_at(orch.internal, method, path, token, body).await
}

async fn timed_at(
    internal: SocketAddr,
    method: Method,
    path: &str,
    token: &str,
    body: Value,
) -> (Reply, Duration) {
    let bearer = format!("Bearer {token}");
    let body = match body {
        Value::Null => Bytes::new(),
        v => Bytes::from(v.to_string()),
    };
    let started = Instant::now();
    let r = send(internal, method, path, &[("authorization", &bearer)], body)
        .await
        .expect("internal API reachable");
    (r, started.elapsed())
}

#[tokio::test]
async fn a_stalled_database_gets_answers_within_the_deadline_and_no_refusal_without_its_record() {
    let cluster = pg::dedicated();
    let orch = harness::start_with_url(
        &cluster.url(&unique_db("stall")),
        // A resync every second: several start while the server is stopped.
        &[
            "--internal-token",
            TOKEN,
            "--admin-token",
            ADMIN,
            "--resync-interval",
            "1s",
        ],
    )
    .await;
    let w = TestWaifu::start("w").await;
    let hello = json!({"name": "w", "host": w.host(), "secret": "w-secret"});
    let (r, _) = timed(
        &orch,
        Method::POST,
        "/__internal/hello",
        TOKEN,
        hello.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (r, _) = timed(
            &orch,
            Method::GET,
            "/__internal/waifus/w/health",
            TOKEN,
            Value::Null,
        )
        .await;
        if r.status == StatusCode::NO_CONTENT {
            break;
        }
        assert!(Instant::now() < deadline, "w never became healthy");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    cluster.signal_server("STOP");
    // Resumed however this test ends, so a failure does not leave a
    // stopped server (and a test binary waiting for it) behind.
    let stalled = Stalled(&cluster);
    let stopped = Instant::now();
    let calls: Vec<(&str, Method, &str, &str, Value)> = vec![
        (
            "hello",
            Method::POST,
            "/__internal/hello",
            TOKEN,
            hello.clone(),
        ),
        (
            "wrong secret",
            Method::POST,
            "/__internal/hello",
            TOKEN,
            json!({"name": "w", "host": w.host(), "secret": "a-guess"}),
        ),
        (
            "goodbye",
            Method::POST,
            "/__internal/goodbye",
            TOKEN,
            json!({"name": "w", "host": w.host(), "secret": "w-secret"}),
        ),
        (
            "database",
            Method::POST,
            "/__internal/database",
            TOKEN,
            json!({"name": "w", "secret": "w-secret"}),
        ),
        (
            "bad token",
            Method::GET,
            "/__internal/waifus",
            "not-the-token-at-all",
            Value::Null,
        ),
        (
            "incidents",
            Method::GET,
            "/__internal/incidents",
            ADMIN,
            Value::Null,
        ),
        (
            "audit",
            Method::GET,
            "/__internal/audit",
            ADMIN,
            Value::Null,
        ),
    ];
    let calls: Vec<_> = calls
        .into_iter()
        .map(|(what, method, path, token, body)| {
            let internal = orch.internal;
            tokio::spawn(async move { (what, timed_at(internal, method, path, token, body).await) })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    // A second call without a valid token right after: it is answered 401
    // only once an incident for its address is stored (one per address every
    // 10 s), so it waits for the first one's, and gets 503 at the deadline.
    let (second, second_took) = timed(
        &orch,
        Method::GET,
        "/__internal/waifus",
        "still-not-it-0000",
        Value::Null,
    )
    .await;
    // The status page says what it cannot show.
    let (status, status_took) =
        timed(&orch, Method::GET, "/__internal/status", ADMIN, Value::Null).await;
    assert_eq!(status.status, StatusCode::OK);
    assert!(
        status_took < Duration::from_secs(6),
        "the status page took {status_took:?}"
    );
    let page = String::from_utf8_lossy(&status.body);
    assert!(page.contains("did not answer within"), "{page}");
    // Proxying goes on meanwhile.
    let proxied = orch.get("localhost", "/w/x").await;

    let mut refusals = 0;
    for (what, (r, took)) in &answers {
        assert!(*took < Duration::from_secs(6), "{what} took {took:?}");
        match r.status {
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(r.headers.contains_key("retry-after"), "{what}");
                assert_eq!(r.json()["error"], "database_unavailable", "{what}");
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => refusals += 1,
            other => panic!("{what}: {other} {:?}", r.body),
        }
    }
    assert!(
        second_took < Duration::from_secs(6),
        "the second bad token took {second_took:?}"
    );
    assert!(
        [StatusCode::UNAUTHORIZED, StatusCode::SERVICE_UNAVAILABLE].contains(&second.status),
        "{:?}",
        second.status
    );
    if second.status == StatusCode::UNAUTHORIZED {
        refusals += 1;
    }
    assert_eq!(proxied.status, StatusCode::OK);
    assert!(stopped.elapsed() < Duration::from_secs(30));

    drop(stalled);
    // Every refusal that was answered is on record once the server is back,
    // and calls are answered as before.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (r, _) = timed(
            &orch,
            Method::GET,
            "/__internal/incidents",
            ADMIN,
            Value::Null,
        )
        .await;
        if r.status == StatusCode::OK {
            let incidents = r.json();
            let unauthorized = incidents
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["kind"] == "unauthorized")
                .count();
            if refusals == 0 || unauthorized >= 1 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no incident for the refusals answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (r, _) = timed(&orch, Method::POST, "/__internal/hello", TOKEN, hello).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    orch.stop().await.unwrap();
}

/// Keeps a server stopped until dropped.
struct Stalled<'a>(&'a pg::PgCluster);

impl Drop for Stalled<'_> {
    fn drop(&mut self) {
        self.0.signal_server("CONT");
    }
}

/// Resyncs that start while the server is stopped wait for it holding no
/// lock: for three seconds of a stall (three resyncs begun, one a second),
/// the list of waifus, kept in memory, is answered at once each time. (A
/// hello that is waiting for its commit does hold the registry, by
/// design, so this stall has none in flight.)
#[tokio::test]
async fn resyncs_waiting_on_a_stalled_database_hold_up_nothing() {
    let cluster = pg::dedicated();
    let orch = harness::start_with_url(
        &cluster.url(&unique_db("stallresync")),
        &["--internal-token", TOKEN, "--resync-interval", "1s"],
    )
    .await;
    let w = TestWaifu::start("w").await;
    let hello = json!({"name": "w", "host": w.host()});
    let (r, _) = timed(&orch, Method::POST, "/__internal/hello", TOKEN, hello).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    cluster.signal_server("STOP");
    let stalled = Stalled(&cluster);
    let stopped = Instant::now();
    let mut lists = 0;
    while stopped.elapsed() < Duration::from_secs(3) {
        let (list, took) =
            timed(&orch, Method::GET, "/__internal/waifus", TOKEN, Value::Null).await;
        assert_eq!(list.status, StatusCode::OK, "{:?}", list.body);
        assert!(took < Duration::from_secs(1), "the list took {took:?}");
        assert!(
            list.json().to_string().contains(&w.host()),
            "{:?}",
            list.body
        );
        lists += 1;
    }
    assert!(lists > 1);
    assert_eq!(orch.get("localhost", "/w/x").await.status, StatusCode::OK);
    drop(stalled);
    orch.stop().await.unwrap();
}
