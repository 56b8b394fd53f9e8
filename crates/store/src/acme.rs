//! ACME state: the account and the certificates, per directory URL.

use std::time::SystemTime;

use super::Store;
use super::error::StoreError;

/// A certificate as stored.
#[derive(Debug)]
pub struct StoredCert {
    pub host: String,
    pub chain_pem: String,
    pub key_pem: String,
}

/// A pending challenge answer, published for every orchestrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedChallenge {
    /// `http-01` (name: the token, value: the key authorization) or
    /// `tls-alpn-01` (name: the host, value: the certificate's DER, key:
    /// its PKCS#8 key).
    pub kind: String,
    pub name: String,
    pub value: Vec<u8>,
    pub key: Option<Vec<u8>>,
}

/// How long a published challenge is kept at most (an order that died
/// without withdrawing it).
const CHALLENGE_TTL_S: i32 = 600;

/// Held while one orchestrator orders a certificate for a host, so replicas
/// sharing the database do not order the same one at once. It is a
/// session-level advisory lock on a connection of its own, taken out of the
/// pool: dropping this closes the connection, which releases the lock
/// whatever path the order took.
#[derive(Debug)]
pub struct AcmeLock {
    _client: deadpool_postgres::ClientWrapper,
}

impl Store {
    pub async fn acme_account(&self, directory: &str) -> Result<Option<String>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT credentials FROM acme_accounts WHERE directory = $1",
                &[&directory],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Stores an account unless another orchestrator stored one first;
    /// returns the one that is stored.
    pub async fn save_acme_account(
        &self,
        directory: &str,
        credentials: &str,
    ) -> Result<String, StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO acme_accounts (directory, credentials) VALUES ($1, $2)
                 ON CONFLICT (directory) DO NOTHING",
                &[&directory, &credentials],
            )
            .await?;
        let row = client
            .query_one(
                "SELECT credentials FROM acme_accounts WHERE directory = $1",
                &[&directory],
            )
            .await?;
        Ok(row.get(0))
    }

    pub async fn certificates(&self, directory: &str) -> Result<Vec<StoredCert>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT host, chain_pem, key_pem FROM certificates WHERE directory = $1",
                &[&directory],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| StoredCert {
                host: r.get(0),
                chain_pem: r.get(1),
                key_pem: r.get(2),
            })
            .collect())
    }

    pub async fn save_certificate(
        &self,
        directory: &str,
        cert: &StoredCert,
        not_after: SystemTime,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO certificates (directory, host, chain_pem, key_pem, not_after)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (directory, host) DO UPDATE
                 SET chain_pem = $3, key_pem = $4, not_after = $5, issued_at = now()",
                &[
                    &directory,
                    &cert.host,
                    &cert.chain_pem,
                    &cert.key_pem,
                    &not_after,
                ],
            )
            .await?;
        Ok(())
    }

    /// Takes the ordering lock for `host`; `None` if another orchestrator
    /// holds it.
    pub async fn acme_lock(&self, host: &str) -> Result<Option<AcmeLock>, StoreError> {
        let client = deadpool_postgres::Object::take(self.pool.get().await?);
        let row = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended('waifus acme ' || $1, 0))",
                &[&host],
            )
            .await?;
        Ok(row
            .get::<_, bool>(0)
            .then_some(AcmeLock { _client: client }))
    }

    /// Publishes a challenge answer for every orchestrator.
    pub async fn publish_challenge(&self, c: &SharedChallenge) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO acme_challenges (kind, name, value, key) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (kind, name) DO UPDATE
                 SET value = EXCLUDED.value, key = EXCLUDED.key, set_at = now()",
                &[&c.kind, &c.name, &c.value, &c.key],
            )
            .await?;
        Ok(())
    }

    /// Withdraws a challenge answer (its order ended).
    pub async fn withdraw_challenge(&self, kind: &str, name: &str) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "DELETE FROM acme_challenges WHERE kind = $1 AND name = $2",
                &[&kind, &name],
            )
            .await?;
        Ok(())
    }

    /// Every pending challenge answer (the long-forgotten ones deleted).
    pub async fn shared_challenges(&self) -> Result<Vec<SharedChallenge>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "WITH gone AS (DELETE FROM acme_challenges
                               WHERE set_at < now() - make_interval(secs => $1))
                 SELECT kind, name, value, key FROM acme_challenges",
                &[&f64::from(CHALLENGE_TTL_S)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| SharedChallenge {
                kind: r.get(0),
                name: r.get(1),
                value: r.get(2),
                key: r.get(3),
            })
            .collect())
    }
}
