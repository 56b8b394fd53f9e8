//! The operator's endpoints: the list of waifus and their health,
//! versions, the upgrade, incidents, the audit log, metrics and the status
//! page (pauses and maintenance: [`super::switch`]).

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use waifus_protocol::{AuditEntry, IncidentInfo, WaifuInfo, validate_name};

use std::collections::BTreeMap;

use crate::ops::availability;
use crate::ops::status::{
    DAY_SLOTS, RECENT_AUDIT, RECENT_INCIDENTS, RefusedBind, Status, WaifuStatus, html, stretches,
};

use super::error::{ApiError, INCIDENTS_MAX};
use super::source::Source;
use super::{AppState, json_body};

/// Incidents one listing returns unless asked for another number.
const INCIDENTS_DEFAULT: i64 = 100;

/// How long the status page waits for what it shows from PostgreSQL.
const STATUS_STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /__internal/status`: HTML, or JSON for `Accept: application/json`.
pub(super) async fn status(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Response {
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
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
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

pub(super) async fn list(State(state): State<AppState>) -> Json<Vec<WaifuInfo>> {
    Json(state.registry.list().await)
}

pub(super) async fn waifu_health(
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

/// `PUT /__internal/waifus/{name}/version` `{"version"}`: that version,
/// one the waifu's instances announced before, is current again (or
/// already was); on every orchestrator within moments.
pub(super) async fn make_current(
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
pub(super) async fn upgrade(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
pub(super) struct IncidentsQuery {
    limit: Option<i64>,
}

pub(super) async fn incidents(
    State(state): State<AppState>,
    query: Result<Query<IncidentsQuery>, QueryRejection>,
) -> Result<Json<Vec<IncidentInfo>>, ApiError> {
    let Query(query) = query.map_err(|_| ApiError::BadQuery)?;
    Ok(Json(state.store.incidents(limit(query.limit)?).await?))
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct AuditQuery {
    name: Option<String>,
    limit: Option<i64>,
}

/// `GET /__internal/audit?name=&limit=`: the newest changes, newest first.
pub(super) async fn audit(
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

/// The status page's snapshot.
async fn collect(state: &AppState) -> Status {
    let listed = state.registry.list_within(STATUS_STORE_WAIT).await;
    let busy = listed.is_none();
    let waifus = listed.unwrap_or_default();
    let week = super::history::WINDOWS[1].1;
    let since = super::history::now_ms()
        .saturating_sub(i64::try_from(week.as_millis()).unwrap_or(i64::MAX));
    // The page is most needed when PostgreSQL is in trouble: what it says
    // about the store is bounded, the rest is memory.
    let stored = tokio::time::timeout(STATUS_STORE_WAIT, async {
        tokio::try_join!(
            state.store.databases(),
            state.store.incidents(RECENT_INCIDENTS),
            state.store.audit(None, RECENT_AUDIT),
            state.store.backup_summary(),
            state.store.steps(None, since),
            state.store.refusals(),
            state.store.running_rollouts(),
        )
    })
    .await;
    let (stored, store_error) = match stored {
        Ok(Ok(stored)) => (Some(stored), None),
        Ok(Err(e)) => (None, Some(e.to_string())),
        Err(_) => (
            None,
            Some(format!(
                "the state database did not answer within {} s",
                STATUS_STORE_WAIT.as_secs()
            )),
        ),
    };
    let (databases, incidents, audit, backups, (steps, now), refusals, rollouts) = stored
        .unwrap_or_else(|| {
            let nothing = (Vec::new(), super::history::now_ms());
            (
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                nothing,
                Vec::new(),
                Vec::new(),
            )
        });
    let store_error = match (store_error, busy) {
        (None, true) => Some(
            "a change waits for the state database: the waifus cannot be listed now".to_owned(),
        ),
        (e, _) => e,
    };
    let mut traffic = state.graphs.points(&state.routes);
    let by_waifu = availability::by_waifu(&steps);
    let day = i64::try_from(super::history::WINDOWS[0].1.as_millis()).unwrap_or(i64::MAX);
    let week = i64::try_from(week.as_millis()).unwrap_or(i64::MAX);
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
            let steps = by_waifu.get(info.name.as_str()).copied().unwrap_or(&[]);
            let mut uptime = BTreeMap::new();
            for (window, length) in [("24h", day), ("7d", week)] {
                let a = availability::availability(steps, now - length, now);
                uptime.insert(window.to_owned(), a.uptime());
            }
            let refused = refusals
                .iter()
                .find(|r| r.name == info.name)
                .map(|r| {
                    r.binds
                        .iter()
                        .map(|(bind, reason)| RefusedBind {
                            bind: bind.clone(),
                            reason: reason.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            WaifuStatus {
                traffic: traffic.remove(&info.name).unwrap_or_default(),
                uptime,
                day: if store_error.is_some() {
                    Vec::new()
                } else {
                    let slots = availability::slots(steps, now - day, now, DAY_SLOTS);
                    let slot_ms = day / i64::try_from(DAY_SLOTS).unwrap_or(1);
                    stretches(&slots, now - day, slot_ms)
                },
                refused,
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
        time: now,
        waifus,
        rollouts: rollouts.into_iter().map(Into::into).collect(),
        incidents,
        audit,
        store_error,
    }
}
