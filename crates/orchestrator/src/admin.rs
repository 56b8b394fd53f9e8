//! Operator commands that act on the state database directly, with the
//! orchestrator's own settings (`DATABASE_URL`, or the managed cluster in
//! `DATA_DIR`). Whoever can run them could read that database anyway, so
//! nothing they do is reachable over the network, not even with a token.

use waifus_protocol::{NameError, validate_name};

use crate::config::ConfigError;
use crate::config::commands::StateArgs;
use crate::managed::ManagedError;
use crate::provision::{self, ProvisionError};
use crate::store::{Store, StoreError};

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
