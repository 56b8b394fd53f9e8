//! Why a data action failed: one error for dumps, restores, drops and
//! backups, each variant saying what to do about it.

use std::path::PathBuf;
use std::time::Duration;

use crate::provision::ProvisionError;
use crate::store::StoreError;

/// Why a data action failed.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "pg_dump and pg_restore were not found (next to the managed cluster's programs, in \
         /usr/lib/postgresql/*/bin or on PATH): install the Debian package postgresql-client"
    )]
    NoTools,
    #[error("could not run {program}: {source}")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {} s", after.as_secs())]
    ToolTimedOut {
        program: &'static str,
        after: Duration,
    },
    #[error("{program} failed (exit {}): {stderr}", status.map_or("by a signal".to_owned(), |s| s.to_string()))]
    Tool {
        program: &'static str,
        status: Option<i32>,
        stderr: String,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("PostgreSQL: {}", db_message(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Provision(String),
    #[error("{name} has no database")]
    NoDatabase { name: String },
    #[error("the restored data differs from what the file recorded: {}", .0.join("; "))]
    Mismatch(Vec<String>),
    #[error(
        "{name} has {count} instance(s) registered: stop them (or let them be deregistered) first"
    )]
    HasInstances { name: String, count: i64 },
}

impl From<ProvisionError> for DataError {
    fn from(e: ProvisionError) -> Self {
        DataError::Provision(e.to_string())
    }
}

fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}
