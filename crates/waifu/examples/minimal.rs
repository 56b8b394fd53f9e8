//! The smallest waifu: `cargo run -p waifu --example minimal`, with
//! `ORCHESTRATOR_URL`, `WAIFU_NAME` and `WAIFU_HOST` set as needed.

use axum::{Router, routing::get};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = Router::new().route("/", get(|| async { "hello from a waifu\n" }));
    waifu::Waifu::from_env()?.serve(app).await?;
    Ok(())
}
