//! HTTPS, built from its settings: the certificates and where they come
//! from (files, ACME, development ones), the acceptor, and the tasks that
//! keep the certificates current.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::acme::{self, AcmeConfig};
use super::{Certs, files, server_config};
use crate::routing::Routes;
use crate::store::Store;

/// The TLS listener's settings, when it is on.
#[derive(Debug, Clone)]
pub(crate) struct TlsConfig {
    /// Port used in redirects to HTTPS; `None`: the listener's own.
    pub public_port: Option<u16>,
    pub cert_dir: Option<PathBuf>,
    pub acme: Option<AcmeConfig>,
    /// Neither source configured: self-signed development certificates.
    pub dev: bool,
}

/// Why HTTPS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("could not read the HTTPS listener's address: {0}")]
    Io(#[from] std::io::Error),
    #[error("could not set up TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// HTTPS, ready to serve.
#[derive(Debug)]
pub(crate) struct Https {
    pub listener: TcpListener,
    /// What the TLS acceptor is made from.
    pub server: Arc<rustls::ServerConfig>,
    /// Also answers HTTP-01 validations on the plain listener.
    pub certs: Arc<Certs>,
    /// The port redirects to HTTPS name.
    pub port: u16,
}

/// Sets HTTPS up on `listener`: stored certificates are served from the
/// first handshake on; the certificate directory is watched and ACME orders
/// run on `tasks` until `shutdown`.
pub(crate) async fn build(
    config: TlsConfig,
    listener: TcpListener,
    routes: &Routes,
    store: &Store,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<Https, SetupError> {
    let certs = Arc::new(Certs::new(routes.clone(), config.dev));
    if let Some(dir) = config.cert_dir {
        tasks.spawn(files::watch(dir, certs.clone(), shutdown.clone()));
    }
    if let Some(acme) = config.acme {
        if let Err(e) = acme::load_stored(&acme.directory, &certs, store).await {
            warn!(error = %e, "cannot load stored certificates yet");
        }
        tasks.spawn(acme::manage(
            acme,
            certs.clone(),
            routes.clone(),
            store.clone(),
            shutdown.clone(),
        ));
    }
    let addr = listener.local_addr()?;
    let tickets = super::tickets::SharedTickets::new();
    tasks.spawn(tickets.clone().follow(store.clone(), shutdown.clone()));
    let server = Arc::new(server_config(certs.clone(), tickets)?);
    info!(%addr, dev = config.dev, "HTTPS listener on");
    Ok(Https {
        listener,
        server,
        certs,
        port: config.public_port.unwrap_or(addr.port()),
    })
}
