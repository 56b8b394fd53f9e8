//! Why a waifu got no database credentials.

use std::time::Duration;

use waifus_protocol::NameError;

use crate::ownership::OwnershipError;
use crate::store::StoreError;

/// Bound on the whole database part of one call: past it, 503.
pub(crate) const DEADLINE: Duration = Duration::from_millis(4500);
/// Longest secret accepted.
pub(crate) const MAX_SECRET: usize = 1024;

/// Why credentials were not handed out.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProvisionError {
    #[error("invalid name: {0}")]
    Name(#[from] NameError),
    #[error("the secret must be 1 to {MAX_SECRET} bytes")]
    Secret,
    #[error("the secret does not match the one this waifu registered with")]
    WrongSecret,
    #[error("too many wrong secrets for this name; retry in {} s", .0.as_secs().max(1))]
    Throttled(Duration),
    /// A role or database of the waifu's name exists that waifus did not
    /// make: it is never adopted.
    #[error("a {kind} named {object} exists and was not made by waifus for {name}")]
    Conflict {
        kind: Conflicting,
        object: String,
        name: String,
    },
    #[error("the database server is unreachable or too slow: {0}")]
    Unavailable(#[from] Unavailable),
    /// A rotation for a name that has no database (nothing to rotate).
    #[error("{0} has no database: ask for one with its secret first")]
    NoDatabase(String),
    /// A rotation to the same secret.
    #[error("newSecret must differ from secret")]
    SameSecret,
}

/// What kind of object was found in the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conflicting {
    Role,
    Database,
}

impl std::fmt::Display for Conflicting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conflicting::Role => "role",
            Conflicting::Database => "database",
        })
    }
}

/// Why PostgreSQL (or Argon2) could not do its part in time.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unavailable {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("no answer within {} ms", DEADLINE.as_millis())]
    TimedOut,
    #[error(transparent)]
    Ownership(OwnershipError),
}

impl From<StoreError> for ProvisionError {
    fn from(e: StoreError) -> Self {
        Unavailable::from(e).into()
    }
}

impl From<tokio_postgres::Error> for ProvisionError {
    fn from(e: tokio_postgres::Error) -> Self {
        Unavailable::from(e).into()
    }
}

impl ProvisionError {
    /// The `outcome` label of the database-call metric.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            ProvisionError::Name(_) | ProvisionError::Secret | ProvisionError::SameSecret => {
                "invalid"
            }
            ProvisionError::NoDatabase(_) => "no_database",
            ProvisionError::WrongSecret => "wrong_secret",
            ProvisionError::Throttled(_) => "throttled",
            ProvisionError::Conflict { .. } => "conflict",
            ProvisionError::Unavailable(_) => "unavailable",
        }
    }
}
