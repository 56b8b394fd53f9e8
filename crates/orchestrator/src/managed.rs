//! The managed PostgreSQL cluster, the embedded default when `DATABASE_URL`
//! is unset.
//!
//! `DATA_DIR/postgres` holds a cluster initialised with scram-sha-256 and a
//! random superuser password kept in `DATA_DIR/postgres-password` (0600).
//! It listens on 127.0.0.1 (port chosen once, kept in `DATA_DIR/postgres-port`)
//! and a private socket in its own directory. The orchestrator starts it,
//! restarts it if it dies, and stops it cleanly on shutdown. PostgreSQL
//! refuses to run as root, so as root it runs as the `postgres` user.
//!
//! The server runs in a process group of its own and outlives the process
//! that started it when asked to: after an upgrade the new orchestrator
//! adopts the running server (its `postmaster.pid`, its port, its password)
//! instead of restarting it, so no waifu database session is cut. A server
//! that is running but cannot be adopted is stopped and started again, and
//! the sessions that cut are logged.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Superuser the orchestrator creates in its managed cluster.
const SUPERUSER: &str = "waifus";
/// Longest unix socket path PostgreSQL accepts, with room for the file name.
const MAX_SOCKET_DIR: usize = 80;

/// Why the managed cluster could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    #[error(
        "DATABASE_URL is not set, so the orchestrator runs its own PostgreSQL, but the \
         PostgreSQL server programs (initdb, postgres) were not found on PATH, via \
         `pg_config --bindir`, or in /usr/lib/postgresql/*/bin. Install them (Debian or \
         Ubuntu: `apt-get install postgresql`; Fedora: `dnf install postgresql-server`; \
         macOS: `brew install postgresql`), or set DATABASE_URL to a PostgreSQL server you run."
    )]
    NoBinaries,
    #[error(
        "running as root, PostgreSQL must run as an unprivileged user, but there is no \
         `postgres` user; install PostgreSQL from your distribution (which creates it) \
         or set DATABASE_URL"
    )]
    NoPostgresUser,
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initdb failed: {0}")]
    Initdb(String),
    #[error("the managed PostgreSQL did not start within 60 s; its log is {0}")]
    NotReady(PathBuf),
}

/// A running managed cluster.
#[derive(Debug)]
pub(crate) struct Managed {
    /// URL of the orchestrator's state database on the managed cluster.
    pub url: String,
    /// Cancelled to stop supervising: then `stopping` says whether to stop
    /// the server too.
    done: CancellationToken,
    stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
    supervisor: tokio::task::JoinHandle<()>,
}

/// The server process: our child, or one a previous orchestrator started.
#[derive(Debug)]
enum Postmaster {
    Child(Child),
    Adopted(rustix::process::Pid),
}

impl Postmaster {
    fn pid(&self) -> Option<rustix::process::Pid> {
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
struct Server {
    bindir: PathBuf,
    cluster: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
    log: PathBuf,
}

impl Managed {
    /// Initialises the cluster if needed, starts it and waits until it accepts
    /// connections.
    pub(crate) async fn start(data_dir: &Path) -> Result<Managed, ManagedError> {
        let bindir = find_bindir().ok_or(ManagedError::NoBinaries)?;
        let user = run_as()?;
        let data_dir = std::path::absolute(data_dir).map_err(io("resolve", data_dir))?;
        create_dir(&data_dir, if user.is_some() { 0o711 } else { 0o700 })?;
        let cluster = cluster_dir(&data_dir, user)?;
        let password = read_or_create_secret(&data_dir.join("postgres-password"))?;
        let port = read_or_pick_port(&data_dir.join("postgres-port"))?;
        if !cluster.join("PG_VERSION").exists() {
            initdb(&bindir, &data_dir, &cluster, &password, user).await?;
        }
        let server = Server {
            bindir,
            log: data_dir.join("postgres.log"),
            cluster,
            port,
            user,
        };
        let url = format!("postgres://{SUPERUSER}:{password}@127.0.0.1:{port}/waifus");
        let postmaster = match adoptable(&server, &password).await {
            Some(pid) => {
                info!(
                    pid = pid.as_raw_nonzero().get(),
                    port, "adopted the running managed PostgreSQL: no database session was cut"
                );
                Postmaster::Adopted(pid)
            }
            None => {
                stop_stale(&server, &password).await;
                let child = server.spawn()?;
                let child = wait_ready(&server, child, &password).await?;
                info!(port, cluster = %server.cluster.display(), "managed PostgreSQL is ready");
                Postmaster::Child(child)
            }
        };
        let done = CancellationToken::new();
        let stopping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let supervisor = tokio::spawn(supervise(
            server,
            password,
            postmaster,
            done.clone(),
            stopping.clone(),
        ));
        Ok(Managed {
            url,
            done,
            stopping,
            supervisor,
        })
    }

    /// Stops the cluster cleanly (fast shutdown) and waits for it; the
    /// waifu sessions that cut are logged.
    pub(crate) async fn stop(self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.done.cancel();
        let _ = self.supervisor.await;
    }

    /// Stops supervising and leaves the server running, for the
    /// orchestrator that took over (it adopted it).
    pub(crate) async fn leave_running(self) {
        self.done.cancel();
        let _ = self.supervisor.await;
        info!("left the managed PostgreSQL running for the new orchestrator");
    }
}

/// The server `postmaster.pid` names, if it runs and answers on our port
/// with our password: one a previous orchestrator left running.
async fn adoptable(server: &Server, password: &str) -> Option<rustix::process::Pid> {
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
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.ok()?;
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

/// The state database's URL on the managed cluster of `data_dir`, for a
/// command run beside a running orchestrator; `None` when no cluster was
/// ever set up there. Creates nothing.
pub(crate) fn url_of(data_dir: &Path) -> Result<Option<String>, ManagedError> {
    let read = |file: &str| {
        let path = data_dir.join(file);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ManagedError::Io {
                what: "read",
                path,
                source,
            }),
        }
    };
    let (Some(password), Some(port)) = (read("postgres-password")?, read("postgres-port")?) else {
        return Ok(None);
    };
    Ok(Some(format!(
        "postgres://{SUPERUSER}:{password}@127.0.0.1:{port}/waifus"
    )))
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ManagedError {
    let path = path.to_owned();
    move |source| ManagedError::Io { what, path, source }
}

/// The directory holding `initdb`, `postgres` and `pg_ctl`: on `PATH`, via
/// `pg_config --bindir`, or the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> Option<PathBuf> {
    find_bindir_in(
        std::env::var_os("PATH"),
        "pg_config",
        Path::new("/usr/lib/postgresql"),
    )
}

fn find_bindir_in(
    path: Option<std::ffi::OsString>,
    pg_config: &str,
    lib: &Path,
) -> Option<PathBuf> {
    let complete = |d: &Path| {
        ["initdb", "postgres", "pg_ctl"]
            .iter()
            .all(|p| d.join(p).is_file())
    };
    let on_path = path
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|d| complete(d));
    if on_path.is_some() {
        return on_path;
    }
    let from_pg_config = std::process::Command::new(pg_config)
        .arg("--bindir")
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|d| complete(d));
    if from_pg_config.is_some() {
        return from_pg_config;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let major = e
                .file_name()
                .to_string_lossy()
                .split('.')
                .next()?
                .parse()
                .ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, d)| complete(d))
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d)
}

/// Where the cluster lives: `DATA_DIR/postgres`, unless PostgreSQL's user
/// cannot reach it (as root, with DATA_DIR under a private directory such as
/// `/root`): then `/var/lib/waifus/postgres-{hash of DATA_DIR}`, said in a
/// WARN line. Everything else stays in DATA_DIR.
fn cluster_dir(data_dir: &Path, user: Option<(u32, u32)>) -> Result<PathBuf, ManagedError> {
    let preferred = data_dir.join("postgres");
    let Some((uid, gid)) = user else {
        return Ok(preferred);
    };
    let outside = data_dir
        .ancestors()
        .skip(1)
        .any(|dir| !searchable(dir, uid, gid));
    if !outside || preferred.join("PG_VERSION").exists() {
        return Ok(preferred);
    }
    let digest = <sha2::Sha256 as sha2::Digest>::digest(data_dir.as_os_str().as_encoded_bytes());
    let home = Path::new("/var/lib/waifus");
    create_dir(home, 0o711)?;
    let cluster = home.join(format!(
        "postgres-{}",
        &crate::provision::secret::hex(&digest)[..16]
    ));
    warn!(
        data_dir = %data_dir.display(),
        cluster = %cluster.display(),
        "the user postgres cannot reach DATA_DIR (a parent directory is private); \
         keeping the managed cluster outside it"
    );
    Ok(cluster)
}

/// Whether `uid`/`gid` may pass through `dir` (execute permission).
fn searchable(dir: &Path, uid: u32, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return false;
    };
    let mode = meta.mode();
    if meta.uid() == uid {
        mode & 0o100 != 0
    } else if meta.gid() == gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// `None` to run PostgreSQL as ourselves; the `postgres` user's ids as root.
pub fn run_as() -> Result<Option<(u32, u32)>, ManagedError> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
    if uid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"postgres"))
        .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
        .map(Some)
        .ok_or(ManagedError::NoPostgresUser)
}

fn create_dir(dir: &Path, mode: u32) -> Result<(), ManagedError> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(io("set permissions on", dir))
}

/// Reads a secret file, or creates it (0600) with 32 random bytes in hex.
fn read_or_create_secret(path: &Path) -> Result<String, ManagedError> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim();
        if !s.is_empty() {
            return Ok(s.to_owned());
        }
    }
    let bytes: [u8; 32] =
        crate::provision::secret::random_bytes().map_err(|e| ManagedError::Io {
            what: "generate a password for",
            path: path.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let secret = crate::provision::secret::hex(&bytes);
    write_private(path, &secret)?;
    Ok(secret)
}

fn write_private(path: &Path, contents: &str) -> Result<(), ManagedError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io("write", path))?;
    f.write_all(contents.as_bytes()).map_err(io("write", path))
}

/// The cluster's port: chosen once among free ports, then kept so the
/// credentials waifus cached stay valid.
fn read_or_pick_port(path: &Path) -> Result<u16, ManagedError> {
    if let Some(port) = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return Ok(port);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(io("find a free port for", path))?
        .port();
    write_private(path, &port.to_string())?;
    Ok(port)
}

fn command(path: PathBuf, user: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(path);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

async fn initdb(
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
    write_private(&pwfile, password)?;
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

impl Server {
    fn spawn(&self) -> Result<Child, ManagedError> {
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

/// A server that holds the data directory but cannot be adopted (it does
/// not answer as ours) is stopped before ours starts.
async fn stop_stale(server: &Server, password: &str) {
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

async fn wait_ready(
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
        if let Ok((client, conn)) = config.connect(tokio_postgres::NoTls).await {
            drop(client);
            let _ = conn.await;
            return Ok(child);
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill().await;
    Err(ManagedError::NotReady(server.log.clone()))
}

/// Restarts the server whenever it dies, until `done`; then, when
/// `stopping`, shuts it down cleanly (fast shutdown), else leaves it running.
async fn supervise(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bindir(root: &Path) -> PathBuf {
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for p in ["initdb", "postgres", "pg_ctl"] {
            std::fs::write(bin.join(p), "").unwrap();
        }
        bin
    }

    #[test]
    fn private_parents_are_detected() {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!("waifus-search-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&root).unwrap();
        let other = (54_321, 54_321);
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!searchable(&root, other.0, other.1));
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert!(searchable(&root, other.0, other.1));
        // Not root-specific: without another user, the preferred place is kept.
        assert_eq!(cluster_dir(&root, None).unwrap(), root.join("postgres"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn binaries_are_found_in_order_or_explained() {
        let root = std::env::temp_dir().join(format!("waifus-bindir-{}", fastrand::u64(..)));
        let nowhere = root.join("nowhere");
        assert_eq!(
            find_bindir_in(None, "/nonexistent/pg_config", &nowhere),
            None
        );

        // /usr/lib/postgresql/*/bin: the newest major version wins.
        let lib = root.join("lib");
        fake_bindir(&lib.join("9.6"));
        let newest = fake_bindir(&lib.join("16"));
        fake_bindir(&lib.join("15"));
        assert_eq!(
            find_bindir_in(None, "/nonexistent/pg_config", &lib),
            Some(newest)
        );

        // PATH comes first; a directory missing pg_ctl does not count.
        let on_path = fake_bindir(&root.join("path"));
        let partial = root.join("partial");
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(partial.join("initdb"), "").unwrap();
        let path = std::env::join_paths([&partial, &on_path]).unwrap();
        assert_eq!(
            find_bindir_in(Some(path), "/nonexistent/pg_config", &lib),
            Some(on_path)
        );
        std::fs::remove_dir_all(&root).unwrap();

        let message = ManagedError::NoBinaries.to_string();
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("DATABASE_URL"), "{message}");
    }
}
