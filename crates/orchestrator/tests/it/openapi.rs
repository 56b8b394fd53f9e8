//! docs/openapi.yaml cannot drift: real responses of a real orchestrator are
//! validated against it, every status seen must be documented, and every
//! documented operation must be exercised.

use std::collections::BTreeSet;

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};

use crate::harness::{self, send};
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

mod validate;

use validate::*;

#[tokio::test]
async fn real_responses_match_docs_openapi_yaml() {
    let spec = spec();
    assert_eq!(spec["openapi"], "3.1.0");
    const ADMIN: &str = "openapi-admin-token";
    const INTERNAL: &str = "openapi-internal-token";
    let orch = harness::start(
        &unique_db("openapi"),
        &["--admin-token", ADMIN, "--internal-token", INTERNAL],
    )
    .await;
    let admin = format!("Bearer {ADMIN}");
    let internal = format!("Bearer {INTERNAL}");
    let w = TestWaifu::start("w").await;
    let mut exercised = BTreeSet::new();
    // (template, method, path, body), sent with the admin token.
    let calls: Vec<(&str, &str, String, Option<Value>)> = vec![
        (
            "/__internal/health",
            "get",
            "/__internal/health".into(),
            None,
        ),
        (
            "/__internal/hello",
            "post",
            "/__internal/hello".into(),
            Some(
                json!({"name": "w", "host": w.host(), "additionalBinds": {"http://w.test": "/", "http://localhost/x": "/"}}),
            ),
        ),
        (
            "/__internal/hello",
            "post",
            "/__internal/hello".into(),
            Some(json!({"name": "w", "host": w.host(), "additionalBinds": null})),
        ),
        (
            "/__internal/hello",
            "post",
            "/__internal/hello".into(),
            Some(json!({"name": "Bad", "host": "x"})),
        ),
        (
            "/__internal/hello",
            "post",
            "/__internal/hello".into(),
            Some(json!({"name": "big", "host": "x".repeat(100_000)})),
        ),
        (
            "/__internal/database",
            "post",
            "/__internal/database".into(),
            Some(json!({"name": "w", "secret": "s"})),
        ),
        (
            "/__internal/database",
            "post",
            "/__internal/database".into(),
            Some(json!({"name": "w", "secret": ""})),
        ),
        (
            "/__internal/goodbye",
            "post",
            "/__internal/goodbye".into(),
            Some(json!({"name": "w", "host": "127.0.0.1:1", "secret": "s"})),
        ),
        (
            "/__internal/goodbye",
            "post",
            "/__internal/goodbye".into(),
            Some(json!({"name": "Bad", "host": "x"})),
        ),
        (
            "/__internal/goodbye",
            "post",
            "/__internal/goodbye".into(),
            Some(json!({"name": "w", "host": w.host(), "secret": "not-s"})),
        ),
        (
            "/__internal/waifus",
            "get",
            "/__internal/waifus".into(),
            None,
        ),
        (
            "/__internal/goodbye",
            "post",
            "/__internal/goodbye".into(),
            Some(json!({"name": "w", "host": w.host(), "secret": "s"})),
        ),
        (
            "/__internal/waifus/{name}/health",
            "get",
            "/__internal/waifus/nobody/health".into(),
            None,
        ),
        (
            "/__internal/waifus/{name}/health",
            "get",
            "/__internal/waifus/w/health".into(),
            None,
        ),
        (
            "/__internal/incidents",
            "get",
            "/__internal/incidents?limit=0".into(),
            None,
        ),
        (
            "/__internal/audit",
            "get",
            "/__internal/audit?name=w&limit=5".into(),
            None,
        ),
        (
            "/__internal/audit",
            "get",
            "/__internal/audit?limit=0".into(),
            None,
        ),
        (
            "/__internal/waifus/{name}/history",
            "get",
            "/__internal/waifus/w/history?since=1h".into(),
            None,
        ),
        (
            "/__internal/waifus/{name}/rollout",
            "get",
            "/__internal/waifus/w/rollout".into(),
            None,
        ),
        (
            "/__internal/waifus/{name}/rollout",
            "delete",
            "/__internal/waifus/w/rollout".into(),
            None,
        ),
        (
            "/__internal/waifus/{name}/rollout",
            "put",
            "/__internal/waifus/nobody/rollout".into(),
            Some(json!({"version": "2"})),
        ),
        (
            "/__internal/waifus/{name}/history",
            "get",
            "/__internal/waifus/w/history?since=yesterday".into(),
            None,
        ),
        (
            "/__internal/waifus/{name}/history",
            "get",
            "/__internal/waifus/nobody/history".into(),
            None,
        ),
        (
            "/__internal/hello",
            "post",
            "/__internal/hello".into(),
            Some(json!({"name": "owned", "host": w.host(), "secret": "owned-secret"})),
        ),
        (
            "/__internal/hello",
            "post",
            "/__internal/hello".into(),
            Some(json!({"name": "owned", "host": w.host()})),
        ),
    ];
    let mut calls = calls;
    for _ in 0..6 {
        calls.push((
            "/__internal/hello",
            "post",
            "/__internal/hello".into(),
            Some(json!({"name": "owned", "host": w.host(), "secret": "not-it"})),
        ));
    }
    for _ in 0..6 {
        calls.push((
            "/__internal/database",
            "post",
            "/__internal/database".into(),
            Some(json!({"name": "w", "secret": "wrong"})),
        ));
    }
    calls.push((
        "/__internal/incidents",
        "get",
        "/__internal/incidents".into(),
        None,
    ));
    calls.push(("/__internal/audit", "get", "/__internal/audit".into(), None));
    // A rotation: first a database to rotate, then its outcomes.
    calls.push((
        "/__internal/database",
        "post",
        "/__internal/database".into(),
        Some(json!({"name": "rot", "secret": "rot-1"})),
    ));
    for (secret, new) in [("rot-1", "rot-2"), ("rot-1", "rot-3"), ("rot-2", "rot-2")] {
        calls.push((
            "/__internal/database/rotate",
            "post",
            "/__internal/database/rotate".into(),
            Some(json!({"name": "rot", "secret": secret, "newSecret": new})),
        ));
    }
    calls.push((
        "/__internal/database/rotate",
        "post",
        "/__internal/database/rotate".into(),
        Some(json!({"name": "nodb", "secret": "a", "newSecret": "b"})),
    ));
    for (method, path, body) in [
        (
            "put",
            "/__internal/waifus/w/pause",
            Some(json!({"maxWait": "5s"})),
        ),
        (
            "put",
            "/__internal/waifus/w/pause",
            Some(json!({"maxWait": "never"})),
        ),
        ("put", "/__internal/waifus/nobody/pause", None),
        ("delete", "/__internal/waifus/w/pause", None),
    ] {
        calls.push(("/__internal/waifus/{name}/pause", method, path.into(), body));
    }
    for (method, path, body) in [
        (
            "put",
            "/__internal/waifus/w/maintenance",
            Some(json!({"message": "soon back", "retryAfter": 30})),
        ),
        (
            "put",
            "/__internal/waifus/w/maintenance",
            Some(json!({"retryAfter": 0})),
        ),
        ("put", "/__internal/waifus/nobody/maintenance", None),
        ("delete", "/__internal/waifus/w/maintenance", None),
    ] {
        calls.push((
            "/__internal/waifus/{name}/maintenance",
            method,
            path.into(),
            body,
        ));
    }
    for (path, body) in [
        ("/__internal/waifus/w/version", json!({"version": "v1"})),
        (
            "/__internal/waifus/w/version",
            json!({"version": "has space"}),
        ),
        (
            "/__internal/waifus/w/version",
            json!({"version": "never-seen"}),
        ),
        (
            "/__internal/waifus/nobody/version",
            json!({"version": "v1"}),
        ),
    ] {
        calls.push((
            "/__internal/waifus/{name}/version",
            "put",
            path.into(),
            Some(body),
        ));
    }
    for (method, body) in [
        (
            "put",
            Some(json!({"version": "v2", "steps": [10, 100], "interval": "1h"})),
        ),
        ("put", Some(json!({"version": "v2", "steps": [100, 10]}))),
        ("get", None),
        ("delete", None),
    ] {
        calls.push((
            "/__internal/waifus/{name}/rollout",
            method,
            "/__internal/waifus/w/rollout".into(),
            body,
        ));
    }
    // An orchestrator run in a test's process has no binary of its own to
    // start again: the refusal is the documented 409.
    calls.push((
        "/__internal/admin/upgrade",
        "post",
        "/__internal/admin/upgrade".into(),
        None,
    ));
    let (status, body) = orch
        .hello_with(
            json!({"name": "w", "host": w.host(), "additionalBinds": {}, "version": "v1"}),
            &[("authorization", &admin)],
        )
        .await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    for (template, method, path, body) in calls {
        let m = match method {
            "get" => Method::GET,
            "put" => Method::PUT,
            "delete" => Method::DELETE,
            _ => Method::POST,
        };
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let r = send(orch.internal, m, &path, &[("authorization", &admin)], body)
            .await
            .unwrap();
        conforms(
            &spec,
            template,
            method,
            r.status.as_u16(),
            &r.headers,
            &r.body,
        );
        exercised.insert((template.to_owned(), method.to_owned(), r.status.as_u16()));
    }
    // The status page as HTML and as JSON, and the metrics.
    for (template, path, accept) in [
        ("/__internal/status", "/__internal/status", "text/html"),
        (
            "/__internal/status",
            "/__internal/status",
            "application/json",
        ),
        ("/__internal/metrics", "/__internal/metrics", "*/*"),
    ] {
        let r = send(
            orch.internal,
            Method::GET,
            path,
            &[("accept", accept), ("authorization", &admin)],
            Bytes::new(),
        )
        .await
        .unwrap();
        conforms(
            &spec,
            template,
            "get",
            r.status.as_u16(),
            &r.headers,
            &r.body,
        );
        exercised.insert((template.to_owned(), "get".to_owned(), r.status.as_u16()));
    }
    // Without a token, or with one that does not open the endpoint: 401.
    for (template, method, path, token) in [
        ("/__internal/hello", Method::POST, "/__internal/hello", None),
        (
            "/__internal/database",
            Method::POST,
            "/__internal/database",
            None,
        ),
        (
            "/__internal/waifus",
            Method::GET,
            "/__internal/waifus",
            Some(&internal),
        ),
        (
            "/__internal/waifus/{name}/health",
            Method::GET,
            "/__internal/waifus/w/health",
            None,
        ),
        (
            "/__internal/incidents",
            Method::GET,
            "/__internal/incidents",
            Some(&internal),
        ),
        (
            "/__internal/audit",
            Method::GET,
            "/__internal/audit",
            Some(&internal),
        ),
        (
            "/__internal/metrics",
            Method::GET,
            "/__internal/metrics",
            None,
        ),
        (
            "/__internal/status",
            Method::GET,
            "/__internal/status",
            Some(&internal),
        ),
    ] {
        let headers: Vec<(&str, &str)> = token
            .map(|t| ("authorization", t.as_str()))
            .into_iter()
            .collect();
        let r = send(
            orch.internal,
            method.clone(),
            path,
            &headers,
            Bytes::from("{}"),
        )
        .await
        .unwrap();
        assert_eq!(r.status.as_u16(), 401, "{method} {path}");
        let m = method.as_str().to_ascii_lowercase();
        conforms(&spec, template, &m, 401, &r.headers, &r.body);
        exercised.insert((template.to_owned(), m, 401));
    }
    // Incidents are committed before the refusal is answered.
    let r = send(
        orch.internal,
        Method::GET,
        "/__internal/incidents",
        &[("authorization", &admin)],
        Bytes::new(),
    )
    .await
    .unwrap();
    conforms(
        &spec,
        "/__internal/incidents",
        "get",
        r.status.as_u16(),
        &r.headers,
        &r.body,
    );
    assert!(
        serde_json::from_slice::<Value>(&r.body)
            .unwrap()
            .as_array()
            .is_some_and(|a| !a.is_empty())
    );

    // Every documented operation was exercised, and the statuses that matter.
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            assert!(
                exercised.iter().any(|(p, m, _)| p == path && m == method),
                "{method} {path} is documented but not exercised"
            );
        }
    }
    for (template, method, status) in [
        ("/__internal/hello", "post", 400),
        ("/__internal/hello", "post", 401),
        ("/__internal/hello", "post", 403),
        ("/__internal/hello", "post", 413),
        ("/__internal/hello", "post", 429),
        ("/__internal/audit", "get", 200),
        ("/__internal/goodbye", "post", 200),
        ("/__internal/goodbye", "post", 400),
        ("/__internal/goodbye", "post", 403),
        ("/__internal/goodbye", "post", 404),
        ("/__internal/audit", "get", 400),
        ("/__internal/database", "post", 403),
        ("/__internal/database", "post", 429),
        ("/__internal/waifus/{name}/health", "get", 404),
        ("/__internal/incidents", "get", 400),
        ("/__internal/database/rotate", "post", 200),
        ("/__internal/database/rotate", "post", 400),
        ("/__internal/database/rotate", "post", 403),
        ("/__internal/database/rotate", "post", 404),
        ("/__internal/waifus/{name}/pause", "put", 200),
        ("/__internal/waifus/{name}/pause", "put", 400),
        ("/__internal/waifus/{name}/pause", "put", 404),
        ("/__internal/waifus/{name}/pause", "delete", 200),
        ("/__internal/waifus/{name}/maintenance", "put", 200),
        ("/__internal/waifus/{name}/maintenance", "put", 400),
        ("/__internal/waifus/{name}/maintenance", "put", 404),
        ("/__internal/waifus/{name}/maintenance", "delete", 200),
        ("/__internal/waifus/{name}/version", "put", 200),
        ("/__internal/waifus/{name}/version", "put", 400),
        ("/__internal/waifus/{name}/version", "put", 404),
        ("/__internal/waifus/{name}/rollout", "put", 200),
        ("/__internal/waifus/{name}/rollout", "put", 400),
        ("/__internal/waifus/{name}/rollout", "put", 404),
        ("/__internal/waifus/{name}/rollout", "get", 200),
        ("/__internal/waifus/{name}/rollout", "get", 404),
        ("/__internal/waifus/{name}/rollout", "delete", 200),
        ("/__internal/waifus/{name}/rollout", "delete", 404),
        ("/__internal/waifus/{name}/history", "get", 200),
        ("/__internal/waifus/{name}/history", "get", 400),
        ("/__internal/waifus/{name}/history", "get", 404),
        ("/__internal/admin/upgrade", "post", 409),
    ] {
        assert!(
            exercised.contains(&(template.to_owned(), method.to_owned(), status)),
            "{method} {template} {status} was not exercised: {exercised:?}"
        );
    }
    orch.stop().await.unwrap();
}
