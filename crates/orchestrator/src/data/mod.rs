//! A waifu's data: dumps, restores, copies kept aside, dropping it all.
//!
//! Everything here works on the server the orchestrator uses, as its user
//! (a superuser, or one with CREATEDB and CREATEROLE that is then made a
//! member of each waifu role it works on). `pg_dump` and `pg_restore` come
//! from the PostgreSQL installation the managed cluster uses ([`tools`]).
//!
//! - A dump is taken inside a repeatable-read transaction whose snapshot is
//!   exported to `pg_dump --snapshot`, so the figures recorded beside it
//!   ([`figures`]: rows and checksums per table) are of exactly the data
//!   in the file. It is written to a temporary file, fsynced and renamed.
//! - A restore goes into a fresh database owned by the waifu's role,
//!   `pg_restore --single-transaction --exit-on-error`, and is checked
//!   against the figures when they are known. Only then is it swapped in:
//!   the live database's sessions are ended and the two renamed in one
//!   transaction, the old one kept, closed, as `…_before_{time}`. A restore
//!   that fails leaves the live database as it was. The role and its
//!   password do not change, so the waifu's credentials keep working.
//! - Each action is one audit row.

mod dump;
pub(crate) mod figures;
mod manage;
mod restore;
pub(crate) mod tools;

use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::NoTls;

use crate::provision::{ProvisionError, identifier};
use crate::store::{Store, StoreError};

pub(crate) use figures::Figures;
pub use manage::DatabaseInfo;

use tools::{Target, Tools};

/// How long one `pg_dump` or `pg_restore` may run.
const TOOL_LIMIT: Duration = Duration::from_secs(6 * 60 * 60);

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

/// Does data actions on the orchestrator's server.
#[derive(Debug, Clone)]
pub(crate) struct Data {
    store: Store,
    tools: Tools,
    /// The state database's connection settings, without the statement
    /// timeout the pool has (a dump, a restore, a checksum take longer).
    server: tokio_postgres::Config,
}

impl Data {
    pub(crate) fn new(store: Store) -> Result<Data, DataError> {
        let mut server = store.session_config().clone();
        server.options("-c statement_timeout=0");
        Ok(Data {
            store,
            tools: Tools::find()?,
            server,
        })
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// A session of its own on `database`.
    async fn connect(&self, database: &str) -> Result<tokio_postgres::Client, DataError> {
        let mut config = self.server.clone();
        config.dbname(database);
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Where the programs reach `database`.
    fn target(&self, database: &str) -> Target {
        Target::new(&self.server, database)
    }

    /// The role `--role` names for `name`'s objects, after making this
    /// user a member of it when it is no superuser; and whether it is one.
    async fn act_as(
        &self,
        client: &tokio_postgres::Client,
        name: &str,
    ) -> Result<(String, bool), DataError> {
        let role = identifier(name);
        let superuser: bool = client
            .query_one(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await?
            .get(0);
        if !superuser {
            let member: bool = client
                .query_one("SELECT pg_has_role(current_user, $1, 'MEMBER')", &[&role])
                .await?
                .get(0);
            if !member {
                client
                    .batch_execute(&format!(
                        "GRANT {} TO CURRENT_USER",
                        postgres_protocol::escape::escape_identifier(&role)
                    ))
                    .await?;
            }
        }
        Ok((role, superuser))
    }

    /// The server's clock now, as [`Data::stamp`] writes it.
    pub(crate) async fn stamp_now(&self) -> Result<String, DataError> {
        let client = self.connect(self.state_database()).await?;
        self.stamp(&client).await
    }

    /// The server's clock as `YYYYMMDDTHHMMSSZ`, for file and copy names.
    async fn stamp(&self, client: &tokio_postgres::Client) -> Result<String, DataError> {
        Ok(client
            .query_one(
                "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYYMMDD\"T\"HH24MISS\"Z\"')",
                &[],
            )
            .await?
            .get(0))
    }
}

/// A database name of at most 63 bytes: `ident` cut to fit, then `suffix`.
pub(crate) fn copy_name(ident: &str, suffix: &str) -> String {
    let room = 63usize.saturating_sub(suffix.len());
    let mut cut = ident.len().min(room);
    while !ident.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &ident[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_names_fit() {
        assert_eq!(
            copy_name("waifu_link", "_before_20261205T010203Z"),
            "waifu_link_before_20261205T010203Z"
        );
        let long = identifier(&"a".repeat(63));
        let name = copy_name(&long, "_before_20261205T010203Z");
        assert_eq!(name.len(), 63);
        assert!(name.ends_with("_before_20261205T010203Z"));
    }
}
