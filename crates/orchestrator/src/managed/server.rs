//! The server process: starting it, waiting until it answers, adopting one
//! a previous orchestrator left running, restarting it when it dies, and
//! stopping it with the waifu sessions that cuts logged.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Child;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::binaries::command;
use super::error::{ManagedError, io};
use super::files::SUPERUSER;
use super::privileges::create_dir;

/// Longest unix socket path PostgreSQL accepts, with room for the file name.
const MAX_SOCKET_DIR: usize = 80;

/// The server process: our child, or one a previous orchestrator started.
#[derive(Debug)]
pub(super) enum Postmaster {
    Child(Child),
    Adopted(rustix::process::Pid),
}

impl Postmaster {
    pub(super) fn pid(&self) -> Option<rustix::process::Pid> {
        match self {
            Postmaster::Child(child) => child
                .id()
                .and_then(|id| rustix::process::Pid::from_raw(i32::try_from(id).ok()?)),
            Postmaster::Adopted(pid) => Some(*pid),
        }
    }

    /// Waits until the process is gone.
    async fn exited(&mut self) -> String {
        match self {
            Postmaster::Child(child) => format!("{:?}", child.wait().await),
            Postmaster::Adopted(pid) => {
                while rustix::process::test_kill_process(*pid).is_ok() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                "gone".to_owned()
            }
        }
    }
}

/// Everything needed to (re)start the server process.
#[derive(Debug, Clone)]
pub(super) struct Server {
    pub(super) bindir: PathBuf,
    pub(super) cluster: PathBuf,
    pub(super) port: u16,
    pub(super) user: Option<(u32, u32)>,
    pub(super) log: PathBuf,
}

impl Server {
    pub(super) fn spawn(&self) -> Result<Child, ManagedError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.log)
            .map_err(io("open", &self.log))?;
        let log_err = log.try_clone().map_err(io("open", &self.log))?;
        let socket_dir = self.cluster.to_string_lossy();
        let socket_dir = if socket_dir.len() <= MAX_SOCKET_DIR {
            socket_dir.into_owned()
        } else {
            String::new() // TCP only: the path is too long for a unix socket
        };
        command(self.bindir.join("postgres"), self.user)
            // Its own process group: a terminal's Ctrl-C or a signal to the
            // orchestrator's group reaches the orchestrator, which stops it
            // (or leaves it to its successor).
            .process_group(0)
            .kill_on_drop(false)
            .arg("-D")
            .arg(&self.cluster)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(socket_dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .current_dir(&self.cluster)
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(io("start", &self.bindir.join("postgres")))
    }
}

/// The server `postmaster.pid` names, if it runs and answers on our port
/// with our password: one a previous orchestrator left running.
pub(super) async fn adoptable(server: &Server, password: &str) -> Option<rustix::process::Pid> {
    let text = std::fs::read_to_string(server.cluster.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid: i32 = lines.next()?.trim().parse().ok()?;
    let port: u16 = lines.nth(2)?.trim().parse().ok()?;
    let pid = rustix::process::Pid::from_raw(pid)?;
    if port != server.port || rustix::process::test_kill_process(pid).is_err() {
        return None;
    }
    // It may still be starting (or restarting after a crash).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if connect(server.port, password).await.is_some() {
            return Some(pid);
        }
        if rustix::process::test_kill_process(pid).is_err() {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// A superuser session on the cluster's `postgres` database, if it answers
/// within 2 s.
async fn connect(port: u16, password: &str) -> Option<tokio_postgres::Client> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(SUPERUSER)
        .password(password)
        .dbname("postgres")
        .application_name("waifus-orchestrator")
        .connect_timeout(Duration::from_secs(2));
    // The timeout covers the handshake too: a program that took the port
    // and never answers is not waited for.
    let (client, conn) = tokio::time::timeout(
        Duration::from_secs(2),
        config.connect(tokio_postgres::NoTls),
    )
    .await
    .ok()?
    .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(client)
}

/// How many waifu sessions the server has open; `None` if it cannot say.
async fn waifu_sessions(port: u16, password: &str) -> Option<i64> {
    let client = connect(port, password).await?;
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE backend_type = 'client backend' AND usename LIKE 'waifu\\_%'",
            &[],
        )
        .await
        .ok()
        .map(|row| row.get(0))
}

/// Initialises the cluster (scram-sha-256, the superuser's password).
pub(super) async fn initdb(
    bindir: &Path,
    data_dir: &Path,
    cluster: &Path,
    password: &str,
    user: Option<(u32, u32)>,
) -> Result<(), ManagedError> {
    info!(cluster = %cluster.display(), "initialising the managed PostgreSQL cluster");
    create_dir(cluster, 0o700)?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(cluster, Some(uid), Some(gid)).map_err(io("chown", cluster))?;
    }
    // initdb reads the superuser password from a file it must be able to
    // open, and runs in a directory it can enter: both beside the cluster.
    let beside = cluster.parent().unwrap_or(data_dir);
    let pwfile = beside.join(".initdb-password");
    // A leftover of an initdb that was killed holds this same password.
    let _ = std::fs::remove_file(&pwfile);
    crate::private_file::create_new(&pwfile, password).map_err(io("write", &pwfile))?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).map_err(io("chown", &pwfile))?;
    }
    let out = command(bindir.join("initdb"), user)
        .arg("-D")
        .arg(cluster)
        .args([
            "-U",
            SUPERUSER,
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .current_dir(beside)
        .output()
        .await;
    let _ = std::fs::remove_file(&pwfile);
    let out = out.map_err(io("run", &bindir.join("initdb")))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(cluster);
        let mut why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if user.is_some() {
            why.push_str(
                " (as root, PostgreSQL runs as the user `postgres`, which needs search \
                 permission on every parent directory of DATA_DIR)",
            );
        }
        return Err(ManagedError::Initdb(why));
    }
    Ok(())
}

/// A server that holds the data directory but cannot be adopted (it does
/// not answer as ours) is stopped before ours starts.
pub(super) async fn stop_stale(server: &Server, password: &str) {
    if !server.cluster.join("postmaster.pid").exists() {
        return;
    }
    match waifu_sessions(server.port, password).await {
        Some(cut) => warn!(
            sessions_cut = cut,
            "restarting the managed PostgreSQL left running: {cut} waifu database session(s) are cut"
        ),
        None => warn!("stopping a PostgreSQL left running on the managed cluster"),
    }
    let _ = command(server.bindir.join("pg_ctl"), server.user)
        .arg("-D")
        .arg(&server.cluster)
        .args(["stop", "-m", "fast", "-w", "-t", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

/// Waits until the server answers (at most 60 s); an error if it exits.
pub(super) async fn wait_ready(
    server: &Server,
    mut child: Child,
    password: &str,
) -> Result<Child, ManagedError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(server.port)
        .user(SUPERUSER)
        .password(password)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let answered = tokio::time::timeout(
            Duration::from_secs(2),
            config.connect(tokio_postgres::NoTls),
        )
        .await;
        if let Ok(Ok((client, conn))) = answered {
            drop(client);
            let _ = conn.await;
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ManagedError::Exited {
                status: status.to_string(),
                log: server.log.clone(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill().await;
    Err(ManagedError::NotReady(server.log.clone()))
}

/// Restarts the server whenever it dies, until `done`; then, when
/// `stopping`, shuts it down cleanly (fast shutdown), else leaves it running.
pub(super) async fn supervise(
    server: Server,
    password: String,
    mut postmaster: Postmaster,
    done: CancellationToken,
    stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        tokio::select! {
            status = postmaster.exited() => {
                error!(status, "managed PostgreSQL exited; restarting it");
                tokio::select! {
                    () = done.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                stop_stale(&server, &password).await;
                match server.spawn() {
                    Ok(c) => postmaster = Postmaster::Child(c),
                    Err(e) => error!(error = %e, "could not restart the managed PostgreSQL"),
                }
            }
            () = done.cancelled() => break,
        }
    }
    if !stopping.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let cut = waifu_sessions(server.port, &password).await;
    let Some(pid) = postmaster.pid() else { return };
    if let Some(cut) = cut {
        info!(
            sessions_cut = cut,
            "stopping the managed PostgreSQL: {cut} waifu database session(s) are cut"
        );
    }
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    match tokio::time::timeout(Duration::from_secs(30), postmaster.exited()).await {
        Ok(_) => info!("managed PostgreSQL stopped"),
        Err(_) => {
            warn!("managed PostgreSQL did not stop in 30 s; killing it");
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            let _ = postmaster.exited().await;
        }
    }
}
