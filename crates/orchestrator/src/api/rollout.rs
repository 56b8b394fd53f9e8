//! `PUT`, `GET`, `DELETE /__internal/waifus/{name}/rollout`: start a
//! rollout of a version, see how it goes, abort it.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use serde::Deserialize;
use waifus_protocol::validate_name;

use crate::ops::status::RolloutInfo;
use crate::store::rollouts::{RolloutPlan, StoredRollout};

use super::error::ApiError;
use super::source::Source;
use super::{AppState, json_body};

/// The error rate over which a rollout is rolled back unless told
/// otherwise.
pub(crate) const DEFAULT_MAX_ERROR_RATE: f64 = 0.01;
/// The p99 ratio over which a rollout is rolled back unless told
/// otherwise.
pub(crate) const DEFAULT_MAX_LATENCY_RATIO: f64 = 2.0;
/// Bounds of a step's length.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RolloutRequest {
    version: String,
    steps: Option<Vec<i32>>,
    interval: Option<String>,
    max_error_rate: Option<f64>,
    max_latency_ratio: Option<f64>,
}

impl From<StoredRollout> for RolloutInfo {
    fn from(r: StoredRollout) -> Self {
        let some = |v: String| (!v.is_empty()).then_some(v);
        #[allow(clippy::cast_precision_loss)]
        let next = (r.state == "running").then(|| {
            let due = r.step_at_ms + i64::try_from(r.interval.as_millis()).unwrap_or(i64::MAX);
            (due - r.now_ms).max(0) as f64 / 1000.0
        });
        RolloutInfo {
            name: r.name,
            version: some(r.version),
            from: some(r.stable),
            steps: r.steps,
            step: r.step,
            share: r.share,
            interval: humantime::format_duration(r.interval).to_string(),
            max_error_rate: r.max_error_rate,
            max_latency_ratio: r.max_latency_ratio,
            state: r.state,
            started_at: r.started_at,
            judged: r.judged,
            next_step_in: next,
        }
    }
}

fn named(name: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = name.map_err(|_| ApiError::UnknownWaifu)?;
    validate_name(&name).map_err(|_| ApiError::UnknownWaifu)?;
    Ok(name)
}

/// `PUT`: starts a rollout of `version` (replacing any earlier one).
pub(super) async fn start(
    State(state): State<AppState>,
    Source(peer): Source,
    name: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<RolloutInfo>, ApiError> {
    let name = named(name)?;
    if state.routes.load().waifu(&name).is_none() {
        return Err(ApiError::UnknownWaifu);
    }
    let request: RolloutRequest = json_body(body).await?;
    waifus_protocol::validate_version(&request.version)
        .map_err(|e| ApiError::BadRollout(format!("version: {e}")))?;
    let steps = request
        .steps
        .unwrap_or_else(|| state.rollouts.steps.clone());
    waifus_protocol::validate_rollout_steps(&steps)
        .map_err(|e| ApiError::BadRollout(format!("steps: {e}")))?;
    let interval = match &request.interval {
        None => state.rollouts.interval,
        Some(text) => humantime::parse_duration(text)
            .ok()
            .filter(|d| (MIN_INTERVAL..=MAX_INTERVAL).contains(d))
            .ok_or_else(|| {
                ApiError::BadRollout("interval: a duration from 1s to 24h, such as \"60s\"".into())
            })?,
    };
    let max_error_rate = request.max_error_rate.unwrap_or(DEFAULT_MAX_ERROR_RATE);
    if !(0.0..=1.0).contains(&max_error_rate) {
        return Err(ApiError::BadRollout(
            "maxErrorRate: a share from 0 to 1, such as 0.01".into(),
        ));
    }
    let max_latency_ratio = request
        .max_latency_ratio
        .unwrap_or(DEFAULT_MAX_LATENCY_RATIO);
    if !(1.0..=100.0).contains(&max_latency_ratio) {
        return Err(ApiError::BadRollout(
            "maxLatencyRatio: a ratio from 1 to 100, such as 2.0".into(),
        ));
    }
    let plan = RolloutPlan {
        version: &request.version,
        steps: &steps,
        interval,
        max_error_rate,
        max_latency_ratio,
    };
    let started = state
        .registry
        .start_rollout(&name, &plan, &peer.to_string())
        .await?;
    Ok(Json(started.into()))
}

/// `GET`: the latest rollout, running or over.
pub(super) async fn show(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<RolloutInfo>, ApiError> {
    let name = named(name)?;
    let rollout = state.store.rollout(&name).await?;
    Ok(Json(rollout.ok_or(ApiError::NoRollout)?.into()))
}

/// `DELETE`: aborts the running rollout; the version it replaced takes
/// every new client again.
pub(super) async fn abort(
    State(state): State<AppState>,
    Source(peer): Source,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<RolloutInfo>, ApiError> {
    let name = named(name)?;
    let source = peer.to_string();
    let aborted = state
        .registry
        .abort_rollout(&name, None, &format!("aborted by {source}"), &source, None)
        .await?;
    let _ = aborted.ok_or(ApiError::NoRollout)?;
    let rollout = state.store.rollout(&name).await?;
    Ok(Json(rollout.ok_or(ApiError::NoRollout)?.into()))
}
