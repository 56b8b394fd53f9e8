//! What the orchestrator is given to run, and why it could not.

use tokio::net::TcpListener;

use crate::config::ConfigError;
use crate::managed::ManagedError;
use crate::store::StoreError;
use crate::tls;
use crate::upgrade::{Notifier, Predecessor, Relaunch};

/// The two sockets the orchestrator serves, bound by the caller (tests bind
/// port 0).
#[derive(Debug)]
pub struct Listeners {
    pub public: TcpListener,
    pub internal: TcpListener,
    /// The TLS listener; must be bound when [`Config::tls_on`].
    pub https: Option<TcpListener>,
}

/// What the process around the orchestrator gives it, when it is a
/// process of its own (the binary): how to start again for an upgrade, the
/// predecessor that handed it its listeners, systemd's notify socket.
#[derive(Debug, Default)]
pub struct Process {
    pub relaunch: Option<Relaunch>,
    pub predecessor: Option<Predecessor>,
    pub notifier: Notifier,
}

/// Why the orchestrator could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Managed(#[from] ManagedError),
    #[error("could not open the state database: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] crate::provision::secret::KeyError),
    #[error("the operating system's random number generator failed: {0}")]
    Random(#[from] getrandom::Error),
    #[error("could not read a listener's address: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS is on but no listener was bound for HTTPS_ADDR")]
    NoHttpsListener,
    #[error(transparent)]
    Tls(#[from] tls::SetupError),
    #[error("BACKUP_DIR is set, but: {0}")]
    Backups(#[from] crate::data::DataError),
}
