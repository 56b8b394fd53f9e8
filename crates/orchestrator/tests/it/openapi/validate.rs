//! A small validator of JSON answers against the OpenAPI document: the
//! spec loaded, `$ref`s resolved, schemas checked (types, required and
//! unknown properties, enums, formats used by the document).

use serde_json::{Value, json};
use yaml_rust2::{Yaml, YamlLoader};

pub(super) fn to_json(y: &Yaml) -> Value {
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

pub(super) fn spec() -> Value {
    let text = include_str!("../../../../../docs/openapi.yaml");
    let docs = YamlLoader::load_from_str(text).expect("docs/openapi.yaml parses");
    to_json(&docs[0])
}

/// Follows a local `$ref`.
pub(super) fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
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
pub(super) fn validate(
    spec: &Value,
    schema: &Value,
    v: &Value,
    at: &str,
    errors: &mut Vec<String>,
) {
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
pub(super) fn conforms(
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
