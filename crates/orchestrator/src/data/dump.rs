//! A dump of one waifu's database, and the figures of exactly the data in
//! it.

use std::ffi::OsStr;
use std::path::Path;

use tokio_postgres::IsolationLevel;
use tokio_postgres::error::SqlState;

use super::error::DataError;
use super::figures::{self, Figures};
use super::server::{Data, TOOL_LIMIT};
use crate::provision::identifier;

/// A dump written.
#[derive(Debug, Clone)]
pub(crate) struct Dumped {
    pub size: u64,
    /// Of the snapshot the dump is of.
    pub figures: Figures,
}

impl Data {
    /// Dumps `name`'s database into `file` (custom format, 0600): taken in
    /// a snapshot whose figures are computed in the same transaction,
    /// written to a temporary file beside `file`, fsynced and renamed, so
    /// `file` is either whole or absent.
    pub(crate) async fn dump(&self, name: &str, file: &Path) -> Result<Dumped, DataError> {
        let database = identifier(name);
        let mut client = match self.connect(&database).await {
            Err(DataError::Db(e)) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
                return Err(DataError::NoDatabase {
                    name: name.to_owned(),
                });
            }
            other => other?,
        };
        let (role, superuser) = self.act_as(&client, name).await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let snapshot: String = tx
            .query_one("SELECT pg_export_snapshot()", &[])
            .await?
            .get(0);
        let figures = figures::compute(&tx).await?;
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let partial = dir.join(format!(
            ".{}.partial",
            file.file_name()
                .map_or("dump".into(), |n| n.to_string_lossy())
        ));
        let snapshot_arg = format!("--snapshot={snapshot}");
        let file_arg = format!("--file={}", partial.display());
        let role_arg = format!("--role={role}");
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("--format=custom"),
            OsStr::new(&snapshot_arg),
            // A waifu's migration holding a table locked makes the dump
            // fail, not wait for ever.
            OsStr::new("--lock-wait-timeout=30000"),
            OsStr::new(&file_arg),
        ];
        if !superuser {
            args.push(OsStr::new(&role_arg));
        }
        let dumped = self
            .tools
            .run("pg_dump", &args, &self.target(&database), TOOL_LIMIT)
            .await;
        // The snapshot is needed until pg_dump has read everything.
        let committed = tx.commit().await;
        if let Err(e) = dumped {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        committed?;
        let size = persist(&partial, file)?;
        Ok(Dumped { size, figures })
    }
}

/// Makes `partial` private, durable, and `file`; its size.
pub(crate) fn persist(partial: &Path, file: &Path) -> Result<u64, DataError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| DataError::Io { what, path, source }
    };
    std::fs::set_permissions(partial, std::fs::Permissions::from_mode(0o600))
        .map_err(io("set permissions on", partial))?;
    let f = std::fs::File::open(partial).map_err(io("open", partial))?;
    f.sync_all().map_err(io("fsync", partial))?;
    let size = f.metadata().map_err(io("stat", partial))?.len();
    drop(f);
    std::fs::rename(partial, file).map_err(io("rename into place", file))?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", dir))?;
    }
    Ok(size)
}
