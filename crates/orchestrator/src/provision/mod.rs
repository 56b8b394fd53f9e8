//! Database provisioning: `POST /__internal/database` gives each waifu a
//! role and a database of its own, guarded by its secret.
//!
//! The secret is the name's own ([`crate::ownership`]: claimed by the first
//! hello or database call that carries one, checked with Argon2id, wrong
//! ones throttled and recorded). Once it is admitted, the first call for a
//! name derives the password (see [`secret`]), records a `provisioning` row
//! with the role's SCRAM verifier, creates the role and the database, and
//! marks the row `ready`; later calls answer the same credentials. Everything for
//! one name happens under a session advisory lock on a dedicated connection,
//! so concurrent first calls create one database and give one answer; every
//! step is idempotent, so an interrupted provisioning completes on the next
//! call, or at start-up by [`Provisioner::reconcile`], which needs no secret.

mod error;
pub(crate) mod secret;
pub(crate) mod sql;

use std::net::IpAddr;
use std::sync::Arc;

use tracing::{info, warn};
use waifus_protocol::{DatabaseCredentials, validate_name};

use crate::ownership::{Asked, Ownership, OwnershipError};
use crate::store::Store;
pub(crate) use error::{DEADLINE, MAX_SECRET, ProvisionError, Unavailable};
use secret::PasswordKey;
pub(crate) use sql::RoleLimits;

/// Where waifus reach the database server.
#[derive(Debug, Clone)]
pub(crate) struct PublicDb {
    pub host: String,
    pub port: u16,
}

/// Hands out databases.
#[derive(Debug)]
pub(crate) struct Provisioner {
    store: Store,
    key: PasswordKey,
    public: PublicDb,
    /// Whose secret a call carries.
    ownership: Arc<Ownership>,
    /// What each waifu role may use of the server.
    limits: RoleLimits,
}

/// The role and database identifier of a waifu: `waifu_{name}`, or for long
/// names a prefix and a hash, within PostgreSQL's 63-byte limit. The prefix
/// keeps waifus away from `postgres`, `template1` and the state database.
pub(crate) fn identifier(name: &str) -> String {
    if name.len() <= 57 {
        format!("waifu_{name}")
    } else {
        let digest =
            crate::private_file::hex(&<sha2::Sha256 as sha2::Digest>::digest(name.as_bytes()));
        format!("waifu_{}_{}", &name[..40], &digest[..16])
    }
}

/// A stored provisioning row.
struct Row {
    verifier: String,
    key_id: String,
    ready: bool,
}

impl Provisioner {
    pub(crate) fn new(
        store: Store,
        key: PasswordKey,
        public: PublicDb,
        ownership: Arc<Ownership>,
        limits: RoleLimits,
    ) -> Self {
        Provisioner {
            store,
            key,
            public,
            ownership,
            limits,
        }
    }

    /// Handles `POST /__internal/database`.
    pub(crate) async fn credentials(
        &self,
        name: &str,
        secret: &str,
        source: IpAddr,
    ) -> Result<DatabaseCredentials, ProvisionError> {
        validate_name(name)?;
        if secret.is_empty() || secret.len() > MAX_SECRET {
            return Err(ProvisionError::Secret);
        }
        tokio::time::timeout(DEADLINE, async {
            self.admit(name, secret, source).await?;
            let mut lock = NameLock::acquire(&self.store, name).await?;
            let result = self.provision(lock.client(), name, secret).await;
            if result.is_ok() {
                lock.release().await?;
            }
            result
        })
        .await
        .unwrap_or_else(|_| Err(Unavailable::TimedOut.into()))
    }

    /// The name's secret checked as for any database call (a wrong one
    /// refused and recorded, the throttle counted).
    async fn admit(&self, name: &str, secret: &str, source: IpAddr) -> Result<(), ProvisionError> {
        match self
            .ownership
            .admit(name, Some(secret), source, Asked::Database)
            .await
        {
            Ok(_) => Ok(()),
            Err(OwnershipError::WrongSecret) => Err(ProvisionError::WrongSecret),
            Err(OwnershipError::Throttled(wait)) => Err(ProvisionError::Throttled(wait)),
            Err(e) => Err(Unavailable::Ownership(e).into()),
        }
    }

    /// Handles `POST /__internal/database/rotate`: `secret` (checked as
    /// any call's: a wrong one is refused and recorded) is replaced by
    /// `new_secret` for hellos and the database alike, and the role's
    /// password by the one derived from it, in one transaction under the
    /// name's lock. The old secret and password stop working for new
    /// connections; open sessions go on. Answers the new credentials.
    pub(crate) async fn rotate(
        &self,
        name: &str,
        secret: &str,
        new_secret: &str,
        source: IpAddr,
    ) -> Result<DatabaseCredentials, ProvisionError> {
        validate_name(name)?;
        for s in [secret, new_secret] {
            if s.is_empty() || s.len() > MAX_SECRET {
                return Err(ProvisionError::Secret);
            }
        }
        if secret == new_secret {
            return Err(ProvisionError::SameSecret);
        }
        tokio::time::timeout(DEADLINE, async {
            self.admit(name, secret, source).await?;
            let hash = self
                .ownership
                .hash(new_secret)
                .await
                .map_err(|e| Unavailable::Ownership(e.into()))?;
            let mut lock = NameLock::acquire(&self.store, name).await?;
            let result = self
                .rotate_locked(lock.client(), name, new_secret, &hash, source)
                .await;
            if result.is_ok() {
                lock.release().await?;
            }
            result
        })
        .await
        .unwrap_or_else(|_| Err(Unavailable::TimedOut.into()))
    }

    async fn rotate_locked(
        &self,
        client: &mut tokio_postgres::Client,
        name: &str,
        new_secret: &str,
        hash: &str,
        source: IpAddr,
    ) -> Result<DatabaseCredentials, ProvisionError> {
        let source = source.to_canonical().to_string();
        let password = rotate_in(client, &self.key, name, new_secret, hash, &source).await?;
        let ident = identifier(name);
        Ok(DatabaseCredentials {
            database: ident.clone(),
            user: ident,
            password,
            host: self.public.host.clone(),
            port: self.public.port,
        })
    }

    async fn provision(
        &self,
        client: &mut tokio_postgres::Client,
        name: &str,
        secret: &str,
    ) -> Result<DatabaseCredentials, ProvisionError> {
        let password = self.key.password(name, secret);
        let mut row = match load(client, name).await? {
            Some(row) => row,
            None => {
                let row = Row {
                    verifier: postgres_protocol::password::scram_sha_256(password.as_bytes()),
                    key_id: self.key.id().to_owned(),
                    ready: false,
                };
                client
                    .execute(
                        "INSERT INTO databases (name, scram_verifier, key_id, state)
                         VALUES ($1, $2, $3, 'provisioning')",
                        &[&name, &row.verifier, &row.key_id],
                    )
                    .await?;
                info!(name, "provisioning a database");
                row
            }
        };
        let rekeyed = row.key_id != self.key.id();
        if rekeyed {
            warn!(
                name,
                "password key changed: setting a new password for the role"
            );
            row.verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
            row.key_id = self.key.id().to_owned();
            client
                .execute(
                    "UPDATE databases SET scram_verifier = $2, key_id = $3 WHERE name = $1",
                    &[&name, &row.verifier, &row.key_id],
                )
                .await?;
        }
        if !row.ready || rekeyed {
            finish(client, name, &row.verifier, self.limits).await?;
        }
        let ident = identifier(name);
        Ok(DatabaseCredentials {
            database: ident.clone(),
            user: ident,
            password,
            host: self.public.host.clone(),
            port: self.public.port,
        })
    }

    /// Completes every provisioning left half-done (start-up), and sets
    /// the role limits on every waifu role whose limits differ (they may
    /// have been changed since the last start). Needs no secret: the row
    /// holds the role's verifier.
    pub(crate) async fn reconcile(&self) -> Result<usize, ProvisionError> {
        let client = self.store.connection().await?;
        let roles: Vec<(String, String)> = client
            .query("SELECT name FROM databases WHERE state = 'ready'", &[])
            .await?
            .iter()
            .map(|r| {
                let name: String = r.get(0);
                let role = identifier(&name);
                (name, role)
            })
            .collect();
        let changed = sql::apply_limits(&client, &roles, self.limits).await?;
        if changed > 0 {
            info!(
                roles = changed,
                "applied DB_CONNECTION_LIMIT and DB_STATEMENT_TIMEOUT to existing roles"
            );
        }
        let names: Vec<String> = client
            .query(
                "SELECT name FROM databases WHERE state = 'provisioning'",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        drop(client);
        for name in &names {
            let mut lock = NameLock::acquire(&self.store, name).await?;
            if let Some(row) = load(lock.client(), name).await?
                && !row.ready
            {
                finish(lock.client(), name, &row.verifier, self.limits).await?;
            }
            lock.release().await?;
            info!(name, "finished an interrupted provisioning");
        }
        Ok(names.len())
    }
}

/// Replaces `name`'s secret with `new_secret` (whose Argon2id hash is
/// `hash`) and its role's password with the one derived from it under
/// `key`, in one transaction on `client` (which holds the name's lock),
/// audited from `source`. Returns the new password.
pub(crate) async fn rotate_in(
    client: &mut tokio_postgres::Client,
    key: &PasswordKey,
    name: &str,
    new_secret: &str,
    hash: &str,
    source: &str,
) -> Result<String, ProvisionError> {
    let Some(row) = load(client, name).await? else {
        return Err(ProvisionError::NoDatabase(name.to_owned()));
    };
    if !row.ready {
        return Err(ProvisionError::NoDatabase(name.to_owned()));
    }
    let password = key.password(name, new_secret);
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    let ident = identifier(name);
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO waifu_secrets (name, secret_hash) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET secret_hash = EXCLUDED.secret_hash",
        &[&name, &hash],
    )
    .await?;
    tx.execute(
        "UPDATE databases SET scram_verifier = $2, key_id = $3 WHERE name = $1",
        &[&name, &verifier, &key.id()],
    )
    .await?;
    tx.batch_execute(&format!(
        "ALTER ROLE {} PASSWORD {}",
        postgres_protocol::escape::escape_identifier(&ident),
        postgres_protocol::escape::escape_literal(&verifier)
    ))
    .await?;
    tx.execute(
        "INSERT INTO audit (action, name, source, detail) VALUES ('secret_rotated', $1, $2,
           'the secret and the database password were replaced; open sessions go on')",
        &[&name, &source],
    )
    .await?;
    tx.commit().await?;
    info!(name, "secret rotated");
    Ok(password)
}

/// What releasing a claim did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// The name was claimed (now it is not).
    pub was_claimed: bool,
    /// Sessions of the waifu's role that were ended; `None`: it has no role.
    pub sessions_ended: Option<i64>,
}

/// Frees a claimed name, an operator's act: its secret is forgotten
/// (audited, with a `claim_released` incident) and its role's password
/// taken away, so what the old secret gave stops working; the next hello or
/// database call with a secret claims the name again, and the database
/// call sets a password derived from that secret. Under the name's lock, so
/// it never interleaves with a provisioning. Repeating it is harmless.
pub(crate) async fn release_claim(
    store: &Store,
    name: &str,
    source: &str,
    webhook: bool,
) -> Result<(Released, Option<crate::store::incidents::NewIncident>), ProvisionError> {
    validate_name(name)?;
    let mut lock = NameLock::acquire(store, name).await?;
    let incident = store.release_claim(name, source, webhook).await?;
    let sessions_ended = sql::revoke_password(lock.client(), name, &identifier(name)).await?;
    lock.release().await?;
    let released = Released {
        was_claimed: incident.is_some(),
        sessions_ended,
    };
    Ok((released, incident))
}

async fn load(client: &tokio_postgres::Client, name: &str) -> Result<Option<Row>, ProvisionError> {
    let row = client
        .query_opt(
            "SELECT scram_verifier, key_id, state FROM databases WHERE name = $1",
            &[&name],
        )
        .await?;
    Ok(row.map(|r| Row {
        verifier: r.get(0),
        key_id: r.get(1),
        ready: r.get::<_, &str>(2) == "ready",
    }))
}

/// Role, database, then the row marked ready.
async fn finish(
    client: &mut tokio_postgres::Client,
    name: &str,
    verifier: &str,
    limits: RoleLimits,
) -> Result<(), ProvisionError> {
    let ident = identifier(name);
    sql::ensure_role(client, name, &ident, verifier, limits).await?;
    sql::ensure_database(client, name, &ident).await?;
    // Marked ready, and audited the first time, in one statement.
    client
        .execute(
            "WITH ready AS (
               UPDATE databases SET state = 'ready', ready_at = COALESCE(ready_at, now())
               WHERE name = $1 RETURNING (ready_at = now()) AS first)
             INSERT INTO audit (action, name, source, detail)
             SELECT 'database_created', $1, 'orchestrator', 'role and database ' || $2
             FROM ready WHERE first",
            &[&name, &ident],
        )
        .await?;
    Ok(())
}

/// A dedicated connection holding the session advisory lock of one name.
///
/// Dropped without [`NameLock::release`] (an error, a timeout, a cancelled
/// request), the connection is detached from the pool and closed, which
/// releases the lock: a half-finished section never hands its session, and
/// its lock, to the next user of the pool.
pub(crate) struct NameLock {
    conn: Option<deadpool_postgres::Object>,
    key: String,
}

impl NameLock {
    pub(crate) async fn acquire(store: &Store, name: &str) -> Result<NameLock, ProvisionError> {
        let mut lock = NameLock {
            conn: Some(store.connection().await?),
            key: format!("waifus-db:{name}"),
        };
        let key = lock.key.clone();
        lock.client()
            .execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", &[&key])
            .await?;
        Ok(lock)
    }

    pub(crate) fn client(&mut self) -> &mut tokio_postgres::Client {
        let conn = self
            .conn
            .as_mut()
            .expect("present until released or dropped");
        conn.as_mut()
    }

    pub(crate) async fn release(mut self) -> Result<(), ProvisionError> {
        let key = self.key.clone();
        self.client()
            .execute(
                "SELECT pg_advisory_unlock(hashtextextended($1, 0))",
                &[&key],
            )
            .await?;
        drop(self.conn.take());
        Ok(())
    }
}

impl Drop for NameLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(deadpool_postgres::Object::take(conn));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_fit_and_do_not_collide() {
        assert_eq!(identifier("link"), "waifu_link");
        let long = "a".repeat(63);
        let other = format!("{}b", "a".repeat(62));
        assert!(identifier(&long).len() <= 63);
        assert_ne!(identifier(&long), identifier(&other));
        assert_eq!(identifier(&"a".repeat(57)).len(), 63);
    }
}
