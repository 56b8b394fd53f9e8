//! `pg_dump` and `pg_restore`, found where the managed cluster's programs
//! are (or the newest `/usr/lib/postgresql/*/bin`, or `PATH`), and run
//! against the server the orchestrator uses, as its user.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::error::DataError;

/// The client programs, of one PostgreSQL installation.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    bindir: PathBuf,
}

/// How to reach the server: what `tokio_postgres::Config` says, as the
/// libpq environment the programs read (the password never on a command
/// line, where `ps` would show it).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    env: Vec<(&'static str, String)>,
}

impl Target {
    /// The server and user of `config`, database `database`.
    pub(crate) fn new(config: &tokio_postgres::Config, database: &str) -> Target {
        let mut env = vec![
            ("PGDATABASE", database.to_owned()),
            ("PGSSLMODE", "disable".to_owned()),
            ("PGCONNECT_TIMEOUT", "5".to_owned()),
            ("PGAPPNAME", "waifus-orchestrator".to_owned()),
        ];
        if let Some(host) = config.get_hosts().first() {
            let host = match host {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            env.push(("PGHOST", host));
        }
        if let Some(port) = config.get_ports().first() {
            env.push(("PGPORT", port.to_string()));
        }
        if let Some(user) = config.get_user() {
            env.push(("PGUSER", user.to_owned()));
        }
        if let Some(password) = config.get_password() {
            env.push(("PGPASSWORD", String::from_utf8_lossy(password).into_owned()));
        }
        Target { env }
    }
}

impl Tools {
    /// The newest installation with both programs: the managed cluster's
    /// directory first.
    pub(crate) fn find() -> Result<Tools, DataError> {
        let complete = |d: &Path| {
            ["pg_dump", "pg_restore"]
                .iter()
                .all(|p| d.join(p).is_file())
        };
        let managed = crate::managed::find_bindir().filter(|d| complete(d));
        let installed =
            || crate::managed::newest_installed(Path::new("/usr/lib/postgresql"), complete);
        let on_path = || {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .find(|d| complete(d))
        };
        managed
            .or_else(installed)
            .or_else(on_path)
            .map(|bindir| Tools { bindir })
            .ok_or(DataError::NoTools)
    }

    /// Runs `program` with `args` against `target`; its stderr in the error
    /// when it fails. No run may take longer than `within`.
    pub(crate) async fn run(
        &self,
        program: &'static str,
        args: &[&std::ffi::OsStr],
        target: &Target,
        within: Duration,
    ) -> Result<(), DataError> {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(target.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|source| DataError::Spawn { program, source })?;
        let out = tokio::time::timeout(within, child.wait_with_output())
            .await
            .map_err(|_| DataError::ToolTimedOut {
                program,
                after: within,
            })?
            .map_err(|source| DataError::Spawn { program, source })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(DataError::Tool {
                program,
                status: out.status.code(),
                stderr: stderr.trim().chars().take(2000).collect(),
            });
        }
        Ok(())
    }
}
