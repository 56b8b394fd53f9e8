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
//!     waifu::init_logging(); // stderr; LOG_FORMAT=json; colour only on a terminal
//!     let app = Router::new().route("/", get(|| async { "hello" }));
//!     waifu::Waifu::from_env()?.serve(app).await?;
//!     Ok(())
//! }
//! ```

mod client;
mod config;
mod database;
mod logging;
mod migrate;
mod serve;
mod settings;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use tracing::{info, warn};
use waifus_protocol::{DatabaseCredentials, Goodbye, GoodbyeResponse, Hello, HelloResponse};

pub use client::CallError;
pub use config::ConfigError;
pub use database::{Database, DatabaseError, Unavailable};
pub use logging::init_logging;
pub use migrate::MigrateError;
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

/// How long a goodbye the orchestrator has not taken yet is retried.
const GOODBYE_RETRY_FOR: Duration = Duration::from_secs(5);

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
    /// The health path announced in hello (`None`: the protocol's).
    health: Option<String>,
    credentials: Arc<Mutex<Option<DatabaseCredentials>>>,
    /// Held for reading by every call that carries the secret (hello,
    /// goodbye, a database call), for writing by a rotation: no call leaves
    /// with the old secret while a rotation is under way, so none arrives
    /// after it with a secret that no longer works (a wrong secret counts
    /// towards the name's lock).
    rotation: Arc<tokio::sync::RwLock<()>>,
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
            .field("health", &self.health)
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

/// How a goodbye that waits ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// The orchestrator has nothing in flight to the instance.
    Idle,
    /// The instance was removed already (drained where it was first).
    Gone,
    /// Time ran out with requests still in flight.
    TimedOut {
        /// How many, as last reported.
        in_flight: u64,
    },
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
        let _sending = self.rotation.read().await;
        let url = format!("{}/__internal/hello", self.orchestrator);
        let hello = Hello {
            name: self.name.clone(),
            host: self.host.clone(),
            additional_binds: self.binds.clone(),
            secret: self.current_secret(),
            version: self.version.clone(),
            health: self.health.clone(),
            limits: None,
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
        self.goodbye_call(false).await.map(|_| ())
    }

    /// Says goodbye and waits, at most `within`, until the orchestrator
    /// has nothing in flight to this instance any more (it answers each
    /// goodbye that asks to wait within a few seconds; this asks again
    /// until then). For a program that cannot count its own requests, such
    /// as one running an app it did not write.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), waifu::HelloError> {
    /// let w = waifu::Waifu::new("a", "a:8080");
    /// match w.goodbye_and_drain(std::time::Duration::from_secs(25)).await? {
    ///     waifu::Drained::Idle | waifu::Drained::Gone => println!("nothing in flight"),
    ///     waifu::Drained::TimedOut { in_flight } => println!("{in_flight} still in flight"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn goodbye_and_drain(&self, within: Duration) -> Result<Drained, HelloError> {
        let started = tokio::time::Instant::now();
        let deadline = started + within;
        let mut attempt = 0;
        let mut said = false;
        let mut last = 0;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // An orchestrator that never took the goodbye gets a few seconds,
            // as a waifu that stops gives it; one that did, until the end.
            let retrying = said || started.elapsed() < GOODBYE_RETRY_FOR;
            let in_flight = match tokio::time::timeout(left, self.goodbye_call(true)).await {
                Ok(Ok(answer)) => answer.in_flight.unwrap_or(0),
                // Removed already: drained on the orchestrator that was first.
                Ok(Err(HelloError::Refused { status, .. }))
                    if said && status == StatusCode::NOT_FOUND =>
                {
                    return Ok(Drained::Gone);
                }
                Ok(Err(e)) if e.is_transient() && retrying && !left.is_zero() => {
                    warn!(error = %e, "goodbye failed; retrying");
                    let wait = backoff(attempt).min(Duration::from_millis(500));
                    tokio::time::sleep(wait.min(left)).await;
                    attempt += 1;
                    continue;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(Drained::TimedOut { in_flight: last }),
            };
            said = true;
            last = in_flight;
            if in_flight == 0 {
                return Ok(Drained::Idle);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Drained::TimedOut { in_flight });
            }
        }
    }

    async fn goodbye_call(&self, wait: bool) -> Result<GoodbyeResponse, HelloError> {
        let _sending = self.rotation.read().await;
        let url = format!("{}/__internal/goodbye", self.orchestrator);
        let goodbye = Goodbye {
            name: self.name.clone(),
            host: self.host.clone(),
            secret: self.current_secret(),
            wait,
        };
        let (status, body) = client::post_json(&url, &goodbye, self.token.as_deref()).await?;
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
