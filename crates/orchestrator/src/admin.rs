//! Operator commands that act on the state database directly, with the
//! orchestrator's own settings (`DATABASE_URL`, or the managed cluster in
//! `DATA_DIR`). Whoever can run them could read that database anyway, so
//! nothing they do is reachable over the network, not even with a token.

use waifus_protocol::{NameError, validate_name};

use std::path::{Path, PathBuf};

use crate::config::ConfigError;
use crate::config::commands::StateArgs;
use crate::data::{Data, DataError, Figures};
use crate::managed::ManagedError;
use crate::provision::{self, ProvisionError};
use crate::store::{Store, StoreError};

pub use crate::data::DatabaseInfo;
pub use crate::provision::Released;

/// How the audit log names an operator's command.
const OPERATOR: &str = "operator (command line)";

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0:?} is not a waifu name: {1}")]
    Name(String, NameError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Managed(#[from] ManagedError),
    #[error(
        "DATABASE_URL is not set and there is no managed PostgreSQL in {0}: set DATABASE_URL, \
         or DATA_DIR to the orchestrator's data directory"
    )]
    NoState(String),
    #[error(
        "cannot reach the state database ({0}); with the managed PostgreSQL, the \
         orchestrator must be running"
    )]
    Store(#[from] StoreError),
    #[error("{0}")]
    Provision(String),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{0}")]
    Usage(String),
}

impl From<provision::secret::KeyError> for AdminError {
    fn from(e: provision::secret::KeyError) -> Self {
        AdminError::Usage(e.to_string())
    }
}

impl From<ProvisionError> for AdminError {
    fn from(e: ProvisionError) -> Self {
        AdminError::Provision(e.to_string())
    }
}

/// The state database the orchestrator with these settings uses.
async fn open(state: &StateArgs) -> Result<Store, AdminError> {
    let url = match state.database_url()? {
        Some(url) => url,
        None => crate::managed::url_of(&state.data_dir)?
            .ok_or_else(|| AdminError::NoState(state.data_dir.display().to_string()))?,
    };
    Ok(Store::open(&url).await?)
}

/// `orchestrator claim release NAME`.
pub async fn release_claim(state: &StateArgs, name: &str) -> Result<Released, AdminError> {
    validate_name(name).map_err(|e| AdminError::Name(name.to_owned(), e))?;
    let store = open(state).await?;
    let webhook = state
        .incident_webhook_url
        .as_deref()
        .is_some_and(|u| !u.is_empty());
    let (released, _) = provision::release_claim(&store, name, OPERATOR, webhook).await?;
    Ok(released)
}

fn check_name(name: &str) -> Result<(), AdminError> {
    validate_name(name).map_err(|e| AdminError::Name(name.to_owned(), e))
}

/// The figures recorded beside a dump file, if there are.
fn sidecar(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".figures.json");
    PathBuf::from(name)
}

/// What `orchestrator db dump` wrote.
#[derive(Debug)]
pub struct DumpReport {
    pub file: PathBuf,
    pub size: u64,
    pub tables: usize,
    pub rows: i64,
}

/// `orchestrator db dump NAME [-o FILE]`.
pub async fn dump(
    state: &StateArgs,
    name: &str,
    output: Option<&Path>,
) -> Result<DumpReport, AdminError> {
    check_name(name)?;
    let store = open(state).await?;
    let data = Data::new(store)?;
    let file = match output {
        Some(f) => f.to_owned(),
        None => PathBuf::from(format!("{name}-{}.dump", data.stamp_now().await?)),
    };
    let dumped = data.dump(name, &file).await?;
    let figures = serde_json::to_vec_pretty(&dumped.figures).unwrap_or_default();
    let side = sidecar(&file);
    std::fs::write(&side, figures).map_err(|source| DataError::Io {
        what: "write",
        path: side,
        source,
    })?;
    data.store()
        .record_audit(
            name,
            "database_dumped",
            OPERATOR,
            &format!("dumped to {} ({} bytes)", file.display(), dumped.size),
        )
        .await?;
    Ok(DumpReport {
        file,
        size: dumped.size,
        tables: dumped.figures.len(),
        rows: dumped.figures.values().map(|t| t.rows).sum(),
    })
}

/// What `orchestrator db restore` did.
#[derive(Debug)]
pub struct RestoreReport {
    pub file: PathBuf,
    /// Whether recorded figures were there to check against.
    pub checked: bool,
    pub tables: usize,
    pub rows: i64,
    pub before: Option<String>,
}

/// `orchestrator db restore NAME FILE`.
pub async fn restore(
    state: &StateArgs,
    name: &str,
    file: &Path,
    max_wait: std::time::Duration,
) -> Result<RestoreReport, AdminError> {
    check_name(name)?;
    let store = open(state).await?;
    let data = Data::new(store)?;
    let side = sidecar(file);
    let expected: Option<Figures> = match std::fs::read(&side) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
            AdminError::Usage(format!(
                "{} is not the figures of a dump: {e}",
                side.display()
            ))
        })?),
        Err(_) => None,
    };
    let restored = data
        .restore(name, file, expected.as_ref(), max_wait, OPERATOR)
        .await?;
    Ok(RestoreReport {
        file: file.to_owned(),
        checked: expected.is_some(),
        tables: restored.figures.len(),
        rows: restored.figures.values().map(|t| t.rows).sum(),
        before: restored.before,
    })
}

/// `orchestrator db list`.
pub async fn list(state: &StateArgs) -> Result<Vec<DatabaseInfo>, AdminError> {
    let store = open(state).await?;
    Ok(Data::new(store)?.list().await?)
}

/// `orchestrator db drop NAME --yes`.
pub async fn drop_database(state: &StateArgs, name: &str, yes: bool) -> Result<(), AdminError> {
    check_name(name)?;
    if !yes {
        return Err(AdminError::Usage(format!(
            "this drops {name}'s database, its kept copies, its role and its secret for good; \
             say --yes"
        )));
    }
    let store = open(state).await?;
    Ok(Data::new(store)?.drop_waifu_data(name, OPERATOR).await?)
}

/// One backup, as `orchestrator db backups` lists it.
#[derive(Debug)]
pub struct BackupInfo {
    pub file: PathBuf,
    pub size: Option<i64>,
    pub taken_at: String,
    /// `verified`, `unverified`, `failed` (or `taking`, under way).
    pub outcome: String,
    pub detail: Option<String>,
    /// Whether the file is still there.
    pub present: bool,
}

/// `orchestrator db backups NAME`: its backups, newest first.
pub async fn backups(state: &StateArgs, name: &str) -> Result<Vec<BackupInfo>, AdminError> {
    check_name(name)?;
    let store = open(state).await?;
    Ok(store
        .backups_of(name)
        .await?
        .into_iter()
        .map(|b| BackupInfo {
            present: b.file.is_file(),
            file: b.file,
            size: b.size,
            taken_at: b.taken_at,
            outcome: b.outcome,
            detail: b.detail,
        })
        .collect())
}

/// `orchestrator db restore NAME --latest`: the newest verified backup
/// whose file is there, checked against the figures it was taken with.
pub async fn restore_latest(
    state: &StateArgs,
    name: &str,
    max_wait: std::time::Duration,
) -> Result<RestoreReport, AdminError> {
    check_name(name)?;
    let store = open(state).await?;
    let latest = store
        .backups_of(name)
        .await?
        .into_iter()
        .find(|b| b.outcome == "verified" && b.file.is_file())
        .ok_or_else(|| {
            AdminError::Usage(format!(
                "{name} has no verified backup whose file is there (orchestrator db backups {name})"
            ))
        })?;
    let expected: Option<Figures> = latest
        .figures
        .as_deref()
        .and_then(|f| serde_json::from_str(f).ok());
    let data = Data::new(store)?;
    let restored = data
        .restore(name, &latest.file, expected.as_ref(), max_wait, OPERATOR)
        .await?;
    Ok(RestoreReport {
        file: latest.file,
        checked: expected.is_some(),
        tables: restored.figures.len(),
        rows: restored.figures.values().map(|t| t.rows).sum(),
        before: restored.before,
    })
}

/// `orchestrator db rotate NAME --new-secret-file FILE`: the operator's
/// rotation, which needs no old secret (whoever runs it can read the state
/// database anyway). The password key must be the orchestrator's own
/// (`DATA_DIR/db-password.key`).
pub async fn rotate(
    state: &StateArgs,
    name: &str,
    new_secret_file: &Path,
) -> Result<(), AdminError> {
    check_name(name)?;
    let text = std::fs::read_to_string(new_secret_file).map_err(|source| DataError::Io {
        what: "read",
        path: new_secret_file.to_owned(),
        source,
    })?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() || secret.len() > provision::MAX_SECRET {
        return Err(AdminError::Usage(format!(
            "{} must hold a secret of 1 to {} bytes",
            new_secret_file.display(),
            provision::MAX_SECRET
        )));
    }
    let key_file = state.data_dir.join("db-password.key");
    let key = provision::secret::PasswordKey::load(&key_file).map_err(|e| {
        AdminError::Usage(format!(
            "{e}: run this with the orchestrator's DATA_DIR (its password key is there)"
        ))
    })?;
    let store = open(state).await?;
    let hasher = crate::ownership::hasher::Hasher::start()
        .map_err(|e| AdminError::Usage(format!("could not start Argon2: {e}")))?;
    let hash = hasher
        .hash(secret)
        .await
        .map_err(|e| AdminError::Usage(format!("Argon2: {e}")))?;
    let mut lock = provision::NameLock::acquire(&store, name).await?;
    let rotated = provision::rotate_in(lock.client(), &key, name, secret, &hash, OPERATOR).await;
    lock.release().await?;
    rotated?;
    Ok(())
}
