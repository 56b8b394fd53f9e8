//! The server the data actions work on: sessions of their own (without
//! the pool's statement timeout), where the programs reach it, the role
//! to act as, names for copies.

use std::time::Duration;

use tokio_postgres::NoTls;

use super::error::DataError;
use super::tools::{Target, Tools};
use crate::provision::identifier;
use crate::store::Store;

/// How long one `pg_dump` or `pg_restore` may run.
pub(super) const TOOL_LIMIT: Duration = Duration::from_secs(6 * 60 * 60);

/// Does data actions on the orchestrator's server.
#[derive(Debug, Clone)]
pub(crate) struct Data {
    pub(super) store: Store,
    pub(super) tools: Tools,
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

    /// The state database's name (the server settings name it).
    pub(crate) fn state_database(&self) -> &str {
        self.server.get_dbname().unwrap_or("waifus")
    }

    /// A session of its own on `database`.
    pub(super) async fn connect(
        &self,
        database: &str,
    ) -> Result<tokio_postgres::Client, DataError> {
        let mut config = self.server.clone();
        config.dbname(database);
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Where the programs reach `database`.
    pub(super) fn target(&self, database: &str) -> Target {
        Target::new(&self.server, database)
    }

    /// The role `--role` names for `name`'s objects, after making this
    /// user a member of it when it is no superuser; and whether it is one.
    pub(super) async fn act_as(
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
    pub(super) async fn stamp(&self, client: &tokio_postgres::Client) -> Result<String, DataError> {
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
