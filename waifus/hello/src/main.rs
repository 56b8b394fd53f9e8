//! `hello`, the smallest useful waifu: `GET /` answers a greeting.
//! Configure it with the SDK's environment variables (see `crates/waifu`).

use std::process::ExitCode;

use axum::{Router, routing::get};

#[tokio::main]
async fn main() -> ExitCode {
    waifu::init_logging();
    let app = Router::new().route("/", get(|| async { "hello from waifus\n" }));
    let served = match waifu::Waifu::from_env() {
        Ok(w) => w
            .default_version(env!("CARGO_PKG_VERSION"))
            .serve(app)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
