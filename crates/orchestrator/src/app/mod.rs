//! Wiring: builds the parts from the settings, spawns the tasks that own
//! them, serves the listeners, and drains everything on shutdown.

mod given;
mod jobs;
mod parts;

pub use given::{Listeners, Process, RunError};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::config::Settings;
use crate::managed;
use crate::ops::{incidents, metrics};
use crate::upgrade::{self, Notifier, Predecessor};
use crate::{api, registry, tls};

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
    let (managed, url) = match &config.database_url {
        Some(url) => (None, url.clone()),
        None => {
            let managed = managed::Managed::start(&config.data_dir).await?;
            let url = managed.url.clone();
            (Some(managed), url)
        }
    };
    let handed_over = Arc::new(AtomicBool::new(false));
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
        if handed_over.load(SeqCst) {
            managed.leave_running().await;
        } else {
            managed.stop().await;
        }
    }
    served
}

/// The orchestrator as a list of parts, each built from its settings, then
/// its shutdown: the listeners drain, then the tasks, until
/// `SHUTDOWN_TIMEOUT` after the signal, when whatever still runs (a tunnel,
/// an internal call) is stopped.
async fn serve(
    settings: &Settings,
    url: &str,
    listeners: Listeners,
    shutdown: &CancellationToken,
    process: Process,
    handed_over: Arc<AtomicBool>,
) -> Result<(), RunError> {
    let config = &settings.config;
    let upgrades = parts::upgrades(process.relaunch, &listeners, &handed_over)?;
    let Some(store) = jobs::open_store(url, shutdown).await? else {
        return Ok(());
    };
    let tasks = TaskTracker::new();
    let control = parts::control_plane(settings, &store, listeners.public.local_addr()?);
    let registry::ControlPlane {
        registry,
        routes,
        leading,
        instances,
        observations,
    } = registry::start(control, &tasks, shutdown).await?;
    let metrics = metrics::Metrics::new(routes.clone(), leading.clone());
    tasks.spawn(metrics::sample_rate(metrics.clone(), shutdown.clone()));
    let graphs = crate::ops::graphs::Graphs::new(crate::ops::graphs::STEP);
    tasks.spawn(graphs.clone().run(routes.clone(), shutdown.clone()));
    let https = match (settings.tls.clone(), listeners.https) {
        (Some(tls), Some(listener)) => {
            Some(tls::build(tls, listener, &routes, &store, &tasks, shutdown).await?)
        }
        _ => None,
    };
    let hard_stop = CancellationToken::new();
    let proxy = parts::proxy(
        settings,
        &routes,
        https.as_ref(),
        &metrics,
        &tasks,
        &hard_stop,
    );
    let incidents =
        incidents::Incidents::new(store.clone(), settings.webhook.is_some(), metrics.clone());
    let jobs = jobs::Jobs {
        settings,
        store: &store,
        incidents: &incidents,
        metrics: &metrics,
        leading: &leading,
    };
    jobs.spawn(&tasks, shutdown)?;
    tasks.spawn(registry::publish_rollout_counts(
        registry.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(registry::analyse_rollouts(
        registry.clone(),
        incidents.clone(),
        leading.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(crate::ops::outages::watch(
        observations,
        store.clone(),
        incidents.clone(),
        config.flap_window,
        leading.clone(),
        shutdown.clone(),
    ));
    let (ownership, provisioner) = parts::databases(config, url, &store, &incidents, &tasks)?;
    let (asks, upgrader) = upgrades.unzip();
    let api = api::router(api::AppState {
        registry,
        routes,
        ownership,
        provisioner,
        incidents,
        store,
        metrics: metrics.clone(),
        graphs,
        rollouts: api::RolloutDefaults {
            steps: config.rollout_steps.0.clone(),
            interval: config.rollout_interval,
        },
        tokens: Arc::new(api::Tokens::new(
            config.internal_token.as_deref(),
            config.admin_token.as_deref(),
        )),
        calls: api::Calls {
            tasks: tasks.clone(),
            stop: hard_stop.clone(),
        },
        trusted: settings.trusted.clone(),
        upgrades: asks,
    });
    let servers = parts::Servers::start(
        config,
        (listeners.public, listeners.internal),
        https,
        &proxy,
        api,
        &metrics,
        shutdown,
    );
    let pid_file = ready(config, &process.notifier, process.predecessor);
    if let Some((upgrader, asked)) = upgrader {
        tasks.spawn(upgrader.run(asked, shutdown.clone()));
    }

    shutdown.cancelled().await;
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    if handed_over.load(SeqCst) {
        info!("handed over: draining in-flight requests");
    } else {
        process.notifier.stopping();
        upgrade::remove_pid_file(&pid_file);
        info!("shutting down: draining in-flight requests");
    }
    servers.drained().await;
    instances.cancel();
    tasks.close();
    if tokio::time::timeout_at(deadline, tasks.wait())
        .await
        .is_err()
    {
        hard_stop.cancel();
        tasks.wait().await;
    }
    info!("stopped");
    Ok(())
}

/// Says that this process serves: in the log, the pid file, to systemd and
/// to the predecessor it upgrades; returns the pid file.
fn ready(
    config: &crate::config::Config,
    notifier: &Notifier,
    predecessor: Option<Predecessor>,
) -> std::path::PathBuf {
    info!(pid = std::process::id(), "orchestrator ready");
    // The pid file first: whoever hears "ready" finds this process in it.
    let pid_file = config.data_dir.join("orchestrator.pid");
    upgrade::write_pid_file(&pid_file);
    notifier.ready();
    if let Some(predecessor) = predecessor {
        predecessor.ready();
    }
    pid_file
}
