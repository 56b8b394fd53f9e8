//! Every setting, parsed in one place and checked once.
//!
//! Each is a flag with an environment variable of the same meaning. The
//! settings of the orchestrator's documented contract come first; the rest
//! are timeouts an operator of Traefik or nginx would expect to be able to
//! tune. [`Config::validate`] turns a parsed [`Config`] into [`Settings`],
//! which is what the orchestrator runs on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings of `orchestrator serve`.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Host that serves /{name}/...; `*` means any host not claimed by a bind.
    #[arg(long, env = "MAIN_DOMAIN", default_value = "localhost")]
    pub main_domain: String,
    /// Public reverse proxy listener (HTTP/1.1 and h2c).
    #[arg(long, env = "PUBLIC_ADDR", default_value = "0.0.0.0:8080")]
    pub public_addr: SocketAddr,
    /// Internal API listener; never publish it.
    #[arg(long, env = "INTERNAL_ADDR", default_value = "127.0.0.1:2137")]
    pub internal_addr: SocketAddr,
    /// PostgreSQL URL with CREATEDB and CREATEROLE (or superuser). Its database
    /// (default `waifus`) holds the orchestrator's state and is created if missing.
    /// Unset: a managed local cluster in DATA_DIR/postgres.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Managed cluster and generated keys.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Database host handed to waifus.
    #[arg(long, env = "DB_PUBLIC_HOST")]
    pub db_public_host: Option<String>,
    /// Database port handed to waifus.
    #[arg(long, env = "DB_PUBLIC_PORT")]
    pub db_public_port: Option<u16>,
    /// Active health check period.
    #[arg(long, env = "HEALTH_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,
    /// One health check's timeout.
    #[arg(long, env = "HEALTH_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub health_timeout: Duration,
    /// Incidents are also POSTed here as JSON.
    #[arg(long, env = "INCIDENT_WEBHOOK_URL")]
    pub incident_webhook_url: Option<String>,
    /// `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// TLS listener [default: 0.0.0.0:8443]. On when CERT_DIR or
    /// ACME_DIRECTORY is set; setting it alone turns TLS on with self-signed
    /// development certificates for localhost-style hosts.
    #[arg(long, env = "HTTPS_ADDR")]
    pub https_addr: Option<SocketAddr>,
    /// Port put in redirects to HTTPS [default: HTTPS_ADDR's port]; set it
    /// to 443 when a port mapping or firewall forwards 443 to HTTPS_ADDR.
    #[arg(long, env = "PUBLIC_HTTPS_PORT")]
    pub public_https_port: Option<u16>,
    /// Directory of PEM certificates `{host}.crt` / `{host}.key`.
    #[arg(long, env = "CERT_DIR", value_parser = any_path())]
    pub cert_dir: Option<PathBuf>,
    /// ACME directory URL for automatic certificates.
    #[arg(long, env = "ACME_DIRECTORY")]
    pub acme_directory: Option<String>,
    /// Contact e-mail for the ACME account.
    #[arg(long, env = "ACME_EMAIL")]
    pub acme_email: Option<String>,
    /// ACME challenge tried first; a failed order retries with the other.
    #[arg(
        long,
        env = "ACME_CHALLENGE",
        value_enum,
        default_value = "tls-alpn-01"
    )]
    pub acme_challenge: crate::tls::acme::Challenge,
    /// Extra PEM root trusted for the ACME directory itself.
    #[arg(long, env = "ACME_CA_FILE", value_parser = any_path())]
    pub acme_ca_file: Option<PathBuf>,

    /// Where scheduled backups of every waifu database go (one directory
    /// per waifu); unset: no scheduled backups.
    #[arg(long, env = "BACKUP_DIR", value_parser = any_path())]
    pub backup_dir: Option<PathBuf>,
    /// How often each waifu database is backed up (and its backup checked).
    #[arg(long, env = "BACKUP_INTERVAL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub backup_interval: Duration,
    /// How many verified backups of each waifu are kept.
    #[arg(long, env = "BACKUP_KEEP", default_value = "7", value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub backup_keep: u32,

    /// Most connections each waifu's role may hold at once (applied to
    /// existing roles at start when changed).
    #[arg(long, env = "DB_CONNECTION_LIMIT", default_value = "20", value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub db_connection_limit: u32,
    /// Longest statement a waifu's session may run (`30s`, `5m`); unset,
    /// `off` or `0`: no limit. One waifu's runaway query cannot hold locks
    /// for ever.
    #[arg(long, env = "DB_STATEMENT_TIMEOUT", value_parser = duration_or_off)]
    pub db_statement_timeout: Option<Duration>,

    /// `Strict-Transport-Security` for answers over TLS that carry none,
    /// e.g. `max-age=31536000` or `max-age=63072000; includeSubDomains`.
    /// Unset: none (a waifu may send its own).
    #[arg(long, env = "HSTS")]
    pub hsts: Option<String>,

    /// Load balancers in front of the orchestrator whose X-Forwarded-For is
    /// believed: addresses or blocks, comma-separated (`10.0.0.0/8,fd00::/8`).
    /// Empty: nobody's; every forwarding field a client sends is dropped.
    #[arg(
        long,
        env = "TRUSTED_PROXIES",
        value_delimiter = ',',
        default_value = ""
    )]
    pub trusted_proxies: Vec<String>,

    /// One log line per proxied request (target `access`, in LOG_FORMAT).
    #[arg(long, env = "ACCESS_LOG", default_value = "false", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub access_log: bool,

    /// Full reload of routes from the state database, in case a change
    /// notification from another orchestrator was missed.
    #[arg(long, env = "RESYNC_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,

    /// An instance unhealthy this long is deregistered (and a waifu without
    /// instances this long after a goodbye is forgotten).
    #[arg(long, env = "DEREGISTER_AFTER", default_value = "10m", value_parser = humantime::parse_duration)]
    pub deregister_after: Duration,
    /// How long an instance that said goodbye may finish requests in flight
    /// and keep tunnels open.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Bound on connecting to a waifu (then 504).
    #[arg(long, env = "UPSTREAM_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub upstream_connect_timeout: Duration,
    /// Bound on waiting for a waifu's response headers (then 504).
    #[arg(long, env = "UPSTREAM_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,
    /// The largest request body passed to a waifu (`64MiB`, `1GB`, bytes);
    /// a waifu's hello may ask for less. Larger ones are answered 413.
    #[arg(long, env = "MAX_BODY_SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub max_body_size: u64,
    /// `on`: responses are compressed (gzip, br, zstd) as the client
    /// accepts, for compressible types over 1 KiB the waifu did not encode.
    #[arg(long, env = "COMPRESSION", default_value = "off", value_parser = on_off, action = clap::ArgAction::Set)]
    pub compression: bool,
    /// A client must send a request's headers within this time; it is also the
    /// idle time after which a keep-alive HTTP/1 connection is closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// A client connection on which no byte moved this long is closed. Keep it
    /// above UPSTREAM_TIMEOUT.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Most client connections served at once on the public listener; beyond
    /// it new connections wait in the kernel's backlog until one closes.
    #[arg(long, env = "MAX_CONNECTIONS", default_value = "4096", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Threads serving requests; default: the CPUs this process may run on. With
    /// 1, a single-threaded runtime is used (no work-stealing overhead).
    #[arg(long, env = "WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// On SIGTERM, in-flight requests get this long to finish.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// When set, every internal API call but `GET /__internal/health` needs
    /// `Authorization: Bearer {token}`.
    #[arg(long, env = "INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: Option<String>,
    /// When set, the operator endpoints (waifus, incidents, audit, metrics,
    /// status) need this bearer token; INTERNAL_TOKEN does not open them.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// `optional`: a hello may carry a secret (it then claims the name);
    /// `required`: every hello must.
    #[arg(long, env = "HELLO_SECRET", value_enum, default_value = "optional")]
    pub hello_secret: HelloSecret,
    /// How long audit rows are kept.
    #[arg(long, env = "AUDIT_RETENTION", default_value = "90d", value_parser = humantime::parse_duration)]
    pub audit_retention: Duration,
    /// `off`: a newly announced version takes every new request at once
    /// (unless an operator starts a rollout); `auto`: it rolls out by
    /// itself, ROLLOUT_STEPS every ROLLOUT_INTERVAL, and is rolled back when
    /// it is worse.
    #[arg(long, env = "ROLLOUT", value_enum, default_value = "off")]
    pub rollout: RolloutMode,
    /// The shares of new clients a rollout gives the new version, step by
    /// step, in percent, the last 100 (`10,50,100`).
    #[arg(long, env = "ROLLOUT_STEPS", default_value = "10,50,100", value_parser = parse_steps)]
    pub rollout_steps: Steps,
    /// How long each step of a rollout lasts before it is judged.
    #[arg(long, env = "ROLLOUT_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub rollout_interval: Duration,
    /// How long the health history (every instance's state changes) is
    /// kept.
    #[arg(long, env = "HISTORY_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub history_retention: Duration,
    /// A waifu that changes between up and down more than 4 times within
    /// this is flapping: one `waifu_flapping` notification, then none until
    /// it is stable for as long.
    #[arg(long, env = "FLAP_WINDOW", default_value = "5m", value_parser = humantime::parse_duration)]
    pub flap_window: Duration,

    /// A file holding DATABASE_URL (a Docker or Kubernetes secret; a
    /// trailing newline is ignored). Set one of the two.
    #[arg(long, env = "DATABASE_URL_FILE", value_parser = any_path())]
    pub database_url_file: Option<PathBuf>,
    /// A file holding INTERNAL_TOKEN.
    #[arg(long, env = "INTERNAL_TOKEN_FILE", value_parser = any_path())]
    pub internal_token_file: Option<PathBuf>,
    /// A file holding ADMIN_TOKEN.
    #[arg(long, env = "ADMIN_TOKEN_FILE", value_parser = any_path())]
    pub admin_token_file: Option<PathBuf>,
}

/// Whether newly announced versions roll out by themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RolloutMode {
    /// Only when an operator starts one.
    Off,
    /// Every newly announced version.
    Auto,
}

/// A rollout's steps: percents, strictly increasing, the last 100.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steps(pub Vec<i32>);

/// Steps from `10,50,100`.
pub fn parse_steps(text: &str) -> Result<Steps, String> {
    let steps: Vec<i32> = text
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<i32>()
                .map_err(|_| format!("{s:?} is not a whole percent"))
        })
        .collect::<Result<_, _>>()?;
    waifus_protocol::validate_rollout_steps(&steps)?;
    Ok(Steps(steps))
}

/// Whether a hello must carry the waifu's secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HelloSecret {
    /// A hello may carry a secret; a name nobody claimed takes one without.
    Optional,
    /// Every hello must carry a secret.
    Required,
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("MAIN_DOMAIN {0:?} is not a hostname or '*'")]
    MainDomain(String),
    #[error("{0} must be more than zero")]
    ZeroDuration(&'static str),
    #[error("INCIDENT_WEBHOOK_URL {0:?} is not an absolute http:// or https:// URL")]
    WebhookUrl(String),
    #[error("CERT_DIR {path}: {error}")]
    CertDir { path: String, error: String },
    #[error("ACME_DIRECTORY {0:?} is not an https:// URL")]
    AcmeDirectory(String),
    #[error("ACME_CA_FILE {path}: {error}")]
    AcmeCaFile { path: String, error: String },
    #[error("{0} is set but ACME_DIRECTORY is not")]
    AcmeUnused(&'static str),
    #[error("{0} must be 16 to 1024 visible ASCII characters (no spaces)")]
    Token(&'static str),
    #[error("ADMIN_TOKEN and INTERNAL_TOKEN must differ: every waifu knows INTERNAL_TOKEN")]
    SameTokens,
    #[error("{0} and {0}_FILE are both set: set one of them")]
    SecretTwice(&'static str),
    #[error("{name}_FILE {path}: {source}")]
    SecretFile {
        name: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}_FILE {path} is empty")]
    SecretEmpty { name: &'static str, path: String },
    #[error(
        "HSTS {0:?} is not a Strict-Transport-Security value: `max-age=SECONDS`, \
         optionally `; includeSubDomains` and `; preload`"
    )]
    Hsts(String),
    #[error("TRUSTED_PROXIES: {0}")]
    TrustedProxies(#[from] crate::proxy::trusted::BadCidr),
}

/// `HTTPS_ADDR` when it is not set.
pub const DEFAULT_HTTPS_ADDR: &str = "0.0.0.0:8443";

/// A duration, or zero for `off`, `0` or nothing (then
/// [`Config::normalized`] makes it unset).
fn duration_or_off(s: &str) -> Result<Duration, humantime::DurationError> {
    match s.trim() {
        "" | "off" | "0" => Ok(Duration::ZERO),
        s => humantime::parse_duration(s),
    }
}

/// `on` or `off`.
fn on_off(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" | "" => Ok(false),
        _ => Err(format!("{text:?}: use on or off")),
    }
}

/// A size in bytes: a number, optionally with `KB`, `MB`, `GB` (powers of
/// 1000) or `KiB`, `MiB`, `GiB` (powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 64MiB or 1000000"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?}: the unit must be KB, MB, GB, KiB, MiB or GiB"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A path, empty allowed (then [`Config::normalized`] makes it unset).
fn any_path() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    use clap::builder::TypedValueParser;
    clap::builder::OsStringValueParser::new().map(PathBuf::from)
}

/// A PEM file with at least one certificate.
fn check_pem_roots(path: &std::path::Path) -> Result<(), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(())
}

pub mod commands;
mod settings;

pub use settings::Settings;
#[cfg(test)]
mod tests;
