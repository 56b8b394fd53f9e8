//! The internal API: hello validation, bind refusals, listing, persistence.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{self, send};
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"], want_code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn bad_hellos_get_json_errors() {
    let orch = harness::start(&unique_db("badhello"), &[]).await;
    let post = |body: &str| orch.internal_json(Method::POST, "/__internal/hello", body.to_owned());
    let cases: &[(&str, StatusCode, &str)] = &[
        ("", StatusCode::BAD_REQUEST, "invalid_json"),
        ("{", StatusCode::BAD_REQUEST, "invalid_json"),
        ("[]", StatusCode::BAD_REQUEST, "invalid_json"),
        (r#"{"name":"a"}"#, StatusCode::BAD_REQUEST, "invalid_json"),
        (r#"{"host":"a:1"}"#, StatusCode::BAD_REQUEST, "invalid_json"),
        (
            r#"{"name":5,"host":"a:1"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            r#"{"name":"a","host":"b:1","additionalBinds":[1]}"#,
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            r#"{"name":"Bad_Name","host":"a:1"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            r#"{"name":"","host":"a:1"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            r#"{"name":"-a","host":"a:1"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            r#"{"name":"__internal","host":"a:1"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            r#"{"name":"a","host":""}"#,
            StatusCode::BAD_REQUEST,
            "invalid_host",
        ),
        (
            r#"{"name":"a","host":"a:99999"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_host",
        ),
        (
            r#"{"name":"a","host":"ftp://a"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_host",
        ),
        (
            r#"{"name":"a","host":"http://a/x"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_host",
        ),
    ];
    for (body, status, code) in cases {
        let (got, reply) = post(body).await;
        assert_error(got, &reply, *status, code);
    }
    let huge = format!(
        r#"{{"name":"a","host":"a:1","x":"{}"}}"#,
        "x".repeat(200_000)
    );
    let (got, reply) = post(&huge).await;
    assert_error(got, &reply, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");

    let (got, reply) = orch
        .internal_json(Method::GET, "/__internal/hello", String::new())
        .await;
    assert_error(
        got,
        &reply,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    let (got, reply) = orch
        .internal_json(Method::GET, "/__internal/nope", String::new())
        .await;
    assert_error(got, &reply, StatusCode::NOT_FOUND, "not_found");
    // Nothing above registered anything.
    let (_, list) = orch
        .internal_json(Method::GET, "/__internal/waifus", String::new())
        .await;
    assert_eq!(list, json!([]));
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn every_host_form_is_accepted() {
    let orch = harness::start(&unique_db("hostforms"), &[]).await;
    for (host, canonical) in [
        ("link", "http://link:80"),
        ("link:8080", "http://link:8080"),
        ("10.0.0.1:9", "http://10.0.0.1:9"),
        ("[::1]:9", "http://[::1]:9"),
        ("http://Link:81", "http://link:81"),
        ("https://link", "https://link:443"),
    ] {
        let (status, body) = orch.hello(json!({"name": "forms", "host": host})).await;
        assert_eq!(status, StatusCode::OK, "{host}: {body}");
        let (_, list) = orch
            .internal_json(Method::GET, "/__internal/waifus", String::new())
            .await;
        let hosts: Vec<&str> = list[0]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["host"].as_str().unwrap())
            .collect();
        assert!(hosts.contains(&canonical), "{host}: {hosts:?}");
    }
    // The same instance spelled twice is one instance.
    let (status, _) = orch
        .hello(json!({"name": "forms", "host": "link:80"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = orch
        .internal_json(Method::GET, "/__internal/waifus", String::new())
        .await;
    assert_eq!(list[0]["instances"].as_array().unwrap().len(), 6, "{list}");
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn binds_are_refused_with_stable_reasons() {
    let orch = harness::start(&unique_db("refusals"), &[]).await;
    let a = TestWaifu::start("a").await;
    let b = TestWaifu::start("b").await;
    let body = orch
        .register(
            "a",
            &a.host(),
            json!({
                "http://a.test": "/",
                "https://a.test/p": "/x",
                "http://localhost/x": "/",
                "http://LOCALHOST:8080": "/",
                "not a url": "/",
                "http://a.test/q": "no-slash",
                "https://u@a.test/y": "/",
                "http://b.test/__internal": "/",
                "http://b.test/ok": "/__INTERNAL/x",
                "http://b.test/%5f_internal": "/",
            }),
        )
        .await;
    assert_eq!(body["name"], "a");
    assert!(body["url"].as_str().unwrap().ends_with("/a"), "{body}");
    let reason = |body: &Value, bind: &str| -> Value {
        let outcome = body["binds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["bind"] == bind)
            .unwrap_or_else(|| panic!("{bind} missing in {body}"))
            .clone();
        if outcome["accepted"] == true {
            assert!(outcome.get("reason").is_none(), "{outcome}");
            json!("accepted")
        } else {
            outcome["reason"].clone()
        }
    };
    for (bind, want) in [
        ("http://a.test", "accepted"),
        ("https://a.test/p", "accepted"),
        ("http://localhost/x", "main_domain"),
        ("http://LOCALHOST:8080", "main_domain"),
        ("not a url", "invalid"),
        ("http://a.test/q", "invalid"),
        ("https://u@a.test/y", "invalid"),
        ("http://b.test/__internal", "internal_path"),
        ("http://b.test/ok", "internal_path"),
        ("http://b.test/%5f_internal", "internal_path"),
    ] {
        assert_eq!(reason(&body, bind), want, "{bind}");
    }

    // Another waifu cannot take a's binds, in any spelling; as neither is
    // claimed, it can take a longer prefix on the same host.
    let body = orch
        .register(
            "b",
            &b.host(),
            json!({"https://A.test/": "/", "http://a.test/p/": "/", "http://a.test/p/deeper": "/"}),
        )
        .await;
    assert_eq!(reason(&body, "https://A.test/"), "taken");
    assert_eq!(reason(&body, "http://a.test/p/"), "taken");
    assert_eq!(reason(&body, "http://a.test/p/deeper"), "accepted");

    // a keeps its binds across a second hello that repeats them…
    let body = orch
        .register(
            "a",
            &a.host(),
            json!({"http://a.test": "/", "https://a.test/p": "/x"}),
        )
        .await;
    assert_eq!(reason(&body, "http://a.test"), "accepted");
    // …and releases the one it stops asking for, which b can then take.
    orch.register("a", &a.host(), json!({"http://a.test": "/"}))
        .await;
    let body = orch
        .register("b", &b.host(), json!({"http://a.test/p": "/"}))
        .await;
    assert_eq!(reason(&body, "http://a.test/p"), "accepted");

    let (_, list) = orch
        .internal_json(Method::GET, "/__internal/waifus", String::new())
        .await;
    let binds = |name: &str| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name)
            .unwrap()["binds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["bind"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(binds("a"), ["http://a.test"]);
    assert_eq!(binds("b"), ["http://a.test/p"]);
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn listing_and_waifu_health() {
    let orch = harness::start(&unique_db("listing"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({"http://w.test/p": "/t"}))
        .await;
    let (status, list) = orch
        .internal_json(Method::GET, "/__internal/waifus", String::new())
        .await;
    assert_eq!(status, StatusCode::OK);
    let entry = &list[0];
    assert_eq!(entry["name"], "w");
    assert!(
        entry["url"]
            .as_str()
            .unwrap()
            .starts_with("http://localhost:")
    );
    assert_eq!(
        entry["instances"][0]["host"],
        format!("http://{}", w.host())
    );
    assert_eq!(entry["instances"][0]["healthy"], true);
    assert!(entry["instances"][0]["lastCheck"].is_string(), "{entry}");
    assert_eq!(
        entry["binds"],
        json!([{"bind": "http://w.test/p", "target": "/t"}])
    );

    let (status, body) = orch
        .internal_json(
            Method::GET,
            "/__internal/waifus/nobody/health",
            String::new(),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "unknown_waifu");
    w.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    orch.wait_health("w", StatusCode::SERVICE_UNAVAILABLE).await;
    let (status, body) = orch
        .internal_json(Method::GET, "/__internal/waifus/w/health", String::new())
        .await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "no_healthy_instance",
    );
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn restart_restores_routes_without_a_new_hello() {
    let db = unique_db("restart");
    let w = TestWaifu::start("w").await;
    let orch = harness::start(&db, &[]).await;
    orch.register("keep", &w.host(), json!({"http://keep.test": "/in"}))
        .await;
    assert_eq!(
        orch.get("localhost", "/keep/x").await.status,
        StatusCode::OK
    );
    orch.stop().await.unwrap();

    let orch = harness::start(&db, &[]).await;
    // Routable at once: health state was stored, and no hello was sent.
    let r = orch.get("localhost", "/keep/x").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["target"], "/x");
    let r = orch.get("keep.test", "/y").await;
    assert_eq!(r.json()["target"], "/in/y");
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn database_outage_keeps_proxying_and_recovers() {
    let (orch, relay) = harness::start_behind_relay(&unique_db("outage")).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;

    relay.cut();
    // Known routes keep working.
    for _ in 0..5 {
        assert_eq!(orch.get("localhost", "/w/").await.status, StatusCode::OK);
    }
    // Registration answers 503 with a JSON error, promptly.
    let started = Instant::now();
    let (status, body) = orch.hello(json!({"name": "new", "host": "new:1"})).await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(orch.get("localhost", "/w/").await.status, StatusCode::OK);

    relay.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = orch.hello(json!({"name": "new", "host": "new:1"})).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "registration did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn internal_api_is_not_on_the_public_listener() {
    let orch = harness::start(&unique_db("split"), &[]).await;
    for path in [
        "/__internal/health",
        "/__internal/waifus",
        "/__internal/hello",
    ] {
        for method in [Method::GET, Method::POST] {
            let r = send(
                orch.public,
                method,
                path,
                &[("host", "localhost")],
                Bytes::new(),
            )
            .await
            .unwrap();
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        }
    }
    orch.stop().await.unwrap();
}

/// Hellos from six waifus race for one bind: exactly one gets it, the
/// others are told it is taken, and the store and the routes agree.
#[tokio::test]
async fn racing_hellos_grant_a_bind_once() {
    let orch = harness::start(&unique_db("race"), &[]).await;
    let w = TestWaifu::start("w").await;
    let claim = |name: &'static str| {
        let body = json!({
            "name": name,
            "host": w.host(),
            "additionalBinds": {"http://race.test": "/", format!("http://{name}.race.test"): "/"},
        });
        let orch = &orch;
        async move { (name, orch.hello(body).await) }
    };
    let answers = tokio::join!(
        claim("r1"),
        claim("r2"),
        claim("r3"),
        claim("r4"),
        claim("r5"),
        claim("r6")
    );
    let answers = [
        answers.0, answers.1, answers.2, answers.3, answers.4, answers.5,
    ];
    let mut winners = Vec::new();
    for (name, (status, body)) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        let outcome = |bind: &str| {
            body["binds"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["bind"] == bind)
                .unwrap_or_else(|| panic!("{bind} missing in {body}"))
                .clone()
        };
        assert_eq!(
            outcome(&format!("http://{name}.race.test"))["accepted"],
            true
        );
        let shared = outcome("http://race.test");
        if shared["accepted"] == true {
            winners.push(*name);
        } else {
            assert_eq!(shared["reason"], "taken", "{body}");
        }
    }
    assert_eq!(winners.len(), 1, "{answers:?}");
    let (_, list) = orch
        .internal_json(Method::GET, "/__internal/waifus", String::new())
        .await;
    let holders: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| {
            w["binds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["bind"] == "http://race.test")
        })
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(holders, winners, "{list}");
    orch.wait_health(winners[0], StatusCode::NO_CONTENT).await;
    let r = send(
        orch.public,
        Method::GET,
        "/hello",
        &[("host", "race.test")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    orch.stop().await.unwrap();
}

/// A new waifu's first hello without binds is recorded by the store's short
/// statement for it; another instance of that waifu, and a new waifu's
/// first hello with a bind, by the full one. (The two statements' rows are
/// held equal by the store's own tests; this holds the registry to asking
/// for the short one only when it holds no waifu of the name.)
#[tokio::test]
async fn only_a_new_waifus_first_hello_without_binds_takes_the_short_statement() {
    let db = unique_db("firsthello");
    let orch = harness::start(&db, &[]).await;
    let superuser = crate::pg::cluster().superuser("postgres").await;
    // Whether the hello connection's latest statement was the short one
    // (after a hello with binds it is the transaction's COMMIT).
    let last = || async {
        let row = superuser
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = $1 AND query LIKE '%ON CONFLICT (name) DO NOTHING%'",
                &[&db],
            )
            .await
            .expect("sessions");
        row.get::<_, i64>(0) == 1
    };
    let hello = |name: &str, host: &str, binds: Value| {
        let body = json!({"name": name, "host": host, "additionalBinds": binds});
        let orch = &orch;
        async move {
            let (status, body) = orch.hello(body).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    hello("fresh", "127.0.0.1:1", json!({})).await;
    assert!(last().await, "a new waifu's first hello");
    hello("fresh", "127.0.0.1:2", json!({})).await;
    assert!(!last().await, "a second instance");
    hello("bound", "127.0.0.1:3", json!({"http://bound.test": "/"})).await;
    assert!(!last().await, "a first hello with a bind");
    hello("other", "127.0.0.1:4", json!({})).await;
    assert!(last().await, "another new waifu");
    let (_, waifus) = orch
        .internal_json(Method::GET, "/__internal/waifus", String::new())
        .await;
    let text = waifus.to_string();
    for name in ["fresh", "bound", "other"] {
        assert!(text.contains(&format!("\"{name}\"")), "{text}");
    }
}
