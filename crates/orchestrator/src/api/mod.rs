//! The internal API on `INTERNAL_ADDR`: hello, database, the waifus and
//! their health, incidents, metrics, the status page.
//!
//! Only for waifus and operators inside the private network; the public
//! listener never routes here. Every error is `{"error", "message"}` with
//! the status it names; nothing a client sends can produce a 5xx other than
//! 503 for an unreachable database.

use std::net::IpAddr;

mod auth;
mod deadline;
mod error;
mod source;
mod state;
mod tokens;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use waifus_protocol::{
    AuditEntry, DatabaseCredentials, DatabaseRequest, Goodbye, GoodbyeResponse, Hello,
    HelloResponse, IncidentInfo, RotateRequest, WaifuInfo, validate_name,
};

use crate::ops::status::{RECENT_AUDIT, RECENT_INCIDENTS, Status, WaifuStatus, html};
use crate::ownership::Asked;
use crate::provision::MAX_SECRET;
use crate::registry::{ValidGoodbye, ValidHello};

use error::{ApiError, INCIDENTS_MAX, MAX_BODY};
use source::Source;
pub(crate) use state::{AppState, Calls};
pub(crate) use tokens::Tokens;

/// How long the status page waits for what it shows from PostgreSQL.
const STATUS_STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Incidents one listing returns unless asked for another number.
const INCIDENTS_DEFAULT: i64 = 100;

/// The internal API's router.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/__internal/health", get(StatusCode::NO_CONTENT))
        .route("/__internal/hello", post(hello))
        .route("/__internal/goodbye", post(goodbye))
        .route("/__internal/database", post(database))
        .route("/__internal/database/rotate", post(rotate))
        .route("/__internal/waifus", get(list))
        .route("/__internal/waifus/{name}/health", get(waifu_health))
        .route(
            "/__internal/waifus/{name}/pause",
            axum::routing::put(pause).delete(resume),
        )
        .route(
            "/__internal/waifus/{name}/version",
            axum::routing::put(make_current),
        )
        .route(crate::upgrade::API_PATH, post(upgrade))
        .route("/__internal/incidents", get(incidents))
        .route("/__internal/audit", get(audit))
        .route("/__internal/metrics", get(metrics))
        .route("/__internal/status", get(status))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            deadline::within_deadline,
        ))
        .with_state(state)
}

/// Reads a JSON body with a size bound, whatever its content type says.
async fn json_body<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::TooLarge
        } else {
            ApiError::BadBody
        }
    })?;
    Ok(serde_json::from_slice(&bytes)?)
}

async fn hello(
    State(state): State<AppState>,
    Source(peer): Source,
    body: Body,
) -> Result<Json<HelloResponse>, ApiError> {
    let response = hello_inner(&state, body, peer).await;
    state.metrics.hello(match &response {
        Ok(_) => "ok",
        Err(e) if e.status_and_code().0 == StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        Err(ApiError::Ownership(e)) => e.outcome(),
        Err(_) => "invalid",
    });
    Ok(Json(response?))
}

/// A hello: its name's ownership checked (the refusal stored if it is
/// refused), then registered.
async fn hello_inner(
    state: &AppState,
    body: Body,
    peer: IpAddr,
) -> Result<HelloResponse, ApiError> {
    let hello: Hello = json_body(body).await?;
    let valid = ValidHello::check(&hello)?;
    if let Some(secret) = &hello.secret
        && (secret.is_empty() || secret.len() > MAX_SECRET)
    {
        return Err(ApiError::BadSecret);
    }
    state
        .ownership
        .admit(valid.name(), hello.secret.as_deref(), peer, Asked::Hello)
        .await?;
    Ok(state.registry.hello(valid, peer, &state.incidents).await?)
}

/// `POST /__internal/goodbye`: the instance gets no new request and drains.
async fn goodbye(
    State(state): State<AppState>,
    Source(peer): Source,
    body: Body,
) -> Result<Json<GoodbyeResponse>, ApiError> {
    let goodbye: Goodbye = json_body(body).await?;
    let valid = ValidGoodbye::check(&goodbye)?;
    if let Some(secret) = &goodbye.secret
        && (secret.is_empty() || secret.len() > MAX_SECRET)
    {
        return Err(ApiError::BadSecret);
    }
    state
        .ownership
        .admit(
            valid.name(),
            goodbye.secret.as_deref(),
            peer,
            Asked::Goodbye,
        )
        .await?;
    let host = state.registry.goodbye(valid, peer).await?;
    Ok(Json(GoodbyeResponse {
        name: goodbye.name,
        host,
        draining: true,
    }))
}

async fn database(
    State(state): State<AppState>,
    Source(peer): Source,
    body: Body,
) -> Result<Json<DatabaseCredentials>, ApiError> {
    let answer = async {
        let request: DatabaseRequest = json_body(body).await?;
        let credentials = state
            .provisioner
            .credentials(&request.name, &request.secret, peer)
            .await?;
        Ok::<_, ApiError>(credentials)
    }
    .await;
    counted_database_call(&state, "ok", answer)
}

/// A database call's answer, counted by its outcome (`ok` named `ok`).
fn counted_database_call(
    state: &AppState,
    ok: &'static str,
    answer: Result<DatabaseCredentials, ApiError>,
) -> Result<Json<DatabaseCredentials>, ApiError> {
    state.metrics.database_call(match &answer {
        Ok(_) => ok,
        Err(ApiError::Provision(e)) => e.outcome(),
        Err(_) => "invalid",
    });
    Ok(Json(answer?))
}

/// `POST /__internal/database/rotate`: a new secret and password.
async fn rotate(
    State(state): State<AppState>,
    Source(peer): Source,
    body: Body,
) -> Result<Json<DatabaseCredentials>, ApiError> {
    let answer = async {
        let request: RotateRequest = json_body(body).await?;
        let credentials = state
            .provisioner
            .rotate(&request.name, &request.secret, &request.new_secret, peer)
            .await?;
        Ok::<_, ApiError>(credentials)
    }
    .await;
    counted_database_call(&state, "rotated", answer)
}

/// `GET /__internal/status`: HTML, or JSON for `Accept: application/json`.
async fn status(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let snapshot = collect(&state).await;
    let wants_json = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json"));
    if wants_json {
        return Json(snapshot).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html(&snapshot),
    )
        .into_response()
}

/// `GET /__internal/metrics`: Prometheus text (OpenMetrics).
async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics.render();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn list(State(state): State<AppState>) -> Json<Vec<WaifuInfo>> {
    Json(state.registry.list().await)
}

async fn waifu_health(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    // A name that is not even a valid path parameter is no known waifu.
    let Path(name) = name.map_err(|_| ApiError::UnknownWaifu)?;
    let routes = state.routes.load();
    let waifu = routes.waifu(&name).ok_or(ApiError::UnknownWaifu)?;
    if waifu.instances.iter().any(|i| i.is_healthy()) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NoHealthyInstance)
    }
}

/// `PUT /__internal/waifus/{name}/pause` `{"maxWait"?}`: the waifu's new
/// public requests wait (none reaches it) until it is resumed, each at
/// most `maxWait` (30 s), on every orchestrator.
async fn pause(
    State(state): State<AppState>,
    Source(peer): Source,
    name: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(name) = name.map_err(|_| ApiError::UnknownWaifu)?;
    if state.routes.load().waifu(&name).is_none() {
        return Err(ApiError::UnknownWaifu);
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::BadBody)?;
    let request: PauseRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        PauseRequest::default()
    } else {
        serde_json::from_slice(&bytes)?
    };
    let max_wait = match request.max_wait.as_deref() {
        None => DEFAULT_MAX_WAIT,
        Some(text) => humantime::parse_duration(text)
            .ok()
            .filter(|d| !d.is_zero() && *d <= MAX_MAX_WAIT)
            .ok_or(ApiError::BadMaxWait)?,
    };
    let mode = crate::store::switches::SwitchMode::Paused { max_wait };
    state
        .registry
        .set_switch(&name, &mode, &peer.to_string())
        .await?;
    Ok(Json(serde_json::json!({
        "name": name,
        "paused": true,
        "maxWait": humantime::format_duration(max_wait).to_string(),
    })))
}

/// `DELETE /__internal/waifus/{name}/pause`: the held requests go on.
async fn resume(
    State(state): State<AppState>,
    Source(peer): Source,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(name) = name.map_err(|_| ApiError::UnknownWaifu)?;
    validate_name(&name).map_err(|_| ApiError::UnknownWaifu)?;
    let was = state
        .registry
        .clear_switch(&name, &peer.to_string())
        .await?;
    Ok(Json(
        serde_json::json!({"name": name, "paused": false, "wasPaused": was}),
    ))
}

/// `PUT /__internal/waifus/{name}/version` `{"version"}`: that version,
/// one the waifu's instances announced before, is current again (or
/// already was); on every orchestrator within moments.
async fn make_current(
    State(state): State<AppState>,
    Source(peer): Source,
    name: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(name) = name.map_err(|_| ApiError::UnknownWaifu)?;
    if state.routes.load().waifu(&name).is_none() {
        return Err(ApiError::UnknownWaifu);
    }
    let request: VersionRequest = json_body(body).await?;
    waifus_protocol::validate_version(&request.version)
        .map_err(|e| ApiError::Hello(crate::registry::HelloError::Version(e)))?;
    use crate::store::versions::MadeCurrent;
    let made = state
        .registry
        .make_current(&name, &request.version, &peer.to_string())
        .await?;
    let (changed, from) = match made {
        MadeCurrent::Unknown { known } => return Err(ApiError::UnknownVersion(known)),
        MadeCurrent::Already => (false, Some(request.version.clone())),
        MadeCurrent::Changed { from } => (true, from),
    };
    Ok(Json(serde_json::json!({
        "name": name,
        "version": request.version,
        "changed": changed,
        "from": from,
    })))
}

#[derive(Debug, serde::Deserialize)]
struct VersionRequest {
    version: String,
}

/// `POST /__internal/admin/upgrade`: starts the binary at this process's
/// path with its listening sockets and answers once it serves (this
/// process then drains and stops), or why it did not.
async fn upgrade(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(asks) = &state.upgrades else {
        return Err(ApiError::Upgrade(
            crate::upgrade::UpgradeError::NotAProcess.to_string(),
        ));
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    asks.try_send(reply)
        .map_err(|_| ApiError::Upgrade(crate::upgrade::UpgradeError::Busy.to_string()))?;
    let successor = answer
        .await
        .map_err(|_| ApiError::Upgrade(crate::upgrade::UpgradeError::Stopping.to_string()))?
        .map_err(ApiError::Upgrade)?;
    Ok(Json(serde_json::json!({
        "previous": std::process::id(),
        "pid": successor,
    })))
}

/// How long a paused waifu's requests wait unless told otherwise.
const DEFAULT_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// The longest a request may be told to wait.
const MAX_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PauseRequest {
    max_wait: Option<String>,
}

/// A listing's `limit`: [`INCIDENTS_DEFAULT`] when absent, at most
/// [`INCIDENTS_MAX`].
fn limit(asked: Option<i64>) -> Result<i64, ApiError> {
    let limit = asked.unwrap_or(INCIDENTS_DEFAULT);
    if !(1..=INCIDENTS_MAX).contains(&limit) {
        return Err(ApiError::BadQuery);
    }
    Ok(limit)
}

#[derive(Debug, serde::Deserialize)]
struct IncidentsQuery {
    limit: Option<i64>,
}

async fn incidents(
    State(state): State<AppState>,
    query: Result<Query<IncidentsQuery>, QueryRejection>,
) -> Result<Json<Vec<IncidentInfo>>, ApiError> {
    let Query(query) = query.map_err(|_| ApiError::BadQuery)?;
    Ok(Json(state.store.incidents(limit(query.limit)?).await?))
}

#[derive(Debug, serde::Deserialize)]
struct AuditQuery {
    name: Option<String>,
    limit: Option<i64>,
}

/// `GET /__internal/audit?name=&limit=`: the newest changes, newest first.
async fn audit(
    State(state): State<AppState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let Query(query) = query.map_err(|_| ApiError::BadQuery)?;
    let limit = limit(query.limit)?;
    if let Some(name) = &query.name
        && validate_name(name).is_err()
    {
        return Err(ApiError::BadQueryName);
    }
    Ok(Json(state.store.audit(query.name.as_deref(), limit).await?))
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The status page's snapshot.
async fn collect(state: &AppState) -> Status {
    let listed = state.registry.list_within(STATUS_STORE_WAIT).await;
    let busy = listed.is_none();
    let waifus = listed.unwrap_or_default();
    // The page is most needed when PostgreSQL is in trouble: what it says
    // about the store is bounded, the rest is memory.
    let stored = tokio::time::timeout(STATUS_STORE_WAIT, async {
        tokio::try_join!(
            state.store.databases(),
            state.store.incidents(RECENT_INCIDENTS),
            state.store.audit(None, RECENT_AUDIT),
            state.store.backup_summary()
        )
    })
    .await;
    let (databases, incidents, audit, backups, store_error) = match stored {
        Ok(Ok((d, i, a, b))) => (d, i, a, b, None),
        Ok(Err(e)) => (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Some(e.to_string()),
        ),
        Err(_) => (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Some(format!(
                "the state database did not answer within {} s",
                STATUS_STORE_WAIT.as_secs()
            )),
        ),
    };
    let store_error = match (store_error, busy) {
        (None, true) => Some(
            "a change waits for the state database: the waifus cannot be listed now".to_owned(),
        ),
        (e, _) => e,
    };
    let waifus = waifus
        .into_iter()
        .map(|info| {
            let database = databases
                .iter()
                .find(|(name, _)| *name == info.name)
                .map(|(_, state)| state.clone());
            let last_backup = backups
                .iter()
                .find(|(name, _, _)| *name == info.name)
                .and_then(|(_, _, verified)| verified.clone());
            WaifuStatus {
                info,
                database,
                last_backup,
            }
        })
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: state.metrics.uptime().as_secs(),
        requests_per_second: state.metrics.request_rate(),
        open_connections: state.metrics.open_connections(),
        health_leader: state.registry.leads_health_checks(),
        waifus,
        incidents,
        audit,
        store_error,
    }
}
