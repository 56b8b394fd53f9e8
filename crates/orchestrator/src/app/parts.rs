//! The parts the orchestrator is built from, each built from its settings:
//! the upgrade machinery, the control plane's settings, the database
//! services, the proxy, and the listeners' servers.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::{Listeners, RunError};
use crate::config::{Config, HelloSecret, Settings};
use crate::ops::incidents::Incidents;
use crate::ops::metrics::Metrics;
use crate::ownership::{Ownership, hasher::Hasher};
use crate::provision::{self, Provisioner, secret::PasswordKey};
use crate::routing::Routes;
use crate::store::Store;
use crate::upgrade::{self, Relaunch, Upgrader};
use crate::{edge, proxy, registry, tls};

/// Where upgrades are asked for, and the task that makes them, when this
/// process can start again.
pub(super) type Upgrades = Option<(
    mpsc::Sender<upgrade::Ask>,
    (Upgrader, mpsc::Receiver<upgrade::Ask>),
)>;

/// Copies of the listening sockets for a successor, and the upgrader that
/// hands them over.
pub(super) fn upgrades(
    relaunch: Option<Relaunch>,
    listeners: &Listeners,
    handed_over: &Arc<AtomicBool>,
) -> std::io::Result<Upgrades> {
    let Some(relaunch) = relaunch else {
        return Ok(None);
    };
    let mut sockets = vec![
        (
            upgrade::PUBLIC,
            listeners.public.as_fd().try_clone_to_owned()?,
        ),
        (
            upgrade::INTERNAL,
            listeners.internal.as_fd().try_clone_to_owned()?,
        ),
    ];
    if let Some(https) = &listeners.https {
        sockets.push((upgrade::HTTPS, https.as_fd().try_clone_to_owned()?));
    }
    let (asks, asked) = mpsc::channel(4);
    let upgrader = Upgrader {
        relaunch,
        sockets,
        handed_over: handed_over.clone(),
    };
    Ok(Some((asks, (upgrader, asked))))
}

/// The control plane's settings.
pub(super) fn control_plane(
    settings: &Settings,
    store: &Store,
    public: std::net::SocketAddr,
) -> registry::Parts {
    let config = &settings.config;
    registry::Parts {
        store: store.clone(),
        main_domain: settings.main_domain.clone(),
        public_base: public_base(settings.main_domain.as_deref(), public),
        timing: registry::Timing {
            health: registry::HealthConfig {
                interval: config.health_interval,
                timeout: config.health_timeout,
                deregister_after: config.deregister_after,
            },
            drain_timeout: config.drain_timeout,
            resync_every: config.resync_interval,
        },
        ceilings: registry::Ceilings {
            max_body_size: config.max_body_size,
            timeout: config.upstream_timeout,
        },
        auto_rollout: (config.rollout == crate::config::RolloutMode::Auto)
            .then(|| (config.rollout_steps.0.clone(), config.rollout_interval)),
    }
}

/// Who may act for a name, and the databases handed to waifus; interrupted
/// provisionings are finished on `tasks`.
pub(super) fn databases(
    config: &Config,
    url: &str,
    store: &Store,
    incidents: &Incidents,
    tasks: &TaskTracker,
) -> Result<(Arc<Ownership>, Arc<Provisioner>), RunError> {
    let key = PasswordKey::load_or_create(&config.data_dir.join("db-password.key"))?;
    let ownership = Arc::new(Ownership::new(
        store.clone(),
        Hasher::start()?,
        incidents.clone(),
        config.hello_secret == HelloSecret::Required,
    )?);
    let provisioner = Arc::new(Provisioner::new(
        store.clone(),
        key,
        public_db(config, url),
        ownership.clone(),
        provision::RoleLimits {
            connections: config.db_connection_limit,
            statement_timeout: config.db_statement_timeout,
        },
    ));
    let reconciler = provisioner.clone();
    tasks.spawn(async move {
        match reconciler.reconcile().await {
            Ok(0) => {}
            Ok(n) => info!(count = n, "finished interrupted provisionings"),
            Err(e) => warn!(error = %e, "could not finish interrupted provisionings"),
        }
    });
    Ok((ownership, provisioner))
}

/// The proxy for public requests; its tunnels run on `tasks` until
/// `hard_stop`.
pub(super) fn proxy(
    settings: &Settings,
    routes: &Routes,
    https: Option<&tls::Https>,
    metrics: &Metrics,
    tasks: &TaskTracker,
    hard_stop: &CancellationToken,
) -> Arc<proxy::Proxy> {
    let config = &settings.config;
    Arc::new(proxy::Proxy::new(
        routes.clone(),
        proxy::UpstreamConfig {
            connect_timeout: config.upstream_connect_timeout,
            response_timeout: config.upstream_timeout,
            max_body_size: config.max_body_size,
            compression: config.compression,
            access_log: config.access_log,
            hsts: settings.hsts.clone(),
        },
        tasks.clone(),
        hard_stop.clone(),
        https.map(|https| proxy::HttpsInfo {
            certs: https.certs.clone(),
            port: https.port,
        }),
        metrics.stats.clone(),
        settings.trusted.clone(),
    ))
}

/// The servers of the three listeners, running until `shutdown`, then
/// draining for at most `SHUTDOWN_TIMEOUT`.
#[derive(Debug)]
pub(super) struct Servers {
    pub public: JoinHandle<()>,
    pub https: Option<JoinHandle<()>>,
    pub internal: JoinHandle<()>,
}

impl Servers {
    pub(super) fn start(
        config: &Config,
        listeners: (tokio::net::TcpListener, tokio::net::TcpListener),
        https: Option<tls::Https>,
        proxy: &Arc<proxy::Proxy>,
        api: axum::Router,
        metrics: &Metrics,
        shutdown: &CancellationToken,
    ) -> Servers {
        let (public, internal) = listeners;
        let limits = edge::ConnLimits {
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            max_connections: config.max_connections,
        };
        let drain = config.shutdown_timeout;
        let serve = |listener, acceptor, open| {
            tokio::spawn(edge::serve_proxy(
                listener,
                acceptor,
                proxy.clone(),
                limits,
                shutdown.clone(),
                drain,
                open,
            ))
        };
        Servers {
            public: serve(public, None, metrics.connections("public")),
            https: https.map(|h| {
                let acceptor = tokio_rustls::TlsAcceptor::from(h.server);
                serve(h.listener, Some(acceptor), metrics.connections("tls"))
            }),
            internal: tokio::spawn(edge::serve_internal(
                internal,
                api,
                limits,
                shutdown.clone(),
                drain,
                metrics.connections("internal"),
            )),
        }
    }

    /// Waits until every listener has drained.
    pub(super) async fn drained(self) {
        let _ = tokio::join!(self.public, self.internal);
        if let Some(https) = self.https {
            let _ = https.await;
        }
    }
}

/// `http://{main_domain}[:port]`, the base of the URLs hello answers carry.
fn public_base(main_domain: Option<&str>, public: std::net::SocketAddr) -> String {
    let host = main_domain.unwrap_or("localhost");
    match public.port() {
        80 => format!("http://{host}"),
        port => format!("http://{host}:{port}"),
    }
}

/// Host and port handed to waifus: `DB_PUBLIC_HOST`/`DB_PUBLIC_PORT`, else
/// the server's own address from the URL in use (for the managed cluster,
/// 127.0.0.1 and its port: what a waifu on this machine reaches).
fn public_db(config: &Config, url: &str) -> provision::PublicDb {
    let parsed: Option<tokio_postgres::Config> = url.parse().ok();
    let url_host = parsed.as_ref().and_then(|c| {
        c.get_hosts().iter().find_map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => Some(h.clone()),
            _ => None,
        })
    });
    let url_port = parsed.as_ref().and_then(|c| c.get_ports().first().copied());
    provision::PublicDb {
        host: config
            .db_public_host
            .clone()
            .or(url_host)
            .unwrap_or_else(|| "localhost".to_owned()),
        port: config.db_public_port.or(url_port).unwrap_or(5432),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn hello_answers_name_the_public_port_unless_it_is_80() {
        let addr = |port| std::net::SocketAddr::from(([0, 0, 0, 0], port));
        assert_eq!(
            public_base(Some("waifus.dev"), addr(80)),
            "http://waifus.dev"
        );
        assert_eq!(
            public_base(Some("waifus.dev"), addr(8080)),
            "http://waifus.dev:8080"
        );
        assert_eq!(public_base(None, addr(8080)), "http://localhost:8080");
    }

    #[test]
    fn waifus_reach_the_database_where_the_operator_says_else_where_the_url_points() {
        let config = |args: &[&str]| {
            let mut argv = vec!["orchestrator"];
            argv.extend_from_slice(args);
            crate::Cli::parse_from(argv).serve
        };
        let url = "postgres://u:p@db.internal:6543/state";
        let from_url = public_db(&config(&[]), url);
        assert_eq!(
            (from_url.host.as_str(), from_url.port),
            ("db.internal", 6543)
        );
        let set = config(&["--db-public-host", "pg.example", "--db-public-port", "7000"]);
        let told = public_db(&set, url);
        assert_eq!((told.host.as_str(), told.port), ("pg.example", 7000));
        let socket = public_db(&config(&[]), "postgres://u:p@/state?host=/run/postgresql");
        assert_eq!((socket.host.as_str(), socket.port), ("localhost", 5432));
    }
}
