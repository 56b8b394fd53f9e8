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
        ("LINK.waifu:8080", "/", "link", "/link/", None),
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

#[tokio::test]
async fn upgrades_tunnel_only_after_101() {
    let orch = harness::start(&unique_db("upgrade"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;

    let mut s = TcpStream::connect(orch.public).await.unwrap();
    let head = harness::upgrade_and_echo(&mut s, "/w/ws", b"ping through the tunnel").await;
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );

    // A waifu that answers 200 to an upgrade request gets no tunnel: the
    // connection stays HTTP, and the next request on it is proxied (and
    // guarded) like any other.
    let mut s = TcpStream::connect(orch.public).await.unwrap();
    let requests = format!(
        "{}GET /w/__internal/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        harness::websocket_request("/w/no-upgrade")
    );
    s.write_all(requests.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("no upgrade here"), "{out}");
    assert!(out.contains("HTTP/1.1 404"), "{out}");
    assert!(
        w.seen
            .lock()
            .unwrap()
            .iter()
            .all(|t| !t.contains("__internal"))
    );
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn h2c_prior_knowledge_is_proxied() {
    let orch = harness::start(&unique_db("h2c"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;
    let client: Client<_, http_body_util::Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    for (target, want) in [
        ("/w/h2?x=1", StatusCode::OK),
        ("/w/__internal/health", StatusCode::NOT_FOUND),
    ] {
        let req = http::Request::get(format!("http://localhost:{}{target}", orch.public.port()))
            .body(http_body_util::Empty::new())
            .unwrap();
        let r = client.request(req).await.unwrap();
        assert_eq!(r.version(), http::Version::HTTP_2);
        assert_eq!(r.status(), want, "{target}");
        if want == StatusCode::OK {
            let body = tokio::time::timeout(Duration::from_secs(10), r.into_body().collect())
                .await
                .expect("the body within 10 s")
                .unwrap()
                .to_bytes();
            let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(echo["target"], "/h2?x=1");
            assert_eq!(
                echo["headers"]["host"][0],
                format!("localhost:{}", orch.public.port())
            );
        }
    }
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_headers_and_targets_are_refused() {
    let orch = harness::start(&unique_db("limits"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;

    let long_target = format!("/w/{}", "a".repeat(9000));
    let r = raw(
        orch.public,
        format!("GET {long_target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&r), 414, "{}", &r[..r.len().min(200)]);

    let big_header = format!("x-big: {}\r\n", "b".repeat(100 * 1024));
    let r = raw(
        orch.public,
        format!("GET /w/ HTTP/1.1\r\nHost: localhost\r\n{big_header}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&r), 431, "{}", &r[..r.len().min(200)]);

    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let r = raw(
        orch.public,
        format!("GET /w/ HTTP/1.1\r\nHost: localhost\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&r), 431, "{}", &r[..r.len().min(200)]);

    let r = raw(
        orch.public,
        b"GET /w/ HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&r), 400, "missing Host: {r}");
    let r = raw(
        orch.public,
        b"GET /w/ HTTP/1.1\r\nHost: localhost\r\nHost: other\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&r), 400, "two Hosts: {r}");
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn slow_clients_are_timed_out() {
    let orch = harness::start(
        &unique_db("slowclient"),
        &["--header-read-timeout", "500ms"],
    )
    .await;
    for (listener, addr) in [("public", orch.public), ("internal", orch.internal)] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /w/ HTTP/1.1\r\nHost: loc").await.unwrap();
        let mut out = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        assert!(
            closed.is_ok(),
            "{listener}: a half-sent request must be cut off"
        );
    }
    orch.stop().await.unwrap();
}

/// An idle keep-alive connection is closed after the header-read timeout
/// (which also bounds the wait for the next request), and one on which
/// nothing moves at all after `IDLE_TIMEOUT`.
#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let orch = harness::start(
        &unique_db("idleconn"),
        &["--header-read-timeout", "600ms", "--idle-timeout", "1s"],
    )
    .await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;
    let mut s = TcpStream::connect(orch.public).await.unwrap();
    s.write_all(b"GET /w/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle keep-alive connection stayed open");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "closed too early"
    );
    // A connection that never sends anything.
    let mut silent = TcpStream::connect(orch.public).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a silent connection stayed open");
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let orch = harness::start(&unique_db("maxconn"), &["--max-connections", "2"]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;
    // Two idle connections hold both slots.
    let first = TcpStream::connect(orch.public).await.unwrap();
    let second = TcpStream::connect(orch.public).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A third waits in the kernel's backlog: connected, but not served.
    let mut third = TcpStream::connect(orch.public).await.unwrap();
    third
        .write_all(b"GET /w/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let early = tokio::time::timeout(Duration::from_millis(700), third.read(&mut buf)).await;
    assert!(early.is_err(), "a connection beyond the limit was served");
    // A slot frees: the waiting connection is served.
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
        .await
        .expect("served once a slot was free")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(second);
    orch.stop().await.unwrap();
}
