//! Nobody on the internal network can take over a waifu: names owned by a
//! secret, bearer tokens on the internal API, incidents stored before the
//! refusal is answered and delivered through an outbox, and the audit log.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{self, Orch, Reply, send};
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

/// A call to the internal API with `token` as the bearer, if any.
pub(crate) async fn call(
    orch: &Orch,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Reply {
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

pub(crate) async fn hello(orch: &Orch, body: Value) -> Reply {
    call(orch, Method::POST, "/__internal/hello", None, body).await
}

pub(crate) async fn database(orch: &Orch, body: Value) -> Reply {
    call(orch, Method::POST, "/__internal/database", None, body).await
}

pub(crate) async fn list(orch: &Orch, path: &str) -> Vec<Value> {
    let r = call(orch, Method::GET, path, None, Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {:?}", r.body);
    r.json().as_array().unwrap().clone()
}

pub(crate) fn assert_refused(r: &Reply, status: StatusCode, code: &str) {
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

pub(crate) const INTERNAL: &str = "internal-token-0123456789";
pub(crate) const ADMIN: &str = "admin-token-9876543210";

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
