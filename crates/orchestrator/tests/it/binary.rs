//! The `orchestrator` binary as a real process: readiness, SIGTERM with
//! requests in flight, kill -9 and restart, and start-up errors.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;

use waifus_testkit::{Proc, free_addr};

use crate::harness::{self, send};
use crate::pg::{self, unique_db};
use crate::waifu::TestWaifu;

/// The orchestrator binary, stopped (SIGTERM, then SIGKILL) if the test
/// fails half-way, with its managed PostgreSQL.
pub(crate) struct Orchestrator {
    pub(crate) proc: Proc,
    pub(crate) public: SocketAddr,
    pub(crate) internal: SocketAddr,
}

pub(crate) async fn spawn(db_url: &str) -> Orchestrator {
    spawn_with(&[("DATABASE_URL", db_url)]).await
}

pub(crate) async fn spawn_with(env: &[(&str, &str)]) -> Orchestrator {
    spawn_logging(env, Stdio::null()).await
}

/// As [`spawn_with`], with the process's log (stderr) going to `log`.
pub(crate) async fn spawn_logging(env: &[(&str, &str)], log: impl Into<Stdio>) -> Orchestrator {
    let (public, internal) = (free_addr(), free_addr());
    let child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .env("PUBLIC_ADDR", public.to_string())
        .env("INTERNAL_ADDR", internal.to_string())
        .env("HEALTH_INTERVAL", "100ms")
        .env("SHUTDOWN_TIMEOUT", "10s")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut p = Orchestrator {
        proc: Proc::from_child(child),
        public,
        internal,
    };
    let proc = &mut p.proc;
    harness::wait_ready(p.internal, Duration::from_secs(90), || {
        proc.exited().is_some()
    })
    .await;
    p
}

/// Its exit code, once it exits by itself within `within` (polled without
/// blocking the test's runtime, which serves requests meanwhile).
pub(crate) async fn wait_exit(proc: &mut Proc, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(code) = proc.exited() {
            return code;
        }
        assert!(Instant::now() < deadline, "the process did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn hello(internal: SocketAddr, name: &str, host: &str, binds: serde_json::Value) {
    let body = json!({"name": name, "host": host, "additionalBinds": binds});
    let r = harness::post_json(internal, "/__internal/hello", &body)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

pub(crate) async fn get(public: SocketAddr, host: &str, target: &str) -> StatusCode {
    send(public, Method::GET, target, &[("host", host)], Bytes::new())
        .await
        .map_or(StatusCode::IM_A_TEAPOT, |r| r.status)
}

pub(crate) async fn wait_routable(public: SocketAddr, host: &str, target: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(public, host, target).await != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "{host}{target} never became routable"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let url = pg::cluster().url(&unique_db("sigterm"));
    let w = TestWaifu::start("w").await;
    let mut p = spawn(&url).await;
    hello(p.internal, "w", &w.host(), json!({})).await;
    wait_routable(p.public, "localhost", "/w/").await;

    let public = p.public;
    let in_flight = tokio::spawn(async move {
        send(
            public,
            Method::GET,
            "/w/slow?ms=1500",
            &[("host", "localhost")],
            Bytes::new(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    p.proc.signal("-TERM");
    let r = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completed");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "slept 1500");
    let status = wait_exit(&mut p.proc, Duration::from_secs(15)).await;
    assert_eq!(status, Some(0));
}

#[tokio::test]
async fn killed_and_restarted_keeps_every_route() {
    let url = pg::cluster().url(&unique_db("kill9"));
    let w = TestWaifu::start("w").await;
    let mut p = spawn(&url).await;
    hello(p.internal, "w", &w.host(), json!({"http://w.test/p": "/"})).await;
    wait_routable(p.public, "localhost", "/w/").await;
    p.proc.signal("-KILL");
    wait_exit(&mut p.proc, Duration::from_secs(10)).await;

    let mut p = spawn(&url).await;
    wait_routable(p.public, "localhost", "/w/x").await;
    wait_routable(p.public, "w.test", "/p/x").await;
    p.proc.signal("-INT");
    let status = wait_exit(&mut p.proc, Duration::from_secs(15)).await;
    assert_eq!(status, Some(0), "SIGINT exits 0 too");
}

pub(crate) fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

pub(crate) fn postmaster_pid(data_dir: &std::path::Path) -> u32 {
    let pidfile = std::fs::read_to_string(data_dir.join("postgres/postmaster.pid")).unwrap();
    pidfile.lines().next().unwrap().trim().parse().unwrap()
}

/// With DATABASE_URL unset the orchestrator runs its own PostgreSQL: it
/// initialises it, restarts it when it dies, stops it on shutdown, and finds
/// its state again on the next start.
#[tokio::test]
async fn managed_postgres_is_the_default() {
    use std::os::unix::fs::PermissionsExt;
    let data = std::path::PathBuf::from(format!(
        "/tmp/waifus-managed-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    let data_str = data.to_str().unwrap().to_owned();
    let env = [("DATA_DIR", data_str.as_str())];
    let w = TestWaifu::start("w").await;
    let mut p = spawn_with(&env).await;
    let mode = std::fs::metadata(data.join("postgres-password"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    hello(p.internal, "w", &w.host(), json!({})).await;
    wait_routable(p.public, "localhost", "/w/").await;
    let creds = managed_database(p.internal).await;
    assert_eq!(creds["host"], "127.0.0.1", "what a local waifu can reach");
    let port = std::fs::read_to_string(data.join("postgres-port")).unwrap();
    assert_eq!(creds["port"].to_string(), port.trim());
    let s = |k: &str| creds[k].as_str().unwrap().to_owned();
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port.trim().parse().unwrap())
        .user(s("user"))
        .password(s("password"))
        .dbname(s("database"))
        .connect(tokio_postgres::NoTls)
        .await
        .expect("the managed cluster's credentials work over TCP");
    tokio::spawn(conn);
    client
        .batch_execute("CREATE TABLE t (x int)")
        .await
        .unwrap();
    drop(client);

    // PostgreSQL dies: the orchestrator starts it again, and registration
    // works again without a restart. Proxying never stops meanwhile.
    let load = crate::faults::Load::start(p.public, &["/w/x"], 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = postmaster_pid(&data);
    signal_pid(first, "-KILL");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = json!({"name": "again", "host": "127.0.0.1:1"});
        let r = harness::post_json(p.internal, "/__internal/hello", &body).await;
        let restarted = std::fs::read_to_string(data.join("postgres/postmaster.pid"))
            .ok()
            .and_then(|p| p.lines().next()?.trim().parse::<u32>().ok())
            .is_some_and(|pid| pid != first && alive(pid));
        if restarted && r.is_some_and(|r| r.status == StatusCode::OK) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the managed PostgreSQL was not restarted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(p.public, "localhost", "/w/").await, StatusCode::OK);
    let samples = load.finish().await;
    assert!(samples.len() > 20, "too little load: {}", samples.len());
    let failed: Vec<_> = samples.iter().filter(|s| s.status != 200).collect();
    assert!(
        failed.is_empty(),
        "requests failed while PostgreSQL restarted: {failed:?}"
    );
    let second = postmaster_pid(&data);

    p.proc.signal("-TERM");
    let status = wait_exit(&mut p.proc, Duration::from_secs(40)).await;
    assert_eq!(status, Some(0));
    assert!(!alive(second), "PostgreSQL was left running");

    // Again from the existing DATA_DIR: same routes, same credentials.
    let mut p = spawn_with(&env).await;
    wait_routable(p.public, "localhost", "/w/x").await;
    assert_eq!(managed_database(p.internal).await, creds);
    p.proc.signal("-TERM");
    assert_eq!(
        wait_exit(&mut p.proc, Duration::from_secs(40)).await,
        Some(0)
    );
    let _ = std::fs::remove_dir_all(&data);
}

pub(crate) async fn managed_database(internal: SocketAddr) -> serde_json::Value {
    let body = json!({"name": "managed", "secret": "managed-secret"});
    let r = harness::post_json(internal, "/__internal/database", &body)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    serde_json::from_slice(&r.body).unwrap()
}

pub(crate) fn signal_pid(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn bad_settings_are_clear_errors() {
    for (k, v, needle) in [
        ("HEALTH_INTERVAL", "soon", "health-interval"),
        ("PUBLIC_ADDR", "nowhere", "public-addr"),
        ("LOG_FORMAT", "xml", "log-format"),
        ("MAIN_DOMAIN", "a/b", "MAIN_DOMAIN"),
        ("CERT_DIR", "/nonexistent/certs", "CERT_DIR"),
        ("ACME_DIRECTORY", "http://ca.example/dir", "ACME_DIRECTORY"),
        ("HTTPS_ADDR", "nowhere", "https-addr"),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        cmd.env_clear()
            .env("DATABASE_URL", "postgres://u@127.0.0.1:1/x")
            .env(k, v);
        let out = harness::output_within(&mut cmd, Duration::from_secs(60));
        assert!(!out.status.success(), "{k}={v}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{k}={v}: {err}");
    }
}
