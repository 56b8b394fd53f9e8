//! Upgrades, h2c, oversized heads, slow and idle clients, the connection limit.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{self, raw, raw_status};
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

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
