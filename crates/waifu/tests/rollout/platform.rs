//! One orchestrator on its own managed PostgreSQL, and one request of its own.

use super::*;

/// The orchestrator binary, built beside this test's binary by
/// `cargo test --workspace`.
pub(crate) fn orchestrator_bin() -> PathBuf {
    waifus_testkit::workspace_binary("orchestrator")
}

/// One orchestrator with its own managed PostgreSQL in a temporary directory
/// (removed when the test passes).
pub(crate) struct Platform {
    pub(crate) dir: PathBuf,
    pub(crate) public: SocketAddr,
    pub(crate) internal: SocketAddr,
    pub(crate) orchestrator: Proc,
}

impl Drop for Platform {
    fn drop(&mut self) {
        // SIGTERM, so that the orchestrator stops its PostgreSQL: the one
        // started, or the one an upgrade put in its place.
        let serving = self.pid();
        let _ = Command::new("kill")
            .args(["-TERM", &self.orchestrator.id().to_string()])
            .status();
        if let Some(pid) = serving {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let started_gone = self.orchestrator.exited().is_some();
            if started_gone && serving.is_none_or(|pid| !alive(pid)) {
                if !std::thread::panicking() {
                    let _ = std::fs::remove_dir_all(&self.dir);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether process `pid` still runs (a zombie, exited but not yet
/// reaped by its parent, does not).
pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

impl Platform {
    pub(crate) async fn start(test: &str) -> Platform {
        Platform::start_with(test, &orchestrator_bin()).await
    }

    /// With the orchestrator binary at `binary`.
    pub(crate) async fn start_with(test: &str, binary: &Path) -> Platform {
        Platform::start_env(test, binary, &[]).await
    }

    /// With the orchestrator binary at `binary` and more settings.
    pub(crate) async fn start_env(test: &str, binary: &Path, env: &[(&str, &str)]) -> Platform {
        let dir = std::env::temp_dir().join(format!(
            "waifus-rollout-{test}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let internal: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let orchestrator = Proc::spawn(
            Command::new(binary)
                .env("DATA_DIR", dir.join("data"))
                .env("PUBLIC_ADDR", public.to_string())
                .env("INTERNAL_ADDR", internal.to_string())
                .env("HEALTH_INTERVAL", "500ms")
                .envs(env.iter().copied())
                .stderr(std::fs::File::create(dir.join("orchestrator.log")).unwrap()),
        )
        .killed_when_dropped();
        let platform = Platform {
            dir,
            public,
            internal,
            orchestrator,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while fetch(public, "GET", "/__nothing", None).await.is_none() {
            assert!(
                Instant::now() < deadline,
                "the orchestrator did not start: see {}",
                platform.dir.join("orchestrator.log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        platform
    }

    /// The process id of the orchestrator serving now (its pid file).
    pub(crate) fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("data/orchestrator.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// A waifu of this SDK, named `name`, announcing `version`.
    pub(crate) fn sdk_waifu(
        &self,
        name: &str,
        version: &str,
        label: &str,
    ) -> (Proc, PathBuf, String) {
        self.sdk_waifu_with(name, version, label, &[])
    }

    /// The same, with more of its settings.
    pub(crate) fn sdk_waifu_with(
        &self,
        name: &str,
        version: &str,
        label: &str,
        env: &[(&str, &str)],
    ) -> (Proc, PathBuf, String) {
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let log = self.dir.join(format!("{label}.keys"));
        let waifu = Proc::spawn(
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "rollout_waifu",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(AS_WAIFU, &log)
                .env("ORCHESTRATOR_URL", format!("http://{}", self.internal))
                .env("WAIFU_NAME", name)
                .env("WAIFU_HOST", &host)
                .env("WAIFU_VERSION", version)
                .env("PORT", port.to_string())
                .env("LISTEN_ADDR", "127.0.0.1")
                .env("RUST_LOG", "info")
                .env("WAIFU_CACHE_DIR", self.dir.join(format!("{label}.cache")))
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(self.dir.join(format!("{label}.log"))).unwrap()),
        )
        .killed_when_dropped();
        (waifu, log, host)
    }

    /// Waits until `GET /{name}/` answers 200 with a body starting with `prefix`.
    pub(crate) async fn until_answered(&self, name: &str, prefix: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((200, body)) = fetch(self.public, "GET", &format!("/{name}/"), None).await
                && body.starts_with(prefix)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/{name}/ never answered {prefix:?}: see {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `name` has `count` healthy instances that are not draining.
    pub(crate) async fn until_serving(&self, name: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let serving = match fetch(self.internal, "GET", "/__internal/waifus", None).await {
                Some((200, body)) => {
                    let list: Vec<waifu::waifus_protocol::WaifuInfo> =
                        serde_json::from_str(&body).unwrap();
                    list.iter()
                        .filter(|w| w.name == name)
                        .flat_map(|w| &w.instances)
                        .filter(|i| i.healthy && !i.draining)
                        .count()
                }
                _ => 0,
            };
            if serving == count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never had {count} instances serving"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The actions of `name`'s audit log, newest first.
    pub(crate) async fn audited(&self, name: &str) -> Vec<String> {
        let path = format!("/__internal/audit?name={name}");
        let (status, audit) = fetch(self.internal, "GET", &path, None).await.unwrap();
        assert_eq!(status, 200, "{audit}");
        let audit: Vec<serde_json::Value> = serde_json::from_str(&audit).unwrap();
        audit
            .iter()
            .map(|e| e["action"].as_str().unwrap().to_owned())
            .collect()
    }

    /// `orchestrator db ARGS` on this platform's managed PostgreSQL; its
    /// standard output.
    pub(crate) fn db(&self, args: &[&str]) -> String {
        let out = Command::new(orchestrator_bin())
            .arg("db")
            .args(args)
            .env("DATA_DIR", self.dir.join("data"))
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "orchestrator db {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// When `name`'s audit log says `action` last happened, in Unix ms.
    pub(crate) async fn audited_at(&self, name: &str, action: &str) -> u128 {
        let path = format!("/__internal/audit?name={name}");
        let (_, audit) = fetch(self.internal, "GET", &path, None).await.unwrap();
        let audit: Vec<serde_json::Value> = serde_json::from_str(&audit).unwrap();
        let time = audit
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("no {action} in {audit:?}"))["time"]
            .as_str()
            .unwrap()
            .to_owned();
        unix_ms(&time)
    }

    /// When this platform's orchestrator last acknowledged a pause of
    /// `name` (it held its requests and had none in flight), in Unix ms:
    /// read from the state database of the managed cluster.
    pub(crate) async fn acknowledged_at(&self, name: &str) -> u128 {
        let client = self.superuser("waifus").await;
        let at: i64 = client
            .query_one(
                "SELECT floor(extract(epoch FROM at) * 1000)::bigint FROM switch_acks WHERE name = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        u128::try_from(at).unwrap()
    }

    /// A superuser session on database `dbname` of the managed cluster.
    pub(crate) async fn superuser(&self, dbname: &str) -> tokio_postgres::Client {
        let data = self.dir.join("data");
        let read = |f: &str| {
            std::fs::read_to_string(data.join(f))
                .unwrap()
                .trim()
                .to_owned()
        };
        let (password, port) = (read("postgres-password"), read("postgres-port"));
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(port.parse().unwrap())
            .user("waifus")
            .password(password)
            .dbname(dbname)
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }

    pub(crate) async fn goodbye(&self, name: &str, host: &str) {
        let body = serde_json::json!({ "name": name, "host": host }).to_string();
        let answer = fetch(self.internal, "POST", "/__internal/goodbye", Some(body)).await;
        assert_eq!(answer.map(|a| a.0), Some(200), "goodbye");
    }
}

/// One request with its own connection; `None` when it could not be done.
pub(crate) async fn fetch(
    to: SocketAddr,
    method: &str,
    path: &str,
    json: Option<String>,
) -> Option<(u16, String)> {
    let call = waifus_testkit::http::Call {
        headers: &[("host", "localhost"), ("content-type", "application/json")],
        body: json.unwrap_or_default().into(),
        ..waifus_testkit::http::Call::new(method.parse().ok()?, path)
    };
    let reply = waifus_testkit::http::send(to, call).await.ok()?;
    Some((reply.status.as_u16(), reply.text()))
}
