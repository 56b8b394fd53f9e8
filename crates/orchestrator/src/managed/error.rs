//! Why the managed cluster could not be set up.

use std::path::{Path, PathBuf};

/// Why the managed cluster could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    #[error(
        "DATABASE_URL is not set, so the orchestrator runs its own PostgreSQL, but the \
         PostgreSQL server programs (initdb, postgres) were not found on PATH, via \
         `pg_config --bindir`, or in /usr/lib/postgresql/*/bin. Install them (Debian or \
         Ubuntu: `apt-get install postgresql`; Fedora: `dnf install postgresql-server`; \
         macOS: `brew install postgresql`), or set DATABASE_URL to a PostgreSQL server you run."
    )]
    NoBinaries,
    #[error(
        "running as root, PostgreSQL must run as an unprivileged user, but there is no \
         `postgres` user; install PostgreSQL from your distribution (which creates it) \
         or set DATABASE_URL"
    )]
    NoPostgresUser,
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initdb failed: {0}")]
    Initdb(String),
    #[error("the managed PostgreSQL did not start within 60 s; its log is {0}")]
    NotReady(PathBuf),
    #[error("the managed PostgreSQL exited at start ({status}); its log is {log}")]
    Exited { status: String, log: PathBuf },
    #[error(transparent)]
    File(#[from] crate::private_file::FileError),
}

/// An I/O error on `path`, while doing `what`.
pub(super) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ManagedError {
    let path = path.to_owned();
    move |source| ManagedError::Io { what, path, source }
}
