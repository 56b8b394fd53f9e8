//! Tiny real HTTP waifus for the tests, on 127.0.0.1:0.
//!
//! - `GET /__internal/health`: 204 while `healthy`, else 500;
//! - `POST /echo`: streams the request body back;
//! - `GET /stream`: sends 1 MiB, waits for `release`, then 2 MiB more;
//! - `GET /slow?ms=N`: answers after N ms;
//! - `GET /json`: 10 KiB of JSON; `GET /encoded`: a body the waifu encoded
//!   itself; `GET /sse`, `GET /slow-text`: a first piece (an event, 4 KiB of
//!   text), the rest once `release` is notified;
//! - `GET /ws`: completes a WebSocket handshake (101 with the right
//!   `Sec-WebSocket-Accept`), then echoes raw bytes (no framing: the proxy
//!   only relays); `GET /no-upgrade`: 200 even when asked to upgrade;
//! - anything else: a JSON echo of the request as received.
//!
//! Every request that came through the proxy (it carries `X-Forwarded-For`)
//! has its raw target recorded in `seen`. Set `fail_every` to N and every
//! Nth such request is answered 500; `delay_ms` delays each of them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

pub type TestBody = Either<Either<Full<Bytes>, Incoming>, Either<ChannelBody, Empty<Bytes>>>;

/// A body fed from a channel, for streaming tests.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

pub struct TestWaifu {
    pub addr: SocketAddr,
    pub id: String,
    pub healthy: Arc<AtomicBool>,
    pub seen: Arc<Mutex<Vec<String>>>,
    pub release: Arc<Notify>,
    /// Connections open to it now.
    pub conns: Arc<std::sync::atomic::AtomicUsize>,
    /// 0: never; N: every Nth proxied request fails with 500.
    pub fail_every: Arc<std::sync::atomic::AtomicUsize>,
    /// Milliseconds each proxied request waits before its answer.
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
}

impl TestWaifu {
    pub async fn start(id: &str) -> TestWaifu {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, id)
    }

    /// Serves on a given address (to come back on the same port).
    pub async fn start_on(addr: SocketAddr, id: &str) -> TestWaifu {
        let mut tries = 0;
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => return Self::serve(l, id),
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("rebind {addr}: {e}"),
            }
        }
    }

    fn serve(listener: TcpListener, id: &str) -> TestWaifu {
        let waifu = TestWaifu {
            addr: listener.local_addr().unwrap(),
            id: id.to_owned(),
            healthy: Arc::new(AtomicBool::new(true)),
            seen: Arc::default(),
            release: Arc::new(Notify::new()),
            conns: Arc::default(),
            fail_every: Arc::default(),
            delay_ms: Arc::default(),
            stop: CancellationToken::new(),
        };
        let state = State {
            id: waifu.id.clone(),
            healthy: waifu.healthy.clone(),
            seen: waifu.seen.clone(),
            release: waifu.release.clone(),
            fail_every: waifu.fail_every.clone(),
            delay_ms: waifu.delay_ms.clone(),
            proxied: Arc::default(),
        };
        let stop = waifu.stop.clone();
        let conns = waifu.conns.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let state = state.clone();
                let stop = stop.clone();
                let conns = conns.clone();
                conns.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(req).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        () = stop.cancelled() => {}
                    }
                    conns.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        waifu
    }

    /// `127.0.0.1:port`, what it says hello with.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Stops listening and drops every connection: like a killed process.
    pub fn kill(&self) {
        self.stop.cancel();
    }
}

impl Drop for TestWaifu {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Clone)]
struct State {
    id: String,
    healthy: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<String>>>,
    release: Arc<Notify>,
    fail_every: Arc<std::sync::atomic::AtomicUsize>,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    proxied: Arc<std::sync::atomic::AtomicUsize>,
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<TestBody> {
    let mut r = Response::new(Either::Left(Either::Left(Full::new(body.into()))));
    *r.status_mut() = status;
    r
}

impl State {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<TestBody> {
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().to_string(), |pq| pq.as_str().to_owned());
        if req.headers().contains_key("x-forwarded-for") {
            self.seen.lock().unwrap().push(target.clone());
            let delay = self.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let every = self.fail_every.load(Ordering::SeqCst);
            let n = self.proxied.fetch_add(1, Ordering::SeqCst) + 1;
            if every > 0 && n.is_multiple_of(every) {
                return full(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{} failed", self.id),
                );
            }
        }
        let path = req.uri().path().to_owned();
        match path.as_str() {
            "/__internal/health" => {
                if self.healthy.load(Ordering::SeqCst) {
                    full(StatusCode::NO_CONTENT, "")
                } else {
                    full(StatusCode::INTERNAL_SERVER_ERROR, "sick")
                }
            }
            "/echo" => Response::new(Either::Left(Either::Right(req.into_body()))),
            "/stream" => {
                let (tx, rx) = mpsc::channel(4);
                let release = self.release.clone();
                tokio::spawn(async move {
                    let chunk = Bytes::from(vec![b'a'; 64 * 1024]);
                    for _ in 0..16 {
                        if tx.send(chunk.clone()).await.is_err() {
                            return;
                        }
                    }
                    release.notified().await;
                    for _ in 0..32 {
                        if tx.send(chunk.clone()).await.is_err() {
                            return;
                        }
                    }
                });
                Response::new(Either::Right(Either::Left(ChannelBody(rx))))
            }
            "/json" => {
                // 10 KiB of JSON, compressible.
                let items: Vec<String> = (0..1000).map(|i| format!("{{\"n\":{i:>5}}}")).collect();
                let mut body = format!("[{}]", items.join(","));
                body.truncate(10 * 1024 - 1);
                body.push(']');
                let mut r = full(StatusCode::OK, body);
                r.headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                r
            }
            "/hsts" => {
                // Its own HSTS, which the proxy's must not join or replace.
                let mut r = full(StatusCode::OK, "own hsts");
                r.headers_mut()
                    .insert("strict-transport-security", "max-age=5".parse().unwrap());
                r
            }
            "/encoded" => {
                // Already encoded by the waifu: must pass untouched.
                let mut r = full(StatusCode::OK, vec![b'z'; 4096]);
                r.headers_mut()
                    .insert("content-type", "text/plain".parse().unwrap());
                r.headers_mut()
                    .insert("content-encoding", "identity-test".parse().unwrap());
                r
            }
            "/sse" | "/slow-text" => {
                // A first piece at once, the rest only when released.
                let (tx, rx) = mpsc::channel(4);
                let release = self.release.clone();
                let sse = path == "/sse";
                tokio::spawn(async move {
                    let first = if sse {
                        Bytes::from_static(b"data: first\n\n")
                    } else {
                        Bytes::from(vec![b'a'; 4096])
                    };
                    if tx.send(first).await.is_err() {
                        return;
                    }
                    release.notified().await;
                    let _ = tx.send(Bytes::from(vec![b'b'; 4096])).await;
                });
                let mut r = Response::new(Either::Right(Either::Left(ChannelBody(rx))));
                let kind = if sse {
                    "text/event-stream"
                } else {
                    "text/plain"
                };
                r.headers_mut()
                    .insert("content-type", kind.parse().unwrap());
                r
            }
            "/status" => {
                // `/status?code=N`: that status, with a body where one may be.
                let code = req
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("code="))
                    .and_then(|v| v.parse().ok())
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .unwrap_or(StatusCode::OK);
                let body = match code.as_u16() {
                    204 | 304 => "",
                    _ => "status body",
                };
                full(code, body)
            }
            "/slow" => {
                let ms = req
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("ms="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                full(StatusCode::OK, format!("slept {ms}"))
            }
            "/ws" | "/no-upgrade" if req.headers().contains_key("upgrade") => {
                if path == "/no-upgrade" {
                    return full(StatusCode::OK, "no upgrade here");
                }
                let accept = req
                    .headers()
                    .get("sec-websocket-key")
                    .map(|k| websocket_accept(k.as_bytes()))
                    .unwrap_or_default();
                let on = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    if let Ok(upgraded) = on.await {
                        let mut io = TokioIo::new(upgraded);
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = io.read(&mut buf).await {
                            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                });
                let mut r = Response::new(Either::Right(Either::Right(Empty::new())));
                *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                r.headers_mut()
                    .insert("upgrade", "websocket".parse().unwrap());
                r.headers_mut()
                    .insert("connection", "upgrade".parse().unwrap());
                r.headers_mut()
                    .insert("sec-websocket-accept", accept.parse().unwrap());
                r
            }
            _ => {
                let mut headers = serde_json::Map::new();
                for (k, v) in req.headers() {
                    let list = headers
                        .entry(k.as_str())
                        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
                    if let serde_json::Value::Array(a) = list {
                        a.push(String::from_utf8_lossy(v.as_bytes()).into());
                    }
                }
                let body = serde_json::json!({
                    "id": self.id,
                    "method": req.method().as_str(),
                    "target": target,
                    "headers": headers,
                });
                let mut r = full(StatusCode::OK, body.to_string());
                r.headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                r.headers_mut()
                    .insert("connection", "keep-alive, x-hop".parse().unwrap());
                r.headers_mut().insert("x-hop", "secret".parse().unwrap());
                r
            }
        }
    }
}

/// The `Sec-WebSocket-Accept` for a client's key (RFC 6455 §4.2.2), with an
/// encoder of its own rather than the proxy's.
pub fn websocket_accept(key: &[u8]) -> String {
    use sha1::Digest;
    let digest = sha1::Sha1::new()
        .chain_update(key)
        .chain_update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
        .finalize();
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in digest.chunks(3) {
        let mut n = 0u32;
        for (i, b) in group.iter().enumerate() {
            n |= u32::from(*b) << (16 - 8 * i);
        }
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
