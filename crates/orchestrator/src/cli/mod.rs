//! The client commands: `orchestrator check`, `status` and `incidents`.
//! The only code that reports errors with `anyhow`, for a person to read.

mod check;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use orchestrator::CheckArgs;
use orchestrator::status::{Status, incident_table, text};
use waifus_protocol::IncidentInfo;

/// `orchestrator check URL`: prints the report; exit 0 only if all rules pass.
pub fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(check::check(&args.url, args.timeout));
    println!("{report}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints what `fetch` makes of a running orchestrator's answer.
pub fn report(
    fetch: impl std::future::Future<Output = anyhow::Result<String>>,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    print!("{}", runtime.block_on(fetch)?);
    Ok(ExitCode::SUCCESS)
}

/// `orchestrator status`: the status page's content as tables.
pub async fn status(addr: SocketAddr) -> anyhow::Result<String> {
    let status: Status = fetch(addr, "/__internal/status").await?;
    Ok(text(&status))
}

/// `orchestrator incidents`: the newest `limit` incidents as a table.
pub async fn incidents(addr: SocketAddr, limit: u32) -> anyhow::Result<String> {
    let incidents: Vec<IncidentInfo> =
        fetch(addr, &format!("/__internal/incidents?limit={limit}")).await?;
    Ok(incident_table(&incidents))
}

/// Fetches `path` from a running orchestrator's internal API as JSON.
async fn fetch<T: serde::de::DeserializeOwned>(addr: SocketAddr, path: &str) -> anyhow::Result<T> {
    use anyhow::Context as _;
    use http_body_util::{BodyExt, Empty, Limited};
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let request = http::Request::get(format!("http://{addr}{path}"))
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| anyhow::anyhow!("{addr} did not answer within 10 s"))?
        .with_context(|| format!("cannot reach the orchestrator's internal API at {addr}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), 64 << 20)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        anyhow::bail!(
            "{path} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    serde_json::from_slice(&body)
        .with_context(|| format!("{path} did not answer the expected JSON"))
}
