//! The idempotent SQL steps that give a waifu its role and database.
//!
//! Each step checks what exists before acting, so a provisioning interrupted
//! anywhere completes on the next call or at start-up. Something that exists
//! but was not made by waifus (no marker comment, a wrong owner, or more
//! privilege than a waifu role gets) is never adopted.

use postgres_protocol::escape::{escape_identifier, escape_literal};
use tokio_postgres::Client;

use super::error::{Conflicting, ProvisionError};

/// What each waifu role may use of the server: `DB_CONNECTION_LIMIT` and
/// `DB_STATEMENT_TIMEOUT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoleLimits {
    /// Most connections the role may hold at once.
    pub connections: u32,
    /// Longest statement of the role's sessions; `None`: no limit.
    pub statement_timeout: Option<std::time::Duration>,
}

impl RoleLimits {
    /// `ALTER ROLE` clauses setting these limits on `ident` (escaped).
    fn statements(&self, ident: &str) -> String {
        let timeout = match self.statement_timeout {
            Some(t) => format!(
                "ALTER ROLE {ident} SET statement_timeout = {}",
                escape_literal(&format!("{}ms", t.as_millis().max(1)))
            ),
            None => format!("ALTER ROLE {ident} RESET statement_timeout"),
        };
        format!(
            "ALTER ROLE {ident} CONNECTION LIMIT {};\n{timeout}",
            self.connections
        )
    }
}

/// The comment marking roles and databases as made by waifus for `name`.
pub(crate) fn marker(name: &str) -> String {
    format!("waifus:{name}")
}

/// Creates the role with the given SCRAM verifier, or checks that the
/// existing one is ours and sets its verifier.
pub(crate) async fn ensure_role(
    client: &mut Client,
    name: &str,
    role: &str,
    verifier: &str,
    limits: RoleLimits,
) -> Result<(), ProvisionError> {
    let ident = escape_identifier(role);
    let password = escape_literal(verifier);
    let existing = client
        .query_opt(
            "SELECT rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls,
                    shobj_description(oid, 'pg_authid')
             FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await?;
    let tx = client.transaction().await?;
    match existing {
        None => {
            tx.batch_execute(&format!(
                "CREATE ROLE {ident} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
                 NOBYPASSRLS PASSWORD {password};
                 COMMENT ON ROLE {ident} IS {};
                 {}",
                escape_literal(&marker(name)),
                limits.statements(&ident)
            ))
            .await?;
        }
        Some(row) => {
            let privileged: bool = row.get(0);
            let comment: Option<String> = row.get(1);
            if privileged || comment.as_deref() != Some(marker(name).as_str()) {
                return Err(ProvisionError::Conflict {
                    kind: Conflicting::Role,
                    object: role.to_owned(),
                    name: name.to_owned(),
                });
            }
            tx.batch_execute(&format!(
                "ALTER ROLE {ident} LOGIN PASSWORD {password};\n{}",
                limits.statements(&ident)
            ))
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Sets `limits` on every role waifus made whose limits differ (start-up,
/// after `DB_CONNECTION_LIMIT` or `DB_STATEMENT_TIMEOUT` changed). Returns
/// the roles changed.
pub(crate) async fn apply_limits(
    client: &Client,
    roles: &[(String, String)],
    limits: RoleLimits,
) -> Result<usize, ProvisionError> {
    let wanted_timeout = limits
        .statement_timeout
        .map(|t| format!("statement_timeout={}ms", t.as_millis().max(1)));
    let mut changed = 0;
    for (name, role) in roles {
        let row = client
            .query_opt(
                "SELECT r.rolconnlimit, shobj_description(r.oid, 'pg_authid'),
                        (SELECT c FROM pg_db_role_setting s, unnest(s.setconfig) c
                         WHERE s.setrole = r.oid AND s.setdatabase = 0
                           AND c LIKE 'statement\\_timeout=%')
                 FROM pg_roles r WHERE r.rolname = $1",
                &[role],
            )
            .await?;
        let Some(row) = row else { continue };
        if row.get::<_, Option<String>>(1).as_deref() != Some(marker(name).as_str()) {
            continue;
        }
        let limit: i32 = row.get(0);
        let timeout: Option<String> = row.get(2);
        let same = i64::from(limit) == i64::from(limits.connections) && timeout == wanted_timeout;
        if !same {
            client
                .batch_execute(&limits.statements(&escape_identifier(role)))
                .await?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// Takes the password off the waifu's role (when waifus made it) and ends
/// its sessions: credentials derived from a released secret stop working
/// at once. The next database call with a new secret sets a new password.
/// Returns the sessions ended, or `None` when there is no such role.
pub(crate) async fn revoke_password(
    client: &Client,
    name: &str,
    role: &str,
) -> Result<Option<i64>, ProvisionError> {
    let existing = client
        .query_opt(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await?;
    let Some(row) = existing else {
        return Ok(None);
    };
    if row.get::<_, Option<String>>(0).as_deref() != Some(marker(name).as_str()) {
        return Err(ProvisionError::Conflict {
            kind: Conflicting::Role,
            object: role.to_owned(),
            name: name.to_owned(),
        });
    }
    client
        .batch_execute(&format!(
            "ALTER ROLE {} PASSWORD NULL",
            escape_identifier(role)
        ))
        .await?;
    let ended = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1",
            &[&role],
        )
        .await?;
    Ok(Some(ended.get(0)))
}

/// Creates the database owned by the role with no window in which PUBLIC
/// could connect (created closed, CONNECT revoked, then opened), or adopts
/// an existing one only when its owner and marker match.
pub(crate) async fn ensure_database(
    client: &Client,
    name: &str,
    database: &str,
) -> Result<(), ProvisionError> {
    let ident = escape_identifier(database);
    let existing = client
        .query_opt(
            "SELECT pg_get_userbyid(datdba), shobj_description(oid, 'pg_database')
             FROM pg_database WHERE datname = $1",
            &[&database],
        )
        .await?;
    match existing {
        None => {
            // CREATE DATABASE cannot run in a transaction; the comment follows.
            client
                .batch_execute(&format!(
                    "CREATE DATABASE {ident} OWNER {ident} ALLOW_CONNECTIONS false"
                ))
                .await?;
        }
        Some(row) => {
            let owner: String = row.get(0);
            let comment: Option<String> = row.get(1);
            // Ours: owned by our (marked) role, and carrying our marker, or no
            // comment at all when we were interrupted between CREATE and COMMENT.
            let ours = owner == database
                && comment
                    .as_deref()
                    .is_none_or(|c| c == marker(name).as_str());
            if !ours {
                return Err(ProvisionError::Conflict {
                    kind: Conflicting::Database,
                    object: database.to_owned(),
                    name: name.to_owned(),
                });
            }
        }
    }
    client
        .batch_execute(&format!(
            "COMMENT ON DATABASE {ident} IS {};
             REVOKE ALL ON DATABASE {ident} FROM PUBLIC;
             ALTER DATABASE {ident} ALLOW_CONNECTIONS true",
            escape_literal(&marker(name))
        ))
        .await?;
    Ok(())
}
