//! `waifu-run`: any app as a waifu, with no line of waifus code in it.
//!
//! It starts the app with `PORT` (and with `--database` its database in
//! `DATABASE_URL` and the `PG*` variables), waits until the app's health
//! path answers 2xx, and only then says hello (and again every 30 s), so
//! no request reaches an app that cannot serve it. On SIGTERM or SIGINT it
//! says goodbye, waits until the orchestrator has nothing in flight to the
//! app, and only then passes SIGTERM on: an app that stops at once loses
//! nothing. If the app ends by itself, goodbye is said at once and
//! `waifu-run` exits with the app's status, so a restart policy restarts
//! both.

mod app;
mod args;
mod database;
mod probe;

use std::process::ExitCode;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};
use waifu::{Drained, GOODBYE_GRACE, Waifu};

use app::App;
use args::{Args, ArgsError};

/// How often the app's health is asked for until it first passes.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// How often waiting for the first health is logged.
const STILL_WAITING_EVERY: Duration = Duration::from_secs(10);
/// How long the app has to stop after SIGTERM before it is killed.
const KILL_AFTER: Duration = Duration::from_secs(10);
/// How long a goodbye may take when the app has ended by itself.
const GOODBYE_WITHIN: Duration = Duration::from_secs(5);
/// Settings the app is not given: they are `waifu-run`'s to use.
const NOT_FOR_THE_APP: [&str; 4] = [
    "WAIFU_SECRET",
    "WAIFU_SECRET_FILE",
    "ORCHESTRATOR_TOKEN",
    "ORCHESTRATOR_TOKEN_FILE",
];

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args_os().skip(1)) {
        Ok(args) => args,
        Err(ArgsError::Help) => {
            print!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(ArgsError::Version) => {
            println!("waifu-run {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(ArgsError::Bad(message)) => {
            eprintln!("waifu-run: {message}\n\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    waifu::init_logging();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "could not start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(args));
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
}

/// Runs the app as a waifu; the status to exit with.
async fn run(args: Args) -> i32 {
    let (waifu, drain_for) = match settings(&args) {
        Ok(s) => s,
        Err(message) => {
            error!("{message}");
            return 2;
        }
    };
    let port = waifu.listening_port();
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("could not listen for SIGTERM and SIGINT");
        return 1;
    };
    let mut env: Vec<(String, Option<String>)> = vec![("PORT".to_owned(), Some(port.to_string()))];
    env.extend(NOT_FOR_THE_APP.iter().map(|k| ((*k).to_owned(), None)));
    if args.database {
        let credentials = tokio::select! {
            c = database::credentials(&waifu) => c,
            _ = term.recv() => return 0,
            _ = int.recv() => return 0,
        };
        match credentials {
            Ok(c) => env.extend(database::env(&c)),
            Err(e) => {
                error!(error = %e, "no database for the app");
                return 1;
            }
        }
    }
    let mut app = match App::spawn(&args.command, &env) {
        Ok(app) => app,
        Err(e) => {
            error!("{e}");
            return e.exit_code();
        }
    };
    let health = waifu
        .health()
        .unwrap_or(waifu::waifus_protocol::DEFAULT_HEALTH_PATH)
        .to_owned();
    info!(name = waifu.name(), port, health = %health, "app started; waiting for its health");
    // Until the app is healthy nothing was announced: a stop is passed on.
    tokio::select! {
        ended = app.ended() => {
            error!(%ended, "the app ended before its health passed");
            return ended.exit_code(false);
        }
        _ = term.recv() => return app.stop(KILL_AFTER).await.exit_code(true),
        _ = int.recv() => return app.stop(KILL_AFTER).await.exit_code(true),
        () = healthy(port, &health) => {}
    }
    info!("the app is healthy: saying hello");
    let announcer = tokio::spawn(waifu.clone().announce());
    let ended = tokio::select! {
        ended = app.ended() => Some(ended),
        _ = term.recv() => None,
        _ = int.recv() => None,
    };
    announcer.abort();
    if let Some(ended) = ended {
        warn!(%ended, "the app ended: saying goodbye");
        match tokio::time::timeout(GOODBYE_WITHIN, waifu.goodbye()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "goodbye refused"),
            Err(_) => warn!("the orchestrator did not take the goodbye in time"),
        }
        return ended.exit_code(false);
    }
    info!("stopping: saying goodbye and waiting for the requests in flight");
    let leave = async {
        let said = tokio::time::Instant::now();
        match waifu.goodbye_and_drain(drain_for).await {
            Ok(Drained::Idle | Drained::Gone) => info!("nothing in flight any more"),
            Ok(Drained::TimedOut { in_flight }) => {
                warn!(in_flight, within = ?drain_for, "requests still in flight: stopping anyway");
            }
            Err(e) => warn!(error = %e, "goodbye refused: stopping anyway"),
        }
        // Other orchestrators stop sending within this.
        tokio::time::sleep_until(said + GOODBYE_GRACE).await;
    };
    // A second signal, or the app's own end, cuts the wait short.
    let ended = tokio::select! {
        () = leave => None,
        ended = app.ended() => Some(ended),
        _ = term.recv() => None,
        _ = int.recv() => None,
    };
    let (ended, asked) = match ended {
        Some(ended) => (ended, false),
        None => (app.stop(KILL_AFTER).await, true),
    };
    info!(%ended, "the app stopped");
    ended.exit_code(asked)
}

/// Waits until the app's health path answers 2xx.
async fn healthy(port: u16, path: &str) {
    let mut next_log = tokio::time::Instant::now() + STILL_WAITING_EVERY;
    loop {
        match probe::check(port, path).await {
            Ok(()) => return,
            Err(e) if tokio::time::Instant::now() >= next_log => {
                info!(reason = %e, "still waiting for the app's health");
                next_log += STILL_WAITING_EVERY;
            }
            Err(_) => {}
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// The waifu's settings: the environment's, with the command line's
/// name, port and health path; and how long to wait for a drain.
fn settings(args: &Args) -> Result<(Waifu, Duration), String> {
    let port = args.port.map(|p| p.to_string());
    let waifu = Waifu::from_lookup(|key| match key {
        "WAIFU_NAME" if args.name.is_some() => args.name.clone(),
        "PORT" if port.is_some() => port.clone(),
        _ => std::env::var(key).ok(),
    })
    .map_err(|e| e.to_string())?;
    let waifu = match &args.health {
        Some(path) => waifu.health_path(path),
        None => waifu,
    };
    let drain_for = match std::env::var("DRAIN_TIMEOUT") {
        Ok(text) => waifu::waifus_protocol::parse_duration(&text)
            .ok_or_else(|| format!("DRAIN_TIMEOUT={text:?} is not a duration (e.g. 25s)"))?,
        Err(_) => waifu.drain_time(),
    };
    Ok((waifu, drain_for))
}
