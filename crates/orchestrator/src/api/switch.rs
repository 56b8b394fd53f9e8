//! A waifu's switch, set by its operator: paused (new public requests wait,
//! none reaches it) or in maintenance (503 at once), on every orchestrator.
//! One switch, two states: setting one replaces the other; ending one never
//! ends the other.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use waifus_protocol::validate_name;

use crate::store::switches::SwitchMode;

use super::AppState;
use super::error::{ApiError, MAX_BODY};
use super::source::Source;

/// How long a paused waifu's requests wait unless told otherwise.
const DEFAULT_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// The longest a request may be told to wait.
const MAX_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(600);
/// `Retry-After` of a maintenance unless told otherwise.
const DEFAULT_RETRY_AFTER: u64 = 60;
/// The longest `Retry-After` (a day).
const MAX_RETRY_AFTER: u64 = 86_400;
/// The longest maintenance message, in bytes.
pub(crate) const MAX_MESSAGE: usize = 512;

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PauseRequest {
    max_wait: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MaintenanceRequest {
    message: Option<String>,
    retry_after: Option<u64>,
}

/// The name a switch is asked for, if it is one.
fn named(name: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = name.map_err(|_| ApiError::UnknownWaifu)?;
    validate_name(&name).map_err(|_| ApiError::UnknownWaifu)?;
    Ok(name)
}

/// The waifu a switch is set for: it must be known here.
fn known(state: &AppState, name: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let name = named(name)?;
    if state.routes.load().waifu(&name).is_none() {
        return Err(ApiError::UnknownWaifu);
    }
    Ok(name)
}

/// A JSON body that may be empty (then `T::default()`).
async fn optional_json<T: serde::de::DeserializeOwned + Default>(
    body: Body,
) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::BadBody)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// `PUT /__internal/waifus/{name}/pause` `{"maxWait"?}`: the waifu's new
/// public requests wait (none reaches it) until it is resumed, each at
/// most `maxWait` (30 s), on every orchestrator.
pub(super) async fn pause(
    State(state): State<AppState>,
    Source(peer): Source,
    name: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = known(&state, name)?;
    let request: PauseRequest = optional_json(body).await?;
    let max_wait = match request.max_wait.as_deref() {
        None => DEFAULT_MAX_WAIT,
        Some(text) => humantime::parse_duration(text)
            .ok()
            .filter(|d| !d.is_zero() && *d <= MAX_MAX_WAIT)
            .ok_or(ApiError::BadMaxWait)?,
    };
    let mode = SwitchMode::Paused { max_wait };
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
pub(super) async fn resume(
    State(state): State<AppState>,
    Source(peer): Source,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = named(name)?;
    let was = state
        .registry
        .clear_switch(&name, &peer.to_string())
        .await?;
    Ok(Json(
        serde_json::json!({"name": name, "paused": false, "wasPaused": was}),
    ))
}

/// `PUT /__internal/waifus/{name}/maintenance` `{"message"?, "retryAfter"?}`:
/// every public request for the waifu is answered 503 `maintenance` with
/// the message and `Retry-After`, on every orchestrator; health checks go on.
pub(super) async fn maintenance_on(
    State(state): State<AppState>,
    Source(peer): Source,
    name: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = known(&state, name)?;
    let request: MaintenanceRequest = optional_json(body).await?;
    let message = request.message.filter(|m| !m.trim().is_empty());
    if let Some(m) = &message
        && (m.len() > MAX_MESSAGE || m.chars().any(char::is_control))
    {
        return Err(ApiError::BadMaintenance);
    }
    let retry_after = request.retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
    if !(1..=MAX_RETRY_AFTER).contains(&retry_after) {
        return Err(ApiError::BadMaintenance);
    }
    let mode = SwitchMode::Maintenance {
        message: message.clone(),
        retry_after: std::time::Duration::from_secs(retry_after),
    };
    state
        .registry
        .set_switch(&name, &mode, &peer.to_string())
        .await?;
    Ok(Json(serde_json::json!({
        "name": name,
        "maintenance": true,
        "message": message,
        "retryAfter": retry_after,
    })))
}

/// `DELETE /__internal/waifus/{name}/maintenance`: requests go through
/// again (a pause, if that is the switch's state, stays).
pub(super) async fn maintenance_off(
    State(state): State<AppState>,
    Source(peer): Source,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = named(name)?;
    let was = state
        .registry
        .clear_switch_if(&name, Some("maintenance"), &peer.to_string())
        .await?;
    Ok(Json(
        serde_json::json!({"name": name, "maintenance": false, "wasOn": was}),
    ))
}
