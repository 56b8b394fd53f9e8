//! The cluster's superuser password and port, each in a private file of
//! `DATA_DIR` (see `crate::private_file`), and the URL they make.

use std::path::Path;

use super::error::ManagedError;

/// Superuser the orchestrator creates in its managed cluster.
pub(super) const SUPERUSER: &str = "waifus";

const PASSWORD: &str = "postgres-password";
const PORT: &str = "postgres-port";

/// The superuser password, made once (32 random bytes in hex).
pub(super) fn password(data_dir: &Path) -> Result<String, ManagedError> {
    Ok(crate::private_file::read_or_create(
        &data_dir.join(PASSWORD),
        crate::private_file::random_secret,
    )?)
}

/// The cluster's port: `pick()`ed once, then kept so the credentials
/// waifus cached stay valid. `true` with it when it was picked now, so no
/// server has ever listened there for us.
pub(super) fn port(
    data_dir: &Path,
    pick: impl FnOnce() -> std::io::Result<u16>,
) -> Result<(u16, bool), ManagedError> {
    let path = data_dir.join(PORT);
    let mut picked = false;
    let text = crate::private_file::read_or_create(&path, || {
        picked = true;
        pick().map(|port| port.to_string())
    })?;
    let port = text.parse().map_err(|_| ManagedError::Io {
        what: "read a port number from",
        path,
        source: std::io::ErrorKind::InvalidData.into(),
    })?;
    Ok((port, picked))
}

/// Forgets a port picked now that a server could not listen on (another
/// program took it meanwhile), so the next [`port`] picks again.
pub(super) fn forget_port(data_dir: &Path) {
    let _ = std::fs::remove_file(data_dir.join(PORT));
}

/// A port nothing listens on now, from the kernel's ephemeral range.
/// Something else may take it before PostgreSQL does: the caller starts
/// the server on it and picks again if that fails.
pub(super) fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()
        .map(|a| a.port())
}

/// The state database's URL on the managed cluster.
pub(super) fn url(password: &str, port: u16) -> String {
    format!("postgres://{SUPERUSER}:{password}@127.0.0.1:{port}/waifus")
}

/// The state database's URL on the managed cluster of `data_dir`, for a
/// command run beside a running orchestrator; `None` when no cluster was
/// ever set up there. Creates nothing.
pub(crate) fn url_of(data_dir: &Path) -> Result<Option<String>, ManagedError> {
    let read = |file: &str| {
        let path = data_dir.join(file);
        crate::private_file::read(&path).map_err(|source| ManagedError::Io {
            what: "read",
            path,
            source,
        })
    };
    let (Some(password), Some(port)) = (read(PASSWORD)?, read(PORT)?) else {
        return Ok(None);
    };
    let port = port.parse().map_err(|_| ManagedError::Io {
        what: "read a port number from",
        path: data_dir.join(PORT),
        source: std::io::ErrorKind::InvalidData.into(),
    })?;
    Ok(Some(url(&password, port)))
}
