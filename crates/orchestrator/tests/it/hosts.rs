//! A host belongs to one waifu once a claimed waifu holds it: no other
//! waifu gets any path on it, in any spelling, and the holder keeps all of
//! its traffic on every replica.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{self, Orch};
use crate::pg::{self, unique_db};
use crate::waifu::TestWaifu;

/// Evil's binds on hc's two hosts, one per hello (a hello naming one host
/// and path twice refuses the second spelling as `invalid`).
const SPELLINGS: [&str; 26] = [
    "http://hc.test/account",
    "http://hc.test/account/",
    "https://hc.test/account",
    "http://HC.TEST/account",
    "http://hc.test./account",
    "http://Hc.Test./Account/",
    "http://hc.test/%61ccount",
    "http://hc.test/%61%63count/",
    "http://hc.test/.well-known/acme-challenge",
    "http://hc.test/.well-known/acme-challenge/",
    "https://hc.test/.well-known/acme-challenge",
    "http://hc.test:8080/account",
    "http://hc.test/",
    "http://hc.test",
    "http://hc.test/account/reset",
    "http://hc.test/~user",
    "https://hc.localhost/login",
    "https://hc.localhost/login/",
    "http://hc.localhost/login",
    "https://HC.LOCALHOST/login",
    "https://hc.localhost./login",
    "https://hc.localhost/%6Cogin",
    "https://hc.localhost/.well-known/acme-challenge",
    "https://hc.localhost:443/login",
    "https://hc.localhost/a/b/c/deep",
    "https://hc.localhost/",
];

fn outcome(body: &Value) -> (bool, String) {
    let bind = &body["binds"][0];
    (
        bind["accepted"] == true,
        bind["reason"].as_str().unwrap_or("").to_owned(),
    )
}

async fn list(orch: &Orch, path: &str) -> Vec<Value> {
    let (status, body) = orch.internal_json(Method::GET, path, String::new()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body.as_array().unwrap().clone()
}

/// Which waifu answered a request for `host` `target` through `orch`.
async fn served_by(orch: &Orch, host: &str, target: &str) -> String {
    let r = orch.get(host, target).await;
    assert_eq!(r.status, StatusCode::OK, "{host}{target}: {:?}", r.body);
    r.json()["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn no_path_on_a_claimed_waifus_host_goes_to_another_waifu() {
    let db = unique_db("hosts");
    let a = harness::start(&db, &[]).await;
    let b = harness::start(&db, &[]).await;
    let hc = TestWaifu::start("hc").await;
    let evil = TestWaifu::start("evil").await;
    let (status, body) = a
        .hello(
            json!({"name": "hc", "host": hc.host(), "secret": "hc-secret",
                      "additionalBinds": {"http://hc.test": "/", "https://hc.localhost": "/"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["binds"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["accepted"] == true)
    );
    a.wait_health("hc", StatusCode::NO_CONTENT).await;
    for (i, bind) in SPELLINGS.iter().enumerate() {
        // Spread over both replicas; evil has a secret of its own.
        let orch = if i % 2 == 0 { &a } else { &b };
        let (status, body) = orch
            .hello(
                json!({"name": "evil", "host": evil.host(), "secret": "evil-secret",
                          "additionalBinds": {*bind: "/phish"}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            outcome(&body),
            (false, "taken".to_owned()),
            "{bind}: {body}"
        );
    }
    // Each refusal is on record: the incident names both waifus, the audit
    // log has a row under each name.
    let incidents = list(&a, "/__internal/incidents?limit=1000").await;
    let taken: Vec<&Value> = incidents
        .iter()
        .filter(|i| i["kind"] == "bind_taken" && i["name"] == "evil")
        .collect();
    assert!(!taken.is_empty());
    for i in &taken {
        let detail = i["detail"].as_str().unwrap();
        assert!(detail.contains("belongs to hc"), "{detail}");
    }
    for host in ["the host hc.test", "the host hc.localhost"] {
        assert!(
            taken
                .iter()
                .any(|i| i["detail"].as_str().unwrap().contains(host)),
            "{host}: {taken:?}"
        );
    }
    let evil_audit = list(&a, "/__internal/audit?name=evil").await;
    assert!(evil_audit.iter().any(|r| r["action"] == "bind_refused"));
    assert!(!evil_audit.iter().any(|r| r["action"] == "bind_accepted"));
    let hc_audit = list(&a, "/__internal/audit?name=hc").await;
    let defended = hc_audit
        .iter()
        .find(|r| r["action"] == "bind_refused")
        .unwrap_or_else(|| panic!("no bind_refused row under hc: {hc_audit:?}"));
    assert!(defended["detail"].as_str().unwrap().contains("evil"));
    // hc keeps every path on both hosts, on both replicas.
    for orch in [&a, &b] {
        orch.wait_health("hc", StatusCode::NO_CONTENT).await;
        for (host, target) in [
            ("hc.test", "/account/reset"),
            ("hc.test", "/account"),
            ("HC.test.", "/Account/"),
            ("hc.test", "/.well-known/acme-challenge/token"),
            ("hc.localhost", "/login"),
            ("hc.localhost", "/a/b/c/deep"),
        ] {
            assert_eq!(served_by(orch, host, target).await, "hc", "{host}{target}");
        }
    }
    // The holder may add paths under its own host.
    let (_, body) = a
        .hello(
            json!({"name": "hc", "host": hc.host(), "secret": "hc-secret",
                      "additionalBinds": {"http://hc.test": "/", "https://hc.localhost": "/",
                                          "http://hc.test/api": "/v2"}}),
        )
        .await;
    assert!(
        body["binds"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["accepted"] == true),
        "{body}"
    );
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

/// Each bind of a hello's answer: accepted, or the reason.
fn reasons(body: &Value) -> Vec<(String, String)> {
    body["binds"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|b| {
            let why = match b["accepted"] == true {
                true => "accepted",
                false => b["reason"].as_str().unwrap(),
            };
            (b["bind"].as_str().unwrap().to_owned(), why.to_owned())
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<_> = list
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}

async fn hello_binds(
    orch: &Orch,
    name: &str,
    host: &str,
    secret: Option<&str>,
    binds: &[&str],
) -> Vec<(String, String)> {
    let binds: serde_json::Map<String, Value> =
        binds.iter().map(|b| (b.to_string(), json!("/"))).collect();
    let mut body = json!({"name": name, "host": host, "additionalBinds": binds});
    if let Some(secret) = secret {
        body["secret"] = json!(secret);
    }
    let (status, body) = orch.hello(body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut r = reasons(&body);
    r.sort();
    r
}

#[tokio::test]
async fn unclaimed_waifus_share_a_host_and_its_first_claimed_holder_keeps_it() {
    let orch = harness::start(&unique_db("sharedhost"), &[]).await;
    let one = TestWaifu::start("one").await;
    let two = TestWaifu::start("two").await;
    let three = TestWaifu::start("three").await;
    // Seed-only waifus split a host by path, as with path rules in Traefik
    // or Caddy.
    orch.register("one", &one.host(), json!({"http://shared.test/one": "/"}))
        .await;
    orch.register("two", &two.host(), json!({"http://shared.test/two": "/"}))
        .await;
    assert_eq!(served_by(&orch, "shared.test", "/two/x").await, "two");
    // A claimed waifu joins no host that others use.
    let got = hello_binds(
        &orch,
        "three",
        &three.host(),
        Some("s3"),
        &["http://shared.test/three"],
    )
    .await;
    assert_eq!(got, pairs(&[("http://shared.test/three", "taken")]));
    // two, the later sharer, claims its name: it keeps what it holds but
    // adds nothing, and one (not claimed) adds nothing either now.
    let got = hello_binds(
        &orch,
        "two",
        &two.host(),
        Some("s2"),
        &["http://shared.test/two", "http://shared.test/else"],
    )
    .await;
    assert_eq!(
        got,
        pairs(&[
            ("http://shared.test/two", "accepted"),
            ("http://shared.test/else", "taken")
        ])
    );
    let got = hello_binds(
        &orch,
        "one",
        &one.host(),
        None,
        &["http://shared.test/one", "http://shared.test/x"],
    )
    .await;
    assert_eq!(
        got,
        pairs(&[
            ("http://shared.test/one", "accepted"),
            ("http://shared.test/x", "taken")
        ])
    );
    // one, the first holder, claims its name too: the host is its own.
    // It may add paths; two loses its path at its next hello.
    let got = hello_binds(
        &orch,
        "one",
        &one.host(),
        Some("s1"),
        &["http://shared.test/one", "http://shared.test/more"],
    )
    .await;
    assert_eq!(
        got,
        pairs(&[
            ("http://shared.test/one", "accepted"),
            ("http://shared.test/more", "accepted")
        ])
    );
    let got = hello_binds(
        &orch,
        "two",
        &two.host(),
        Some("s2"),
        &["http://shared.test/two"],
    )
    .await;
    assert_eq!(got, pairs(&[("http://shared.test/two", "taken")]));
    assert_eq!(served_by(&orch, "shared.test", "/one/x").await, "one");
    assert_eq!(served_by(&orch, "shared.test", "/more/x").await, "one");
    let r = orch.get("shared.test", "/two/x").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "two's path is released");
    let audit = list(&orch, "/__internal/audit?name=two").await;
    assert!(
        audit.iter().any(|r| r["action"] == "bind_released"
            && r["detail"]
                .as_str()
                .unwrap()
                .contains("its host belongs to another waifu")),
        "{audit:?}"
    );
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn an_upgrade_releases_paths_taken_on_a_claimed_waifus_host_before() {
    // State as an earlier version could leave it: evil holds a path under
    // hc's host. The migration that brings the rule releases it.
    let db = unique_db("trespass");
    let orch = harness::start(&db, &[]).await;
    let hc = TestWaifu::start("hc").await;
    let evil = TestWaifu::start("evil").await;
    let (status, _) = orch
        .hello(
            json!({"name": "hc", "host": hc.host(), "secret": "hc-secret",
                      "additionalBinds": {"http://hc.test": "/"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    orch.register("evil", &evil.host(), json!({})).await;
    orch.stop().await.unwrap();
    let state = pg::cluster().superuser(&db).await;
    state
        .batch_execute(
            "INSERT INTO binds (host, prefix, bind, target, name, since)
             VALUES ('hc.test', '/account', 'http://hc.test/account', '/phish', 'evil',
                     now() + interval '1 second');
             DELETE FROM schema_migrations WHERE version >= 6;
             DROP TABLE switches, switch_acks, orchestrators, backups, waifu_versions;
             DROP SEQUENCE switch_generation;
             ALTER TABLE binds DROP COLUMN since;
             CREATE TABLE throttle (name text);
             DROP TABLE attempts;
             DROP INDEX incidents_by_name;
             ALTER TABLE instances DROP COLUMN health_path;",
        )
        .await
        .unwrap();
    let orch = harness::start(&db, &[]).await;
    orch.wait_health("hc", StatusCode::NO_CONTENT).await;
    assert_eq!(served_by(&orch, "hc.test", "/account/reset").await, "hc");
    let audit = list(&orch, "/__internal/audit?name=evil").await;
    let released = audit
        .iter()
        .find(|r| r["action"] == "bind_released")
        .unwrap_or_else(|| panic!("{audit:?}"));
    assert!(
        released["detail"]
            .as_str()
            .unwrap()
            .contains("http://hc.test/account")
    );
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn claimed_waifus_racing_for_one_host_get_it_once() {
    let db = unique_db("hostrace");
    let a = harness::start(&db, &[]).await;
    let b = harness::start(&db, &[]).await;
    let w = TestWaifu::start("w").await;
    // 30 claimed waifus, each known to both orchestrators (their secrets
    // checked once, so the race is the store's alone)…
    for i in 0..30 {
        for orch in [&a, &b] {
            let (status, _) = orch
                .hello(json!({"name": format!("racer-{i}"), "host": w.host(),
                              "secret": format!("secret-{i}")}))
                .await;
            assert_eq!(status, StatusCode::OK);
        }
    }
    // …each asking for its own path on one new host, released together.
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(30));
    let calls: Vec<_> = (0..30)
        .map(|i| {
            let addr = if i % 2 == 0 { a.internal } else { b.internal };
            let start = start.clone();
            let body = json!({"name": format!("racer-{i}"), "host": w.host(),
                              "secret": format!("secret-{i}"),
                              "additionalBinds": {format!("http://race.test/p{i}"): "/"}});
            tokio::spawn(async move {
                start.wait().await;
                harness::post_json(addr, "/__internal/hello", &body)
                    .await
                    .expect("an answer")
            })
        })
        .collect();
    let mut winners = Vec::new();
    for (i, call) in calls.into_iter().enumerate() {
        let r = call.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        match outcome(&r.json()) {
            (true, _) => winners.push(i),
            (false, reason) => assert_eq!(reason, "taken"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let state = pg::cluster().superuser(&db).await;
    let holders: i64 = state
        .query_one(
            "SELECT count(DISTINCT name) FROM binds WHERE host = 'race.test'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(holders, 1);
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}
