//! A waifu's settings: from the environment or in code, and its secret,
//! which a rotation or a replaced secret file changes while it runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::{ConfigError, DEFAULT_DRAIN, DEFAULT_REHELLO, Waifu, config, read_secret_file};

impl Waifu {
    /// Settings from the environment: `ORCHESTRATOR_URL` (default
    /// `http://orchestrator:2137`), `WAIFU_NAME` (default: the hostname),
    /// `WAIFU_HOST` (default `{hostname}:{PORT}`), `PORT` (default 8080),
    /// `WAIFU_SECRET`, `ORCHESTRATOR_TOKEN`, `WAIFU_VERSION`, `WAIFU_BINDS`
    /// (a JSON object like `additionalBinds`), `WAIFU_CACHE_DIR`, and
    /// `LISTEN_ADDR` (default `0.0.0.0`: all interfaces). `WAIFU_SECRET_FILE`
    /// and `ORCHESTRATOR_TOKEN_FILE` name files holding those two (Docker
    /// and Kubernetes secrets), read without their trailing newline.
    ///
    /// ```no_run
    /// let waifu = waifu::Waifu::from_env().expect("valid settings");
    /// ```
    pub fn from_env() -> Result<Waifu, ConfigError> {
        config::from_vars(|k| std::env::var(k).ok(), &config::hostname())
    }

    /// Settings as [`Waifu::from_env`] reads them, but from `lookup`
    /// (a program that takes some of them from its command line asks the
    /// environment for the others).
    ///
    /// ```no_run
    /// let waifu = waifu::Waifu::from_lookup(|k| match k {
    ///     "PORT" => Some("9000".to_owned()),
    ///     _ => std::env::var(k).ok(),
    /// })?;
    /// # Ok::<(), waifu::ConfigError>(())
    /// ```
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Waifu, ConfigError> {
        config::from_vars(lookup, &config::hostname())
    }

    /// Settings in code: a name and the address the orchestrator reaches
    /// this waifu at. Everything else as in [`Waifu::from_env`]'s defaults.
    ///
    /// ```
    /// let waifu = waifu::Waifu::new("hello", "hello:8080").port(8080);
    /// assert_eq!(waifu.name(), "hello");
    /// ```
    pub fn new(name: impl Into<String>, host: impl Into<String>) -> Waifu {
        Waifu {
            orchestrator: "http://orchestrator:2137".to_owned(),
            name: name.into(),
            host: host.into(),
            port: 8080,
            listen: std::net::IpAddr::from([0, 0, 0, 0]),
            secret: Arc::default(),
            secret_file: None,
            file_seen: Arc::default(),
            token: None,
            binds: BTreeMap::new(),
            cache_dir: None,
            rehello_every: DEFAULT_REHELLO,
            version: None,
            drain_for: DEFAULT_DRAIN,
            health: None,
            credentials: Arc::default(),
            rotation: Arc::default(),
        }
    }

    /// The orchestrator's internal URL.
    ///
    /// ```
    /// let w = waifu::Waifu::new("a", "a:1").orchestrator("http://127.0.0.1:2137");
    /// ```
    pub fn orchestrator(mut self, url: impl Into<String>) -> Self {
        self.orchestrator = url.into().trim_end_matches('/').to_owned();
        self
    }

    /// The port to listen on (all interfaces).
    ///
    /// ```
    /// let w = waifu::Waifu::new("a", "a:9000").port(9000);
    /// ```
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The address to listen on (default `0.0.0.0`, all interfaces).
    ///
    /// ```
    /// let w = waifu::Waifu::new("a", "127.0.0.1:9000").listen([127, 0, 0, 1].into());
    /// ```
    pub fn listen(mut self, addr: std::net::IpAddr) -> Self {
        self.listen = addr;
        self
    }

    /// The secret guarding this waifu's database.
    ///
    /// ```
    /// let w = waifu::Waifu::new("a", "a:1").secret("from-a-vault");
    /// ```
    pub fn secret(self, secret: impl Into<String>) -> Self {
        self.set_secret(Some(secret.into()));
        self
    }

    /// The bearer token of the orchestrator's internal API
    /// (`ORCHESTRATOR_TOKEN`, its `INTERNAL_TOKEN`).
    ///
    /// ```
    /// let w = waifu::Waifu::new("a", "a:1").token("from-a-vault");
    /// ```
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// An additional public bind: `url` (e.g. `https://link.waifu`) is
    /// served by this waifu's path `target` (e.g. `/link`).
    ///
    /// ```
    /// let w = waifu::Waifu::new("link", "link:8080").bind("https://link.waifu", "/link");
    /// ```
    pub fn bind(mut self, url: impl Into<String>, target: impl Into<String>) -> Self {
        self.binds.insert(url.into(), target.into());
        self
    }

    /// Where database credentials are cached (0600), for when the
    /// orchestrator is unreachable at start.
    ///
    /// ```
    /// let w = waifu::Waifu::new("a", "a:1").cache_dir("/var/cache/a");
    /// ```
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// How often to say hello again while running (default 30 s).
    ///
    /// ```
    /// let w = waifu::Waifu::new("a", "a:1").rehello_every(std::time::Duration::from_secs(10));
    /// ```
    pub fn rehello_every(mut self, every: Duration) -> Self {
        self.rehello_every = every;
        self
    }

    /// The version this instance runs, sent with every hello
    /// (`WAIFU_VERSION`). While an instance of the newest announced version
    /// is healthy, only that version's instances get requests.
    ///
    /// ```
    /// let w = waifu::Waifu::new("a", "a:1").version("1.4.2");
    /// ```
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// The version to announce unless `WAIFU_VERSION` (or
    /// [`Waifu::version`]) set one: typically the waifu's own crate version.
    ///
    /// ```no_run
    /// let w = waifu::Waifu::from_env()?.default_version(env!("CARGO_PKG_VERSION"));
    /// # Ok::<(), waifu::ConfigError>(())
    /// ```
    pub fn default_version(mut self, version: impl Into<String>) -> Self {
        if self.version.is_none() {
            self.version = Some(version.into());
        }
        self
    }

    /// How long requests in flight may take to finish after SIGTERM
    /// (default 25 s).
    ///
    /// ```
    /// let w = waifu::Waifu::new("a", "a:1").drain_for(std::time::Duration::from_secs(10));
    /// ```
    pub fn drain_for(mut self, within: Duration) -> Self {
        self.drain_for = within;
        self
    }

    /// The path the orchestrator checks this waifu's health at, sent with
    /// every hello; any 2xx answer there is healthy. Unset, the protocol's
    /// `GET /__internal/health` answering 204 is the rule ([`Waifu::serve`]
    /// serves it).
    ///
    /// ```
    /// let w = waifu::Waifu::new("a", "a:1").health_path("/healthz");
    /// assert_eq!(w.health(), Some("/healthz"));
    /// ```
    pub fn health_path(mut self, path: impl Into<String>) -> Self {
        self.health = Some(path.into());
        self
    }

    /// The health path sent with each hello, if one was set.
    pub fn health(&self) -> Option<&str> {
        self.health.as_deref()
    }

    /// The port it listens on ([`Waifu::port`], `PORT`).
    ///
    /// ```
    /// assert_eq!(waifu::Waifu::new("a", "a:9000").port(9000).listening_port(), 9000);
    /// ```
    pub fn listening_port(&self) -> u16 {
        self.port
    }

    /// How long requests in flight may take after SIGTERM
    /// ([`Waifu::drain_for`]).
    pub fn drain_time(&self) -> Duration {
        self.drain_for
    }

    /// The waifu's name.
    ///
    /// ```
    /// assert_eq!(waifu::Waifu::new("a", "a:1").name(), "a");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads the secret from `file` now and again when PostgreSQL refuses
    /// the database password (as `WAIFU_SECRET_FILE` does): an operator
    /// who rotated the secret replaces the file, and the waifu follows
    /// without a restart.
    ///
    /// ```no_run
    /// let waifu = waifu::Waifu::new("link", "link:8080").secret_file("/run/secrets/link");
    /// ```
    pub fn secret_file(mut self, file: impl Into<PathBuf>) -> Self {
        let file = file.into();
        let secret = read_secret_file(&file);
        if let Some(secret) = &secret {
            self.set_secret(Some(secret.clone()));
        }
        *self.file_seen.lock().unwrap_or_else(|e| e.into_inner()) = secret;
        self.secret_file = Some(file);
        self
    }

    /// Reads the secret file again, if there is one; what it holds becomes
    /// the secret only if the file changed since it was last read.
    pub(crate) fn reread_secret_file(&self) {
        let Some(secret) = self.secret_file.as_deref().and_then(read_secret_file) else {
            return;
        };
        let mut seen = self.file_seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.as_deref() == Some(secret.as_str()) {
            return;
        }
        *seen = Some(secret.clone());
        if self.current_secret().as_deref() != Some(secret.as_str()) {
            tracing::info!("the secret file holds a new secret");
            self.set_secret(Some(secret));
        }
    }

    /// Whether the secret comes from a file (which may change).
    pub(crate) fn has_secret_file(&self) -> bool {
        self.secret_file.is_some()
    }

    /// The secret in use now (a rotation changes it).
    pub(crate) fn current_secret(&self) -> Option<String> {
        self.secret
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_secret(&self, secret: Option<String>) {
        *self.secret.write().unwrap_or_else(|e| e.into_inner()) = secret;
    }
}
