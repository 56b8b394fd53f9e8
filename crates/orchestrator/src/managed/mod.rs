//! The managed PostgreSQL cluster, the embedded default when `DATABASE_URL`
//! is unset.
//!
//! `DATA_DIR/postgres` holds a cluster initialised with scram-sha-256 and a
//! random superuser password kept in `DATA_DIR/postgres-password` (0600).
//! It listens on 127.0.0.1 (port chosen once, kept in `DATA_DIR/postgres-port`)
//! and a private socket in its own directory. The orchestrator starts it,
//! restarts it if it dies, and stops it cleanly on shutdown. PostgreSQL
//! refuses to run as root, so as root it runs as the `postgres` user.
//!
//! The server runs in a process group of its own and outlives the process
//! that started it when asked to: after an upgrade the new orchestrator
//! adopts the running server (its `postmaster.pid`, its port, its password)
//! instead of restarting it, so no waifu database session is cut. A server
//! that is running but cannot be adopted is stopped and started again, and
//! the sessions that cut are logged.

mod binaries;
mod error;
mod files;
mod privileges;
mod server;

use std::path::Path;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use binaries::find_bindir;
pub(crate) use binaries::newest_installed;
pub use error::ManagedError;
pub(crate) use files::url_of;
pub use privileges::run_as;

use error::io;
use privileges::{cluster_dir, create_dir};
use server::{Postmaster, Server};

/// A running managed cluster.
#[derive(Debug)]
pub(crate) struct Managed {
    /// URL of the orchestrator's state database on the managed cluster.
    pub url: String,
    /// Cancelled to stop supervising: then `stopping` says whether to stop
    /// the server too.
    done: CancellationToken,
    stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
    supervisor: tokio::task::JoinHandle<()>,
}

impl Managed {
    /// Initialises the cluster if needed, starts it (or adopts the one a
    /// previous orchestrator left running) and waits until it accepts
    /// connections.
    pub(crate) async fn start(data_dir: &Path) -> Result<Managed, ManagedError> {
        Managed::start_with(data_dir, files::free_port).await
    }

    /// As [`Managed::start`], picking the port (the first time) with
    /// `pick`. A port picked now that the server cannot listen on, as
    /// another program took it meanwhile, is picked again (three times).
    async fn start_with(
        data_dir: &Path,
        mut pick: impl FnMut() -> std::io::Result<u16>,
    ) -> Result<Managed, ManagedError> {
        let bindir = find_bindir().ok_or(ManagedError::NoBinaries)?;
        let user = run_as()?;
        let data_dir = std::path::absolute(data_dir).map_err(io("resolve", data_dir))?;
        create_dir(&data_dir, if user.is_some() { 0o711 } else { 0o700 })?;
        let cluster = cluster_dir(&data_dir, user)?;
        let password = files::password(&data_dir)?;
        let mut attempts = 0;
        let (server, postmaster) = loop {
            attempts += 1;
            let (port, picked_now) = files::port(&data_dir, &mut pick)?;
            if !cluster.join("PG_VERSION").exists() {
                server::initdb(&bindir, &data_dir, &cluster, &password, user).await?;
            }
            let server = Server {
                bindir: bindir.clone(),
                log: data_dir.join("postgres.log"),
                cluster: cluster.clone(),
                port,
                user,
            };
            if let Some(pid) = server::adoptable(&server, &password).await {
                info!(
                    pid = pid.as_raw_nonzero().get(),
                    port, "adopted the running managed PostgreSQL: no database session was cut"
                );
                break (server, Postmaster::Adopted(pid));
            }
            server::stop_stale(&server, &password).await;
            let child = server.spawn()?;
            match server::wait_ready(&server, child, &password).await {
                Ok(child) => {
                    info!(port, cluster = %server.cluster.display(), "managed PostgreSQL is ready");
                    break (server, Postmaster::Child(child));
                }
                Err(ManagedError::Exited { status, .. }) if picked_now && attempts < 3 => {
                    warn!(
                        port,
                        status,
                        "the managed PostgreSQL could not start on the port just picked; picking another"
                    );
                    files::forget_port(&data_dir);
                }
                Err(e) => return Err(e),
            }
        };
        let url = files::url(&password, server.port);
        let done = CancellationToken::new();
        let stopping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let supervisor = tokio::spawn(server::supervise(
            server,
            password,
            postmaster,
            done.clone(),
            stopping.clone(),
        ));
        Ok(Managed {
            url,
            done,
            stopping,
            supervisor,
        })
    }

    /// Stops the cluster cleanly (fast shutdown) and waits for it; the
    /// waifu sessions that cut are logged.
    pub(crate) async fn stop(self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.done.cancel();
        let _ = self.supervisor.await;
    }

    /// Stops supervising and leaves the server running, for the
    /// orchestrator that took over (it adopted it).
    pub(crate) async fn leave_running(self) {
        self.done.cancel();
        let _ = self.supervisor.await;
        info!("left the managed PostgreSQL running for the new orchestrator");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port picked now that another program takes before PostgreSQL
    /// listens there is picked again, and the file keeps the one served on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_port_taken_meanwhile_is_picked_again() {
        if !waifus_testkit::require(
            find_bindir().is_some(),
            "PostgreSQL's server programs",
            "apt-get install postgresql",
        ) {
            return;
        }
        let dir = std::env::temp_dir().join(format!("waifus-port-{}", fastrand::u64(..)));
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let mut picks = Vec::new();
        let managed = Managed::start_with(&dir, || {
            let port = if picks.is_empty() {
                taken_port
            } else {
                files::free_port()?
            };
            picks.push(port);
            Ok(port)
        })
        .await
        .unwrap();
        assert_eq!(picks.len(), 2, "{picks:?}");
        assert_eq!(picks[0], taken_port);
        let kept = std::fs::read_to_string(dir.join("postgres-port")).unwrap();
        assert_eq!(kept, picks[1].to_string());
        assert!(managed.url.contains(&format!("@127.0.0.1:{}/", picks[1])));
        managed.stop().await;
        drop(taken);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
