//! Running commands with deadlines, requests through a published port,
//! a load of keep-alive clients, and calls to an internal API from inside
//! its container.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `cmd`, killing it after `within`; its output.
pub(crate) fn run(cmd: &mut Command, within: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let (out, err) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{shown} took more than {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Runs `cmd` and insists that it succeeds; its stdout.
pub(crate) fn ok(cmd: &mut Command, within: Duration) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd, within);
    assert!(
        out.status.success(),
        "{shown}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub(crate) fn docker(args: &[&str]) -> Command {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    cmd
}

pub(crate) fn present(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Taken for reading by the tests that share the Docker engine, and for
/// writing by the one that changes it for everything (the swarm test).
pub(crate) static ENGINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Whether the container tests can run here; reports why not, and fails
/// under `CI=true` (see `waifus_testkit::require`).
pub(crate) fn docker_ready() -> bool {
    waifus_testkit::require(
        present("docker", &["info"]),
        "a Docker engine (no `docker info` answers)",
        "start the Docker daemon; the container tests need it",
    ) && [
        ("mmdebstrap", &["--version"][..], "mmdebstrap"),
        ("docker-compose", &["version"][..], "docker-compose"),
    ]
    .into_iter()
    .all(|(tool, args, package)| {
        waifus_testkit::require(
            present(tool, args),
            tool,
            &format!("apt-get install {package}; .ci/run installs it"),
        )
    })
}

/// One request through the published port; status, `Location` and body.
pub(crate) async fn public(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    body: &str,
) -> Option<(u16, Option<String>, String)> {
    let call = waifus_testkit::http::Call {
        headers: &[("host", host), ("content-type", "application/json")],
        body: body.to_owned().into(),
        ..waifus_testkit::http::Call::new(method.parse().ok()?, path)
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let reply = waifus_testkit::http::send(addr, call).await.ok()?;
    Some((
        reply.status.as_u16(),
        reply.header("location"),
        reply.text(),
    ))
}

pub(crate) async fn until_status(port: u16, host: &str, path: &str, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Some((status, _, _)) = public(port, "GET", host, path, "").await
            && status == want
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{host}{path} never answered {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Eight keep-alive clients sending `GET /hello/` until stopped; the
/// requests sent and the failures (any answer but 200, or none).
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    clients: Vec<tokio::task::JoinHandle<u64>>,
}

impl Load {
    pub(crate) fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let clients = (0..8)
            .map(|_| {
                let (stop, failures) = (stop.clone(), failures.clone());
                tokio::spawn(async move {
                    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
                        .pool_max_idle_per_host(1)
                        .build_http();
                    let mut sent = 0;
                    while !stop.load(Ordering::Relaxed) {
                        sent += 1;
                        let request = http::Request::builder()
                            .uri(format!("http://127.0.0.1:{port}/hello/"))
                            .header("host", "localhost")
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        let got = async {
                            let response =
                                client.request(request).await.map_err(|e| e.to_string())?;
                            let status = response.status();
                            let body = response
                                .into_body()
                                .collect()
                                .await
                                .map_err(|e| e.to_string())?;
                            Ok::<_, String>((status, body.to_bytes()))
                        };
                        match tokio::time::timeout(Duration::from_secs(60), got).await {
                            Ok(Ok((status, _))) if status == 200 => {}
                            Ok(Ok((status, body))) => failures
                                .lock()
                                .unwrap()
                                .push(format!("{status}: {}", String::from_utf8_lossy(&body))),
                            Ok(Err(e)) => failures.lock().unwrap().push(e),
                            Err(_) => failures.lock().unwrap().push("timed out".into()),
                        }
                    }
                    sent
                })
            })
            .collect();
        Load {
            stop,
            failures,
            clients,
        }
    }

    pub(crate) async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut sent = 0;
        for client in self.clients {
            sent += client.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (sent, failures)
    }
}

/// A call to the internal API of `container` from inside it.
pub(crate) fn internal_of(container: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    internal_as(container, None, method, path, body)
}

/// A call to the internal API of `container` from inside it, with `token`
/// as the bearer token when given.
pub(crate) fn internal_as(
    container: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.0\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let script =
        "exec 3<>/dev/tcp/127.0.0.1/2137 && printf '%s%s' \"$HEAD\" \"$BODY\" >&3 && cat <&3";
    let out = run(
        docker(&[
            "exec",
            "-e",
            &format!("HEAD={head}"),
            "-e",
            &format!("BODY={body}"),
        ])
        .args([container, "bash", "-c", script]),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The healthy instances of `name` that are not draining, with their
/// versions (empty when none), in a `/__internal/waifus` answer; sorted.
pub(crate) fn serving_in(waifus: &str, name: &str) -> Vec<(String, String)> {
    let list: serde_json::Value = serde_json::from_str(waifus).unwrap();
    let mut instances: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["name"] == name)
        .flat_map(|w| w["instances"].as_array().unwrap())
        .filter(|i| i["healthy"] == true && i["draining"] == false)
        .map(|i| {
            let version = i["version"].as_str().unwrap_or("").to_owned();
            (i["host"].as_str().unwrap().to_owned(), version)
        })
        .collect();
    instances.sort();
    instances
}

/// How many of `waifu`'s requests each of `instances` served, by the
/// access log lines in `log`.
pub(crate) fn served_by(log: &str, waifu: &str, instances: &[String]) -> Vec<usize> {
    let waifu = format!("waifu={waifu} ");
    instances
        .iter()
        .map(|i| {
            let instance = format!("instance={i} ");
            log.lines()
                .filter(|l| l.contains(&waifu) && l.contains(&instance))
                .count()
        })
        .collect()
}

/// Fails with how many requests failed and the first ten, if any did.
pub(crate) fn assert_none_failed(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} failed; the first: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
}

/// The host port `port` of `container` is published on.
pub(crate) fn published_port(container: &str, port: u16) -> u16 {
    let out = ok(
        &mut docker(&["port", container, &format!("{port}/tcp")]),
        Duration::from_secs(30),
    );
    out.lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("{container}:{port} is not published: {out}"))
}

/// The start of an HAProxy configuration that balances the public port
/// (`:80`) over orchestrators checked on their internal health endpoint;
/// the caller adds the `server` lines.
pub(crate) const HAPROXY_PUBLIC: &str = "\
global
    maxconn 2000
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
    retry-on conn-failure empty-response
resolvers docker
    nameserver dns 127.0.0.11:53
    hold valid 1s
frontend public
    bind :80
    default_backend orchestrators
backend orchestrators
    balance roundrobin
    option httpchk GET /__internal/health
    http-check expect status 204
";
