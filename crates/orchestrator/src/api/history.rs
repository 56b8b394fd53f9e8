//! `GET /__internal/waifus/{name}/history?since=&limit=`: a waifu's health
//! transitions, newest first, with its uptime over 24 hours, 7 and 30 days.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use waifus_protocol::{Availability, History, validate_name};

use crate::ops::availability::availability;
use crate::store::Store;

use super::AppState;
use super::error::{ApiError, INCIDENTS_MAX};

/// Transitions one call returns unless asked for another number.
const DEFAULT_LIMIT: i64 = 1000;

/// The windows uptime is given for, by name.
pub(crate) const WINDOWS: [(&str, Duration); 3] = [
    ("24h", Duration::from_secs(24 * 3600)),
    ("7d", Duration::from_secs(7 * 24 * 3600)),
    ("30d", Duration::from_secs(30 * 24 * 3600)),
];

#[derive(Debug, serde::Deserialize)]
pub(super) struct HistoryQuery {
    since: Option<String>,
    limit: Option<i64>,
}

pub(super) async fn history(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<History>, ApiError> {
    let Path(name) = name.map_err(|_| ApiError::UnknownWaifu)?;
    validate_name(&name).map_err(|_| ApiError::UnknownWaifu)?;
    let Query(query) = query.map_err(|_| ApiError::BadQuery)?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=INCIDENTS_MAX).contains(&limit) {
        return Err(ApiError::BadQuery);
    }
    let since = query.since.as_deref().map(since_ms).transpose()?;
    let transitions = state.store.history(&name, since, limit).await?;
    if transitions.is_empty()
        && state.routes.load().waifu(&name).is_none()
        && state.store.history(&name, None, 1).await?.is_empty()
    {
        return Err(ApiError::UnknownWaifu);
    }
    let (uptime, availability) = uptime(&state.store, &name).await?;
    Ok(Json(History {
        name,
        transitions,
        uptime,
        availability,
    }))
}

/// Uptime of `name` over each of [`WINDOWS`], and its figures.
pub(crate) async fn uptime(
    store: &Store,
    name: &str,
) -> Result<
    (
        BTreeMap<String, Option<f64>>,
        BTreeMap<String, Availability>,
    ),
    ApiError,
> {
    let longest = WINDOWS[WINDOWS.len() - 1].1;
    let (steps, now) = store
        .steps(Some(name), now_ms().saturating_sub(ms(longest)))
        .await?;
    let mut uptime = BTreeMap::new();
    let mut figures = BTreeMap::new();
    for (window, length) in WINDOWS {
        let a = availability(&steps, now.saturating_sub(ms(length)), now);
        uptime.insert(window.to_owned(), a.uptime());
        figures.insert(window.to_owned(), a);
    }
    Ok((uptime, figures))
}

/// `since` as Unix milliseconds: an RFC 3339 time, or a duration back
/// from now.
fn since_ms(since: &str) -> Result<i64, ApiError> {
    if let Ok(back) = humantime::parse_duration(since) {
        return Ok(now_ms().saturating_sub(ms(back)));
    }
    let at = humantime::parse_rfc3339_weak(since).map_err(|_| ApiError::BadSince)?;
    at.duration_since(UNIX_EPOCH)
        .map(ms)
        .map_err(|_| ApiError::BadSince)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, ms)
}
