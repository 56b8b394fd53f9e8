//! What a conformance run runs: a throwaway orchestrator (this binary, on
//! its own managed PostgreSQL in a temporary directory) and the waifu's
//! instances, each a process of the command under test.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

/// A port free now on 127.0.0.1.
pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The orchestrator the run uses: its internal and public addresses.
#[derive(Debug)]
pub(super) struct Orchestrator {
    pub internal: String,
    pub public: SocketAddr,
    /// The throwaway one's process, stopped when the run ends.
    own: Option<Child>,
}

impl Orchestrator {
    /// One that runs already.
    pub fn given(internal: &str, public: SocketAddr) -> Orchestrator {
        Orchestrator {
            internal: internal.trim_end_matches('/').to_owned(),
            public,
            own: None,
        }
    }

    /// A throwaway one in `dir`, ready to serve.
    pub async fn start(dir: &Path) -> anyhow::Result<Orchestrator> {
        let internal: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let public: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let log = std::fs::File::create(dir.join("orchestrator.log"))?;
        let exe = std::env::current_exe().context("this program's path")?;
        let mut cmd = Command::new(exe);
        // Only what the run sets: no operator's database, tokens or TLS.
        cmd.arg("serve")
            .env_clear()
            .envs(std::env::var_os("PATH").map(|p| ("PATH", p)))
            .env("DATA_DIR", dir.join("data"))
            .env("PUBLIC_ADDR", public.to_string())
            .env("INTERNAL_ADDR", internal.to_string())
            .env("MAIN_DOMAIN", "localhost")
            .env("HEALTH_INTERVAL", "500ms")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd.spawn().context("starting a throwaway orchestrator")?;
        let orchestrator = Orchestrator {
            internal: format!("http://{internal}"),
            public,
            own: Some(child),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            if tokio::net::TcpStream::connect(internal).await.is_ok()
                && tokio::net::TcpStream::connect(public).await.is_ok()
            {
                return Ok(orchestrator);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the throwaway orchestrator did not start within 120 s: see {}",
                dir.join("orchestrator.log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the throwaway one (SIGTERM: it stops its PostgreSQL too).
    pub async fn stop(&mut self) {
        if let Some(child) = &mut self.own {
            stop(child, Duration::from_secs(30)).await;
        }
    }
}

/// SIGTERM, then SIGKILL if `child` has not exited within `grace`.
pub(super) async fn stop(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    signal(child);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    }
}

/// SIGTERM to `child`, if it still runs.
pub(super) fn signal(child: &Child) {
    if let Some(pid) = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(i32::try_from(id).ok()?))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// One instance of the waifu under test.
#[derive(Debug)]
pub(super) struct Instance {
    pub child: Child,
    /// What it was told to announce as its host.
    pub host: String,
    pub log: PathBuf,
}

/// What every instance is told.
#[derive(Debug, Clone)]
pub(super) struct Told {
    pub command: Vec<OsString>,
    pub orchestrator_url: String,
    pub name: String,
    pub version: String,
    pub secret: String,
    pub dir: PathBuf,
}

impl Told {
    /// Starts instance `label` on a free port.
    pub fn start(&self, label: &str) -> anyhow::Result<Instance> {
        let port = free_port()?;
        let host = format!("127.0.0.1:{port}");
        let log = self.dir.join(format!("{label}.log"));
        let out = std::fs::File::create(&log)?;
        let cache = self.dir.join(format!("{label}.cache"));
        std::fs::create_dir_all(&cache)?;
        let program = self.command.first().context("no command to run")?;
        let child = Command::new(program)
            .args(&self.command[1..])
            .env("ORCHESTRATOR_URL", &self.orchestrator_url)
            .env("WAIFU_NAME", &self.name)
            .env("WAIFU_HOST", &host)
            .env("PORT", port.to_string())
            .env("LISTEN_ADDR", "127.0.0.1")
            .env("WAIFU_VERSION", &self.version)
            .env("WAIFU_SECRET", &self.secret)
            .env("WAIFU_CACHE_DIR", &cache)
            .env_remove("WAIFU_SECRET_FILE")
            .env_remove("WAIFU_BINDS")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {program:?}"))?;
        Ok(Instance { child, host, log })
    }
}
