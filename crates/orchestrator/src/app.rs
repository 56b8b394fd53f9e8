//! Wiring: builds the parts from the settings, spawns the tasks that own
//! them, serves the listeners, and drains everything on shutdown.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{Config, ConfigError, Settings};
use crate::managed::{self, ManagedError};
use crate::ops::incidents;
use crate::ops::metrics;
use crate::ownership::{self, hasher::Hasher};
use crate::provision;
use crate::registry;
use crate::store::{self, StoreError};
use crate::upgrade::{self, Notifier, Predecessor, Relaunch};
use crate::{api, edge, proxy, tls};

/// The two sockets the orchestrator serves, bound by the caller (tests bind
/// port 0).
#[derive(Debug)]
pub struct Listeners {
    pub public: TcpListener,
    pub internal: TcpListener,
    /// The TLS listener; must be bound when [`Config::tls_on`].
    pub https: Option<TcpListener>,
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
    Key(#[from] provision::secret::KeyError),
    #[error("the operating system's random number generator failed: {0}")]
    Random(#[from] getrandom::Error),
    #[error("could not read a listener's address: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS is on but no listener was bound for HTTPS_ADDR")]
    NoHttpsListener,
    #[error("could not set up TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("BACKUP_DIR is set, but: {0}")]
    Backups(#[from] crate::data::DataError),
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

/// Runs until `shutdown` is cancelled, then drains in-flight requests for at
/// most `SHUTDOWN_TIMEOUT` and returns.
///
/// Readiness: the internal API answers `GET /__internal/health` only once
/// state is loaded and both listeners are being served.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    run_process(settings, listeners, shutdown, Process::default()).await
}

/// [`run`], as the orchestrator's own process: upgrades on `SIGUSR2` (and
/// through the API) when it can start again, and tells its predecessor and
/// systemd once it serves. After an upgrade the managed PostgreSQL keeps
/// running for the successor; otherwise it is stopped.
pub async fn run_process(
    settings: Settings,
    listeners: Listeners,
    shutdown: CancellationToken,
    process: Process,
) -> Result<(), RunError> {
    let config = &settings.config;
    if settings.tls_on() && listeners.https.is_none() {
        return Err(RunError::NoHttpsListener);
    }
    let managed = match &config.database_url {
        Some(_) => None,
        None => Some(managed::Managed::start(&config.data_dir).await?),
    };
    let url = match (&config.database_url, &managed) {
        (Some(url), _) => url.clone(),
        (None, Some(m)) => m.url.clone(),
        (None, None) => return Err(ConfigError::NoDatabase.into()),
    };
    let handed_over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = serve(
        &settings,
        &url,
        listeners,
        &shutdown,
        process,
        handed_over.clone(),
    )
    .await;
    if let Some(managed) = managed {
        if handed_over.load(std::sync::atomic::Ordering::SeqCst) {
            managed.leave_running().await;
        } else {
            managed.stop().await;
        }
    }
    served
}

async fn serve(
    settings: &Settings,
    url: &str,
    listeners: Listeners,
    shutdown: &CancellationToken,
    process: Process,
    handed_over: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), RunError> {
    let config = &settings.config;
    let key =
        provision::secret::PasswordKey::load_or_create(&config.data_dir.join("db-password.key"))?;
    // Copies of the listening sockets, for a successor.
    let (upgrades, upgrader) = match process.relaunch {
        Some(relaunch) => {
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
            let (asks, asked) = tokio::sync::mpsc::channel(4);
            let upgrader = upgrade::Upgrader {
                relaunch,
                sockets,
                handed_over: handed_over.clone(),
            };
            (Some(asks), Some((upgrader, asked)))
        }
        None => (None, None),
    };
    let main_domain = settings.main_domain.clone();
    let Some(store) = open_store(url, shutdown).await? else {
        return Ok(());
    };
    let public_base = public_base(main_domain.as_deref(), listeners.public.local_addr()?);
    let tasks = TaskTracker::new();
    let registry::ControlPlane {
        registry,
        routes,
        leading: leading_rx,
        instances,
    } = registry::start(
        registry::Parts {
            store: store.clone(),
            main_domain,
            public_base,
            timing: registry::Timing {
                health: registry::HealthConfig {
                    interval: config.health_interval,
                    timeout: config.health_timeout,
                    deregister_after: config.deregister_after,
                },
                drain_timeout: config.drain_timeout,
                resync_every: config.resync_interval,
            },
        },
        &tasks,
        shutdown,
    )
    .await?;
    let metrics = metrics::Metrics::new(routes.clone(), leading_rx.clone());
    tasks.spawn(metrics::sample_rate(metrics.clone(), shutdown.clone()));
    let hard_stop = CancellationToken::new();
    let tls = match (settings.tls.clone(), listeners.https) {
        (Some(tls), Some(listener)) => Some((tls, listener)),
        _ => None,
    };
    let certs = tls
        .as_ref()
        .map(|(tls, _)| Arc::new(tls::Certs::new(routes.clone(), tls.dev)));
    if let (Some((tls, _)), Some(certs)) = (&tls, &certs)
        && let Some(acme) = &tls.acme
    {
        // Stored certificates are served from the first handshake on.
        if let Err(e) = tls::acme::load_stored(&acme.directory, certs, &store).await {
            warn!(error = %e, "cannot load stored certificates yet");
        }
    }
    let certs = tls.as_ref().zip(certs).map(|((tls, _), certs)| {
        if let Some(dir) = &tls.cert_dir {
            tasks.spawn(tls::files::watch(
                dir.clone(),
                certs.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(acme) = &tls.acme {
            tasks.spawn(tls::acme::manage(
                acme.clone(),
                certs.clone(),
                routes.clone(),
                store.clone(),
                shutdown.clone(),
            ));
        }
        certs
    });
    let proxy = Arc::new(proxy::Proxy::new(
        routes.clone(),
        proxy::UpstreamConfig {
            connect_timeout: config.upstream_connect_timeout,
            response_timeout: config.upstream_timeout,
            access_log: config.access_log,
            hsts: settings.hsts.clone(),
        },
        tasks.clone(),
        hard_stop.clone(),
        match (&tls, &certs) {
            (Some((tls, listener)), Some(certs)) => Some(proxy::HttpsInfo {
                certs: certs.clone(),
                port: match tls.public_port {
                    Some(port) => port,
                    None => listener.local_addr()?.port(),
                },
            }),
            _ => None,
        },
        metrics.unrouted.clone(),
        settings.trusted.clone(),
    ));
    let incidents =
        incidents::Incidents::new(store.clone(), settings.webhook.is_some(), metrics.clone());
    if let Some(url) = settings.webhook.clone() {
        tasks.spawn(incidents::deliver(
            url,
            store.clone(),
            leading_rx.clone(),
            incidents.wake(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(heartbeat(store.clone(), shutdown.clone()));
    if let Some(dir) = &config.backup_dir {
        let backups = crate::data::backup::Backups {
            data: crate::data::Data::new(store.clone())?,
            settings: crate::data::backup::BackupSettings {
                dir: dir.clone(),
                every: config.backup_interval,
                keep: config.backup_keep as usize,
            },
            incidents: incidents.clone(),
            metrics: metrics.clone(),
        };
        info!(dir = %dir.display(), every = ?config.backup_interval, keep = config.backup_keep, "scheduled backups on");
        tasks.spawn(backups.run(leading_rx.clone(), shutdown.clone()));
    }
    tasks.spawn(prune_audit(
        store.clone(),
        config.audit_retention,
        leading_rx.clone(),
        shutdown.clone(),
    ));
    let ownership = Arc::new(ownership::Ownership::new(
        store.clone(),
        Hasher::start()?,
        incidents.clone(),
        config.hello_secret == crate::config::HelloSecret::Required,
    )?);
    let provisioner = Arc::new(provision::Provisioner::new(
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
    let limits = edge::ConnLimits {
        header_read_timeout: config.header_read_timeout,
        idle_timeout: config.idle_timeout,
        max_connections: config.max_connections,
    };
    let drain = config.shutdown_timeout;
    let public = tokio::spawn(edge::serve_proxy(
        listeners.public,
        None,
        proxy.clone(),
        limits,
        shutdown.clone(),
        drain,
        metrics.connections("public"),
    ));
    let https = match (tls, certs) {
        (Some((tls, listener)), Some(certs)) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(certs)?));
            info!(addr = %listener.local_addr()?, dev = tls.dev, "HTTPS listener on");
            Some(tokio::spawn(edge::serve_proxy(
                listener,
                Some(acceptor),
                proxy.clone(),
                limits,
                shutdown.clone(),
                drain,
                metrics.connections("tls"),
            )))
        }
        _ => None,
    };
    let internal = tokio::spawn(edge::serve_internal(
        listeners.internal,
        api::router(api::AppState {
            registry: registry.clone(),
            routes,
            ownership,
            provisioner,
            incidents,
            store,
            metrics: metrics.clone(),
            tokens: Arc::new(api::Tokens::new(
                config.internal_token.as_deref(),
                config.admin_token.as_deref(),
            )),
            calls: api::Calls {
                tasks: tasks.clone(),
                stop: hard_stop.clone(),
            },
            trusted: settings.trusted.clone(),
            upgrades,
        }),
        limits,
        shutdown.clone(),
        drain,
        metrics.connections("internal"),
    ));
    info!(pid = std::process::id(), "orchestrator ready");
    // The pid file first: whoever hears "ready" finds this process in it.
    let pid_file = config.data_dir.join("orchestrator.pid");
    upgrade::write_pid_file(&pid_file);
    process.notifier.ready();
    if let Some(predecessor) = process.predecessor {
        predecessor.ready();
    }
    if let Some((upgrader, asked)) = upgrader {
        tasks.spawn(upgrader.run(asked, shutdown.clone()));
    }

    shutdown.cancelled().await;
    if handed_over.load(std::sync::atomic::Ordering::SeqCst) {
        info!("handed over: draining in-flight requests");
    } else {
        process.notifier.stopping();
        upgrade::remove_pid_file(&pid_file);
        info!("shutting down: draining in-flight requests");
    }
    let _ = tokio::join!(public, internal);
    if let Some(https) = https {
        let _ = https.await;
    }
    instances.cancel();
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(2), tasks.wait())
        .await
        .is_err()
    {
        hard_stop.cancel();
        tasks.wait().await;
    }
    info!("stopped");
    Ok(())
}

/// Says every [`HEARTBEAT_EVERY`] that this orchestrator is alive (so a
/// pause waits for its acknowledgement), and that it is gone on shutdown.
async fn heartbeat(store: store::Store, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = every.tick() => {
                if let Err(e) = store.heartbeat().await {
                    debug!(error = %e, "heartbeat not stored");
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), store.farewell()).await;
}

/// How often an orchestrator says it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// Deletes audit rows older than `keep`, and attempt records nobody needs
/// any more, when this orchestrator starts to lead (one does at a time) and
/// hourly while it does, until `shutdown`.
async fn prune_audit(
    store: store::Store,
    keep: Duration,
    mut leading: tokio::sync::watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    loop {
        if !*leading.borrow() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                r = leading.wait_for(|l| *l) => if r.is_err() { return },
            }
        }
        match store.prune_audit(keep).await {
            Ok(0) => {}
            Ok(n) => info!(rows = n, "pruned the audit log"),
            Err(e) => warn!(error = %e, "could not prune the audit log"),
        }
        let (memory, trusted_for) = (
            crate::ownership::throttle::MEMORY,
            crate::ownership::throttle::TRUSTED_FOR,
        );
        if let Err(e) = store.prune_attempts(memory, trusted_for).await {
            warn!(error = %e, "could not prune old attempt records");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(60 * 60)) => {}
        }
    }
}

/// Opens the store, retrying while the server is unreachable (it may still be
/// starting); `None` if shutdown came first. A malformed URL fails at once.
async fn open_store(
    url: &str,
    shutdown: &CancellationToken,
) -> Result<Option<store::Store>, StoreError> {
    let mut delay = Duration::from_millis(250);
    loop {
        match store::Store::open(url).await {
            Ok(store) => return Ok(Some(store)),
            Err(e @ StoreError::BadUrl(_)) => return Err(e),
            Err(e) => warn!(error = %e, retry_in = ?delay, "PostgreSQL is not available yet"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
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
