//! The public listener's own HTTP/1.1 loop (requests without a body) and
//! its hand-off to hyper (everything else), over raw sockets: how responses
//! are framed, a connection changing hands mid-stream, and draining.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness;
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

/// One response as it came over the wire.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Splits what came back on one connection into its responses; `head[i]`
/// says whether request `i` was a HEAD. Panics on bad framing.
fn split(mut bytes: &[u8], head: &[bool]) -> Vec<Raw> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut fields);
        let httparse::Status::Complete(n) = r.parse(bytes).expect("a response head") else {
            panic!(
                "incomplete response head: {:?}",
                String::from_utf8_lossy(bytes)
            );
        };
        let status = r.code.unwrap();
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8_lossy(h.value).into_owned();
                (h.name.to_ascii_lowercase(), value)
            })
            .collect();
        bytes = &bytes[n..];
        let raw = Raw {
            status,
            headers,
            body: Vec::new(),
        };
        let bodyless = head.get(out.len()).copied().unwrap_or(false)
            || status == 204
            || status == 304
            || status < 200;
        let body = if bodyless {
            Vec::new()
        } else if let Some(len) = raw.header("content-length") {
            let len: usize = len.parse().unwrap();
            let (body, rest) = bytes.split_at(len);
            bytes = rest;
            body.to_vec()
        } else if raw.header("transfer-encoding") == Some("chunked") {
            let mut body = Vec::new();
            loop {
                let line_end = bytes.windows(2).position(|w| w == b"\r\n").unwrap();
                let size = std::str::from_utf8(&bytes[..line_end]).unwrap();
                let size = usize::from_str_radix(size, 16).unwrap();
                bytes = &bytes[line_end + 2..];
                if size == 0 {
                    assert!(bytes.starts_with(b"\r\n"), "no trailer block");
                    bytes = &bytes[2..];
                    break;
                }
                body.extend_from_slice(&bytes[..size]);
                assert_eq!(&bytes[size..size + 2], b"\r\n", "chunk not closed");
                bytes = &bytes[size + 2..];
            }
            body
        } else {
            std::mem::take(&mut bytes).to_vec()
        };
        out.push(Raw { body, ..raw });
    }
    out
}

/// Sends `request`, reads until the server closes (at most 10 s).
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the connection was closed")
        .unwrap();
    out
}

/// Reads one response with a Content-Length from a connection kept open.
async fn read_one(stream: &mut TcpStream) -> Raw {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("a response")
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut fields);
        if let Ok(httparse::Status::Complete(head)) = r.parse(&got) {
            let len = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |h| {
                    std::str::from_utf8(h.value).unwrap().parse().unwrap()
                });
            if got.len() >= head + len {
                assert_eq!(got.len(), head + len, "more than one response");
                return split(&got, &[false]).pop().unwrap();
            }
        }
    }
}

/// Statuses without a body get no framing fields, HEAD keeps the length
/// the GET would have, an unknown length is chunked, every response is
/// dated, and `Connection: close` is honoured and announced.
#[tokio::test]
async fn responses_are_framed_for_http_1_1() {
    let orch = harness::start(&unique_db("h1frame"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;
    // Lets the streaming route send everything at once.
    w.release.notify_one();
    let requests = [
        "GET /w/status?code=204 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /w/status?code=304 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "HEAD /w/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /w/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /w/stream HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /w/status?code=418 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /w/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ];
    let got = exchange(orch.public, requests.concat().as_bytes()).await;
    let got = split(&got, &[false, false, true, false, false, false, false]);
    let statuses: Vec<u16> = got.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [204, 304, 200, 200, 200, 418, 200], "{got:?}");
    for r in &got {
        assert!(r.header("date").is_some(), "no date: {r:?}");
    }
    for r in &got[..2] {
        assert_eq!(r.header("content-length"), None, "{r:?}");
        assert_eq!(r.header("transfer-encoding"), None, "{r:?}");
    }
    let head = &got[2];
    assert!(head.body.is_empty());
    let length: usize = head.header("content-length").unwrap().parse().unwrap();
    // The echo waifu's body names the method: one byte longer for HEAD.
    assert_eq!(length, got[3].body.len() + 1, "HEAD's length is the GET's");
    let stream = &got[4];
    assert_eq!(stream.header("transfer-encoding"), Some("chunked"));
    assert_eq!(stream.body.len(), 48 * 64 * 1024);
    assert!(stream.body.iter().all(|&b| b == b'a'));
    assert_eq!(got[5].body, b"status body");
    assert_eq!(got[5].header("content-length"), Some("11"));
    let last = &got[6];
    assert_eq!(last.header("connection"), Some("close"));
    assert_eq!(last.header("x-hop"), None, "a hop-by-hop field leaked");
    let echoed: serde_json::Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(echoed["target"], "/x");
    assert_eq!(echoed["headers"]["content-length"], json!(["0"]));
    orch.stop().await.unwrap();
}

/// A connection served by the fast loop is handed to hyper by the first
/// request it leaves alone (an upgrade, HTTP/1.0), with nothing lost.
#[tokio::test]
async fn a_connection_changes_hands_mid_stream() {
    let orch = harness::start(&unique_db("h1handoff"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;

    let mut s = TcpStream::connect(orch.public).await.unwrap();
    s.write_all(b"GET /w/first HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let first = read_one(&mut s).await;
    assert_eq!(first.status, 200);
    harness::upgrade_and_echo(&mut s, "/w/ws", b"through the tunnel").await;

    // HTTP/1.0 without keep-alive: answered, then closed; a request
    // pipelined before it on the fast loop is answered first.
    let got = exchange(
        orch.public,
        b"GET /w/a HTTP/1.1\r\nHost: localhost\r\n\r\nGET /w/b HTTP/1.0\r\nHost: localhost\r\n\r\n",
    )
    .await;
    let got = split(&got, &[false, false]);
    assert_eq!(got.len(), 2, "{got:?}");
    let targets: Vec<serde_json::Value> = got
        .iter()
        .map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["target"].clone())
        .collect();
    assert_eq!(targets, [json!("/a"), json!("/b")]);
    assert_eq!(
        w.seen.lock().unwrap().clone(),
        ["/first", "/ws", "/a", "/b"]
    );
    orch.stop().await.unwrap();
}

/// On shutdown every request is answered with `Connection: close`: a
/// request in flight, and one sent on an idle keep-alive connection within
/// the grace the drain gives it (a client that had just picked it from its
/// pool); an idle connection that stays idle is then closed.
#[tokio::test]
async fn draining_closes_idle_connections_and_finishes_in_flight_ones() {
    let orch = harness::start(&unique_db("h1drain"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;

    let mut idle = TcpStream::connect(orch.public).await.unwrap();
    let mut reused = TcpStream::connect(orch.public).await.unwrap();
    for s in [&mut idle, &mut reused] {
        s.write_all(b"GET /w/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_one(s).await.status, 200);
    }
    let mut busy = TcpStream::connect(orch.public).await.unwrap();
    busy.write_all(b"GET /w/slow?ms=1500 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = tokio::spawn(orch.stop());

    // A request on a kept-alive connection just after the drain began is
    // answered, and told to go elsewhere next time.
    tokio::time::sleep(Duration::from_millis(100)).await;
    reused
        .write_all(b"GET /w/again HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), reused.read_to_end(&mut out))
        .await
        .expect("the reused connection was closed after its answer")
        .unwrap();
    let got = split(&out, &[false]);
    assert_eq!(got.len(), 1, "{:?}", String::from_utf8_lossy(&out));
    assert_eq!(got[0].status, 200);
    assert_eq!(got[0].header("connection"), Some("close"));

    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle connection stayed open");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));

    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), busy.read_to_end(&mut out))
        .await
        .expect("the busy connection was closed after its answer")
        .unwrap();
    let got = split(&out, &[false]);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].status, 200);
    assert_eq!(got[0].body, b"slept 1500");
    assert_eq!(got[0].header("connection"), Some("close"));
    stopping.await.unwrap().unwrap();
}
