//! The real orchestrator, in-process on port 0, and clients to talk to it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use waifus_testkit::http as client;

use bytes::Bytes;
use clap::Parser;
use http::{Method, StatusCode};
use orchestrator::{Cli, Listeners, RunError};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::relay::start_behind_relay;

use crate::pg;

pub struct Orch {
    pub public: SocketAddr,
    pub internal: SocketAddr,
    /// The TLS listener, when TLS is on.
    pub https: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), RunError>>,
}

/// Extra flags for one orchestrator, after the defaults the tests use
/// (health checks every 100 ms, short upstream timeouts).
pub async fn start(db: &str, extra: &[&str]) -> Orch {
    start_with_url(&pg::cluster().url(db), extra).await
}

pub async fn start_with_url(url: &str, extra: &[&str]) -> Orch {
    start_with_ports(url, extra, None).await
}

/// Listeners bound before the orchestrator starts, so their ports can be
/// handed to something else first (an ACME test server).
pub struct Ports {
    pub public: TcpListener,
    pub internal: TcpListener,
    pub https: TcpListener,
}

impl Ports {
    pub async fn bind() -> Ports {
        Ports {
            public: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            internal: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            https: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }
}

/// As [`start_with_url`], on `ports` if given (else fresh ports; the TLS
/// one only when the flags turn TLS on).
pub async fn start_with_ports(url: &str, extra: &[&str], ports: Option<Ports>) -> Orch {
    // TEST_LOG=debug (or any filter) shows the orchestrators' logs.
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("TEST_LOG"))
            .with_test_writer()
            .try_init();
    }
    let defaults = [
        ("--health-interval", "100ms"),
        ("--health-timeout", "1s"),
        ("--upstream-timeout", "2s"),
        ("--shutdown-timeout", "5s"),
    ];
    // Each orchestrator keeps its key in its own directory unless told otherwise.
    let data_dir = temp_dir("data");
    let data_dir = data_dir.to_str().unwrap();
    let mut args = vec!["orchestrator", "--database-url", url];
    if !extra.contains(&"--data-dir") {
        args.extend(["--data-dir", data_dir]);
    }
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    let config = Cli::try_parse_from(&args).expect("test flags").serve;
    let config = config.validate().expect("valid test settings");
    let ports = match ports {
        Some(ports) => ports,
        None => Ports::bind().await,
    };
    let https = config.tls_on().then_some(ports.https);
    let (public_addr, internal_addr) = (
        ports.public.local_addr().unwrap(),
        ports.internal.local_addr().unwrap(),
    );
    let https_addr = https.as_ref().map(|l| l.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let listeners = Listeners {
        public: ports.public,
        internal: ports.internal,
        https,
    };
    let task = tokio::spawn(orchestrator::run(config, listeners, shutdown.clone()));
    let orch = Orch {
        public: public_addr,
        internal: internal_addr,
        https: https_addr,
        shutdown,
        task,
    };
    wait_ready(orch.internal, Duration::from_secs(30), || {
        orch.task.is_finished()
    })
    .await;
    orch
}

/// Polls `GET /__internal/health` until 204; fails if `stopped()` says the
/// orchestrator is gone or `within` passes.
pub async fn wait_ready(internal: SocketAddr, within: Duration, mut stopped: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let r = send(
            internal,
            Method::GET,
            "/__internal/health",
            &[],
            Bytes::new(),
        )
        .await;
        if r.is_some_and(|r| r.status == StatusCode::NO_CONTENT) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "orchestrator did not become ready"
        );
        assert!(!stopped(), "orchestrator stopped during start-up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Orch {
    /// `GET /__internal/metrics`: 200, OpenMetrics text.
    pub async fn scrape(&self) -> String {
        let r = send(
            self.internal,
            Method::GET,
            "/__internal/metrics",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            r.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        String::from_utf8(r.body.to_vec()).unwrap()
    }

    /// Graceful stop; returns what `run` returned.
    pub async fn stop(self) -> Result<(), RunError> {
        self.shutdown.cancel();
        self.task.await.expect("run task")
    }

    pub async fn hello(&self, body: Value) -> (StatusCode, Value) {
        self.hello_with(body, &[]).await
    }

    /// A hello with extra header fields (a bearer token).
    pub async fn hello_with(&self, body: Value, headers: &[(&str, &str)]) -> (StatusCode, Value) {
        let r = send(
            self.internal,
            Method::POST,
            "/__internal/hello",
            headers,
            Bytes::from(body.to_string()),
        )
        .await
        .expect("internal API reachable");
        (r.status, r.json())
    }

    pub async fn internal_json(
        &self,
        method: Method,
        path: &str,
        body: String,
    ) -> (StatusCode, Value) {
        let r = send(self.internal, method, path, &[], Bytes::from(body))
            .await
            .expect("internal API reachable");
        let v = if r.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&r.body).unwrap_or_else(|e| {
                panic!(
                    "{path}: not JSON ({e}): {}",
                    String::from_utf8_lossy(&r.body)
                )
            })
        };
        (r.status, v)
    }

    /// Says hello and waits until the waifu is routable.
    pub async fn register(&self, name: &str, host: &str, binds: Value) -> Value {
        let (status, body) = self
            .hello(serde_json::json!({"name": name, "host": host, "additionalBinds": binds}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        self.wait_health(name, StatusCode::NO_CONTENT).await;
        body
    }

    /// Polls `/__internal/waifus/{name}/health` until it answers `want`.
    pub async fn wait_health(&self, name: &str, want: StatusCode) {
        let path = format!("/__internal/waifus/{name}/health");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = send(self.internal, Method::GET, &path, &[], Bytes::new()).await;
            if r.is_some_and(|r| r.status == want) {
                return;
            }
            assert!(Instant::now() < deadline, "{name} never reached {want}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls `/__internal/waifus` until every instance of `name` has been
    /// checked at least once (whatever the answer).
    pub async fn wait_checked(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = send(
                self.internal,
                Method::GET,
                "/__internal/waifus",
                &[],
                Bytes::new(),
            )
            .await;
            let listed = r.map(|r| r.json()).unwrap_or_default();
            let checked = listed.as_array().into_iter().flatten().any(|w| {
                w["name"] == name
                    && w["instances"].as_array().is_some_and(|i| {
                        !i.is_empty() && i.iter().all(|i| i["lastCheck"].is_string())
                    })
            });
            if checked {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} was never checked: {listed}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The status page's snapshot, as JSON.
    pub async fn status_json(&self) -> Value {
        send(
            self.internal,
            Method::GET,
            "/__internal/status",
            &[("accept", "application/json")],
            Bytes::new(),
        )
        .await
        .expect("internal API reachable")
        .json()
    }

    /// A request through the public proxy.
    pub async fn get(&self, host: &str, target: &str) -> Reply {
        self.request(Method::GET, host, target, &[], Bytes::new())
            .await
    }

    pub async fn request(
        &self,
        method: Method,
        host: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        let mut all = vec![("host", host)];
        all.extend_from_slice(headers);
        send(self.public, method, target, &all, body)
            .await
            .expect("public listener reachable")
    }
}

/// A fresh directory in this test binary's own temporary directory, which
/// is removed when the binary exits.
pub fn temp_dir(what: &str) -> std::path::PathBuf {
    let dir = temp_root().join(format!("{what}-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `waifus-it-{pid}` under the system's temporary directory. Like the
/// PostgreSQL cluster's supervisor (`pg.rs`), a shell waits for its stdin, a
/// pipe this process holds, to close, however the binary exits, and then
/// removes the directory.
fn temp_root() -> &'static std::path::Path {
    static ROOT: std::sync::OnceLock<(std::path::PathBuf, std::process::Child)> =
        std::sync::OnceLock::new();
    let (root, _janitor) = ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("waifus-it-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let janitor = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg("read _ignored; rm -rf \"$0\"")
            .arg(&root)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("start the temporary directory's janitor");
        (root, janitor)
    });
    root
}

pub use waifus_testkit::http::Reply;

/// One HTTP/1.1 request on a fresh connection; `None` if it could not be
/// sent (an answer that takes over 20 s fails the test).
pub async fn send(
    addr: SocketAddr,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Option<Reply> {
    send_from(None, addr, method, target, headers, body).await
}

/// As [`send`], from the source address `source`.
pub async fn send_from(
    source: Option<std::net::IpAddr>,
    addr: SocketAddr,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Option<Reply> {
    let call = client::Call {
        headers,
        body,
        from: source,
        within: Duration::from_secs(20),
        ..client::Call::new(method, target)
    };
    match client::send(addr, call).await {
        Ok(reply) => Some(reply),
        Err(client::Failed::Broken) => None,
        Err(client::Failed::TimedOut) => panic!("no answer within 20 s from {addr}{target}"),
    }
}

/// POSTs JSON to `path` on `addr` (an internal listener); `None` if it could
/// not be sent.
pub async fn post_json(addr: SocketAddr, path: &str, body: &Value) -> Option<Reply> {
    send(addr, Method::POST, path, &[], Bytes::from(body.to_string())).await
}

/// Writes raw bytes on a new connection and reads until the server closes
/// (or 10 s pass); returns what came back.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A WebSocket handshake for `path` (RFC 6455 §4.1).
pub fn websocket_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// Opens a WebSocket to the test waifu on `stream` and checks a message
/// comes back through the tunnel; returns the response head, lowercased.
pub async fn upgrade_and_echo(stream: &mut TcpStream, path: &str, message: &[u8]) -> String {
    let request = websocket_request(path);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    stream.write_all(message).await.unwrap();
    let mut echoed = vec![0u8; message.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, message);
    head
}

/// The status code of a raw response's first line.
pub fn raw_status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

/// Runs a command to its end, as `Command::output` does, but fails the test
/// instead of hanging if it takes longer than `within`.
pub fn output_within(cmd: &mut std::process::Command, within: Duration) -> std::process::Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    // Read both pipes while waiting, so a chatty child never blocks on them.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Whether a tool a test needs is here. Without it the test is skipped
/// (it says so on stderr), except in CI (`CI=true`), where a missing tool
/// fails the test: `.ci/run` installs every one of them.
pub fn tool_present(found: bool, what: &str) -> bool {
    waifus_testkit::require(found, what, ".ci/run installs it")
}

/// The value of the sample line that starts with `series` (name and labels
/// exactly as written), or `None`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}
