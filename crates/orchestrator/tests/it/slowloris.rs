//! Slow clients: hundreds of connections holding half-sent
//! requests neither starve normal traffic nor stay open past the
//! header-read timeout (default settings: 15 s).

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness;
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

#[tokio::test]
async fn half_sent_requests_neither_starve_others_nor_stay_open() {
    let orch = harness::start(&unique_db("slowloris"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;

    let mut held = Vec::with_capacity(400);
    for i in 0..400 {
        let mut s = TcpStream::connect(orch.public).await.unwrap();
        // Half the connections send a partial head, half a head with no end.
        let partial: &[u8] = if i % 2 == 0 {
            b"GET /w/x HTTP/1.1\r\nHost: loc"
        } else {
            b"GET /w/x HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1\r\n"
        };
        s.write_all(partial).await.unwrap();
        held.push(s);
    }
    let opened = Instant::now();

    let mut latencies = Vec::with_capacity(100);
    for _ in 0..100 {
        let started = Instant::now();
        let r = orch.get("localhost", "/w/x").await;
        assert_eq!(r.status, StatusCode::OK);
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let p95 = latencies[94];
    assert!(p95 < Duration::from_millis(500), "p95 {p95:?}");

    // Every half-sent request is cut off within 65 s of being opened.
    let deadline = opened + Duration::from_secs(65);
    for (i, mut s) in held.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(left, s.read_to_end(&mut sink)).await;
        assert!(closed.is_ok(), "connection {i} still open after 65 s");
    }
    assert!(opened.elapsed() < Duration::from_secs(65));
    orch.stop().await.unwrap();
}
