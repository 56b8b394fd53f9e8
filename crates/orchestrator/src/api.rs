//! The internal API on `INTERNAL_ADDR` (DESIGN.md §2 "Internal API").
//!
//! Only for waifus and operators inside the private network; the public
//! listener never routes here. Every error is `{"error", "message"}` with
//! the status it names; nothing a client sends can produce a 5xx other than
//! 503 for an unreachable database.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use waifus_protocol::{
    DatabaseCredentials, DatabaseRequest, ErrorBody, Hello, HelloResponse, IncidentInfo,
    RefusalReason, WaifuInfo,
};

use crate::incidents::{IncidentKind, Incidents};
use crate::metrics::Metrics;
use crate::provision::{ProvisionError, Provisioner};
use crate::registry::{HelloError, Registry};
use crate::store::{Store, StoreError};

/// Largest request body the internal API reads.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// Default and largest number of incidents one listing returns.
const INCIDENTS_DEFAULT: i64 = 100;
const INCIDENTS_MAX: i64 = 1000;

/// What the handlers share.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub registry: Arc<Registry>,
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

/// Every error of the internal API.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("the request body is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("the request body could not be read")]
    BadBody,
    #[error("the body is not the expected JSON: {0}")]
    BadJson(#[from] serde_json::Error),
    #[error(transparent)]
    Hello(#[from] HelloError),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error("the database server is unreachable: {0}")]
    Store(#[from] StoreError),
    #[error("bad query string: limit must be a whole number from 1 to {INCIDENTS_MAX}")]
    BadQuery,
    #[error("no waifu is registered under this name")]
    UnknownWaifu,
    #[error("the waifu has no healthy instance")]
    NoHealthyInstance,
    #[error("there is no such endpoint on the internal API")]
    NotFound,
    #[error("this endpoint does not accept that method")]
    MethodNotAllowed,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::BadBody => (StatusCode::BAD_REQUEST, "bad_body"),
            ApiError::BadJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            ApiError::Hello(HelloError::Name(_)) => (StatusCode::BAD_REQUEST, "invalid_name"),
            ApiError::Hello(HelloError::Host(_)) => (StatusCode::BAD_REQUEST, "invalid_host"),
            ApiError::Hello(HelloError::Store(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
            }
            ApiError::Provision(e) => match e {
                ProvisionError::Name(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
                ProvisionError::Secret => (StatusCode::BAD_REQUEST, "invalid_secret"),
                ProvisionError::WrongSecret => (StatusCode::FORBIDDEN, "wrong_secret"),
                ProvisionError::Throttled(_) => {
                    (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts")
                }
                ProvisionError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
                ProvisionError::Unavailable(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
                }
            },
            ApiError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable"),
            ApiError::BadQuery => (StatusCode::BAD_REQUEST, "bad_query"),
            ApiError::UnknownWaifu => (StatusCode::NOT_FOUND, "unknown_waifu"),
            ApiError::NoHealthyInstance => (StatusCode::SERVICE_UNAVAILABLE, "no_healthy_instance"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(error = %self, "internal API error");
        }
        let body = ErrorBody {
            error: code.to_owned(),
            message: self.to_string(),
        };
        let retry_after = match &self {
            ApiError::Provision(ProvisionError::Throttled(wait)) => Some(wait.as_secs().max(1)),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(5),
            _ => None,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }
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
        Err(e) => match e.status_and_code().1 {
            "wrong_secret" => "wrong_secret",
            "too_many_attempts" => "throttled",
            "conflict" => "conflict",
            "database_unavailable" => "unavailable",
            _ => "invalid",
        },
    });
    Ok(Json(answer?))
}

/// `GET /__internal/status`: HTML, or JSON for `Accept: application/json`.
async fn status(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let snapshot = crate::status::collect(&state).await;
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
        crate::status::html(&snapshot),
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
    let routes = state.registry.routes();
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
