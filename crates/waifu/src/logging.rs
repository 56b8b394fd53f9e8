//! A waifu's log, as the orchestrator writes its own: to stderr, filtered by
//! `RUST_LOG` (default `info`), one JSON object per line with
//! `LOG_FORMAT=json`, else text, coloured only when stderr is a terminal
//! (a redirected log holds no escape codes).

use std::io::IsTerminal;

/// Sets up logging for a waifu's binary; does nothing if a logger is set
/// already.
///
/// ```no_run
/// waifu::init_logging();
/// tracing::info!("ready");
/// ```
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let _ = if json {
        builder.json().try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}
