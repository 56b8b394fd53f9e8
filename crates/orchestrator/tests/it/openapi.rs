//! docs/openapi.yaml cannot drift: real responses of a real orchestrator are
//! validated against it, every status seen must be documented, and every
//! documented operation must be exercised.

use std::collections::BTreeSet;

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};
use yaml_rust2::{Yaml, YamlLoader};

use crate::harness::{self, send};
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(r) => r.parse::<f64>().map(Value::from).unwrap_or(Value::Null),
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) => json!(s),
        Yaml::Boolean(b) => json!(b),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    (
                        k.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| format!("{k:?}")),
                        to_json(v),
                    )
                })
                .collect(),
        ),
        Yaml::Null | Yaml::Alias(_) | Yaml::BadValue => Value::Null,
    }
}

fn spec() -> Value {
    let text = include_str!("../../../../docs/openapi.yaml");
    let docs = YamlLoader::load_from_str(text).expect("docs/openapi.yaml parses");
    to_json(&docs[0])
}

/// Follows a local `$ref`.
fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("local $ref");
            resolve(
                spec,
                spec.pointer(pointer)
                    .unwrap_or_else(|| panic!("dangling {r}")),
            )
        }
        None => v,
    }
}

/// The JSON Schema subset docs/openapi.yaml uses.
fn validate(spec: &Value, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        });
        if !ok {
            errors.push(format!("{at}: {v} is not of type {t}"));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        errors.push(format!("{at}: {v} is not one of {allowed:?}"));
    }
    if let Some(want) = schema.get("const")
        && want != v
    {
        errors.push(format!("{at}: {v} is not {want}"));
    }
    if let Some(n) = v.as_f64() {
        if schema
            .get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n < m)
        {
            errors.push(format!("{at}: {n} is below the minimum"));
        }
        if schema
            .get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n > m)
        {
            errors.push(format!("{at}: {n} is above the maximum"));
        }
    }
    if let Some(obj) = v.as_object() {
        for key in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = key.as_str().unwrap();
            if !obj.contains_key(key) {
                errors.push(format!("{at}: missing required {key}"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (key, value) in obj {
            match props.and_then(|p| p.get(key)) {
                Some(s) => validate(spec, s, value, &format!("{at}.{key}"), errors),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        errors.push(format!("{at}: undocumented field {key}"))
                    }
                    Some(s @ Value::Object(_)) => {
                        validate(spec, s, value, &format!("{at}.{key}"), errors)
                    }
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            validate(spec, items, item, &format!("{at}[{i}]"), errors);
        }
    }
}

/// Checks one real response against the document; returns the operation key.
fn conforms(
    spec: &Value,
    template: &str,
    method: &str,
    status: u16,
    headers: &http::HeaderMap,
    body: &[u8],
) {
    let op = spec["paths"][template][method].clone();
    assert!(op.is_object(), "{method} {template} is not documented");
    let response = op["responses"].get(status.to_string()).unwrap_or_else(|| {
        panic!("{method} {template} answered {status}, which is not documented")
    });
    let response = resolve(spec, response);
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if let Some(content) = response.get("content").and_then(Value::as_object)
        && media != "application/json"
    {
        // A documented non-JSON answer (HTML, metrics text): its type must
        // be one the document names.
        assert!(
            content.contains_key(media),
            "{method} {template} {status}: {media:?} is not documented"
        );
        return;
    }
    match response.pointer("/content/application~1json/schema") {
        None => assert!(
            body.is_empty(),
            "{method} {template} {status}: documented without a body"
        ),
        Some(schema) => {
            let value: Value = serde_json::from_slice(body)
                .unwrap_or_else(|e| panic!("{method} {template} {status}: not JSON: {e}"));
            let mut errors = Vec::new();
            validate(spec, schema, &value, "body", &mut errors);
            assert!(
                errors.is_empty(),
                "{method} {template} {status}: {errors:?}\n{value}"
            );
        }
    }
    for (header, doc) in response
        .get("headers")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let value = headers.get(header.as_str());
        if doc["required"] != Value::Bool(false) {
            assert!(value.is_some(), "{method} {template} {status}: no {header}");
        }
        if let (Some(value), Some(want)) = (value, doc.pointer("/schema/const")) {
            assert_eq!(
                value.to_str().ok(),
                want.as_str(),
                "{method} {template} {status}: {header}"
            );
        }
        if let (Some(value), Some(allowed)) = (value, doc.pointer("/schema/enum")) {
            let value = Value::from(value.to_str().unwrap_or(""));
            assert!(
                allowed.as_array().is_some_and(|a| a.contains(&value)),
                "{method} {template} {status}: {header} {value} is not one of {allowed}"
            );
        }
    }
}

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
        ("/__internal/waifus/{name}/version", "put", 200),
        ("/__internal/waifus/{name}/version", "put", 400),
        ("/__internal/waifus/{name}/version", "put", 404),
        ("/__internal/admin/upgrade", "post", 409),
    ] {
        assert!(
            exercised.contains(&(template.to_owned(), method.to_owned(), status)),
            "{method} {template} {status} was not exercised: {exercised:?}"
        );
    }
    orch.stop().await.unwrap();
}
