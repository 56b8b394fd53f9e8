//! What a waifu is told about the request: no field by which a client
//! could pose as a proxy reaches it, over HTTP/1.1 (both request paths) and
//! HTTP/2; a trusted load balancer's `X-Forwarded-For` is kept; `Host` is
//! canonical; HTTP/2 cookies arrive as one field.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::harness::{self, Orch, send_from};
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

/// The fields a second attack round found passing, and the rest of their
/// families, each with a value the waifu must never see.
const FORGED: [(&str, &str); 24] = [
    ("x-forwarded-for", "6.6.6.1, 6.6.6.2"),
    ("x-forwarded-port", "6661"),
    ("x-forwarded-ssl", "on-6.6.6.6"),
    ("x-forwarded-server", "evil-6.6.6.6"),
    ("x-forwarded-uri", "/6.6.6.6"),
    ("x-forwarded", "for=6.6.6.6"),
    ("front-end-https", "on-6.6.6.6"),
    ("x-url-scheme", "https-6.6.6.6"),
    ("x-host", "evil-6.6.6.6"),
    ("x-original-host", "evil-6.6.6.6"),
    ("x-original-uri", "/6.6.6.6"),
    ("x-remote-ip", "6.6.6.6"),
    ("x-remote-addr", "6.6.6.6"),
    ("x-proxyuser-ip", "6.6.6.6"),
    ("forwarded-for", "6.6.6.6"),
    ("x-envoy-original-path", "/6.6.6.6"),
    ("via", "1.1 evil-6.6.6.6"),
    ("proxy", "http://6.6.6.6:3128"),
    ("forwarded", "for=6.6.6.6;proto=https"),
    ("x-real-ip", "6.6.6.6"),
    ("x-forwarded-proto", "https-6.6.6.6"),
    ("x-forwarded-host", "evil-6.6.6.6"),
    ("x-forwarded-prefix", "/6.6.6.6"),
    ("x_forwarded_for", "6.6.6.6"),
];

/// The headers the waifu received, as its JSON echo lists them.
async fn echoed(orch: &Orch, source: &str, method: Method, extra: &[(&str, &str)]) -> Value {
    let mut headers = vec![("host", "localhost")];
    headers.extend_from_slice(extra);
    let body = match method {
        Method::POST => Bytes::from_static(b"a body"),
        _ => Bytes::new(),
    };
    let r = send_from(
        Some(source.parse().unwrap()),
        orch.public,
        method,
        "/w/headers",
        &headers,
        body,
    )
    .await
    .expect("public listener reachable");
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.json()["headers"].clone()
}

/// The same over HTTP/2 (prior knowledge).
async fn echoed_h2(orch: &Orch, extra: &[(&str, &str)]) -> Value {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let mut req = Request::get(format!("http://localhost:{}/w/headers", orch.public.port()));
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let r = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice::<Value>(&body).unwrap()["headers"].clone()
}

fn assert_none_forged(h: &Value, how: &str) {
    let all = h.to_string();
    assert!(
        !all.contains("6.6.6"),
        "{how}: a client's value reached the waifu: {h}"
    );
    for (name, _) in FORGED {
        let ours = [
            "x-forwarded-for",
            "x-real-ip",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-prefix",
            "x-forwarded-uri",
        ];
        if !ours.contains(&name) {
            assert!(
                h.get(name).is_none(),
                "{how}: {name} reached the waifu: {h}"
            );
        }
    }
}

#[tokio::test]
async fn no_client_poses_as_a_proxy_and_a_trusted_one_keeps_its_chain() {
    let orch = harness::start(
        &unique_db("forwarding"),
        &["--trusted-proxies", "127.0.0.2, 10.0.0.0/8"],
    )
    .await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;
    // From an address nobody trusts: over the fast path (no body), hyper's
    // (a body) and HTTP/2, nothing of the client's reaches the waifu.
    for method in [Method::GET, Method::POST] {
        let h = echoed(&orch, "127.0.0.1", method.clone(), &FORGED).await;
        assert_none_forged(&h, method.as_str());
        assert_eq!(h["x-forwarded-for"], json!(["127.0.0.1"]), "{h}");
        assert_eq!(h["x-real-ip"], json!(["127.0.0.1"]), "{h}");
        assert_eq!(h["x-forwarded-proto"], json!(["http"]), "{h}");
    }
    let h = echoed_h2(&orch, &FORGED).await;
    assert_none_forged(&h, "h2");
    assert_eq!(h["x-forwarded-for"], json!(["127.0.0.1"]), "{h}");

    // From a trusted load balancer: its chain is kept and the peer
    // appended; the client is the rightmost address it does not trust.
    let chain = [
        ("x-forwarded-for", "6.6.6.1, 198.51.100.7, 10.1.2.3"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-port", "6661"),
    ];
    for method in [Method::GET, Method::POST] {
        let h = echoed(&orch, "127.0.0.2", method, &chain).await;
        assert_eq!(
            h["x-forwarded-for"],
            json!(["6.6.6.1, 198.51.100.7, 10.1.2.3, 127.0.0.2"]),
            "{h}"
        );
        assert_eq!(h["x-real-ip"], json!(["198.51.100.7"]), "{h}");
        assert_eq!(h["x-forwarded-proto"], json!(["https"]), "{h}");
        assert!(h.get("x-forwarded-port").is_none(), "{h}");
    }
    orch.stop().await.unwrap();
}

/// The body of a raw response, its chunks joined if it is chunked.
fn raw_body(response: &str) -> String {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {response:?}"));
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    out
}

/// A client may spell field names in any case; the HTTP/1.1 fast path
/// reads them as the client sent them, so every rule about them must hold
/// whatever the case: forged fields are dropped, the fields `Connection`
/// names too, cookies are joined, a valid `traceparent` and a sane
/// `X-Request-Id` are kept, `Host` is the one routed by, and two `Host`
/// fields in different cases are two.
#[tokio::test]
async fn field_names_in_any_case_are_read_alike_on_the_fast_path() {
    let orch = harness::start(&unique_db("fieldcase"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;
    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut request = String::from("GET /w/headers HTTP/1.1\r\nHOST: LocalHost\r\n");
    for (i, (name, value)) in FORGED.iter().enumerate() {
        let name = waifus_testkit::http::mixed_case(name, i);
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "CONNECTION: close, X-Secret-Thing\r\nX-SECRET-THING: 6.6.6.6\r\nCookie: a=1\r\n\
         COOKIE: b=2\r\nTraceParent: {PARENT}\r\nX-Request-ID: abc-1\r\nx-request-id: def-2\r\n\
         Content-LENGTH: 0\r\nX-Kept: yes\r\n\r\n"
    ));
    let response = harness::raw(orch.public, request.as_bytes()).await;
    assert_eq!(harness::raw_status(&response), 200, "{response}");
    let echo: Value = serde_json::from_str(&raw_body(&response)).unwrap();
    let h = &echo["headers"];
    assert_none_forged(h, "mixed case");
    assert!(h.get("x-secret-thing").is_none(), "{h}");
    assert_eq!(h["x-forwarded-for"], json!(["127.0.0.1"]), "{h}");
    assert_eq!(h["x-real-ip"], json!(["127.0.0.1"]), "{h}");
    assert_eq!(h["host"], json!(["localhost"]), "{h}");
    assert_eq!(h["cookie"], json!(["a=1; b=2"]), "{h}");
    assert_eq!(h["traceparent"], json!([PARENT]), "{h}");
    assert_eq!(h["x-request-id"], json!(["abc-1"]), "{h}");
    assert_eq!(h["x-kept"], json!(["yes"]), "{h}");
    assert_eq!(h["content-length"], json!(["0"]), "{h}");

    let twice = "GET /w/headers HTTP/1.1\r\nHost: localhost\r\nHOST: localhost\r\n\
                 Connection: close\r\n\r\n";
    let response = harness::raw(orch.public, twice.as_bytes()).await;
    assert_eq!(harness::raw_status(&response), 400, "{response}");
    orch.stop().await.unwrap();
}

/// Behind a load balancer listed in `TRUSTED_PROXIES`, the internal API
/// counts and records the address it names; anyone else's claim is
/// ignored.
#[tokio::test]
async fn the_internal_api_names_the_client_a_trusted_balancer_names() {
    let orch = harness::start(
        &unique_db("trustedapi"),
        &["--trusted-proxies", "127.0.0.2"],
    )
    .await;
    let w = TestWaifu::start("w").await;
    let (status, _) = orch
        .hello(json!({"name": "w", "host": w.host(), "secret": "right"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let wrong = Bytes::from(json!({"name": "w", "host": w.host(), "secret": "wrong"}).to_string());
    for source in ["127.0.0.2", "127.0.0.1"] {
        let r = send_from(
            Some(source.parse().unwrap()),
            orch.internal,
            Method::POST,
            "/__internal/hello",
            &[("x-forwarded-for", "203.0.113.5")],
            wrong.clone(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
    let (_, incidents) = orch
        .internal_json(Method::GET, "/__internal/incidents", String::new())
        .await;
    let sources: Vec<&str> = incidents
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "hello_wrong_secret")
        .map(|i| i["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["127.0.0.1", "203.0.113.5"]);
    orch.stop().await.unwrap();
}

/// `Host` reaches the waifu canonical, however the client spelled it, over
/// HTTP/1.1 and HTTP/2: lower case, no trailing dot, the listener's port or
/// none.
#[tokio::test]
async fn host_arrives_canonical() {
    let orch = harness::start(&unique_db("canonicalhost"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({"http://hc.test": "/"}))
        .await;
    let port = orch.public.port();
    let listener_port = format!("hc.test:{port}");
    let spelled = [
        ("hc.test:0", "hc.test".to_owned()),
        ("hc.test:", "hc.test".to_owned()),
        ("HC.TEST", "hc.test".to_owned()),
        ("hc.test.", "hc.test".to_owned()),
        ("Hc.Test.:1", "hc.test".to_owned()),
        (listener_port.as_str(), listener_port.clone()),
    ];
    for (host, want) in &spelled {
        let r = orch.get(host, "/x").await;
        assert_eq!(r.status, StatusCode::OK, "{host}");
        let h = &r.json()["headers"];
        assert_eq!(h["host"], json!([want]), "{host}: {h}");
        assert_eq!(h["x-forwarded-host"], json!([want]), "{host}: {h}");
    }
    // localhost:99999 names no valid port: the main domain, canonical.
    let r = orch.get("localhost:99999", "/w/x").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["headers"]["host"], json!(["localhost"]));
    // HTTP/2's :authority likewise.
    for authority in ["HC.TEST.", "hc.test:0"] {
        let uri = format!("http://{authority}/x");
        let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
        let stream = tokio::net::TcpStream::connect(orch.public).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let r = send.send_request(req).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{authority}");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let echo: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo["headers"]["host"], json!(["hc.test"]), "{authority}");
    }
    orch.stop().await.unwrap();
}

/// Over HTTP/2 each cookie may be a field of its own (RFC 9113 §8.2.3);
/// the HTTP/1.1 waifu gets them as one `Cookie` field.
#[tokio::test]
async fn http2_cookies_arrive_as_one_field() {
    let orch = harness::start(&unique_db("h2cookies"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;
    let h = echoed_h2(&orch, &[("cookie", "a=1"), ("cookie", "b=2")]).await;
    assert_eq!(h["cookie"], json!(["a=1; b=2"]), "{h}");
    orch.stop().await.unwrap();
}

/// `CONNECT` is refused and its connection closed, on every way in.
#[tokio::test]
async fn connect_is_refused_and_the_connection_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let orch = harness::start(&unique_db("connect"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({"http://w.test": "/"}))
        .await;
    for request in [
        "CONNECT w.test:443 HTTP/1.1\r\nHost: w.test:443\r\n\r\n",
        "CONNECT localhost:80 HTTP/1.1\r\nHost: localhost\r\n\r\nGET /w/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /w/x HTTP/1.1\r\nHost: localhost\r\n\r\nCONNECT w.test:443 HTTP/1.1\r\nHost: w.test\r\n\r\nGET /w/y HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(orch.public).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        // The server closes: read_to_end ends well before the timeout.
        tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("the connection was closed")
            .unwrap();
        let out = String::from_utf8_lossy(&out);
        let statuses: Vec<&str> = out
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| &out[i..i + 12])
            .collect();
        let connect_at = request.find("CONNECT").unwrap();
        let before = usize::from(connect_at > 0);
        assert_eq!(statuses.len(), before + 1, "{out}");
        assert!(statuses[before].starts_with("HTTP/1.1 400"), "{out}");
        assert!(
            out.to_ascii_lowercase().contains("connection: close"),
            "{out}"
        );
    }
    // Nothing after a CONNECT reached the waifu.
    let seen = w.seen.lock().unwrap().clone();
    assert_eq!(seen, ["/x"], "{seen:?}");
    orch.stop().await.unwrap();
}

/// What a waifu sees of a bind and of the main domain: the bind's root is
/// exactly its target (a framework with strict trailing slashes routes
/// `POST /link`, not `/link/`), anything under it is `{target}{rest}`, and
/// `X-Forwarded-Uri` is the path and query the client asked for.
#[tokio::test]
async fn a_binds_root_is_exactly_its_target_and_the_public_uri_is_forwarded() {
    let orch = harness::start(&unique_db("bindroot"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register(
        "w",
        &w.host(),
        json!({"http://link.test": "/link", "http://app.test/app": "/v1"}),
    )
    .await;
    // (host, method, public target, target the waifu gets, prefix, uri)
    let cases = [
        ("link.test", Method::POST, "/", "/link", None, "/"),
        (
            "link.test",
            Method::GET,
            "/?q=1",
            "/link?q=1",
            None,
            "/?q=1",
        ),
        ("link.test", Method::GET, "/abc", "/link/abc", None, "/abc"),
        (
            "link.test",
            Method::GET,
            "/abc/",
            "/link/abc/",
            None,
            "/abc/",
        ),
        ("app.test", Method::GET, "/app", "/v1", Some("/app"), "/app"),
        (
            "app.test",
            Method::GET,
            "/app/",
            "/v1",
            Some("/app"),
            "/app/",
        ),
        (
            "app.test",
            Method::GET,
            "/app/x?y",
            "/v1/x?y",
            Some("/app"),
            "/app/x?y",
        ),
        ("localhost", Method::GET, "/w", "/", Some("/w"), "/w"),
        ("localhost", Method::GET, "/w/", "/", Some("/w"), "/w/"),
        (
            "localhost",
            Method::GET,
            "/w/a/b?c=d",
            "/a/b?c=d",
            Some("/w"),
            "/w/a/b?c=d",
        ),
        // The path as checked (dot segments resolved), not as spelled.
        (
            "localhost",
            Method::GET,
            "/w/a/../b",
            "/b",
            Some("/w"),
            "/w/b",
        ),
    ];
    for (host, method, target, want, prefix, uri) in cases {
        let r = orch
            .request(method.clone(), host, target, &[], Bytes::new())
            .await;
        assert_eq!(r.status, StatusCode::OK, "{host}{target}");
        let echo = r.json();
        assert_eq!(echo["method"], method.as_str(), "{host}{target}");
        assert_eq!(echo["target"], want, "{host}{target}");
        let h = &echo["headers"];
        assert_eq!(h["x-forwarded-uri"], json!([uri]), "{host}{target}: {h}");
        match prefix {
            Some(p) => assert_eq!(h["x-forwarded-prefix"], json!([p]), "{host}{target}"),
            None => assert!(h.get("x-forwarded-prefix").is_none(), "{host}{target}: {h}"),
        }
    }
    orch.stop().await.unwrap();
}
