//! The backups table: each backup the scheduler takes, its file, the
//! figures of its snapshot, and whether its check passed.

use std::path::PathBuf;

use super::Store;
use super::error::StoreError;

/// One backup as recorded.
#[derive(Debug, Clone)]
pub struct BackupRow {
    pub id: i64,
    pub file: PathBuf,
    pub size: Option<i64>,
    /// RFC 3339, UTC.
    pub taken_at: String,
    /// `taking`, `verified`, `unverified` or `failed`.
    pub outcome: String,
    pub detail: Option<String>,
    /// The figures (JSON) of the snapshot it was taken from.
    pub figures: Option<String>,
}

const COLUMNS: &str = "id, file, size,
    to_char(taken_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
    outcome, detail, figures::text";

fn row(r: &tokio_postgres::Row) -> BackupRow {
    BackupRow {
        id: r.get(0),
        file: PathBuf::from(r.get::<_, String>(1)),
        size: r.get(2),
        taken_at: r.get(3),
        outcome: r.get(4),
        detail: r.get(5),
        figures: r.get(6),
    }
}

impl Store {
    /// A backup of `name` into `file` has begun; its id.
    pub async fn backup_started(&self, name: &str, file: &str) -> Result<i64, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_one(
                "INSERT INTO backups (name, file, outcome) VALUES ($1, $2, 'taking') RETURNING id",
                &[&name, &file],
            )
            .await?
            .get(0))
    }

    /// How a backup ended: `outcome`, its size and figures (JSON) when it
    /// was written, and what went wrong.
    pub async fn backup_ended(
        &self,
        id: i64,
        outcome: &str,
        size: Option<i64>,
        figures: Option<&str>,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE backups SET outcome = $2, size = $3, figures = $4::text::jsonb, detail = $5,
                        verified_at = CASE WHEN $2 = 'verified' THEN now() END
                 WHERE id = $1",
                &[&id, &outcome, &size, &figures, &detail],
            )
            .await?;
        Ok(())
    }

    /// `name`'s backups, newest first.
    pub async fn backups_of(&self, name: &str) -> Result<Vec<BackupRow>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM backups WHERE name = $1 ORDER BY taken_at DESC, id DESC"
                ),
                &[&name],
            )
            .await?;
        Ok(rows.iter().map(row).collect())
    }

    /// Forgets a backup (its file was deleted).
    pub async fn forget_backup(&self, id: i64) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute("DELETE FROM backups WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }

    /// The newest verified backup of each waifu, in Unix seconds.
    pub async fn last_verified(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT name, floor(extract(epoch FROM max(verified_at)))::bigint FROM backups
                 WHERE outcome = 'verified' GROUP BY name",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Each waifu's newest backup (time and outcome) and newest verified
    /// one (time), RFC 3339.
    pub async fn backup_summary(
        &self,
    ) -> Result<Vec<(String, Option<String>, Option<String>)>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT name,
                        (SELECT to_char(b2.taken_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                                || ' ' || b2.outcome
                         FROM backups b2 WHERE b2.name = b.name ORDER BY b2.taken_at DESC LIMIT 1),
                        to_char(max(verified_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                 FROM backups b GROUP BY name",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// How long ago each waifu's newest backup began, in seconds.
    pub async fn backup_ages(&self) -> Result<Vec<(String, f64)>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT name, extract(epoch FROM now() - max(taken_at))::float8 FROM backups
                 GROUP BY name",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The outcome of `name`'s newest finished backup before `id`, if any.
    pub async fn previous_outcome(
        &self,
        name: &str,
        id: i64,
    ) -> Result<Option<String>, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt(
                "SELECT outcome FROM backups WHERE name = $1 AND id < $2 AND outcome <> 'taking'
                 ORDER BY id DESC LIMIT 1",
                &[&name, &id],
            )
            .await?
            .map(|r| r.get(0)))
    }
}
