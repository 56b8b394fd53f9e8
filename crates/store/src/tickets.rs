//! TLS session ticket keys, shared through the state database: every
//! orchestrator encrypts tickets with the newest key and decrypts with any
//! key kept, so a client resumes on whichever replica it reaches next.

use std::time::Duration;

use super::Store;
use super::error::StoreError;

/// Advisory lock key serialising the rotation ("waifusTK").
const ROTATION_LOCK: i64 = 0x7761_6966_7573_544b;

/// One key: its id (carried in each ticket) and its 32 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketKey {
    pub id: i32,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// The keys to use now, newest first: `candidate` becomes the newest
    /// when the newest is older than `rotate_after` (or there is none);
    /// keys older than `keep` are deleted.
    pub async fn ticket_keys(
        &self,
        candidate: &[u8; 32],
        rotate_after: Duration,
        keep: Duration,
    ) -> Result<Vec<TicketKey>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ROTATION_LOCK])
            .await?;
        let (rotate, keep) = (rotate_after.as_secs_f64(), keep.as_secs_f64());
        tx.execute(
            "INSERT INTO tls_ticket_keys (key)
             SELECT $1 WHERE NOT EXISTS (
               SELECT 1 FROM tls_ticket_keys
               WHERE created_at > now() - $2 * interval '1 second')",
            &[&candidate.as_slice(), &rotate],
        )
        .await?;
        tx.execute(
            "DELETE FROM tls_ticket_keys WHERE created_at < now() - $1 * interval '1 second'",
            &[&keep],
        )
        .await?;
        let rows = tx
            .query(
                "SELECT id, key FROM tls_ticket_keys ORDER BY created_at DESC, id DESC",
                &[],
            )
            .await?;
        tx.commit().await?;
        Ok(rows
            .iter()
            .map(|r| TicketKey {
                id: r.get(0),
                key: r.get(1),
            })
            .collect())
    }
}
