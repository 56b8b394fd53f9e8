//! Write a waifu in minutes.
//!
//! A waifu is a small HTTP app behind the waifus orchestrator. This SDK does
//! the protocol for you: it serves `GET /__internal/health`
//! with 204, says hello to the orchestrator with retry and backoff (a waifu
//! may start long before the orchestrator), with its secret (which claims
//! its name from the first start) and its token, says hello again
//! periodically so an orchestrator that forgot it learns it again, asks for
//! and caches its database credentials, and on SIGTERM or SIGINT says
//! goodbye and finishes the requests in flight before it exits.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let app = Router::new().route("/", get(|| async { "hello" }));
//!     waifu::Waifu::from_env()?.serve(app).await?;
//!     Ok(())
//! }
//! ```

mod client;
mod config;
mod database;
mod serve;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use tracing::{info, warn};
use waifus_protocol::{DatabaseCredentials, Goodbye, Hello, HelloResponse};

pub use client::CallError;
pub use config::ConfigError;
pub use database::{Database, DatabaseError, Unavailable};
pub use waifus_protocol;

/// How often a running waifu says hello again by default.
pub const DEFAULT_REHELLO: Duration = Duration::from_secs(30);

/// How long requests in flight may take to finish after SIGTERM, by
/// default: under the 30 s container runtimes wait before `SIGKILL`.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(25);

/// How long a waifu that said goodbye keeps accepting connections, so that
/// every orchestrator (several may share the state) has stopped sending to
/// it before it stops listening.
pub const GOODBYE_GRACE: Duration = Duration::from_secs(1);

/// One waifu: who it is, where it listens, how to reach the orchestrator.
/// Its `Debug` shows neither its secret nor its token.
#[derive(Clone)]
pub struct Waifu {
    orchestrator: String,
    name: String,
    host: String,
    port: u16,
    listen: std::net::IpAddr,
    /// Claims the name with the first hello, guards the database; shared by
    /// the clones of this waifu (the hello loop, the pool), so a rotation
    /// reaches them all.
    secret: Arc<std::sync::RwLock<Option<String>>>,
    /// Where the secret came from (`WAIFU_SECRET_FILE`): read again when
    /// PostgreSQL refuses the password, so an operator rotates a waifu's
    /// secret by rotating it and replacing the file.
    secret_file: Option<PathBuf>,
    /// What the secret file held when last read. Only a change of the file
    /// replaces the secret in use: after this instance rotated the secret
    /// itself, the file still holds the old one until the operator
    /// replaces it, and that old one is never taken back.
    file_seen: Arc<std::sync::Mutex<Option<String>>>,
    /// Sent as `Authorization: Bearer` on every call to the orchestrator.
    token: Option<String>,
    binds: BTreeMap<String, String>,
    cache_dir: Option<PathBuf>,
    rehello_every: Duration,
    /// What this instance runs, announced in every hello.
    version: Option<String>,
    /// How long in-flight requests may take to finish after SIGTERM.
    drain_for: Duration,
    credentials: Arc<Mutex<Option<DatabaseCredentials>>>,
}

impl std::fmt::Debug for Waifu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "(hidden)");
        f.debug_struct("Waifu")
            .field("orchestrator", &self.orchestrator)
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("listen", &self.listen)
            .field("secret", &hidden(&self.current_secret()))
            .field("token", &hidden(&self.token))
            .field("binds", &self.binds)
            .field("cache_dir", &self.cache_dir)
            .field("rehello_every", &self.rehello_every)
            .field("version", &self.version)
            .field("drain_for", &self.drain_for)
            .finish_non_exhaustive()
    }
}

/// A secret file's content without its trailing newline; `None` when it
/// cannot be read or is empty.
fn read_secret_file(file: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let text = text.trim_end_matches(['\n', '\r']);
    (!text.is_empty()).then(|| text.to_owned())
}

/// Why `serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listening socket could not be opened.
    #[error("could not listen on port {port}: {source}")]
    Listen {
        /// The port asked for.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("the server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Why one hello failed.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The orchestrator could not be reached.
    #[error(transparent)]
    Unreachable(#[from] CallError),
    /// The orchestrator answered with an error (a bad name or host: fix the
    /// settings; 5xx: it will be retried).
    #[error("the orchestrator refused the hello ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// The orchestrator's message.
        message: String,
    },
}

impl HelloError {
    /// Whether trying again later can help (unreachable or 5xx).
    ///
    /// ```no_run
    /// # async fn f(w: waifu::Waifu) {
    /// if let Err(e) = w.hello().await {
    ///     assert!(e.is_transient() || e.to_string().contains("refused"));
    /// }
    /// # }
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            HelloError::Unreachable(_) => true,
            HelloError::Refused { status, .. } => status.is_server_error(),
        }
    }
}

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
            credentials: Arc::default(),
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

    /// The waifu's name.
    ///
    /// ```
    /// assert_eq!(waifu::Waifu::new("a", "a:1").name(), "a");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Says hello once.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), waifu::HelloError> {
    /// let answer = waifu::Waifu::new("a", "a:8080").hello().await?;
    /// println!("reachable at {}", answer.url);
    /// # Ok(()) }
    /// ```
    pub async fn hello(&self) -> Result<HelloResponse, HelloError> {
        // A rotated secret replaced in its file is used from the next hello.
        self.reread_secret_file();
        let url = format!("{}/__internal/hello", self.orchestrator);
        let hello = Hello {
            name: self.name.clone(),
            host: self.host.clone(),
            additional_binds: self.binds.clone(),
            secret: self.current_secret(),
            version: self.version.clone(),
        };
        let (status, body) = client::post_json(&url, &hello, self.token.as_deref()).await?;
        if status != StatusCode::OK {
            return Err(HelloError::Refused {
                status,
                message: client::error_message(&body),
            });
        }
        serde_json::from_slice(&body).map_err(|e| HelloError::Refused {
            status,
            message: format!("unexpected answer: {e}"),
        })
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

    /// Says goodbye: the orchestrator sends this instance no new request
    /// (on every orchestrator within a second) and removes it once the
    /// requests in flight are done.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), waifu::HelloError> {
    /// waifu::Waifu::new("a", "a:8080").goodbye().await?;
    /// # Ok(()) }
    /// ```
    pub async fn goodbye(&self) -> Result<(), HelloError> {
        let url = format!("{}/__internal/goodbye", self.orchestrator);
        let goodbye = Goodbye {
            name: self.name.clone(),
            host: self.host.clone(),
            secret: self.current_secret(),
        };
        let (status, body) = client::post_json(&url, &goodbye, self.token.as_deref()).await?;
        if status != StatusCode::OK {
            return Err(HelloError::Refused {
                status,
                message: client::error_message(&body),
            });
        }
        Ok(())
    }

    /// Says hello until it succeeds (capped exponential backoff), logs
    /// which binds were accepted, then says hello again every
    /// [`Waifu::rehello_every`] so an orchestrator that forgot this waifu
    /// learns it again. Runs until dropped.
    ///
    /// ```no_run
    /// # async fn f() {
    /// tokio::spawn(waifu::Waifu::new("a", "a:8080").announce());
    /// # }
    /// ```
    pub async fn announce(self) {
        let mut attempt = 0;
        let mut announced = false;
        loop {
            match self.hello().await {
                Ok(answer) => {
                    // The first success and the first after failures are logged;
                    // routine re-hellos are not.
                    if !announced || attempt > 0 {
                        log_hello(&answer);
                    }
                    announced = true;
                    attempt = 0;
                    tokio::time::sleep(self.rehello_every).await;
                }
                Err(e) => {
                    let wait = backoff(attempt);
                    if e.is_transient() {
                        warn!(error = %e, retry_in = ?wait, "hello failed; retrying");
                    } else {
                        warn!(error = %e, retry_in = ?wait, "hello refused: check WAIFU_NAME and WAIFU_HOST");
                    }
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

fn log_hello(answer: &HelloResponse) {
    info!(url = %answer.url, "said hello");
    for bind in &answer.binds {
        match bind.reason {
            None => info!(bind = %bind.bind, target = %bind.target, "bind accepted"),
            Some(reason) => warn!(bind = %bind.bind, ?reason, "bind refused"),
        }
    }
}

/// Wait before retry number `attempt` (0-based): 250 ms doubling up to 30 s,
/// with ±20 % jitter so a fleet does not retry in step.
///
/// ```
/// let first = waifu::backoff(0);
/// assert!(first >= std::time::Duration::from_millis(200));
/// assert!(waifu::backoff(50) <= std::time::Duration::from_secs(36));
/// ```
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(250)
        .saturating_mul(1u32 << attempt.min(16))
        .min(Duration::from_secs(30));
    base.mul_f64(0.8 + fastrand::f64() * 0.4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_change_of_the_secret_file_replaces_the_secret() {
        let file = std::env::temp_dir().join(format!("waifu-secret-{}", fastrand::u64(..)));
        std::fs::write(&file, "first\n").unwrap();
        let waifu = Waifu::new("w", "w:8080").secret_file(&file);
        assert_eq!(waifu.current_secret().as_deref(), Some("first"));
        // This instance rotated its secret: the file, not yet replaced,
        // still holds the old one, which is never taken back.
        let clone = waifu.clone();
        clone.set_secret(Some("second".to_owned()));
        waifu.reread_secret_file();
        assert_eq!(clone.current_secret().as_deref(), Some("second"));
        // The operator replaces the file: that is the secret from now on.
        std::fs::write(&file, "third\n").unwrap();
        clone.reread_secret_file();
        assert_eq!(waifu.current_secret().as_deref(), Some("third"));
        std::fs::remove_file(file).unwrap();
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            let base = 250f64 * 2f64.powi(attempt.min(16) as i32);
            let base = base.min(30_000.0);
            let ms = d.as_secs_f64() * 1000.0;
            assert!(
                ms >= base * 0.8 - 1.0 && ms <= base * 1.2 + 1.0,
                "{attempt}: {ms}"
            );
        }
        assert!(backoff(100) <= Duration::from_secs(36));
    }
}
