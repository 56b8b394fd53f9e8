//! A throwaway PostgreSQL cluster, shared by the tests of one binary.
//!
//! `initdb` + `postgres` on a free loopback port with scram-sha-256, as the
//! unprivileged `postgres` user when the tests run as root (PostgreSQL
//! refuses to run as root). A small `sh` supervisor owns the server: it reads
//! its stdin, a pipe held by this process, so when the test binary exits for
//! any reason the pipe closes and the supervisor stops PostgreSQL and removes
//! the cluster.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::free_port;

/// The running cluster.
#[derive(Debug)]
pub struct PgCluster {
    pub port: u16,
    pub user: String,
    pub password: String,
    /// The cluster's directory (`data/postmaster.pid` names the server).
    dir: PathBuf,
    /// The supervisor; its stdin pipe is the cluster's lifeline.
    _supervisor: Child,
}

static CLUSTER: OnceLock<PgCluster> = OnceLock::new();

/// Where PostgreSQL's server programs are, and whom to run them as.
#[derive(Debug, Clone)]
pub struct Programs {
    /// The directory holding `initdb` and `postgres`.
    pub bindir: PathBuf,
    /// uid and gid to run them as: `None` to run as ourselves; as root,
    /// the `postgres` user's (PostgreSQL refuses to run as root).
    pub run_as: Option<(u32, u32)>,
}

impl Programs {
    /// `initdb` on `PATH`, else the newest `/usr/lib/postgresql/*/bin`
    /// (Debian's `postgresql` package); as root, the `postgres` user. Test
    /// support looks for itself rather than through the code it tests.
    pub fn find() -> Programs {
        let complete = |d: &Path| ["initdb", "postgres"].iter().all(|p| d.join(p).is_file());
        let on_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .find(|d| complete(d));
        let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .filter(|(_, d)| complete(d))
            .collect();
        debian.sort();
        let bindir = on_path.or(debian.pop().map(|(_, d)| d)).unwrap_or_else(|| {
            panic!(
                "PostgreSQL server programs (initdb, postgres) were not found on PATH or in \
                 /usr/lib/postgresql/*/bin: install the Debian package `postgresql` \
                 (apt-get install postgresql)"
            )
        });
        Programs {
            bindir,
            run_as: postgres_user(),
        }
    }
}

/// `None` unless we are root; then the `postgres` user's uid and gid.
fn postgres_user() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid()) != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let user = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"postgres"))
        .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)));
    assert!(
        user.is_some(),
        "running as root, PostgreSQL needs the user `postgres` (the Debian package creates it)"
    );
    user
}

/// The shared cluster of this test binary, started on first use.
pub fn cluster() -> &'static PgCluster {
    CLUSTER.get_or_init(dedicated)
}

/// A cluster of the caller's own, for a test that stops its server (the
/// shared one serves every other test); gone when it is dropped.
pub fn dedicated() -> PgCluster {
    start(&Programs::find())
}

impl PgCluster {
    /// URL of a database that is unique to the caller; the orchestrator
    /// creates it.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{database}",
            self.user, self.password, self.port
        )
    }
}

impl PgCluster {
    /// Sends `signal` (`STOP`, `CONT`) to the server and every process it
    /// started, as `kill` would: `STOP` freezes it with its sockets open,
    /// which no timeout on the client's side of TCP notices.
    pub fn signal_server(&self, signal: &str) {
        let pid =
            std::fs::read_to_string(self.dir.join("data/postmaster.pid")).expect("postmaster.pid");
        let pid = pid.lines().next().expect("a pid").trim().to_owned();
        // Its children, from /proc (field 4 of `stat` is the parent).
        let mut pids = vec![pid.clone()];
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            if after_name.split_whitespace().nth(1) == Some(pid.as_str()) {
                pids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .args(&pids)
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pids:?}");
    }

    /// A superuser connection to `database`, to inspect what the
    /// orchestrator did.
    pub async fn superuser(&self, database: &str) -> tokio_postgres::Client {
        self.connect(&self.user, &self.password, database)
            .await
            .unwrap_or_else(|e| panic!("superuser connection to {database}: {e}"))
    }

    /// A password-authenticated TCP connection, as a waifu would open one.
    pub async fn connect(
        &self,
        user: &str,
        password: &str,
        database: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(database)
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// `pg_dumpall` of the whole cluster, as text.
    pub fn dumpall(&self) -> String {
        let candidates = std::iter::once(Programs::find().bindir).chain(
            std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("bin")),
        );
        let program = candidates
            .map(|d| d.join("pg_dumpall"))
            .find(|p| p.is_file())
            .expect("pg_dumpall (Debian package postgresql-client)");
        let out = Command::new(program)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                &self.user,
            ])
            .env("PGPASSWORD", &self.password)
            .output()
            .expect("run pg_dumpall");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A database name nobody else in this run uses.
pub fn unique_db(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}_{}_{n}", std::process::id())
}

fn command(path: impl AsRef<Path>, user: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(path.as_ref());
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn start(programs: &Programs) -> PgCluster {
    let mut log = String::new();
    for _attempt in 0..5 {
        match try_start(&programs.bindir, programs.run_as) {
            Ok(cluster) => return cluster,
            Err(why) => {
                eprintln!("PostgreSQL did not start, retrying: {why}");
                log = why;
            }
        }
    }
    panic!("PostgreSQL did not start: {log}");
}

/// One attempt: a new cluster directory, initdb, and the server on a free
/// port. On failure the supervisor is told to stop and clean up.
fn try_start(bin: &Path, user: Option<(u32, u32)>) -> Result<PgCluster, String> {
    // As root, PostgreSQL runs as `postgres`, which may not reach $TMPDIR.
    let tmp = if user.is_some() {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    };
    let dir = tmp.join(format!(
        "waifus-pg-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).expect("cluster directory");
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown cluster directory");
    }
    let password = format!("pw{:016x}", fastrand::u64(..));
    let pwfile = dir.join("pwfile");
    std::fs::File::create(&pwfile)
        .and_then(|mut f| f.write_all(password.as_bytes()))
        .expect("password file");
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).expect("chown password file");
    }
    let data = dir.join("data");
    let out = command(bin.join("initdb"), user)
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "waifus",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .current_dir(&dir)
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let script = format!(
        "'{postgres}' -D '{data}' -p {port} -k '{dir}' -c listen_addresses=127.0.0.1 \
         -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
         -c max_connections=300 >'{dir}/log' 2>&1 & pid=$!; \
         read _ignored; kill -INT $pid; wait $pid; rm -rf '{dir}'",
        postgres = bin.join("postgres").display(),
        data = data.display(),
        dir = dir.display(),
    );
    let mut supervisor = command("/bin/sh", user)
        .arg("-c")
        .arg(&script)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .spawn()
        .expect("start the PostgreSQL supervisor");
    let deadline = Instant::now() + Duration::from_secs(60);
    // What the server logs when it cannot take the port or the directory.
    // (A FATAL line alone is normal: probes during start-up log one.)
    let failed = |log: &str| {
        [
            "could not bind",
            "could not create any TCP/IP sockets",
            "lock file",
        ]
        .iter()
        .any(|s| log.contains(s))
    };
    while Instant::now() < deadline {
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        let ready = log.contains("database system is ready to accept connections");
        if ready {
            return Ok(PgCluster {
                port,
                user: "waifus".into(),
                password,
                dir,
                _supervisor: supervisor,
            });
        }
        if failed(&log) || supervisor.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    // Closing its stdin makes the supervisor stop the server and clean up.
    drop(supervisor.stdin.take());
    let _ = supervisor.wait();
    Err(format!("port {port}: {log}"))
}
