//! Wrong secrets are throttled per name and source address: many at once
//! get no more checks than one after another would, over every replica;
//! an address that guesses locks itself out, never the owner; lockouts
//! grow as documented.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{self, Orch, Reply, send_from};
use crate::pg::{self, unique_db};
use crate::waifu::TestWaifu;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A hello from `source`.
async fn hello_from(orch: &Orch, source: &str, body: &Value) -> Reply {
    send_from(
        Some(ip(source)),
        orch.internal,
        Method::POST,
        "/__internal/hello",
        &[],
        Bytes::from(body.to_string()),
    )
    .await
    .expect("internal API reachable")
}

fn code(r: &Reply) -> String {
    r.json()["error"].as_str().unwrap_or("").to_owned()
}

/// Incidents of `kind` about `name`, newest first.
async fn incidents(orch: &Orch, kind: &str, name: &str) -> Vec<Value> {
    let (status, all) = orch
        .internal_json(
            Method::GET,
            "/__internal/incidents?limit=1000",
            String::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    all.as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == kind && i["name"] == name)
        .cloned()
        .collect()
}

#[tokio::test]
async fn three_hundred_wrong_secrets_at_once_over_two_replicas_get_five_checks() {
    let db = unique_db("burst");
    let a = harness::start(&db, &[]).await;
    let b = harness::start(&db, &[]).await;
    let w = TestWaifu::start("vault").await;
    let right = json!({"name": "vault", "host": w.host(), "secret": "the-right-secret"});
    let r = hello_from(&a, "127.0.0.1", &right).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // 300 wrong secrets, each different (a real guess), connected first and
    // released together, half to each orchestrator.
    let start = Arc::new(tokio::sync::Barrier::new(300));
    let calls: Vec<_> = (0..300)
        .map(|i| {
            let orch = if i % 2 == 0 { a.internal } else { b.internal };
            let start = start.clone();
            let body = json!({"name": "vault", "host": w.host(), "secret": format!("guess-{i}")});
            tokio::spawn(async move {
                start.wait().await;
                send_from(
                    Some(ip("127.0.0.3")),
                    orch,
                    Method::POST,
                    "/__internal/hello",
                    &[],
                    Bytes::from(body.to_string()),
                )
                .await
                .expect("an answer")
            })
        })
        .collect();
    let mut checked = 0;
    let mut throttled = 0;
    for call in calls {
        let r = call.await.unwrap();
        match (r.status, code(&r).as_str()) {
            (StatusCode::FORBIDDEN, "wrong_secret") => checked += 1,
            (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts") => {
                assert!(r.headers.contains_key("retry-after"));
                throttled += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!((1..=5).contains(&checked), "{checked} checked");
    assert_eq!(checked + throttled, 300);
    // Every check that was answered 403 is on record, naming the address.
    let refused = incidents(&a, "hello_wrong_secret", "vault").await;
    assert_eq!(refused.len(), checked, "{refused:?}");
    assert!(refused.iter().all(|i| i["source"] == "127.0.0.3"));
    assert!(!incidents(&a, "throttled", "vault").await.is_empty());
    // The owner, from its own address, was never held back.
    for orch in [&a, &b] {
        let r = hello_from(orch, "127.0.0.1", &right).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

#[tokio::test]
async fn an_address_that_guesses_locks_only_itself_and_lockouts_double() {
    let db = unique_db("peraddress");
    let orch = harness::start(&db, &[]).await;
    let w = TestWaifu::start("vault").await;
    let right = json!({"name": "vault", "host": w.host(), "secret": "the-right-secret"});
    let wrong = json!({"name": "vault", "host": w.host(), "secret": "a-guess"});
    let r = hello_from(&orch, "127.0.0.1", &right).await;
    assert_eq!(r.status, StatusCode::OK);
    // 20 wrong secrets from 127.0.0.2, the owner's right one from
    // 127.0.0.1 between each: five 403s, then 429s; the owner always 200.
    let mut answers = Vec::new();
    for _ in 0..20 {
        let r = hello_from(&orch, "127.0.0.2", &wrong).await;
        answers.push(r.status.as_u16());
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
        }
        let r = hello_from(&orch, "127.0.0.1", &right).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    assert_eq!(answers[..5], [403; 5], "{answers:?}");
    assert!(answers[5..].iter().all(|s| *s == 429), "{answers:?}");
    // Locked out even with the right secret; a database call too.
    let r = hello_from(&orch, "127.0.0.2", &right).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // A third address is not affected.
    let r = hello_from(&orch, "127.0.0.4", &right).await;
    assert_eq!(r.status, StatusCode::OK);
    let locking = incidents(&orch, "hello_wrong_secret", "vault").await;
    assert_eq!(locking.len(), 5);
    let detail = locking[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("127.0.0.2 is locked out of this name for 60 s"),
        "{detail}"
    );
    // The lockout ends (moved to now in the database, as the clock would);
    // the next wrong secret from the same address locks it for twice as
    // long, though the owner's hellos succeeded in between.
    let state = pg::cluster().superuser(&db).await;
    state
        .execute(
            "UPDATE attempts SET locked_until = now() WHERE name = 'vault' AND source = '127.0.0.2'",
            &[],
        )
        .await
        .unwrap();
    let r = hello_from(&orch, "127.0.0.2", &wrong).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let detail = incidents(&orch, "hello_wrong_secret", "vault").await[0]["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail.contains("for 120 s"), "{detail}");
    let r = hello_from(&orch, "127.0.0.2", &wrong).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((61..=120).contains(&retry), "{retry}");
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn guesses_from_many_addresses_meet_the_name_ceiling_but_not_the_owner() {
    let db = unique_db("ceiling");
    let orch = harness::start(&db, &[]).await;
    let w = TestWaifu::start("vault").await;
    let right = json!({"name": "vault", "host": w.host(), "secret": "the-right-secret"});
    assert_eq!(
        hello_from(&orch, "127.0.0.1", &right).await.status,
        StatusCode::OK
    );
    // Ten addresses, five guesses each: 50 failures lock the name for
    // addresses that never showed the secret.
    for n in 10..20 {
        let source = format!("127.0.1.{n}");
        for i in 0..5 {
            let guess = json!({"name": "vault", "host": w.host(), "secret": format!("g{n}-{i}")});
            let r = hello_from(&orch, &source, &guess).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{source} #{i}");
        }
    }
    let newcomer = hello_from(
        &orch,
        "127.0.2.1",
        &json!({"name": "vault", "host": w.host(), "secret": "g-new"}),
    )
    .await;
    assert_eq!(newcomer.status, StatusCode::TOO_MANY_REQUESTS);
    // Even with the right secret: an address the name does not know waits.
    let r = hello_from(&orch, "127.0.2.2", &right).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // The owner's address is known: it goes on.
    let r = hello_from(&orch, "127.0.0.1", &right).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let last = &incidents(&orch, "hello_wrong_secret", "vault").await[0];
    let detail = last["detail"].as_str().unwrap();
    assert!(detail.contains("the name is locked for 60 s"), "{detail}");
    orch.stop().await.unwrap();
}
