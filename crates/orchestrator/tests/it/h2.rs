//! HTTP/2 (h2c prior knowledge) oddities, over raw frames so
//! that malformed requests can be sent at all: no client library would.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness;
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How the server answered one request.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// Response headers; the status when it was sent as an indexed field.
    Status(Option<u16>),
    /// RST_STREAM on the request's stream.
    Reset,
    /// GOAWAY, or the connection closed, before an answer.
    Gone,
}

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK: every field as a literal without indexing, new name, no Huffman.
pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, value) in fields {
        b.push(0);
        b.push(u8::try_from(name.len()).unwrap());
        b.extend_from_slice(name.as_bytes());
        b.push(u8::try_from(value.len()).unwrap());
        b.extend_from_slice(value.as_bytes());
    }
    b
}

/// Sends one HEADERS frame (END_STREAM, END_HEADERS) on stream 1.
async fn request(addr: SocketAddr, fields: &[(&str, &str)]) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    request_on(&mut s, fields).await
}

/// As [`request`], on a connection of the caller's (TLS with ALPN h2).
pub async fn request_on<S>(s: &mut S, fields: &[(&str, &str)]) -> Answer
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    out.extend(frame(0x1, 0x5, 1, &block(fields)));
    s.write_all(&out).await.unwrap();
    let read = async {
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                return Answer::Gone;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let (kind, stream) = (
                head[3],
                u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
            );
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return Answer::Gone;
            }
            match (kind, stream) {
                (0x1, 1) => {
                    let status = match payload.first() {
                        Some(b) if (0x88..=0x8e).contains(b) => {
                            Some([200, 204, 206, 304, 400, 404, 500][usize::from(b - 0x88)])
                        }
                        _ => None,
                    };
                    return Answer::Status(status);
                }
                (0x3, 1) => return Answer::Reset,
                (0x7, _) => return Answer::Gone,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer")
}

#[tokio::test]
async fn h2_pseudo_header_oddities_never_reach_a_waifu() {
    let orch = harness::start(&unique_db("h2odd"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;

    let ok = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "localhost"),
        (":path", "/w/ok"),
    ];
    assert_eq!(
        request(orch.public, &ok).await,
        Answer::Status(Some(200)),
        "control"
    );

    let refused: &[(&str, &[(&str, &str)])] = &[
        (
            "path without a leading slash",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "localhost"),
                (":path", "w/x"),
            ],
        ),
        (
            "authority with a slash",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "localhost/w"),
                (":path", "/x"),
            ],
        ),
        (
            "authority with a path-like tail",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "localhost/w/__internal"),
                (":path", "/"),
            ],
        ),
        (
            "two paths",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "localhost"),
                (":path", "/w/a"),
                (":path", "/w/__internal/health"),
            ],
        ),
        (
            "pseudo-header after a field",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "localhost"),
                ("x-a", "1"),
                (":path", "/w/a"),
            ],
        ),
        (
            "no path",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "localhost"),
            ],
        ),
        (
            "unknown pseudo-header",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "localhost"),
                (":path", "/w/a"),
                (":proto", "x"),
            ],
        ),
        (
            "upper-case field name",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "localhost"),
                (":path", "/w/a"),
                ("X-Up", "1"),
            ],
        ),
        (
            "connection-specific field",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "localhost"),
                (":path", "/w/a"),
                ("transfer-encoding", "chunked"),
            ],
        ),
        (
            "space in the path",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "localhost"),
                (":path", "/w/a b"),
            ],
        ),
        (
            "asterisk path",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "localhost"),
                (":path", "*"),
            ],
        ),
        (
            "internal path",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "localhost"),
                (":path", "/w/__internal/health"),
            ],
        ),
        (
            "encoded internal path",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "localhost"),
                (":path", "/w/%5F_Internal/x"),
            ],
        ),
        (
            "absolute path in :path",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "localhost"),
                (":path", "http://localhost/w/__internal"),
            ],
        ),
    ];
    for (what, fields) in refused {
        let answer = request(orch.public, fields).await;
        let success = matches!(answer, Answer::Status(Some(s)) if s < 400);
        assert!(!success, "{what}: {answer:?}");
    }
    assert_eq!(
        request(orch.public, refused[11].1).await,
        Answer::Status(Some(404)),
        "internal paths are 404 over h2 too"
    );
    // Only the control request ever reached the waifu.
    let seen = w.seen.lock().unwrap().clone();
    assert_eq!(seen, ["/ok"]);
    orch.stop().await.unwrap();
}

/// `host` and `:authority` must agree (RFC 9113 §8.3.1): else 400, and the
/// waifu gets the authority it was routed by as its Host.
#[tokio::test]
async fn host_and_authority_must_agree() {
    let orch = harness::start(&unique_db("h2host"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({"http://echo.test": "/"}))
        .await;
    let mismatched = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "localhost"),
        (":path", "/w/mismatch"),
        ("host", "echo.test"),
    ];
    assert_eq!(
        request(orch.public, &mismatched).await,
        Answer::Status(Some(400))
    );
    let port = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "localhost"),
        (":path", "/w/port"),
        ("host", "localhost:1"),
    ];
    assert_eq!(request(orch.public, &port).await, Answer::Status(Some(400)));
    let same = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "echo.test"),
        (":path", "/same"),
        ("host", "Echo.Test"),
    ];
    assert_eq!(request(orch.public, &same).await, Answer::Status(Some(200)));
    let seen = w.seen.lock().unwrap().clone();
    assert_eq!(seen, ["/same"]);
    orch.stop().await.unwrap();
}
