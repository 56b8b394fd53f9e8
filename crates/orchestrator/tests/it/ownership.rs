//! Nobody on the internal network can take over a waifu: names owned by a
//! secret, bearer tokens on the internal API, incidents stored before the
//! refusal is answered and delivered through an outbox, and the audit log.

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

use crate::harness::{self, Orch, Reply, send};
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

/// A call to the internal API with `token` as the bearer, if any.
async fn call(orch: &Orch, method: Method, path: &str, token: Option<&str>, body: Value) -> Reply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    let body = match body {
        Value::Null => Bytes::new(),
        v => Bytes::from(v.to_string()),
    };
    send(orch.internal, method, path, &headers, body)
        .await
        .expect("internal API reachable")
}

async fn hello(orch: &Orch, body: Value) -> Reply {
    call(orch, Method::POST, "/__internal/hello", None, body).await
}

async fn database(orch: &Orch, body: Value) -> Reply {
    call(orch, Method::POST, "/__internal/database", None, body).await
}

async fn list(orch: &Orch, path: &str) -> Vec<Value> {
    let r = call(orch, Method::GET, path, None, Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {:?}", r.body);
    r.json().as_array().unwrap().clone()
}

fn assert_refused(r: &Reply, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn a_claimed_name_keeps_its_traffic_while_impostors_are_refused() {
    let orch = harness::start(&unique_db("claimed"), &[]).await;
    let link = TestWaifu::start("link").await;
    let evil = TestWaifu::start("evil").await;
    let r = hello(
        &orch,
        json!({"name": "link", "host": link.host(), "secret": "link-secret-1",
               "additionalBinds": {"http://link.test": "/"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    orch.wait_health("link", StatusCode::NO_CONTENT).await;
    let audit_before = list(&orch, "/__internal/audit?name=link").await;
    let actions: Vec<&str> = audit_before
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"secret_claimed"), "{actions:?}");

    // Without the secret: 401, and the incident is listed at once.
    let r = hello(
        &orch,
        json!({"name": "link", "host": evil.host(), "additionalBinds": {}}),
    )
    .await;
    assert_refused(&r, StatusCode::UNAUTHORIZED, "secret_required");
    let newest = &list(&orch, "/__internal/incidents?limit=1").await[0];
    assert_eq!(newest["kind"], "hello_without_secret", "{newest}");
    assert_eq!(newest["name"], "link");
    assert_eq!(newest["source"], "127.0.0.1");

    // With a wrong one: 403, listed at once.
    let r = hello(
        &orch,
        json!({"name": "link", "host": evil.host(), "secret": "guess",
               "additionalBinds": {"http://link.test": "/steal"}}),
    )
    .await;
    assert_refused(&r, StatusCode::FORBIDDEN, "wrong_secret");
    let newest = &list(&orch, "/__internal/incidents?limit=1").await[0];
    assert_eq!(newest["kind"], "hello_wrong_secret", "{newest}");
    assert_eq!(newest["name"], "link");

    // Nothing changed: no audit row, the same instance and bind, and every
    // request still reaches the real link.
    assert_eq!(
        list(&orch, "/__internal/audit?name=link").await,
        audit_before
    );
    let waifus = list(&orch, "/__internal/waifus").await;
    let entry = waifus.iter().find(|w| w["name"] == "link").unwrap();
    assert_eq!(entry["instances"].as_array().unwrap().len(), 1, "{entry}");
    assert_eq!(
        entry["instances"][0]["host"],
        format!("http://{}", link.host())
    );
    assert_eq!(entry["binds"][0]["bind"], "http://link.test");
    assert_eq!(entry["binds"][0]["target"], "/");
    for i in 0..20 {
        let (host, path) = if i % 2 == 0 {
            ("localhost", "/link/x")
        } else {
            ("link.test", "/x")
        };
        let r = orch.get(host, path).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["id"], "link", "request {i} went elsewhere");
    }
    assert!(
        evil.seen.lock().unwrap().is_empty(),
        "the impostor got traffic"
    );

    // The right secret still works, and the attempted one is nowhere.
    let r = hello(
        &orch,
        json!({"name": "link", "host": link.host(), "secret": "link-secret-1",
               "additionalBinds": {"http://link.test": "/"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let everything = format!(
        "{:?}{:?}",
        list(&orch, "/__internal/incidents").await,
        list(&orch, "/__internal/audit").await
    );
    for secret in ["link-secret-1", "guess", "argon2"] {
        assert!(
            !everything.contains(secret),
            "{secret} leaked: {everything}"
        );
    }
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn one_secret_per_waifu_for_hellos_and_databases() {
    let orch = harness::start(&unique_db("onesecret"), &[]).await;
    let w = TestWaifu::start("w").await;
    // A database secret first: the hello must carry the same one.
    let r = database(&orch, json!({"name": "shop", "secret": "shop-secret"})).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = hello(
        &orch,
        json!({"name": "shop", "host": w.host(), "secret": "other"}),
    )
    .await;
    assert_refused(&r, StatusCode::FORBIDDEN, "wrong_secret");
    let r = hello(&orch, json!({"name": "shop", "host": w.host()})).await;
    assert_refused(&r, StatusCode::UNAUTHORIZED, "secret_required");
    let r = hello(
        &orch,
        json!({"name": "shop", "host": w.host(), "secret": "shop-secret"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    // A hello secret first: the database call must carry the same one.
    let r = hello(
        &orch,
        json!({"name": "blog", "host": w.host(), "secret": "blog-secret"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = database(&orch, json!({"name": "blog", "secret": "not-blog"})).await;
    assert_refused(&r, StatusCode::FORBIDDEN, "wrong_secret");
    let r = database(&orch, json!({"name": "blog", "secret": "blog-secret"})).await;
    assert_eq!(r.status, StatusCode::OK);

    // An unclaimed name takes a hello without a secret, as before.
    let r = hello(&orch, json!({"name": "seed", "host": w.host()})).await;
    assert_eq!(r.status, StatusCode::OK);
    // Bad secrets are 400 and claim nothing.
    for bad in [json!(""), json!("x".repeat(1025)), json!(5)] {
        let r = hello(
            &orch,
            json!({"name": "seed", "host": w.host(), "secret": bad}),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let r = hello(&orch, json!({"name": "seed", "host": w.host()})).await;
    assert_eq!(r.status, StatusCode::OK, "still unclaimed");
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn hello_secret_required_refuses_every_hello_without_one() {
    let orch = harness::start(&unique_db("required"), &["--hello-secret", "required"]).await;
    let w = TestWaifu::start("w").await;
    let r = hello(&orch, json!({"name": "fresh", "host": w.host()})).await;
    assert_refused(&r, StatusCode::UNAUTHORIZED, "secret_required");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("HELLO_SECRET")
    );
    let newest = &list(&orch, "/__internal/incidents?limit=1").await[0];
    assert_eq!(newest["kind"], "hello_without_secret");
    assert!(list(&orch, "/__internal/waifus").await.is_empty());
    let r = hello(
        &orch,
        json!({"name": "fresh", "host": w.host(), "secret": "s"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn a_refusal_that_cannot_be_stored_is_503() {
    let (orch, relay) = harness::start_behind_relay(&unique_db("refusal503")).await;
    let w = TestWaifu::start("w").await;
    let r = hello(
        &orch,
        json!({"name": "vault", "host": w.host(), "secret": "vault-secret"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // Keep Argon2 busy with claims of other names, so the wrong secret's
    // check waits in its queue after the name's state was read; PostgreSQL
    // goes away meanwhile, before the refusal can be stored.
    let fillers: Vec<_> = (0..24)
        .map(|i| {
            let addr = orch.internal;
            let body = json!({"name": format!("filler-{i}"), "host": "127.0.0.1:9", "secret": "f"});
            tokio::spawn(async move { harness::post_json(addr, "/__internal/hello", &body).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let addr = orch.internal;
    let wrong = tokio::spawn(async move {
        harness::post_json(
            addr,
            "/__internal/hello",
            &json!({"name": "vault", "host": "127.0.0.1:9", "secret": "guess"}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    relay.cut();
    let r = wrong.await.unwrap().expect("an answer");
    for f in fillers {
        let _ = f.await;
    }
    assert_refused(&r, StatusCode::SERVICE_UNAVAILABLE, "database_unavailable");
    assert!(r.headers.contains_key("retry-after"));
    // Back: the refusal is answered and stored again.
    relay.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    let r = loop {
        let r = hello(
            &orch,
            json!({"name": "vault", "host": "127.0.0.1:9", "secret": "guess"}),
        )
        .await;
        if r.status != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_refused(&r, StatusCode::FORBIDDEN, "wrong_secret");
    let newest = &list(&orch, "/__internal/incidents?limit=1").await[0];
    assert_eq!(newest["kind"], "hello_wrong_secret");
    assert_eq!(newest["name"], "vault");
    orch.stop().await.unwrap();
}

const INTERNAL: &str = "internal-token-0123456789";
const ADMIN: &str = "admin-token-9876543210";

#[tokio::test]
async fn tokens_guard_the_internal_api() {
    let orch = harness::start(
        &unique_db("tokens"),
        &["--internal-token", INTERNAL, "--admin-token", ADMIN],
    )
    .await;
    let w = TestWaifu::start("w").await;
    let hello_body = json!({"name": "w", "host": w.host(), "secret": "w-secret"});
    let database_body = json!({"name": "w", "secret": "w-secret"});
    // (method, path, body, opened by the internal token)
    let endpoints: Vec<(Method, &str, Value, bool)> = vec![
        (Method::POST, "/__internal/hello", hello_body.clone(), true),
        (Method::POST, "/__internal/database", database_body, true),
        (
            Method::GET,
            "/__internal/waifus/w/health",
            Value::Null,
            true,
        ),
        (Method::GET, "/__internal/waifus", Value::Null, false),
        (Method::GET, "/__internal/incidents", Value::Null, false),
        (Method::GET, "/__internal/audit", Value::Null, false),
        (Method::GET, "/__internal/metrics", Value::Null, false),
        (Method::GET, "/__internal/status", Value::Null, false),
        (Method::GET, "/__internal/nothing-here", Value::Null, true),
    ];
    // The orchestrator's own health needs nothing.
    let r = call(&orch, Method::GET, "/__internal/health", None, Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // So the waifu's health is 204 below when it is let through.
    let r = call(
        &orch,
        Method::POST,
        "/__internal/hello",
        Some(INTERNAL),
        hello_body,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    for (method, path, body, internal_opens) in &endpoints {
        for (token, opens) in [
            (None, false),
            (Some("wrong-token-0123456789"), false),
            (Some(INTERNAL), *internal_opens),
            (Some(ADMIN), true),
        ] {
            let r = call(&orch, method.clone(), path, token, body.clone()).await;
            let what = format!("{method} {path} with {token:?}: {}", r.status);
            if opens {
                assert_ne!(r.status, StatusCode::UNAUTHORIZED, "{what}");
            } else {
                assert_refused(&r, StatusCode::UNAUTHORIZED, "unauthorized");
                // The status page asks a browser for Basic first.
                let challenges: Vec<&str> = r
                    .headers
                    .get_all("www-authenticate")
                    .iter()
                    .map(|v| v.to_str().unwrap())
                    .collect();
                if *path == "/__internal/status" {
                    assert!(
                        challenges[0].starts_with("Basic "),
                        "{what}: {challenges:?}"
                    );
                    assert_eq!(challenges[1..], ["Bearer"], "{what}");
                } else {
                    assert_eq!(challenges, ["Bearer"], "{what}");
                }
            }
        }
    }
    // The refusals are one incident per source within 10 s, and no token is
    // in any of them.
    let r = call(
        &orch,
        Method::GET,
        "/__internal/incidents",
        Some(ADMIN),
        Value::Null,
    )
    .await;
    let incidents = r.json();
    let unauthorized: Vec<&Value> = incidents
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "unauthorized")
        .collect();
    // 18 refusals in all; more than one incident only if the matrix took
    // more than 10 s.
    assert!((1..=3).contains(&unauthorized.len()), "{incidents}");
    assert_eq!(unauthorized[0]["source"], "127.0.0.1");
    let all = incidents.to_string();
    for token in [INTERNAL, ADMIN, "wrong-token"] {
        assert!(!all.contains(token), "{token} in {all}");
    }
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn two_orchestrators_share_the_throttle() {
    let db = unique_db("sharedthrottle");
    let a = harness::start(&db, &[]).await;
    let b = harness::start(&db, &[]).await;
    let w = TestWaifu::start("w").await;
    let r = hello(
        &a,
        json!({"name": "shared", "host": w.host(), "secret": "right"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let wrong = json!({"name": "shared", "host": w.host(), "secret": "wrong"});
    for orch in [&a, &b, &a, &b, &a] {
        let r = hello(orch, wrong.clone()).await;
        assert_refused(&r, StatusCode::FORBIDDEN, "wrong_secret");
    }
    // Five failures over both: locked on both, even for the right secret.
    for orch in [&a, &b] {
        for secret in ["wrong", "right"] {
            let r = hello(
                orch,
                json!({"name": "shared", "host": w.host(), "secret": secret}),
            )
            .await;
            assert_refused(&r, StatusCode::TOO_MANY_REQUESTS, "too_many_attempts");
            let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
        }
    }
    // Database calls for the name are locked too; other names are not.
    let r = database(&b, json!({"name": "shared", "secret": "right"})).await;
    assert_refused(&r, StatusCode::TOO_MANY_REQUESTS, "too_many_attempts");
    let r = hello(
        &b,
        json!({"name": "other", "host": w.host(), "secret": "x"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

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
