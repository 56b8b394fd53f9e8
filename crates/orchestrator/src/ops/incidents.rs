//! Incidents: security-relevant events an operator should see.
//!
//! A wrong database secret, a throttled attempt and a bind refused as `taken`
//! each become a row `{time, kind, name, source, detail}` in the
//! orchestrator's own tables, a WARN log line, and, when
//! `INCIDENT_WEBHOOK_URL` is set, a JSON POST with both `text` (Slack) and
//! `content` (Discord). Reporting never blocks the request that caused it:
//! storing and sending happen in background tasks, the webhook with retries
//! and backoff. No secret, attempted secret or hash is ever part of one.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};
use waifus_protocol::IncidentInfo;

use crate::store::Store;

/// Webhook deliveries waiting; beyond this, new incidents are not sent (they
/// are still stored and logged).
const WEBHOOK_QUEUE: usize = 1024;
/// Attempts per delivery, with 1 s, 2 s, 4 s, 8 s between them.
const WEBHOOK_ATTEMPTS: u32 = 5;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IncidentKind {
    WrongSecret,
    Throttled,
    BindTaken,
}

impl IncidentKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            IncidentKind::WrongSecret => "wrong_secret",
            IncidentKind::Throttled => "throttled",
            IncidentKind::BindTaken => "bind_taken",
        }
    }
}

/// Records incidents; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Incidents {
    store: Store,
    tasks: TaskTracker,
    webhook: Option<mpsc::Sender<IncidentInfo>>,
    metrics: std::sync::Arc<crate::ops::metrics::Metrics>,
}

impl Incidents {
    /// Starts the webhook sender (if a URL is given) as a task of `tasks`.
    pub(crate) fn new(
        store: Store,
        tasks: TaskTracker,
        webhook_url: Option<http::Uri>,
        shutdown: CancellationToken,
        metrics: std::sync::Arc<crate::ops::metrics::Metrics>,
    ) -> Self {
        let webhook = webhook_url.map(|url| {
            let (tx, rx) = mpsc::channel(WEBHOOK_QUEUE);
            tasks.spawn(deliver(url, rx, shutdown));
            tx
        });
        Incidents {
            store,
            tasks,
            webhook,
            metrics,
        }
    }

    /// Logs, stores and sends an incident without waiting for any of it.
    pub(crate) fn report(&self, kind: IncidentKind, name: &str, source: IpAddr, detail: String) {
        let source = source.to_canonical().to_string();
        warn!(kind = kind.as_str(), name, %source, %detail, "incident");
        self.metrics.incident(kind.as_str());
        let incident = IncidentInfo {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            kind: kind.as_str().to_owned(),
            name: name.to_owned(),
            source,
            detail,
        };
        let store = self.store.clone();
        let webhook = self.webhook.clone();
        self.tasks.spawn(async move {
            if let Err(e) = store.insert_incident(&incident).await {
                warn!(error = %e, "could not store an incident");
            }
            if let Some(tx) = webhook
                && tx.try_send(incident).is_err()
            {
                warn!("incident webhook queue is full; not sending this one");
            }
        });
    }
}

/// The JSON a webhook receives: the incident, plus one line for chat tools.
fn webhook_body(incident: &IncidentInfo) -> Bytes {
    let line = format!(
        "waifus incident: {} for '{}' from {}: {}",
        incident.kind, incident.name, incident.source, incident.detail
    );
    let body = serde_json::json!({
        "text": line,
        "content": line,
        "time": incident.time,
        "kind": incident.kind,
        "name": incident.name,
        "source": incident.source,
        "detail": incident.detail,
    });
    Bytes::from(body.to_string())
}

async fn deliver(
    url: http::Uri,
    mut queue: mpsc::Receiver<IncidentInfo>,
    shutdown: CancellationToken,
) {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    http.enforce_http(false);
    // Chat webhooks are https: rustls with the ring provider and the
    // system's trusted roots.
    let connector = match HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
    {
        Ok(builder) => builder.https_or_http().enable_http1().wrap_connector(http),
        Err(e) => {
            warn!(error = %e, "no trusted TLS roots on this system: incident webhooks are off");
            return;
        }
    };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let incident = tokio::select! {
            () = shutdown.cancelled() => return,
            i = queue.recv() => match i { Some(i) => i, None => return },
        };
        let body = webhook_body(&incident);
        let mut backoff = Duration::from_secs(1);
        for attempt in 1..=WEBHOOK_ATTEMPTS {
            let request = http::Request::post(url.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::USER_AGENT, "waifus-orchestrator")
                .body(Full::new(body.clone()));
            let Ok(request) = request else { break };
            let sent = tokio::time::timeout(Duration::from_secs(10), client.request(request)).await;
            match sent {
                Ok(Ok(r)) if r.status().is_success() => {
                    debug!(attempt, "incident delivered to the webhook");
                    break;
                }
                Ok(Ok(r)) => warn!(attempt, status = %r.status(), "incident webhook refused"),
                Ok(Err(e)) => warn!(attempt, error = %e, "incident webhook unreachable"),
                Err(_) => warn!(attempt, "incident webhook timed out"),
            }
            if attempt < WEBHOOK_ATTEMPTS {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff *= 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_body_has_slack_and_discord_fields() {
        let i = IncidentInfo {
            time: "2026-01-01T00:00:00.000Z".into(),
            kind: "wrong_secret".into(),
            name: "link".into(),
            source: "10.0.0.2".into(),
            detail: "the secret does not match".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&webhook_body(&i)).unwrap();
        assert_eq!(v["text"], v["content"]);
        assert!(v["text"].as_str().unwrap().contains("wrong_secret"));
        assert_eq!(v["name"], "link");
        assert_eq!(v["source"], "10.0.0.2");
    }
}
