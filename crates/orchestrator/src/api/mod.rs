//! The internal API on `INTERNAL_ADDR`: hello, database, the waifus and
//! their health, incidents, metrics, the status page.
//!
//! Only for waifus and operators inside the private network; the public
//! listener never routes here. Every error is `{"error", "message"}` with
//! the status it names; nothing a client sends can produce a 5xx other than
//! 503 for an unreachable database.

use std::net::SocketAddr;
use std::sync::Arc;

mod error;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use waifus_protocol::{
    DatabaseCredentials, DatabaseRequest, Hello, HelloResponse, IncidentInfo, RefusalReason,
    WaifuInfo,
};

use crate::ops::incidents::{IncidentKind, Incidents};
use crate::ops::metrics::Metrics;
use crate::ops::status::{RECENT_INCIDENTS, Status, WaifuStatus, html};
use crate::provision::Provisioner;
use crate::registry::Registry;
use crate::routing::Routes;
use crate::store::Store;
use error::{ApiError, INCIDENTS_MAX, MAX_BODY};

/// Incidents one listing returns unless asked for another number.
const INCIDENTS_DEFAULT: i64 = 100;

/// What the handlers share.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub registry: Arc<Registry>,
    pub routes: Routes,
    pub provisioner: Arc<Provisioner>,
    pub incidents: Incidents,
    pub store: Store,
    pub metrics: Arc<Metrics>,
}

/// The internal API's router.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/__internal/health", get(StatusCode::NO_CONTENT))
        .route("/__internal/hello", post(hello))
        .route("/__internal/database", post(database))
        .route("/__internal/waifus", get(list))
        .route("/__internal/waifus/{name}/health", get(waifu_health))
        .route("/__internal/incidents", get(incidents))
        .route("/__internal/metrics", get(metrics))
        .route("/__internal/status", get(status))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Body,
) -> Result<Json<HelloResponse>, ApiError> {
    let response = hello_inner(&state, body).await;
    state.metrics.hello(match &response {
        Ok(_) => "ok",
        Err(e) if e.status_and_code().0 == StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        Err(_) => "invalid",
    });
    let (hello, response) = response?;
    for outcome in &response.binds {
        if outcome.reason == Some(RefusalReason::Taken) {
            state.incidents.report(
                IncidentKind::BindTaken,
                &hello.name,
                peer.ip(),
                format!("bind {} was refused: another waifu holds it", outcome.bind),
            );
        }
    }
    Ok(Json(response))
}

async fn hello_inner(state: &AppState, body: Body) -> Result<(Hello, HelloResponse), ApiError> {
    let hello: Hello = json_body(body).await?;
    let response = state.registry.hello(&hello).await?;
    Ok((hello, response))
}

async fn database(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Body,
) -> Result<Json<DatabaseCredentials>, ApiError> {
    let answer = async {
        let request: DatabaseRequest = json_body(body).await?;
        let credentials = state
            .provisioner
            .credentials(&request.name, &request.secret, peer.ip())
            .await?;
        Ok::<_, ApiError>(credentials)
    }
    .await;
    state.metrics.database_call(match &answer {
        Ok(_) => "ok",
        Err(ApiError::Provision(e)) => e.outcome(),
        Err(_) => "invalid",
    });
    Ok(Json(answer?))
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

#[derive(Debug, serde::Deserialize)]
struct IncidentsQuery {
    limit: Option<i64>,
}

async fn incidents(
    State(state): State<AppState>,
    query: Result<Query<IncidentsQuery>, QueryRejection>,
) -> Result<Json<Vec<IncidentInfo>>, ApiError> {
    let Query(query) = query.map_err(|_| ApiError::BadQuery)?;
    let limit = query.limit.unwrap_or(INCIDENTS_DEFAULT);
    if !(1..=INCIDENTS_MAX).contains(&limit) {
        return Err(ApiError::BadQuery);
    }
    Ok(Json(state.store.incidents(limit).await?))
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The status page's snapshot.
async fn collect(state: &AppState) -> Status {
    let waifus = state.registry.list().await;
    let (databases, incidents, store_error) = match tokio::try_join!(
        state.store.databases(),
        state.store.incidents(RECENT_INCIDENTS)
    ) {
        Ok((d, i)) => (d, i, None),
        Err(e) => (Vec::new(), Vec::new(), Some(e.to_string())),
    };
    let waifus = waifus
        .into_iter()
        .map(|info| {
            let database = databases
                .iter()
                .find(|(name, _)| *name == info.name)
                .map(|(_, state)| state.clone());
            WaifuStatus { info, database }
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
        store_error,
    }
}
