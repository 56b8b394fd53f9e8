//! A relay in front of the orchestrator's internal API that writes down
//! every call a waifu makes (hello, goodbye, database) before passing it
//! on, and asks for the waifu's health the moment its first hello arrives:
//! what the conformance run judges the waifu by.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Notify;

/// Bound on a call's body.
const MAX_BODY: usize = 64 * 1024;

/// One call a waifu made.
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub at: Instant,
    pub path: String,
    /// The JSON it sent, if it was JSON.
    pub body: Option<serde_json::Value>,
    /// For a hello: whether the instance's health passed when it arrived,
    /// or what it answered instead.
    pub health_then: Option<Result<(), String>>,
    /// The status the orchestrator answered.
    pub status: u16,
}

impl Call {
    /// The `host` the call names.
    pub fn host(&self) -> Option<&str> {
        self.body.as_ref()?.get("host")?.as_str()
    }
}

/// What the relay saw, shared with the run.
#[derive(Debug, Default)]
pub(super) struct Seen {
    calls: Mutex<Vec<Call>>,
    changed: Notify,
}

impl Seen {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until `found` picks a call, at most `within`.
    pub async fn until<T>(
        &self,
        within: Duration,
        found: impl Fn(&[Call]) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(t) = found(&self.calls()) {
                return Some(t);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return found(&self.calls());
            }
        }
    }
}

#[derive(Clone)]
struct Relay {
    upstream: String,
    seen: Arc<Seen>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// Starts the relay to `upstream` (`http://host:port`) on a free port of
/// 127.0.0.1; its address and what it sees.
pub(super) async fn start(upstream: &str) -> std::io::Result<(SocketAddr, Arc<Seen>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(Seen::default());
    let relay = Relay {
        upstream: upstream.trim_end_matches('/').to_owned(),
        seen: seen.clone(),
        client: Client::builder(TokioExecutor::new()).build_http(),
    };
    let app = axum::Router::new().fallback(relay_call).with_state(relay);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, seen))
}

async fn relay_call(State(relay): State<Relay>, request: Request) -> Response {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let Ok(body) = Limited::new(body, MAX_BODY).collect().await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
    };
    let body = body.to_bytes();
    let path = parts.uri.path().to_owned();
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let first_hello = path == "/__internal/hello" && {
        let host = json
            .as_ref()
            .and_then(|j| j.get("host"))
            .and_then(|h| h.as_str());
        !relay
            .seen
            .calls()
            .iter()
            .any(|c| c.path == path && c.host() == host)
    };
    let health_then = if first_hello {
        Some(health_at_hello(json.as_ref()).await)
    } else {
        None
    };
    let target = format!(
        "{}{}",
        relay.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut forward = http::Request::builder().method(parts.method).uri(target);
    for (name, value) in &parts.headers {
        if name != http::header::HOST {
            forward = forward.header(name, value);
        }
    }
    let answer = match forward.body(Full::new(body)) {
        Ok(request) => relay.client.request(request).await.ok(),
        Err(_) => None,
    };
    let (status, response) = match answer {
        Some(response) => {
            let status = response.status();
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (status, Response::from_parts(parts, Body::from(body)))
        }
        None => (
            StatusCode::BAD_GATEWAY,
            (
                StatusCode::BAD_GATEWAY,
                "the orchestrator could not be reached",
            )
                .into_response(),
        ),
    };
    relay
        .seen
        .calls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Call {
            at,
            path,
            body: json,
            health_then,
            status: status.as_u16(),
        });
    relay.seen.changed.notify_waiters();
    response
}

/// Asks the instance a hello names for its health, as the orchestrator
/// will: its declared path (any 2xx) or `/__internal/health` (204).
async fn health_at_hello(hello: Option<&serde_json::Value>) -> Result<(), String> {
    let hello = hello.ok_or("the hello is not JSON")?;
    let host = hello
        .get("host")
        .and_then(|h| h.as_str())
        .ok_or("the hello names no host")?;
    let declared = hello.get("health").and_then(|h| h.as_str());
    let path = declared.unwrap_or(waifus_protocol::DEFAULT_HEALTH_PATH);
    let upstream = waifus_protocol::parse_host(host).map_err(|e| e.to_string())?;
    let url = format!("http://{}{path}", upstream.authority());
    let client: Client<_, http_body_util::Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let answer = tokio::time::timeout(Duration::from_secs(2), client.get(uri)).await;
    match answer {
        Err(_) => Err(format!("GET {url} did not answer within 2 s")),
        Ok(Err(e)) => Err(format!("GET {url} failed: {e}")),
        Ok(Ok(r)) if r.status().is_success() => Ok(()),
        Ok(Ok(r)) => Err(format!("GET {url} answered {}", r.status())),
    }
}
