//! The waifus orchestrator: registration, reverse proxy, health checks and
//! persistence (DESIGN.md §3).
//!
//! Where a request goes:
//! - public listener → [`server`] → [`proxy`] (guard, route lookup, forward);
//! - internal listener → [`api`] → [`registry`] → [`store`], which publishes a
//!   new [`routes::RouteTable`] read by the proxy without locks;
//! - [`health`] checks every instance and flips its routing flag.

mod api;
pub mod check;
mod config;
mod health;
mod incidents;
mod managed;
mod metrics;
mod provision;
mod proxy;
mod registry;
mod replicas;
mod routes;
mod server;
pub mod status;
mod store;
mod strict;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::{
    CheckArgs, Cli, ClientArgs, Command, Config, ConfigError, IncidentsArgs, LogFormat,
};
pub use managed::ManagedError;

/// The proxy's hot path, exposed for the micro-benchmark (`benches/hot_path.rs`).
#[doc(hidden)]
pub mod hot_path {
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;

    use crate::routes::{BindRoute, Instance, RouteTable, WaifuRoute};

    /// The guard: the canonical path, or why the target is refused.
    pub fn normalize(raw: &str) -> Result<std::borrow::Cow<'_, str>, &'static str> {
        crate::proxy::guard::normalize(raw).map_err(|r| match r {
            crate::proxy::guard::Rejection::Internal => "internal",
            crate::proxy::guard::Rejection::Ambiguous(why) => why,
        })
    }

    /// A request head as the public listener's HTTP/1.1 loop takes it.
    #[derive(Debug)]
    pub struct H1Head {
        pub method: String,
        /// The request target, as the proxy reads it.
        pub target: String,
        /// Field names (lowercase) and values, in order.
        pub fields: Vec<(String, Vec<u8>)>,
        /// The client asked to close the connection after this request.
        pub close: bool,
    }

    /// What the public listener makes of `data` arriving in one read (for
    /// `fuzz/fuzz_targets/h1.rs`): how many bytes the strict framing check
    /// lets through, the head the HTTP/1.1 loop serves itself from those, if
    /// any, and the bytes it leaves in its buffer (all it was given when it
    /// serves none: hyper gets them).
    pub fn h1_parse(data: &[u8]) -> (usize, Option<H1Head>, Vec<u8>) {
        let (passed, head, left) = crate::server::h1::parse_copy(data);
        let head = head.map(|(parts, close)| H1Head {
            method: parts.method.to_string(),
            target: parts.uri.to_string(),
            fields: parts
                .headers
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                .collect(),
            close,
        });
        (passed, head, left)
    }

    /// How the proxy reads a waifu's answer, for `fuzz/fuzz_targets/upstream.rs`.
    pub use crate::proxy::upstream::{BodyEnd, Decoded};

    /// What the proxy makes of `data` when it is all a waifu sends on a
    /// connection (answering a `HEAD` when `head` is set, else a `GET`)
    /// before closing it.
    pub fn upstream_decode(data: &[u8], head: bool) -> Decoded {
        let method = if head {
            http::Method::HEAD
        } else {
            http::Method::GET
        };
        crate::proxy::upstream::decode_copy(data, &method)
    }

    /// A route table with `waifus` waifus (`w0`, `w1`, ...) and as many binds
    /// (`b{i}.test` → waifu `w{i}`, prefix `/p`).
    #[derive(Debug)]
    pub struct Table(RouteTable);

    impl Table {
        pub fn new(waifus: usize) -> Table {
            let token = CancellationToken::new();
            let routes: Vec<Arc<WaifuRoute>> = (0..waifus)
                .map(|i| {
                    let upstream =
                        waifus_protocol::parse_host(&format!("10.0.{}.{}:8080", i / 250, i % 250))
                            .expect("valid host");
                    let instance = Arc::new(Instance::new(upstream, true, &token));
                    Arc::new(WaifuRoute::new(&format!("w{i}"), vec![instance]))
                })
                .collect();
            let binds: Vec<(String, BindRoute)> = routes
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let bind = BindRoute {
                        prefix: "/p".into(),
                        target: "/t".into(),
                        waifu: w.clone(),
                        tls: false,
                    };
                    (format!("b{i}.test"), bind)
                })
                .collect();
            Table(RouteTable::new(Some("localhost"), routes, binds))
        }

        /// Resolves and picks an instance; returns the upstream path's length.
        pub fn route(&self, host: &str, path: &str) -> Option<usize> {
            let resolved = self.0.resolve(host, path)?;
            resolved.waifu.pick()?;
            Some(resolved.path.len())
        }
    }
}

/// Locating PostgreSQL's programs and the user to run them as; shared with
/// the test harness, which starts its own throwaway cluster.
#[doc(hidden)]
pub mod postgres_programs {
    pub use crate::managed::{find_bindir, run_as};
}
pub use store::StoreError;

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
    #[error("could not read a listener's address: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS is on but no listener was bound for HTTPS_ADDR")]
    NoHttpsListener,
    #[error("could not set up TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// Runs until `shutdown` is cancelled, then drains in-flight requests for at
/// most `SHUTDOWN_TIMEOUT` and returns.
///
/// Readiness: the internal API answers `GET /__internal/health` only once
/// state is loaded and both listeners are being served.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let config = config.normalized();
    let main_domain = config.validate()?;
    if config.tls_on() && listeners.https.is_none() {
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
    let served = serve(&config, main_domain, &url, listeners, &shutdown).await;
    if let Some(managed) = managed {
        managed.stop().await;
    }
    served
}

async fn serve(
    config: &Config,
    main_domain: Option<String>,
    url: &str,
    listeners: Listeners,
    shutdown: &CancellationToken,
) -> Result<(), RunError> {
    let key =
        provision::secret::PasswordKey::load_or_create(&config.data_dir.join("db-password.key"))?;
    let Some(store) = open_store(url, shutdown).await? else {
        return Ok(());
    };
    let public_base = public_base(main_domain.as_deref(), listeners.public.local_addr()?);
    let instances = CancellationToken::new();
    let (leading, leading_rx) = tokio::sync::watch::channel(true);
    let (registry, watched) = registry::Registry::load(
        store.clone(),
        main_domain,
        public_base,
        instances.clone(),
        leading_rx.clone(),
    )
    .await?;
    let registry = Arc::new(registry);
    let metrics = metrics::Metrics::new(registry.clone());

    let tasks = TaskTracker::new();
    tasks.spawn(metrics::sample_rate(metrics.clone(), shutdown.clone()));
    let hard_stop = CancellationToken::new();
    let health_config = health::HealthConfig {
        interval: config.health_interval,
        timeout: config.health_timeout,
        deregister_after: config.deregister_after,
    };
    tasks.spawn(health::supervise(
        registry.clone(),
        watched,
        health_config,
        tasks.clone(),
        shutdown.clone(),
        leading_rx,
    ));
    tasks.spawn(replicas::follow(
        registry.clone(),
        store.clone(),
        leading,
        config.resync_interval,
        shutdown.clone(),
    ));
    let tls = match (config.tls()?, listeners.https) {
        (Some(tls), Some(listener)) => Some((tls, listener)),
        _ => None,
    };
    let certs = tls
        .as_ref()
        .map(|(tls, _)| Arc::new(tls::Certs::new(registry.clone(), tls.dev)));
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
                registry.clone(),
                store.clone(),
                shutdown.clone(),
            ));
        }
        certs
    });
    let proxy = Arc::new(proxy::Proxy::new(
        registry.clone(),
        proxy::UpstreamConfig {
            connect_timeout: config.upstream_connect_timeout,
            response_timeout: config.upstream_timeout,
            access_log: config.access_log,
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
        metrics.clone(),
    ));
    let incidents = incidents::Incidents::new(
        store.clone(),
        tasks.clone(),
        config.webhook_uri()?,
        shutdown.clone(),
        metrics.clone(),
    );
    let provisioner = Arc::new(provision::Provisioner::new(
        store.clone(),
        key,
        public_db(config, url),
        incidents.clone(),
        provision::hasher::Hasher::start()?,
    ));
    let reconciler = provisioner.clone();
    tasks.spawn(async move {
        match reconciler.reconcile().await {
            Ok(0) => {}
            Ok(n) => info!(count = n, "finished interrupted provisionings"),
            Err(e) => warn!(error = %e, "could not finish interrupted provisionings"),
        }
    });
    let limits = server::ConnLimits {
        header_read_timeout: config.header_read_timeout,
        idle_timeout: config.idle_timeout,
        max_connections: config.max_connections,
    };
    let drain = config.shutdown_timeout;
    let public = tokio::spawn(server::serve_proxy(
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
            Some(tokio::spawn(server::serve_proxy(
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
    let internal = tokio::spawn(server::serve_internal(
        listeners.internal,
        api::router(api::AppState {
            registry: registry.clone(),
            provisioner,
            incidents,
            store,
            metrics: metrics.clone(),
        }),
        limits,
        shutdown.clone(),
        drain,
        metrics.connections("internal"),
    ));
    info!("orchestrator ready");

    shutdown.cancelled().await;
    info!("shutting down: draining in-flight requests");
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
