//! What a waifu's hello may ask the proxy to enforce (`limits`), under the
//! operator's `MAX_BODY_SIZE` and `UPSTREAM_TIMEOUT`: bodies over the limit
//! are 413 before anything is sent (declared) or cut before their end
//! (chunked: the waifu sees an aborted request, never a complete-looking
//! truncated one); more requests in flight than allowed are 503
//! `overloaded` at once, exactly, however many come together; a response
//! head slower than the timeout is 504.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::harness::{self, Orch};
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

/// How a chunked upload reached [`RawWaifu`]: its body bytes, and whether
/// its terminating chunk came.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Upload {
    bytes: usize,
    complete: bool,
}

/// A waifu that reads chunked uploads itself and answers only once one is
/// complete, writing down how each ended; health checks get 204.
struct RawWaifu {
    host: String,
    uploads: Arc<Mutex<Vec<Upload>>>,
}

impl RawWaifu {
    async fn start() -> RawWaifu {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let uploads = Arc::new(Mutex::new(Vec::new()));
        let seen = uploads.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut read = BufReader::new(read);
                    loop {
                        let mut line = String::new();
                        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let post = line.starts_with("POST");
                        // The rest of the head.
                        loop {
                            let mut field = String::new();
                            if read.read_line(&mut field).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if field == "\r\n" {
                                break;
                            }
                        }
                        if !post {
                            let _ = write.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
                            continue;
                        }
                        let mut upload = Upload {
                            bytes: 0,
                            complete: false,
                        };
                        loop {
                            let mut size = String::new();
                            if read.read_line(&mut size).await.unwrap_or(0) == 0 {
                                break;
                            }
                            let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
                                break;
                            };
                            let mut chunk = vec![0u8; n + 2];
                            if read.read_exact(&mut chunk).await.is_err() {
                                break;
                            }
                            if n == 0 {
                                upload.complete = true;
                                break;
                            }
                            upload.bytes += n;
                        }
                        let complete = upload.complete;
                        seen.lock().unwrap().push(upload);
                        if !complete {
                            return;
                        }
                        let _ = write
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                });
            }
        });
        RawWaifu { host, uploads }
    }
}

/// A request body of pieces of these sizes, its length not declared.
struct Pieces(std::collections::VecDeque<usize>);

impl hyper::body::Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.0
                .pop_front()
                .map(|n| Ok(hyper::body::Frame::data(Bytes::from(vec![b'x'; n])))),
        )
    }
}

async fn say_hello(orch: &Orch, name: &str, host: &str, limits: Value) {
    let (status, body) = orch
        .hello(json!({"name": name, "host": host, "limits": limits}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    orch.wait_health(name, StatusCode::NO_CONTENT).await;
}

async fn listed_limits(orch: &Orch, name: &str) -> Value {
    let (_, list) = orch
        .internal_json(Method::GET, "/__internal/waifus", String::new())
        .await;
    list.as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == name)
        .map(|w| w["instances"][0]["limits"].clone())
        .unwrap_or(Value::Null)
}

/// A chunked POST of `chunks` through the public port, raw: the status
/// line of the answer, or "" when the connection closed without one.
async fn chunked_post(orch: &Orch, path: &str, chunks: &[usize]) -> String {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for &n in chunks {
        request.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        request.extend(std::iter::repeat_n(b'x', n));
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = harness::raw(orch.public, &request).await;
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waifus_limits_hold_for_bodies_bursts_and_slow_answers() {
    let orch = harness::start(
        &unique_db("reqlimits"),
        &["--max-body-size", "1MiB", "--upstream-timeout", "5s"],
    )
    .await;

    // Bodies: a declared length over the limit never reaches the waifu;
    // exactly the limit does.
    let w = TestWaifu::start("w").await;
    say_hello(&orch, "w", &w.host(), json!({"maxBodySize": 1000})).await;
    assert_eq!(
        listed_limits(&orch, "w").await,
        json!({"maxBodySize": 1000, "timeout": "5s"})
    );
    let seen = w.seen.lock().unwrap().len();
    let post = |n: usize| {
        orch.request(
            Method::POST,
            "localhost",
            "/w/echo",
            &[],
            Bytes::from(vec![b'x'; n]),
        )
    };
    let r = post(1001).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["error"], "body_too_large");
    assert_eq!(w.seen.lock().unwrap().len(), seen, "the waifu saw it");
    let r = post(1000).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 1000);

    // A chunked body is cut before the limit is passed: the client gets
    // 413, the waifu an aborted upload of at most the limit; one within
    // the limit arrives whole.
    let raw = RawWaifu::start().await;
    say_hello(&orch, "raw", &raw.host, json!({"maxBodySize": 1000})).await;
    let status = chunked_post(&orch, "/raw/up", &[600, 300, 101, 50]).await;
    assert!(status.contains("413"), "{status:?}");
    let status = chunked_post(&orch, "/raw/up", &[600, 400]).await;
    assert!(status.contains("200"), "{status:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while raw.uploads.lock().unwrap().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "uploads never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let uploads = raw.uploads.lock().unwrap().clone();
    assert!(
        uploads.iter().any(|u| u
            == &Upload {
                bytes: 1000,
                complete: true
            }),
        "{uploads:?}"
    );
    for u in &uploads {
        assert!(u.bytes <= 1000, "{uploads:?}");
        assert!(
            u.complete == (u.bytes == 1000),
            "a cut upload looked complete: {uploads:?}"
        );
    }

    // Over HTTP/2, a body without a declared length is cut the same way.
    let stream = tokio::net::TcpStream::connect(orch.public).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = http::Request::post("http://localhost/raw/up")
        .body(Pieces(vec![600, 300, 101, 50].into()))
        .unwrap();
    let answer = send.send_request(request).await.unwrap();
    assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Whatever reached the waifu of it (here, all of it was at hand, so
    // nothing was sent) never looks complete.
    for u in raw.uploads.lock().unwrap().iter() {
        assert!(u.bytes <= 1000 && u.complete == (u.bytes == 1000), "{u:?}");
    }

    // The operator's maximum is the ceiling: a hello asking more gets it.
    let big = TestWaifu::start("big").await;
    say_hello(&orch, "big", &big.host(), json!({"maxBodySize": 10 << 20})).await;
    assert_eq!(listed_limits(&orch, "big").await["maxBodySize"], 1 << 20);
    let r = orch
        .request(
            Method::POST,
            "localhost",
            "/big/echo",
            &[],
            Bytes::from(vec![b'x'; 1_500_000]),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);

    // A burst: with maxInFlight 4, of 10 slow requests at once exactly 4
    // reach the waifu and 6 are refused at once.
    let s = TestWaifu::start("s").await;
    say_hello(&orch, "s", &s.host(), json!({"maxInFlight": 4})).await;
    let public = orch.public;
    let burst: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn(async move {
                harness::send(
                    public,
                    Method::GET,
                    "/s/slow?ms=1500",
                    &[("host", "localhost")],
                    Bytes::new(),
                )
                .await
                .expect("an answer")
            })
        })
        .collect();
    let mut answered = Vec::new();
    for r in burst {
        answered.push(r.await.unwrap());
    }
    let ok = answered
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let refused: Vec<_> = answered
        .iter()
        .filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!((ok, refused.len()), (4, 6), "{answered:?}");
    for r in refused {
        assert_eq!(r.json()["error"], "overloaded");
        assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    }
    // Once they are done, there is room again.
    let r = orch.get("localhost", "/s/slow?ms=10").await;
    assert_eq!(r.status, StatusCode::OK);

    // A response head slower than the waifu's timeout is 504.
    let t = TestWaifu::start("t").await;
    say_hello(&orch, "t", &t.host(), json!({"timeout": "500ms"})).await;
    assert_eq!(
        orch.get("localhost", "/t/slow?ms=1500").await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert_eq!(
        orch.get("localhost", "/t/slow?ms=50").await.status,
        StatusCode::OK
    );

    // Limits that make no sense are refused, naming them.
    for limits in [
        json!({"maxInFlight": 0}),
        json!({"timeout": "soon"}),
        json!({"timeout": "2h"}),
        json!({"maxBody": 10}),
    ] {
        let (status, body) = orch
            .hello(json!({"name": "bad", "host": "127.0.0.1:1", "limits": limits}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{limits}: {body}");
        assert!(
            body["error"] == "invalid_limits" || body["error"] == "invalid_json",
            "{limits}: {body}"
        );
    }
    orch.stop().await.unwrap();
}
