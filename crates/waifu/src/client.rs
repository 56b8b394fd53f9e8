//! The few HTTP calls a waifu makes to the orchestrator.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Bound on one call to the orchestrator.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The orchestrator could not be reached, or its answer not read.
    #[error("the orchestrator at {url} could not be reached: {source}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No answer within the call's bound.
    #[error("the orchestrator at {url} did not answer within {} s", CALL_TIMEOUT.as_secs())]
    TimedOut {
        /// The URL called.
        url: String,
    },
}

/// POSTs JSON, with `token` as a bearer token; returns the status and body.
pub(crate) async fn post_json(
    url: &str,
    body: &impl serde::Serialize,
    token: Option<&str>,
) -> Result<(StatusCode, Bytes), CallError> {
    let unreachable = |source: Box<dyn std::error::Error + Send + Sync>| CallError::Unreachable {
        url: url.to_owned(),
        source,
    };
    let body = serde_json::to_vec(body).map_err(|e| unreachable(e.into()))?;
    let mut request =
        http::Request::post(url).header(http::header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| unreachable(e.into()))?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let call = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| unreachable(e.into()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(unreachable)?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(CallError::TimedOut {
                url: url.to_owned(),
            })
        })
}

/// The `message` of an `{"error","message"}` body, or the body itself.
pub(crate) fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<waifus_protocol::ErrorBody>(body)
        .map(|e| e.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned())
}
