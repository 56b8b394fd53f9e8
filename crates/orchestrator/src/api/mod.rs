//! The internal API on `INTERNAL_ADDR`: hello, database, the waifus and
//! their health, incidents, metrics, the status page.
//!
//! Only for waifus and operators inside the private network; the public
//! listener never routes here. Every error is `{"error", "message"}` with
//! the status it names; nothing a client sends can produce a 5xx other than
//! 503 for an unreachable database.

mod auth;
mod deadline;
mod error;
mod history;
mod operator;
pub(crate) mod rollout;
mod source;
mod state;
mod switch;
mod tokens;

use std::net::IpAddr;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use waifus_protocol::{
    DatabaseCredentials, DatabaseRequest, Goodbye, GoodbyeResponse, Hello, HelloResponse,
    RotateRequest,
};

use crate::ownership::Asked;
use crate::provision::MAX_SECRET;
use crate::registry::{GoodbyeError, ValidGoodbye, ValidHello};

use error::{ApiError, MAX_BODY};
use source::Source;
pub(crate) use state::{AppState, Calls, RolloutDefaults};
pub(crate) use tokens::Tokens;

/// The longest a goodbye with `wait` waits for the instance to drain here
/// before answering with what is still in flight: within the deadline every
/// call answers in.
const GOODBYE_WAIT: std::time::Duration = std::time::Duration::from_secs(4);

/// The internal API's router.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/__internal/health", get(StatusCode::NO_CONTENT))
        .route("/__internal/hello", post(hello))
        .route("/__internal/goodbye", post(goodbye))
        .route("/__internal/database", post(database))
        .route("/__internal/database/rotate", post(rotate))
        .route("/__internal/waifus", get(operator::list))
        .route(
            "/__internal/waifus/{name}/health",
            get(operator::waifu_health),
        )
        .route(
            "/__internal/waifus/{name}/pause",
            axum::routing::put(switch::pause).delete(switch::resume),
        )
        .route(
            "/__internal/waifus/{name}/maintenance",
            axum::routing::put(switch::maintenance_on).delete(switch::maintenance_off),
        )
        .route("/__internal/waifus/{name}/history", get(history::history))
        .route(
            "/__internal/waifus/{name}/rollout",
            axum::routing::put(rollout::start)
                .get(rollout::show)
                .delete(rollout::abort),
        )
        .route(
            "/__internal/waifus/{name}/version",
            axum::routing::put(operator::make_current),
        )
        .route(crate::upgrade::API_PATH, post(operator::upgrade))
        .route("/__internal/incidents", get(operator::incidents))
        .route("/__internal/audit", get(operator::audit))
        .route("/__internal/metrics", get(operator::metrics))
        .route("/__internal/status", get(operator::status))
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
    // Removed here already (or by another orchestrator) while requests to
    // it are still in flight here: a goodbye that waits waits for them.
    let still_leaving = goodbye
        .wait
        .then(|| state.registry.still_leaving(&valid))
        .flatten();
    let instance = match (state.registry.goodbye(valid, peer).await, still_leaving) {
        (Err(GoodbyeError::UnknownInstance), Some(instance)) => instance,
        (answer, _) => answer?,
    };
    let in_flight = if goodbye.wait {
        let drained = async {
            tokio::select! {
                () = instance.idle() => {}
                () = instance.drained() => {}
            }
        };
        let _ = tokio::time::timeout(GOODBYE_WAIT, drained).await;
        Some(u64::try_from(instance.in_flight()).unwrap_or(u64::MAX))
    } else {
        None
    };
    Ok(Json(GoodbyeResponse {
        name: goodbye.name,
        host: instance.upstream.to_string(),
        draining: true,
        in_flight,
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

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
