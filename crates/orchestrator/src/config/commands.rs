//! The command line: `serve` (the default) and the client commands, which
//! talk to a running orchestrator's internal API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use super::settings::read_secret;
use super::{Config, ConfigError, any_path};

/// Command line of the `orchestrator` binary.
#[derive(Debug, Parser)]
#[command(name = "orchestrator", version, about = "The waifus orchestrator")]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings for `serve`, the default command.
    #[command(flatten)]
    pub serve: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the orchestrator (the default).
    Serve(Box<Config>),
    /// Check that a waifu follows the protocol (exit 0 only if it does).
    Check(CheckArgs),
    /// Print a running orchestrator's waifus, instances, binds, databases and
    /// recent incidents (what /__internal/status shows).
    Status(ClientArgs),
    /// Print a running orchestrator's newest incidents.
    Incidents(IncidentsArgs),
    /// Print a running orchestrator's audit log, newest first.
    Audit(AuditArgs),
    /// Roll a version out to a share of new clients, step by step (judged
    /// between steps, rolled back by itself when worse than the version it
    /// replaces); with --abort stop it (the old version takes every client
    /// again); with neither, show how it goes.
    Rollout(RolloutArgs),
    /// Print a waifu's health history (every change of its instances'
    /// states and of its switch), newest first, with its uptime over 24
    /// hours, 7 and 30 days.
    History(HistoryArgs),
    /// Operator actions on a waifu's claimed name, made on the state
    /// database with the orchestrator's own settings.
    Claim(ClaimArgs),
    /// A waifu's database: dump, restore, list, drop, its backups (on
    /// PostgreSQL directly, with the orchestrator's own settings).
    Db(DbArgs),
    /// Hold a waifu's new public requests (none reaches it) until `resume`;
    /// each waits at most --max-wait, then gets 503 with Retry-After.
    Pause(PauseArgs),
    /// Let a paused waifu's requests go on.
    Resume(ResumeArgs),
    /// Put a waifu in maintenance (`on`: every public request for it is
    /// answered 503 with --message and Retry-After, on every orchestrator;
    /// health checks go on) or take it out (`off`).
    Maintenance(MaintenanceArgs),
    /// Make a version a waifu's instances announced before its current
    /// version again (a rollback): its instances get every new request
    /// while one of them is healthy. A version never seen before becomes
    /// current by itself when announced; an older one never does.
    Version(VersionArgs),
    /// Replace a running orchestrator process with the binary now at its
    /// path, losing no connection (what `kill -USR2` does): the new process
    /// takes the listening sockets and the managed PostgreSQL, and once it
    /// serves the old one drains and exits. If the new one fails to start,
    /// the old one goes on serving and this says why.
    Upgrade(ClientArgs),
}

/// Arguments of `orchestrator version`.
#[derive(Debug, Clone, Args)]
pub struct VersionArgs {
    pub name: String,
    pub version: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Arguments of `orchestrator pause`.
#[derive(Debug, Clone, Args)]
pub struct PauseArgs {
    pub name: String,
    /// How long each held request may wait (at most 10 min).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub max_wait: Duration,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Arguments of `orchestrator maintenance`.
#[derive(Debug, Clone, Args)]
pub struct MaintenanceArgs {
    pub name: String,
    /// `on` or `off`.
    #[arg(value_parser = ["on", "off"])]
    pub state: String,
    /// What clients are told (at most 512 bytes).
    #[arg(long)]
    pub message: Option<String>,
    /// Seconds clients are told to wait (`Retry-After`, 1 to 86400).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub retry_after: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Arguments of `orchestrator resume`.
#[derive(Debug, Clone, Args)]
pub struct ResumeArgs {
    pub name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Arguments of `orchestrator db`.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    #[command(subcommand)]
    pub action: DbAction,
}

/// What `orchestrator db` does.
#[derive(Debug, Clone, Subcommand)]
pub enum DbAction {
    /// Dump a waifu's database (pg_dump's custom format) into a file, with
    /// the figures of what is in it (FILE.figures.json) for the restore to
    /// check.
    Dump {
        name: String,
        /// Where to write it; default: NAME-TIME.dump here.
        #[arg(short, long, value_parser = any_path())]
        output: Option<PathBuf>,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Restore a waifu's database from a dump: into a fresh database,
    /// checked, then swapped in with the waifu's traffic paused; the
    /// previous database is kept as NAME_before_TIME.
    Restore {
        name: String,
        /// The dump; or --latest.
        #[arg(value_parser = any_path(), required_unless_present = "latest")]
        file: Option<PathBuf>,
        /// The newest verified backup in BACKUP_DIR.
        #[arg(long, conflicts_with = "file")]
        latest: bool,
        /// How long the waifu's new requests may wait while it is paused.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        max_wait: Duration,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Every waifu database: size, connections, last backups, kept copies.
    List {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Drop a waifu's database, its kept copies, its role and its secret
    /// (refused while it has instances). Backup files stay.
    Drop {
        name: String,
        /// Yes, really.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Replace a waifu's secret (for hellos and its database) with the one
    /// in --new-secret-file, and its database password with it; open
    /// sessions go on. The waifu needs the new secret: write it where its
    /// WAIFU_SECRET_FILE points, and it follows on its next hello and
    /// database connection.
    Rotate {
        name: String,
        /// A file holding the new secret (1 to 1024 bytes; a trailing
        /// newline is ignored), such as `openssl rand -hex 32 > f`.
        #[arg(long, value_parser = any_path())]
        new_secret_file: PathBuf,
        #[command(flatten)]
        state: StateArgs,
    },
    /// A waifu's backups in BACKUP_DIR: file, size, time, verified.
    Backups {
        name: String,
        #[command(flatten)]
        state: StateArgs,
    },
}

/// Arguments of `orchestrator claim`.
#[derive(Debug, Clone, Args)]
pub struct ClaimArgs {
    #[command(subcommand)]
    pub action: ClaimAction,
}

/// What `orchestrator claim` does.
#[derive(Debug, Clone, Subcommand)]
pub enum ClaimAction {
    /// Free a claimed name: its secret is forgotten and its database
    /// password taken away (its sessions ended); the next hello or database
    /// call with a secret claims it again. Audited, and an incident.
    Release {
        /// The waifu's name.
        name: String,
        #[command(flatten)]
        state: StateArgs,
    },
}

/// Where the orchestrator keeps its state: the same settings as `serve`.
/// Commands that use them act on PostgreSQL directly, so no network
/// endpoint can do what they do.
#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    /// The orchestrator's PostgreSQL URL; unset: the managed cluster in
    /// DATA_DIR (the orchestrator must be running).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// A file holding DATABASE_URL.
    #[arg(long, env = "DATABASE_URL_FILE", value_parser = any_path())]
    pub database_url_file: Option<PathBuf>,
    /// The orchestrator's data directory (the managed cluster's password
    /// and port are there).
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// When set, incidents the command makes are delivered there too (by
    /// the running orchestrator).
    #[arg(long, env = "INCIDENT_WEBHOOK_URL")]
    pub incident_webhook_url: Option<String>,
    /// Where the orchestrator keeps its scheduled backups.
    #[arg(long, env = "BACKUP_DIR", value_parser = any_path())]
    pub backup_dir: Option<PathBuf>,
}

impl StateArgs {
    /// `DATABASE_URL`, read from its file if given that way; `None` for the
    /// managed cluster.
    pub fn database_url(&self) -> Result<Option<String>, ConfigError> {
        let mut url = self.database_url.clone().filter(|u| !u.is_empty());
        let file = self
            .database_url_file
            .clone()
            .filter(|f| !f.as_os_str().is_empty());
        read_secret("DATABASE_URL", &mut url, &file)?;
        Ok(url)
    }
}

/// Where a running orchestrator's internal API is, and its tokens.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Its internal API address.
    #[arg(long, env = "INTERNAL_ADDR", default_value = "127.0.0.1:2137")]
    pub internal_addr: SocketAddr,
    /// Sent as the bearer token, when set (it opens the operator endpoints).
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Sent when ADMIN_TOKEN is not set.
    #[arg(long, env = "INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: Option<String>,
    /// A file holding ADMIN_TOKEN (a Docker or Kubernetes secret).
    #[arg(long, env = "ADMIN_TOKEN_FILE", value_parser = any_path())]
    pub admin_token_file: Option<PathBuf>,
    /// A file holding INTERNAL_TOKEN.
    #[arg(long, env = "INTERNAL_TOKEN_FILE", value_parser = any_path())]
    pub internal_token_file: Option<PathBuf>,
}

impl ClientArgs {
    /// The tokens given as files read into their settings.
    pub fn read_files(mut self) -> Result<Self, ConfigError> {
        read_secret("ADMIN_TOKEN", &mut self.admin_token, &self.admin_token_file)?;
        read_secret(
            "INTERNAL_TOKEN",
            &mut self.internal_token,
            &self.internal_token_file,
        )?;
        Ok(self)
    }

    /// The bearer token to send: the admin token, else the internal one.
    pub fn token(&self) -> Option<&str> {
        self.admin_token
            .as_deref()
            .or(self.internal_token.as_deref())
            .filter(|t| !t.is_empty())
    }
}

/// Arguments of `orchestrator audit`.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this waifu's rows.
    #[arg(long)]
    pub name: Option<String>,
    /// How many, newest first.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
}

/// Arguments of `orchestrator rollout`.
#[derive(Debug, Clone, Args)]
pub struct RolloutArgs {
    pub name: String,
    /// The version to roll out (its instances may say hello before or
    /// after).
    #[arg(long, conflicts_with = "abort")]
    pub version: Option<String>,
    /// Shares of new clients, step by step, in percent (default:
    /// ROLLOUT_STEPS of the orchestrator, `10,50,100`).
    #[arg(long, requires = "version", value_parser = super::parse_steps)]
    pub steps: Option<super::Steps>,
    /// How long each step lasts before it is judged (default:
    /// ROLLOUT_INTERVAL of the orchestrator, `60s`).
    #[arg(long, requires = "version", value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// Rolled back above this share of failed requests (0 to 1; 0.01).
    #[arg(long, requires = "version")]
    pub max_error_rate: Option<f64>,
    /// Rolled back above this many times the old version's p99 (2.0).
    #[arg(long, requires = "version")]
    pub max_latency_ratio: Option<f64>,
    /// Abort the running rollout.
    #[arg(long)]
    pub abort: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Arguments of `orchestrator history`.
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    pub name: String,
    /// Only changes since then: an RFC 3339 time or a duration back from
    /// now (`90m`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// How many, newest first.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Arguments of `orchestrator incidents`.
#[derive(Debug, Clone, Args)]
pub struct IncidentsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// How many, newest first.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
}

/// Arguments of `orchestrator check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The waifu's address: host:port or http://host:port (its health
    /// answer is checked). Not with --run.
    #[arg(required_unless_present = "run", conflicts_with = "run")]
    pub url: Option<String>,
    /// How long the waifu may take to answer.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Run the command given after `--` as a waifu (twice, for a deploy)
    /// with a throwaway orchestrator, and check every rule of the protocol.
    #[arg(long, requires = "command")]
    pub run: bool,
    /// With --run: the command and its arguments. It gets ORCHESTRATOR_URL,
    /// WAIFU_NAME, WAIFU_HOST, PORT, LISTEN_ADDR, WAIFU_VERSION,
    /// WAIFU_SECRET and WAIFU_CACHE_DIR, and must listen on PORT.
    #[arg(last = true)]
    pub command: Vec<std::ffi::OsString>,
    /// With --run: an orchestrator's internal API (http://host:port) to use
    /// instead of a throwaway one; needs --public.
    #[arg(long, requires = "public", requires = "run")]
    pub orchestrator: Option<String>,
    /// With --orchestrator: its public address (host:port), where the
    /// waifu is served at /{name}/.
    #[arg(long, requires = "orchestrator")]
    pub public: Option<SocketAddr>,
    /// With --orchestrator: its ADMIN_TOKEN, to read its list of waifus.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// With --run: the waifu's name.
    #[arg(long, default_value = "conformance")]
    pub name: String,
    /// With --run: the path the load requests during the deploy.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// With --run: how long an instance may take to exit after SIGTERM.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
}
