//! The public proxy over real sockets.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{self, raw, raw_status};
use crate::pg::unique_db;
use crate::waifu::{ChannelBody, TestWaifu};

#[tokio::test]
async fn main_domain_strips_the_prefix_and_sets_forwarded_headers() {
    let orch = harness::start(&unique_db("maindomain"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;

    let r = orch
        .request(
            Method::GET,
            "LocalHost:8080",
            "/w/rest/of/it?q=1&r=%20",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-prefix", "/evil"),
                ("x-original-url", "/__internal/health"),
                ("x-rewrite-url", "/__internal/health"),
                ("connection", "x-drop-me"),
                ("x-drop-me", "1"),
                ("x-request-id", "req-42"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let echo = r.json();
    assert_eq!(echo["target"], "/rest/of/it?q=1&r=%20");
    let h = &echo["headers"];
    // Canonical: lower case, and 8080 is not the listener's port.
    assert_eq!(h["host"], json!(["localhost"]));
    // The client's chain is not believed: nobody is a trusted proxy.
    assert_eq!(h["x-forwarded-for"], json!(["127.0.0.1"]));
    assert_eq!(h["x-forwarded-proto"], json!(["http"]));
    assert_eq!(h["x-forwarded-host"], json!(["localhost"]));
    assert_eq!(h["x-forwarded-prefix"], json!(["/w"]));
    assert_eq!(h["x-request-id"], json!(["req-42"]));
    assert!(h.get("x-original-url").is_none(), "{h}");
    assert!(h.get("x-rewrite-url").is_none(), "{h}");
    assert!(h.get("x-drop-me").is_none(), "{h}");
    // The waifu's hop-by-hop headers do not reach the client.
    assert!(!r.headers.contains_key("x-hop"), "{:?}", r.headers);

    let echo = orch.get("localhost", "/w").await.json();
    assert_eq!(echo["target"], "/");
    let h = &echo["headers"];
    let id = h["x-request-id"][0].as_str().unwrap();
    assert_eq!(id.len(), 32, "a request id is generated");
    assert_eq!(orch.get("localhost", "/w/").await.json()["target"], "/");
    assert_eq!(
        orch.get("localhost", "/w?x=1").await.json()["target"],
        "/?x=1"
    );

    // Other hosts and unknown names are 404 with a JSON error.
    for (host, target) in [
        ("other.test", "/w/"),
        ("localhost", "/nobody/x"),
        ("localhost", "/"),
    ] {
        let r = orch.get(host, target).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{host}{target}");
        assert_eq!(r.json()["error"], "not_found");
        // A host nobody serves says what was expected instead.
        let message = r.json()["message"].as_str().unwrap().to_owned();
        assert_eq!(
            message.contains("MAIN_DOMAIN"),
            host == "other.test",
            "{host}{target}: {message}"
        );
    }
    orch.stop().await.unwrap();
}

/// HEAD gets the waifu's headers (with its Content-Length) and no body, and
/// the kept-alive connections on both sides stay usable afterwards.
#[tokio::test]
async fn head_requests_get_headers_only() {
    let orch = harness::start(&unique_db("head"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;
    let get = orch.get("localhost", "/w/x").await;
    assert_eq!(get.status, StatusCode::OK);
    for _ in 0..3 {
        let head = orch
            .request(Method::HEAD, "localhost", "/w/x", &[], Bytes::new())
            .await;
        assert_eq!(head.status, StatusCode::OK);
        assert!(head.body.is_empty());
        // The echo waifu's body names the method: one byte longer for HEAD.
        let length: usize = head.headers["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, get.body.len() + 1);
        let again = orch.get("localhost", "/w/x").await;
        assert_eq!(again.json()["method"], "GET");
        assert_eq!(again.body.len(), get.body.len());
    }
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let orch = harness::start(&unique_db("stream"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;

    // 3 MiB up and back down again.
    let body: Bytes = (0..3 * 1024 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let r = orch
        .request(Method::POST, "localhost", "/w/echo", &[], body.clone())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "echoed body differs");

    // Download: the first MiB arrives while the waifu still holds the rest
    // back; a buffering proxy would deadlock here.
    let mut stream = TcpStream::connect(orch.public).await.unwrap();
    stream
        .write_all(b"GET /w/stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < 1024 * 1024 {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("first MiB must arrive before the rest is released")
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    w.release.notify_one();
    while got.len() < 3 * 1024 * 1024 {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.len() >= 3 * 1024 * 1024, "got {}", got.len());

    // Upload: the waifu echoes each chunk as it arrives; the client sends the
    // second chunk only after the first came back.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let client: Client<_, ChannelBody> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{}/w/echo", orch.public))
        .header("host", "localhost")
        .body(ChannelBody(rx))
        .unwrap();
    let pending = tokio::spawn(client.request(req));
    tx.send(Bytes::from_static(b"first chunk")).await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("response headers before the body is complete")
        .unwrap()
        .unwrap();
    let mut body = response.into_body();
    let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("first chunk echoed while the upload is still open")
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), "first chunk");
    tx.send(Bytes::from_static(b"second")).await.unwrap();
    drop(tx);
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the rest of the body within 10 s")
        .unwrap()
        .to_bytes();
    assert_eq!(rest, "second");
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn binds_route_by_host_and_longest_prefix() {
    let orch = harness::start(&unique_db("binds"), &[]).await;
    let link = TestWaifu::start("link").await;
    let api = TestWaifu::start("api").await;
    orch.register("link", &link.host(), json!({"https://link.waifu": "/link"}))
        .await;
    orch.register(
        "api",
        &api.host(),
        json!({"http://link.waifu/api": "/", "http://x.test/a/b": "/t"}),
    )
    .await;

    let cases = [
        ("link.waifu", "/abc?x=1", "link", "/link/abc?x=1", None),
        // The bind's root is exactly its target.
        ("LINK.waifu:8080", "/", "link", "/link", None),
        ("link.waifu", "/apix", "link", "/link/apix", None),
        ("link.waifu", "/api", "api", "/", Some("/api")),
        (
            "link.waifu",
            "/api/v1/users",
            "api",
            "/v1/users",
            Some("/api"),
        ),
        ("x.test", "/a/b", "api", "/t", Some("/a/b")),
        ("x.test", "/a/b/c", "api", "/t/c", Some("/a/b")),
        ("localhost", "/link/abc", "link", "/abc", Some("/link")),
    ];
    for (host, target, id, want, prefix) in cases {
        let r = orch.get(host, target).await;
        assert_eq!(r.status, StatusCode::OK, "{host}{target}");
        let echo = r.json();
        assert_eq!(echo["id"], id, "{host}{target}");
        assert_eq!(echo["target"], want, "{host}{target}");
        assert_eq!(
            echo["headers"]["x-forwarded-prefix"]
                .get(0)
                .and_then(|v| v.as_str()),
            prefix,
            "{host}{target}"
        );
    }
    // A claimed host does not fall back to the main domain.
    assert_eq!(orch.get("x.test", "/a").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        orch.get("x.test", "/link/x").await.status,
        StatusCode::NOT_FOUND
    );
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn main_domain_star_routes_any_unclaimed_host() {
    let orch = harness::start(&unique_db("star"), &["--main-domain", "*"]).await;
    let w = TestWaifu::start("w").await;
    let b = TestWaifu::start("b").await;
    orch.register("w", &w.host(), json!({})).await;
    orch.register("b", &b.host(), json!({"http://bound.test": "/"}))
        .await;
    for host in ["anything.example", "localhost", "10.1.2.3:99"] {
        let r = orch.get(host, "/w/x").await;
        assert_eq!(r.json()["id"], "w", "{host}");
    }
    assert_eq!(orch.get("bound.test", "/w/x").await.json()["id"], "b");
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn upstream_failures_map_to_502_503_504() {
    let orch = harness::start(&unique_db("failures"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;

    // Slow: 504 after the upstream timeout (2 s in tests).
    let r = orch.get("localhost", "/w/slow?ms=5000").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.json()["error"], "gateway_timeout");
    assert_eq!(
        orch.get("localhost", "/w/slow?ms=10").await.status,
        StatusCode::OK
    );

    // Known but unhealthy: 503 with Retry-After.
    w.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    orch.wait_health("w", StatusCode::SERVICE_UNAVAILABLE).await;
    let r = orch.get("localhost", "/w/x").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(r.json()["error"], "unavailable");

    // Registered but never healthy (nothing listens there).
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let (status, _) = orch
        .hello(json!({"name": "ghost", "host": dead_addr.to_string()}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        orch.get("localhost", "/ghost/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn connect_failure_is_502_and_fast() {
    // Long health interval, so only the proxy can notice the death.
    let orch = harness::start(&unique_db("connfail"), &["--health-interval", "1h"]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;
    w.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    let r = orch.get("localhost", "/w/x").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.json()["error"], "bad_gateway");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The refused connection took the instance out of rotation at once.
    assert_eq!(
        orch.get("localhost", "/w/x").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    orch.stop().await.unwrap();
}

/// Client fields a waifu might trust for the client's address, or read as
/// framing (CGI servers map `_` to `-`), never reach it as sent.
#[tokio::test]
async fn client_fields_a_waifu_might_trust_are_dropped_or_replaced() {
    let orch = harness::start(&unique_db("forged"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;
    let forged = [
        ("x-real-ip", "6.6.6.6"),
        ("true-client-ip", "6.6.6.6"),
        ("x-client-ip", "6.6.6.6"),
        ("cf-connecting-ip", "6.6.6.6"),
        ("transfer_encoding", "chunked"),
        ("x_forwarded_for", "6.6.6.6"),
        ("x_real_ip", "6.6.6.6"),
    ];
    // The fast path (no body) and hyper's (a body).
    for body in [Bytes::new(), Bytes::from_static(b"body")] {
        let method = if body.is_empty() {
            Method::GET
        } else {
            Method::POST
        };
        let r = orch
            .request(method, "localhost", "/w/forged", &forged, body)
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let h = r.json()["headers"].clone();
        assert_eq!(h["x-real-ip"], json!(["127.0.0.1"]), "{h}");
        assert_eq!(h["x-forwarded-for"], json!(["127.0.0.1"]), "{h}");
        for (name, _) in &forged[1..] {
            assert!(h.get(name).is_none(), "{name} reached the waifu: {h}");
        }
    }
    orch.stop().await.unwrap();
}

/// The Host a waifu gets is the authority the request was routed by: an
/// absolute-form target's, not a different Host field's (RFC 9112 §3.2.2),
/// in canonical form.
#[tokio::test]
async fn the_waifu_gets_the_routed_authority_as_host() {
    let orch = harness::start(&unique_db("absolute"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({"http://echo.test": "/"}))
        .await;
    let out = raw(
        orch.public,
        b"GET http://Echo.Test:8080/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&out), 200, "{out}");
    let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
    let echo: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(echo["target"], "/x");
    assert_eq!(echo["headers"]["host"], json!(["echo.test"]));
    assert_eq!(echo["headers"]["x-forwarded-host"], json!(["echo.test"]));
    orch.stop().await.unwrap();
}
