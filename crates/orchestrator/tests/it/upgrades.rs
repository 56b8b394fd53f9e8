//! Protocol switches through the proxy, tried the way attack tools try
//! them: h2c upgrade smuggling (BishopFox's h2csmuggler sends an
//! `Upgrade: h2c` request, then speaks HTTP/2 through the tunnel it hopes
//! for), a waifu's "fake 101" (a handler answering status 101 while its
//! server goes on reading HTTP/1.1), and an upgrade request that is
//! refused, followed by a smuggling pair on the same connection.
//!
//! The waifu here is a bare socket that answers `101` to any `Upgrade: h2c`
//! it receives, as hypercorn does by default, and records every byte.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::h2::{PREFACE, block, frame};
use crate::harness::{self, Orch};
use crate::pg::unique_db;
use crate::tls::{self, TestCa, Trust};
use crate::waifu::TestWaifu;

/// A waifu on a bare socket; see the module's doc.
struct RawWaifu {
    addr: SocketAddr,
    /// Every byte received, on every connection.
    received: Arc<Mutex<Vec<u8>>>,
}

impl RawWaifu {
    async fn start() -> RawWaifu {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_raw(stream, log.clone()));
            }
        });
        RawWaifu { addr, received }
    }

    /// What it received, lowercased for searching.
    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).to_lowercase()
    }
}

/// One connection: HTTP/1.1 requests until a switch, then bytes recorded.
async fn serve_raw(mut s: TcpStream, log: Arc<Mutex<Vec<u8>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // A whole head (bodies are not used here).
        let (len, path, h2c) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut fields);
            if let Ok(httparse::Status::Complete(len)) = req.parse(&buf) {
                let h2c = req.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("upgrade")
                        && String::from_utf8_lossy(h.value)
                            .to_lowercase()
                            .contains("h2c")
                });
                break (len, req.path.unwrap_or("").to_owned(), h2c);
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    log.lock().unwrap().extend_from_slice(&chunk[..n]);
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        };
        buf.drain(..len);
        let answer: &[u8] = if path == "/__internal/health" {
            b"HTTP/1.1 204 No Content\r\n\r\n"
        } else if h2c || path.ends_with("/h2c101") {
            // An h2c server switches, sends its SETTINGS and reads HTTP/2.
            let _ = s
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
                .await;
            let _ = s.write_all(&frame(0x4, 0, 0, &[])).await;
            while let Ok(n) = s.read(&mut chunk).await {
                if n == 0 {
                    return;
                }
                log.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
            return;
        } else if path.ends_with("/fake101") {
            // Status 101 from a handler; the server keeps reading HTTP/1.1.
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        } else if path.contains("__internal") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\ninternal secret"
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain"
        };
        if s.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// What h2csmuggler sends once it believes it is speaking HTTP/2 to the
/// waifu: the preface, SETTINGS, and a GET for an internal path.
fn h2_smuggled_request(authority: &str) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    let fields = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", authority),
        (":path", "/__internal/secret"),
    ];
    out.extend(frame(0x1, 0x5, 3, &block(&fields)));
    out
}

/// Reads one response head and as much body as its Content-Length says.
async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !got.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.unwrap_or(0) == 0 {
                break;
            }
            got.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&got).to_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        let _ = s.read_exact(&mut body).await;
        got.extend_from_slice(&body);
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a response within 10 s");
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads until the server closes (or 10 s pass).
async fn read_rest<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The upgrade headers h2csmuggler and friends send, and variations.
const H2C_UPGRADES: &[&str] = &[
    // h2csmuggler's own request.
    "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    // HTTP2-Settings not named in Connection (it was forwarded as is).
    "Connection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    "Connection: upgrade\r\nUpgrade: H2C\r\n",
    "Upgrade: h2c\r\nConnection: keep-alive, Upgrade\r\n",
    // Hidden in a list with the one token that is relayed.
    "Connection: Upgrade\r\nUpgrade: websocket, h2c\r\nSec-WebSocket-Version: 13\r\n\
     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    "Connection: Upgrade\r\nUpgrade: h2c\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
];

/// Tries every h2c upgrade on `connect()`'s connections, as h2csmuggler
/// would: the request, then HTTP/2 whatever the answer.
async fn try_h2c_smuggling<S, F, Fut>(host: &str, mut connect: F)
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    for upgrade in H2C_UPGRADES {
        let mut s = connect().await;
        let request = format!("GET /raw/ HTTP/1.1\r\nHost: {host}\r\n{upgrade}\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let answer = read_response(&mut s).await;
        // Served as a plain request.
        assert!(answer.starts_with("HTTP/1.1 200"), "{upgrade}: {answer}");
        assert!(answer.ends_with("plain"), "{upgrade}: {answer}");
        let _ = s.write_all(&h2_smuggled_request(host)).await;
        let rest = read_rest(&mut s).await;
        assert!(!rest.contains("internal secret"), "{upgrade}: {rest}");
        assert!(!rest.starts_with("HTTP/1.1 101"), "{upgrade}: {rest}");
    }
}

/// Nothing after an h2c upgrade request reaches the waifu but that
/// request, as a plain one; the same over TLS.
#[tokio::test]
async fn h2c_upgrades_are_never_forwarded_nor_tunnelled() {
    let ca = TestCa::new();
    let dir = harness::temp_dir("certs");
    tls::write_pair(&dir, "edge.example.com", &ca.leaf(&["edge.example.com"]));
    let orch = harness::start(
        &unique_db("h2c_smuggle"),
        &[
            "--cert-dir",
            dir.to_str().unwrap(),
            "--main-domain",
            "edge.example.com",
        ],
    )
    .await;
    let waifu = RawWaifu::start().await;
    orch.register("raw", &waifu.addr.to_string(), json!({}))
        .await;

    let public = orch.public;
    try_h2c_smuggling("edge.example.com", || async move {
        TcpStream::connect(public).await.unwrap()
    })
    .await;
    let https = orch.https.unwrap();
    let trust = Trust::Roots(vec![ca.cert.clone()]);
    try_h2c_smuggling("edge.example.com", || {
        let trust = trust.clone();
        async move {
            tls::connect(https, "edge.example.com", &trust, &[b"http/1.1"])
                .await
                .unwrap()
        }
    })
    .await;

    let received = waifu.received();
    let plain = received.matches("get / http/1.1").count();
    assert_eq!(
        plain,
        2 * H2C_UPGRADES.len(),
        "each request arrived, plainly"
    );
    for never in [
        "h2c",
        "http2-settings",
        "upgrade:",
        "pri * http/2.0",
        "__internal/secret",
    ] {
        assert!(
            !received.contains(never),
            "the waifu received {never:?}: {received}"
        );
    }
    orch.stop().await.unwrap();
}

/// A `101` that does not complete the WebSocket handshake the proxy sent
/// (no or a wrong `Sec-WebSocket-Accept`, or another protocol) is a 502,
/// and nothing the client sends afterwards reaches the waifu unchecked.
#[tokio::test]
async fn only_a_completed_websocket_handshake_is_tunnelled() {
    let orch = harness::start(&unique_db("fake101"), &[]).await;
    let waifu = RawWaifu::start().await;
    orch.register("raw", &waifu.addr.to_string(), json!({}))
        .await;
    for path in ["/raw/fake101", "/raw/h2c101"] {
        let mut s = TcpStream::connect(orch.public).await.unwrap();
        s.write_all(harness::websocket_request(path).as_bytes())
            .await
            .unwrap();
        let answer = read_response(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 502"), "{path}: {answer}");
        // What a tunnel would have carried to a server still reading HTTP.
        let _ = s
            .write_all(b"GET /__internal/secret HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        let rest = read_rest(&mut s).await;
        assert!(!rest.contains("internal secret"), "{path}: {rest}");
    }
    let received = waifu.received();
    assert!(!received.contains("__internal/secret"), "{received}");
    // The handshake itself was sent on, as the proxy writes it.
    assert!(
        received.contains("upgrade: websocket\r\nconnection: upgrade"),
        "{received}"
    );
    orch.stop().await.unwrap();
}

/// A refused upgrade leaves the connection plain HTTP/1.1, and strictly
/// checked: a CL.TE pair after it is refused, and the request hidden in it
/// never reaches the waifu.
#[tokio::test]
async fn a_refused_upgrade_keeps_the_connection_checked() {
    let orch = harness::start(&unique_db("refused_upgrade"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;
    for upgrade in [
        harness::websocket_request("/w/no-upgrade"),
        "GET /w/no-upgrade HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            .to_owned(),
    ] {
        let mut s = TcpStream::connect(orch.public).await.unwrap();
        s.write_all(upgrade.as_bytes()).await.unwrap();
        let answer = read_response(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let smuggle = "POST /w/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\
                       Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
                       GET /w/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
        s.write_all(smuggle.as_bytes()).await.unwrap();
        let rest = read_rest(&mut s).await;
        assert!(rest.starts_with("HTTP/1.1 400"), "{rest}");
        assert_eq!(rest.matches("HTTP/1.1 ").count(), 1, "{rest}");
    }
    let seen = w.seen.lock().unwrap().clone();
    assert_eq!(seen, ["/no-upgrade", "/no-upgrade"]);
    orch.stop().await.unwrap();
}

/// A WebSocket through the TLS listener: the handshake completes and the
/// tunnel carries bytes both ways.
#[tokio::test]
async fn websockets_work_over_tls() {
    let ca = TestCa::new();
    let dir = harness::temp_dir("certs");
    tls::write_pair(&dir, "ws.example.com", &ca.leaf(&["ws.example.com"]));
    let orch: Orch = harness::start(
        &unique_db("ws_tls"),
        &[
            "--cert-dir",
            dir.to_str().unwrap(),
            "--main-domain",
            "ws.example.com",
        ],
    )
    .await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;
    let trust = Trust::Roots(vec![ca.cert.clone()]);
    let mut s = tls::connect(
        orch.https.unwrap(),
        "ws.example.com",
        &trust,
        &[b"http/1.1"],
    )
    .await
    .unwrap();
    let request = harness::websocket_request("/w/ws").replace("localhost", "ws.example.com");
    s.write_all(request.as_bytes()).await.unwrap();
    let answer = read_response(&mut s).await.to_lowercase();
    assert!(answer.starts_with("http/1.1 101"), "{answer}");
    // Bytes that are no HTTP/1 (a masked frame with a bare LF) pass.
    let message = Bytes::from_static(b"\x81\x85\x37\xfa\x21\x3d\n\r\x00 through TLS");
    s.write_all(&message).await.unwrap();
    let mut echoed = vec![0u8; message.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, message);
    orch.stop().await.unwrap();
}
