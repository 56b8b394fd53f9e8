//! Database credentials: asked once, cached in memory and on disk, used from
//! the cache when the orchestrator is unreachable.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use http::StatusCode;
use waifus_protocol::{DatabaseCredentials, DatabaseRequest, RotateRequest};

use crate::Waifu;
use crate::client::{self, CallError};

/// Why no database credentials could be had.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// No `WAIFU_SECRET` was given.
    #[error("no secret: set WAIFU_SECRET (or Waifu::secret) to ask for a database")]
    NoSecret,
    /// 403 from the orchestrator.
    #[error(
        "the secret does not match the one this waifu registered with; \
         use the original WAIFU_SECRET"
    )]
    WrongSecret,
    /// 429: too many wrong secrets recently.
    #[error("too many wrong secrets for this name; the orchestrator says: {message}")]
    Throttled {
        /// The orchestrator's message.
        message: String,
    },
    /// Any other refusal (400, 409, ...).
    #[error("the orchestrator refused ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// The orchestrator's message.
        message: String,
    },
    /// Unreachable or unavailable, and nothing cached.
    #[error("{0}; no cached credentials to fall back on (set WAIFU_CACHE_DIR to keep them)")]
    Unavailable(#[source] Unavailable),
    /// The pool could not be built from the credentials.
    #[error("could not build a connection pool: {0}")]
    Pool(#[source] deadpool_postgres::BuildError),
}

/// Why the orchestrator gave no credentials this time.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// It could not be reached.
    #[error(transparent)]
    Call(#[from] CallError),
    /// It answered 200 with something else than credentials.
    #[error("the orchestrator answered something unexpected: {0}")]
    BadAnswer(#[source] serde_json::Error),
    /// It answered 5xx (PostgreSQL unreachable, most likely).
    #[error("the orchestrator is unavailable ({status}): {message}")]
    Server {
        /// HTTP status.
        status: StatusCode,
        /// The orchestrator's message.
        message: String,
    },
}

impl Waifu {
    /// The cache file for this waifu's credentials.
    fn cache_file(&self) -> Option<PathBuf> {
        self.cache_dir
            .as_ref()
            .map(|d| d.join(format!("{}.database.json", self.name)))
    }

    /// Asks the orchestrator for this waifu's database credentials.
    ///
    /// The answer is cached in memory and, with `WAIFU_CACHE_DIR`, in a 0600
    /// file; when the orchestrator is unreachable or unavailable (503), the
    /// cached answer is used.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), waifu::DatabaseError> {
    /// let waifu = waifu::Waifu::new("link", "link:8080").secret("s3cret");
    /// let c = waifu.credentials().await?;
    /// println!("database {} on {}:{}", c.database, c.host, c.port);
    /// # Ok(()) }
    /// ```
    pub async fn credentials(&self) -> Result<DatabaseCredentials, DatabaseError> {
        if let Some(c) = self.cached_in_memory() {
            return Ok(c);
        }
        self.fetch_credentials().await
    }

    /// Asks the orchestrator again, whatever is cached (the password was
    /// refused: the secret may have been rotated).
    /// With a secret file, the secret is read from it again first.
    pub async fn refresh_credentials(&self) -> Result<DatabaseCredentials, DatabaseError> {
        self.reread_secret_file();
        self.fetch_credentials().await
    }

    /// New credentials after PostgreSQL refused the password `refused`:
    /// those another connection fetched meanwhile; else, with a secret
    /// file, a moment for the file to follow a rotation made elsewhere (so
    /// the orchestrator is not asked with a secret that no longer works);
    /// then the orchestrator's answer for the secret there is.
    pub(crate) async fn credentials_after_refusal(
        &self,
        refused: &[u8],
    ) -> Result<DatabaseCredentials, DatabaseError> {
        let fetched_meanwhile = || {
            self.cached_in_memory()
                .filter(|c| c.password.as_bytes() != refused)
        };
        if let Some(c) = fetched_meanwhile() {
            return Ok(c);
        }
        let before = self.current_secret();
        self.reread_secret_file();
        if self.has_secret_file() && self.current_secret() == before {
            let deadline = std::time::Instant::now() + SECRET_FILE_FOLLOWS_WITHIN;
            while std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                if let Some(c) = fetched_meanwhile() {
                    return Ok(c);
                }
                self.reread_secret_file();
                if self.current_secret() != before {
                    break;
                }
            }
        }
        self.fetch_credentials().await
    }

    /// Replaces this waifu's secret with `new_secret` on the orchestrator
    /// (for hellos and its database alike) and here; the database password
    /// changes with it, so the credentials are fetched anew and cached.
    /// Connections already open go on; new ones use the new password. Give
    /// the new secret to every instance (and keep it for the next start):
    /// the old one no longer works.
    ///
    /// ```no_run
    /// # async fn f(w: waifu::Waifu) -> Result<(), waifu::DatabaseError> {
    /// let credentials = w.rotate_secret("a-new-long-random-secret").await?;
    /// # Ok(()) }
    /// ```
    pub async fn rotate_secret(
        &self,
        new_secret: impl Into<String>,
    ) -> Result<DatabaseCredentials, DatabaseError> {
        let new_secret = new_secret.into();
        // Calls with the old secret finish first, and none starts until the
        // new one is in place.
        let _rotating = self.rotation.write().await;
        let secret = self.current_secret().ok_or(DatabaseError::NoSecret)?;
        let url = format!("{}/__internal/database/rotate", self.orchestrator);
        let request = RotateRequest {
            name: self.name.clone(),
            secret,
            new_secret: new_secret.clone(),
        };
        let credentials = match client::post_json(&url, &request, self.token.as_deref()).await {
            Err(e) => return Err(DatabaseError::Unavailable(e.into())),
            Ok((StatusCode::OK, body)) => serde_json::from_slice::<DatabaseCredentials>(&body)
                .map_err(|e| DatabaseError::Unavailable(Unavailable::BadAnswer(e)))?,
            Ok((StatusCode::FORBIDDEN, _)) => return Err(DatabaseError::WrongSecret),
            Ok((StatusCode::TOO_MANY_REQUESTS, body)) => {
                return Err(DatabaseError::Throttled {
                    message: client::error_message(&body),
                });
            }
            Ok((status, body)) if status.is_server_error() => {
                return Err(DatabaseError::Unavailable(Unavailable::Server {
                    status,
                    message: client::error_message(&body),
                }));
            }
            Ok((status, body)) => {
                return Err(DatabaseError::Refused {
                    status,
                    message: client::error_message(&body),
                });
            }
        };
        self.set_secret(Some(new_secret));
        self.remember(&credentials);
        Ok(credentials)
    }

    async fn fetch_credentials(&self) -> Result<DatabaseCredentials, DatabaseError> {
        let _sending = self.rotation.read().await;
        let secret = self.current_secret().ok_or(DatabaseError::NoSecret)?;
        let url = format!("{}/__internal/database", self.orchestrator);
        let request = DatabaseRequest {
            name: self.name.clone(),
            secret,
        };
        let fallback = |why: Unavailable| match self.cache_file().and_then(|f| read_cache(&f)) {
            Some(cached) => Ok(cached),
            None => Err(DatabaseError::Unavailable(why)),
        };
        let credentials = match client::post_json(&url, &request, self.token.as_deref()).await {
            Err(e) => fallback(e.into())?,
            Ok((StatusCode::OK, body)) => serde_json::from_slice::<DatabaseCredentials>(&body)
                .map_err(|e| DatabaseError::Unavailable(Unavailable::BadAnswer(e)))?,
            Ok((StatusCode::FORBIDDEN, _)) => return Err(DatabaseError::WrongSecret),
            Ok((StatusCode::TOO_MANY_REQUESTS, body)) => {
                return Err(DatabaseError::Throttled {
                    message: client::error_message(&body),
                });
            }
            Ok((status, body)) if status.is_server_error() => fallback(Unavailable::Server {
                status,
                message: client::error_message(&body),
            })?,
            Ok((status, body)) => {
                return Err(DatabaseError::Refused {
                    status,
                    message: client::error_message(&body),
                });
            }
        };
        self.remember(&credentials);
        Ok(credentials)
    }

    /// Keeps `credentials` in memory and in the cache file.
    fn remember(&self, credentials: &DatabaseCredentials) {
        if let Some(file) = self.cache_file()
            && let Err(e) = write_cache(&file, credentials)
        {
            tracing::warn!(file = %file.display(), error = %e, "could not cache database credentials");
        }
        *self.credentials.lock().unwrap_or_else(|e| e.into_inner()) = Some(credentials.clone());
    }

    fn cached_in_memory(&self) -> Option<DatabaseCredentials> {
        self.credentials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Credentials and a ready connection pool to this waifu's database.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let db = waifu::Waifu::from_env()?.database().await?;
    /// let client = db.pool.get().await?;
    /// client.batch_execute("CREATE TABLE IF NOT EXISTS notes (body text)").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// When PostgreSQL refuses the password of a new connection (SQLSTATE
    /// `28P01`: the secret was rotated, by another instance or an operator),
    /// the pool asks the orchestrator for the credentials again and tries
    /// once more.
    pub async fn database(&self) -> Result<Database, DatabaseError> {
        let credentials = self.credentials().await?;
        let manager = deadpool_postgres::Manager::from_connect(
            pg_config(&credentials),
            Refreshing {
                waifu: self.clone(),
            },
            deadpool_postgres::ManagerConfig::default(),
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(8)
            .build()
            .map_err(DatabaseError::Pool)?;
        Ok(Database { credentials, pool })
    }
}

/// A waifu's database: its credentials and a connection pool.
///
/// ```no_run
/// # async fn f(db: waifu::Database) -> Result<(), Box<dyn std::error::Error>> {
/// let rows = db.pool.get().await?.query("SELECT 1", &[]).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Database {
    /// As handed out by the orchestrator.
    pub credentials: DatabaseCredentials,
    /// A deadpool-postgres pool over those credentials.
    pub pool: deadpool_postgres::Pool,
}

impl Database {
    /// A libpq connection string, for tools that want one.
    ///
    /// ```no_run
    /// # async fn f(db: waifu::Database) {
    /// let url = db.connection_string(); // postgres://user:password@host:port/database
    /// assert!(url.starts_with("postgres://"));
    /// # }
    /// ```
    pub fn connection_string(&self) -> String {
        let c = &self.credentials;
        format!(
            "postgres://{}:{}@{}:{}/{}",
            c.user, c.password, c.host, c.port, c.database
        )
    }
}

/// How long a refused password waits for the secret file to change
/// before the orchestrator is asked with the secret as it is (the
/// password may have changed for another reason, such as a restore on a
/// new machine).
const SECRET_FILE_FOLLOWS_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The connection settings of `credentials`.
fn pg_config(credentials: &DatabaseCredentials) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&credentials.host)
        .port(credentials.port)
        .user(&credentials.user)
        .password(&credentials.password)
        .dbname(&credentials.database)
        .connect_timeout(std::time::Duration::from_secs(5));
    config
}

/// Connects with the waifu's current credentials; a refused password
/// makes it fetch them anew and try once more.
struct Refreshing {
    waifu: Waifu,
}

type Connected = (tokio_postgres::Client, tokio::task::JoinHandle<()>);

impl deadpool_postgres::Connect for Refreshing {
    fn connect(
        &self,
        initial: &tokio_postgres::Config,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Connected, tokio_postgres::Error>> + Send + '_>>
    {
        let config = self
            .waifu
            .cached_in_memory()
            .map_or_else(|| initial.clone(), |c| pg_config(&c));
        Box::pin(async move {
            let refused = config
                .get_password()
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            match open(config).await {
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD) => {
                    tracing::info!(
                        "the database refused the password: looking for new credentials"
                    );
                    match self.waifu.credentials_after_refusal(&refused).await {
                        Ok(fresh) => open(pg_config(&fresh)).await,
                        Err(why) => {
                            tracing::warn!(error = %why, "no new database credentials");
                            Err(e)
                        }
                    }
                }
                other => other,
            }
        })
    }
}

/// One connection, its driver spawned.
async fn open(config: tokio_postgres::Config) -> Result<Connected, tokio_postgres::Error> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "database connection ended with an error");
        }
    });
    Ok((client, driver))
}

fn read_cache(file: &Path) -> Option<DatabaseCredentials> {
    let text = std::fs::read(file).ok()?;
    let credentials = serde_json::from_slice(&text).ok()?;
    tracing::warn!(file = %file.display(), "using cached database credentials");
    Some(credentials)
}

fn write_cache(file: &Path, credentials: &DatabaseCredentials) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec(credentials).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn creds() -> DatabaseCredentials {
        DatabaseCredentials {
            database: "waifu_t".into(),
            user: "waifu_t".into(),
            password: "p".into(),
            host: "127.0.0.1".into(),
            port: 5432,
        }
    }

    fn waifu(cache: &Path, orchestrator: &str) -> Waifu {
        Waifu::new("t", "t:8080")
            .orchestrator(orchestrator)
            .secret("s")
            .cache_dir(cache)
    }

    #[tokio::test]
    async fn cache_is_private_and_used_when_the_orchestrator_is_away() {
        let dir = std::env::temp_dir().join(format!("waifu-cache-{}", fastrand::u64(..)));
        let file = dir.join("t.database.json");
        write_cache(&file, &creds()).unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Nothing listens on port 1.
        let w = waifu(&dir, "http://127.0.0.1:1");
        assert_eq!(w.credentials().await.unwrap(), creds());
        std::fs::remove_dir_all(&dir).unwrap();
        // Now in memory: no file, no orchestrator needed.
        assert_eq!(w.credentials().await.unwrap(), creds());
        let cold = waifu(&dir, "http://127.0.0.1:1");
        let err = cold.credentials().await.unwrap_err();
        assert!(matches!(err, DatabaseError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains("WAIFU_CACHE_DIR"), "{err}");
    }

    #[tokio::test]
    async fn no_secret_says_what_to_do() {
        let err = Waifu::new("t", "t:1").credentials().await.unwrap_err();
        assert!(err.to_string().contains("WAIFU_SECRET"), "{err}");
    }

    #[test]
    fn connection_string() {
        let dir = std::env::temp_dir();
        let _ = waifu(&dir, "http://x");
        let pool = deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(
            tokio_postgres::Config::new(),
            tokio_postgres::NoTls,
        ))
        .build()
        .unwrap();
        let db = Database {
            credentials: creds(),
            pool,
        };
        assert_eq!(
            db.connection_string(),
            "postgres://waifu_t:p@127.0.0.1:5432/waifu_t"
        );
    }
}
