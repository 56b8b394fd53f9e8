//! Incidents: security-relevant events an operator should see.
//!
//! A wrong secret, a hello without the secret of a claimed name, a refused
//! call on a locked name, a bind refused as `taken`, an internal API call
//! without its token: each becomes a row `{time, kind, name, source,
//! detail}` in the orchestrator's own tables and a WARN log line. A refusal
//! and its incident are stored in one transaction that commits before the
//! refusal is answered; if it cannot be stored, the caller answers 503.
//!
//! With `INCIDENT_WEBHOOK_URL` set, the same transaction adds a row to an
//! outbox, and [`deliver`] POSTs it (JSON with `text` for Slack and
//! `content` for Discord): at least once, retried with backoff for a day,
//! across restarts, by one orchestrator at a time (the one that runs the
//! health checks). No secret, attempted secret or hash is ever part of one.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use waifus_protocol::IncidentInfo;

use crate::ops::metrics::Metrics;
use crate::store::incidents::NewIncident;
use crate::store::ownership::{Attempts, AttemptsChange};
use crate::store::{Store, StoreError};

/// How long a delivery is retried before it is given up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
/// Backoff between attempts: the first, and the longest.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10 * 60);
/// How often the deliverer looks for due rows without being woken.
const POLL: Duration = Duration::from_secs(1);

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IncidentKind {
    WrongSecret,
    Throttled,
    HelloWithoutSecret,
    HelloWrongSecret,
    Unauthorized,
    /// A scheduled backup could not be taken.
    BackupFailed,
    /// A scheduled backup did not restore to what it was taken from.
    BackupUnverified,
    /// A waifu has had no healthy instance for 2 checks.
    WaifuDown,
    /// A waifu that was down has a healthy instance again.
    WaifuUp,
    /// A waifu changes state too often to notify each change.
    WaifuFlapping,
    /// A rollout's new version was worse and was rolled back.
    RolloutAborted,
}

impl IncidentKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            IncidentKind::WrongSecret => "wrong_secret",
            IncidentKind::Throttled => "throttled",
            IncidentKind::HelloWithoutSecret => "hello_without_secret",
            IncidentKind::HelloWrongSecret => "hello_wrong_secret",
            IncidentKind::Unauthorized => "unauthorized",
            IncidentKind::BackupFailed => "backup_failed",
            IncidentKind::BackupUnverified => "backup_unverified",
            IncidentKind::WaifuDown => "waifu_down",
            IncidentKind::WaifuUp => "waifu_up",
            IncidentKind::WaifuFlapping => "waifu_flapping",
            IncidentKind::RolloutAborted => "rollout_aborted",
        }
    }
}

/// Records incidents; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Incidents {
    store: Store,
    /// Whether a webhook is configured: an outbox row goes with each.
    webhook: bool,
    /// Wakes this process's deliverer when a new incident is stored.
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl Incidents {
    pub(crate) fn new(store: Store, webhook: bool, metrics: Arc<Metrics>) -> Self {
        Incidents {
            store,
            webhook,
            wake: Arc::new(Notify::new()),
            metrics,
        }
    }

    /// What wakes the deliverer.
    pub(crate) fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Logs and stores an incident; committed when this returns.
    pub(crate) async fn record(
        &self,
        kind: IncidentKind,
        name: &str,
        source: IpAddr,
        detail: String,
    ) -> Result<(), StoreError> {
        let incident = new_incident(kind, name, source, detail);
        self.store.insert_incident(&incident, self.webhook).await?;
        self.noted(&incident);
        Ok(())
    }

    /// Logs and stores an incident the orchestrator found itself (a
    /// backup): `source` names what found it.
    pub(crate) async fn record_own(
        &self,
        kind: IncidentKind,
        name: &str,
        source: &str,
        detail: String,
    ) -> Result<(), StoreError> {
        let incident = NewIncident {
            kind: kind.as_str(),
            name: name.to_owned(),
            source: source.to_owned(),
            detail,
        };
        self.store.insert_incident(&incident, self.webhook).await?;
        self.noted(&incident);
        Ok(())
    }

    /// Changes the attempts of `source` on `name` as `change` says, with
    /// the incident it makes, in one transaction; committed (and the
    /// incident logged) when this returns.
    pub(crate) async fn with_attempts<T>(
        &self,
        name: &str,
        source: IpAddr,
        change: impl FnOnce(Attempts) -> AttemptsChange<T>,
    ) -> Result<T, StoreError> {
        let source = source.to_canonical().to_string();
        let (outcome, incident) = self
            .store
            .change_attempts(name, &source, change, self.webhook)
            .await?;
        if let Some(incident) = &incident {
            self.noted(incident);
        }
        Ok(outcome)
    }

    /// An incident stored (by this or by another transaction that made
    /// it): logged at WARN, counted, and its delivery woken.
    pub(crate) fn noted(&self, incident: &NewIncident) {
        warn!(
            kind = incident.kind,
            name = %incident.name,
            source = %incident.source,
            detail = %incident.detail,
            "incident"
        );
        self.metrics.incident(incident.kind);
        if self.webhook {
            self.wake.notify_one();
        }
    }

    /// Whether stored incidents go to a webhook too (an outbox row each).
    pub(crate) fn webhook(&self) -> bool {
        self.webhook
    }
}

/// An incident of `kind` about `name` from `source`.
pub(crate) fn new_incident(
    kind: IncidentKind,
    name: &str,
    source: IpAddr,
    detail: String,
) -> NewIncident {
    NewIncident {
        kind: kind.as_str(),
        name: name.to_owned(),
        source: source.to_canonical().to_string(),
        detail,
    }
}

/// At most one incident per key every `every`, and never a refusal without
/// one: a caller answers its refusal only once an incident for its key was
/// committed within `every` (by it or by a call before it). Calls for one
/// key take turns, so a burst stores one incident, not one each, and while
/// PostgreSQL stalls every such call waits (and is answered 503 at the
/// internal API's deadline) instead of being refused with no record.
#[derive(Debug)]
pub(crate) struct Gate<K> {
    every: Duration,
    /// When an incident was last committed, per key; a key's lock is held
    /// while its incident is being stored.
    last: std::sync::Mutex<HashMap<K, Arc<tokio::sync::Mutex<Option<tokio::time::Instant>>>>>,
}

/// Keys kept before the idle ones are dropped.
const GATE_KEYS: usize = 10_000;

impl<K: Eq + Hash + Clone> Gate<K> {
    pub(crate) fn new(every: Duration) -> Self {
        Gate {
            every,
            last: std::sync::Mutex::default(),
        }
    }

    /// Runs `store` unless an incident for `key` was committed within
    /// `every`; `Ok` once one has been.
    pub(crate) async fn record<E, F>(&self, key: &K, store: impl FnOnce() -> F) -> Result<(), E>
    where
        F: Future<Output = Result<(), E>>,
    {
        let slot = {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if last.len() > GATE_KEYS {
                let every = self.every;
                last.retain(|_, slot| {
                    slot.try_lock()
                        .map_or(true, |t| t.is_some_and(|t| t.elapsed() < every))
                });
            }
            last.entry(key.clone()).or_default().clone()
        };
        let mut last = slot.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.every) {
            return Ok(());
        }
        store().await?;
        *last = Some(tokio::time::Instant::now());
        Ok(())
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

/// Delivers the outbox to `url` while this orchestrator leads (one does at
/// a time), until `shutdown`: at least once, each row retried with
/// exponential backoff ([`FIRST_BACKOFF`] up to [`MAX_BACKOFF`]) until it is
/// [`GIVE_UP_AFTER`] old.
pub(crate) async fn deliver(
    url: http::Uri,
    store: Store,
    mut leading: watch::Receiver<bool>,
    wake: Arc<Notify>,
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
        if !*leading.borrow() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                r = leading.wait_for(|l| *l) => if r.is_err() { return },
            }
        }
        match store.due_deliveries(16).await {
            Ok(due) if !due.is_empty() => {
                for d in due {
                    let sent = send(&client, &url, &d.incident).await;
                    let stored = match sent {
                        Ok(()) => {
                            debug!(
                                attempts = d.attempts + 1,
                                "incident delivered to the webhook"
                            );
                            store.delivered(d.id).await
                        }
                        Err(why) => {
                            let retry = backoff(d.attempts);
                            let give_up = d.age + retry >= GIVE_UP_AFTER;
                            warn!(attempt = d.attempts + 1, error = %why, give_up, "incident webhook delivery failed");
                            store
                                .delivery_failed(d.id, (!give_up).then_some(retry), &why)
                                .await
                        }
                    };
                    if let Err(e) = stored {
                        warn!(error = %e, "could not record a webhook delivery");
                    }
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "the webhook outbox cannot be read now"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// The wait before attempt `attempts + 2`.
fn backoff(attempts: i32) -> Duration {
    let doublings = u32::try_from(attempts.clamp(0, 20)).unwrap_or(0);
    FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

/// One POST of one incident; the reason when it did not go through.
async fn send<C>(
    client: &Client<C, Full<Bytes>>,
    url: &http::Uri,
    incident: &IncidentInfo,
) -> Result<(), String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let request = http::Request::post(url.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "waifus-orchestrator")
        .body(Full::new(webhook_body(incident)))
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(10), client.request(request)).await {
        Ok(Ok(r)) if r.status().is_success() => Ok(()),
        Ok(Ok(r)) => Err(format!("refused with {}", r.status())),
        Ok(Err(e)) => Err(format!("unreachable: {e}")),
        Err(_) => Err("no answer within 10 s".to_owned()),
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
            delivered: false,
        };
        let v: serde_json::Value = serde_json::from_slice(&webhook_body(&i)).unwrap();
        assert_eq!(v["text"], v["content"]);
        assert!(v["text"].as_str().unwrap().contains("wrong_secret"));
        assert_eq!(v["name"], "link");
        assert_eq!(v["source"], "10.0.0.2");
    }

    #[test]
    fn backoff_doubles_up_to_ten_minutes() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gate_stores_once_per_key_and_interval_and_never_skips_a_failed_one() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let gate = Arc::new(Gate::new(Duration::from_secs(10)));
        let stored = Arc::new(AtomicUsize::new(0));
        let record = |key: &'static str, ok: bool| {
            let (gate, stored) = (gate.clone(), stored.clone());
            async move {
                gate.record(&key, || async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if !ok {
                        return Err("down");
                    }
                    stored.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .await
            }
        };
        // A burst for one key: one incident, every call answered after it.
        let burst: Vec<_> = (0..20).map(|_| tokio::spawn(record("a", true))).collect();
        for call in burst {
            assert_eq!(call.await.unwrap(), Ok(()));
        }
        assert_eq!(stored.load(Ordering::SeqCst), 1);
        // Another key has its own.
        assert_eq!(record("b", true).await, Ok(()));
        assert_eq!(stored.load(Ordering::SeqCst), 2);
        // Within the interval nothing more is stored.
        assert_eq!(record("a", true).await, Ok(()));
        assert_eq!(stored.load(Ordering::SeqCst), 2);
        // Past it, a failure is an error, and the next call stores again
        // instead of being let through unrecorded.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(record("a", false).await, Err("down"));
        assert_eq!(record("a", true).await, Ok(()));
        assert_eq!(stored.load(Ordering::SeqCst), 3);
    }
}
