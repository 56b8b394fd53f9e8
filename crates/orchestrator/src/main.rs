//! `orchestrator`: parse settings, set up logging, bind, run until a signal;
//! or one of the client commands in [`cli`].

mod cli;

use std::process::ExitCode;

use clap::Parser;
use orchestrator::{
    ClaimAction, Cli, Command, Config, Listeners, LogFormat, Process, Settings, upgrade,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Check(args)) => cli::check(&args),
        Some(Command::Status(args)) => cli::report(cli::status(args)),
        Some(Command::Incidents(args)) => cli::report(cli::incidents(args.client, args.limit)),
        Some(Command::Audit(args)) => cli::report(cli::audit(args)),
        Some(Command::History(args)) => cli::report(cli::history(args)),
        Some(Command::Rollout(args)) => cli::report(cli::rollout(args)),
        Some(Command::Claim(args)) => match args.action {
            ClaimAction::Release { name, state } => cli::report(cli::release_claim(state, name)),
        },
        Some(Command::Db(args)) => cli::report(cli::db(args.action)),
        Some(Command::Pause(args)) => cli::report(cli::pause(args)),
        Some(Command::Resume(args)) => cli::report(cli::resume(args)),
        Some(Command::Maintenance(args)) => cli::report(cli::maintenance(args)),
        Some(Command::Version(args)) => cli::report(cli::version(args)),
        Some(Command::Upgrade(args)) => cli::report(cli::upgrade(args)),
        Some(Command::Serve(config)) => run(&config),
        None => run(&cli.serve),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Tasks the runtime polls between two looks at the sockets (tokio's
/// default: 61). Under HTTP/2 hundreds of stream tasks are ready at once;
/// with 61, a connection whose socket became ready waited behind them
/// unevenly, and the 99th percentile was 1.0–1.8× nginx's at 2.6× our mean.
/// With 16 it was 0.80–0.87× nginx's in three runs, at the same CPU per
/// request, over HTTP/1.1 too (bench/README.md, "HTTPS, HTTP/2 and big
/// bodies").
const EVENT_INTERVAL: u32 = 16;

/// `orchestrator serve`, on a runtime of `WORKER_THREADS` threads (default:
/// the CPUs this process may use); one thread means a single-threaded runtime.
fn run(config: &Config) -> anyhow::Result<ExitCode> {
    let settings = config.validate()?;
    let config = &settings.config;
    init_tracing(config.log_format, config.access_log);
    let threads = config
        .worker_threads
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .max(1);
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .event_interval(EVENT_INTERVAL)
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .event_interval(EVENT_INTERVAL)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(settings))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let config = &settings.config;
    // Listening sockets a previous orchestrator handed over (an upgrade),
    // or systemd passed (socket activation); the others are bound here.
    let (mut inherited, predecessor) = if std::env::var_os(upgrade::HANDOVER_ENV).is_some() {
        let (listeners, predecessor) = upgrade::receive()?;
        (listeners, Some(predecessor))
    } else {
        (from_systemd()?, None)
    };
    let mut take = |name: &str| {
        let at = inherited.iter().position(|(n, _)| n == name)?;
        Some(inherited.remove(at).1)
    };
    let mut inherited_or_bound = async |name: &str, addr, what: &'static str| match take(name) {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            let listener = TcpListener::from_std(listener)?;
            tracing::info!(addr = %listener.local_addr()?, name, "listening on an inherited socket");
            Ok::<_, anyhow::Error>(listener)
        }
        None => TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("could not listen on {what} {addr}: {e}")),
    };
    let listeners = Listeners {
        public: inherited_or_bound(upgrade::PUBLIC, config.public_addr, "PUBLIC_ADDR").await?,
        internal: inherited_or_bound(upgrade::INTERNAL, config.internal_addr, "INTERNAL_ADDR")
            .await?,
        https: match settings.tls_on() {
            true => {
                Some(inherited_or_bound(upgrade::HTTPS, config.https_addr(), "HTTPS_ADDR").await?)
            }
            false => None,
        },
    };
    let process = Process {
        relaunch: Some(upgrade::Relaunch {
            exe: std::env::current_exe()?,
            args: std::env::args_os().skip(1).collect(),
        }),
        predecessor,
        notifier: upgrade::Notifier::new(std::env::var_os("NOTIFY_SOCKET")),
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    orchestrator::run_process(settings, listeners, shutdown, process).await?;
    Ok(())
}

/// The sockets systemd passed (`LISTEN_FDS` for this process), named by
/// `LISTEN_FDNAMES` or, without names, taken as public, internal, https in
/// that order. Each is closed on exec from here on.
fn from_systemd() -> anyhow::Result<Vec<(String, std::net::TcpListener)>> {
    let mut fds = listenfd::ListenFd::from_env();
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .unwrap_or_default()
        .split(':')
        .map(str::to_owned)
        .collect();
    let order = [upgrade::PUBLIC, upgrade::INTERNAL, upgrade::HTTPS];
    let mut listeners = Vec::new();
    for i in 0..fds.len() {
        let name = match names.get(i).map(String::as_str) {
            Some(name) if order.contains(&name) => name.to_owned(),
            Some(name) if !name.is_empty() && name != "unknown" && name != "stored" => {
                anyhow::bail!(
                    "systemd passed a socket named {name:?}: name them public, internal or https \
                     (FileDescriptorName=)"
                )
            }
            _ => order
                .get(i)
                .ok_or_else(|| anyhow::anyhow!("systemd passed more than three sockets"))?
                .to_string(),
        };
        let Some(listener) = fds.take_tcp_listener(i)? else {
            continue;
        };
        rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::CLOEXEC)?;
        listeners.push((name, listener));
    }
    Ok(listeners)
}

/// SIGTERM or SIGINT starts a graceful shutdown.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("error: could not install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    shutdown.cancel();
}

fn init_tracing(format: LogFormat, access_log: bool) {
    use tracing_subscriber::EnvFilter;
    let mut filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if access_log {
        // ACCESS_LOG wins over a quieter RUST_LOG.
        if let Ok(access) = "access=info".parse() {
            filter = filter.add_directive(access);
        }
    }
    // Colours only for a terminal, never into files or journald.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
