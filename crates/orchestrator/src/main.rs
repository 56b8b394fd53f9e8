//! `orchestrator`: parse settings, set up logging, bind, run until a signal.

use std::process::ExitCode;

use clap::Parser;
use orchestrator::{CheckArgs, Cli, Command, Config, Listeners, LogFormat};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Check(args)) => check(&args),
        Some(Command::Status(args)) => {
            report(orchestrator::status::status_report(args.internal_addr))
        }
        Some(Command::Incidents(args)) => report(orchestrator::status::incidents_report(
            args.client.internal_addr,
            args.limit,
        )),
        Some(Command::Serve(config)) => run(config.normalized()),
        None => run(cli.serve.normalized()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `orchestrator check URL`: prints the report; exit 0 only if all rules pass.
fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(orchestrator::check::check(&args.url, args.timeout));
    println!("{report}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `orchestrator status` and `orchestrator incidents`: prints what a running
/// orchestrator's internal API answers.
fn report(
    fetch: impl std::future::Future<Output = anyhow::Result<String>>,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    print!("{}", runtime.block_on(fetch)?);
    Ok(ExitCode::SUCCESS)
}

/// `orchestrator serve`, on a runtime of `WORKER_THREADS` threads (default:
/// the CPUs this process may use); one thread means a single-threaded runtime.
fn run(config: Config) -> anyhow::Result<ExitCode> {
    init_tracing(config.log_format, config.access_log);
    let threads = config
        .worker_threads
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .max(1);
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(config))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    let bind = |addr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("could not listen on {what} {addr}: {e}"))
    };
    let listeners = Listeners {
        public: bind(config.public_addr, "PUBLIC_ADDR").await?,
        internal: bind(config.internal_addr, "INTERNAL_ADDR").await?,
        https: match config.tls_on() {
            true => Some(bind(config.https_addr(), "HTTPS_ADDR").await?),
            false => None,
        },
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    orchestrator::run(config, listeners, shutdown).await?;
    Ok(())
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
