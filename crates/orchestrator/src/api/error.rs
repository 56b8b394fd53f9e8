//! The internal API's one error type: every failure renders as
//! `{"error", "message"}` with the status it names.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use waifus_protocol::ErrorBody;

use crate::ownership::OwnershipError;
use crate::provision::{MAX_SECRET, ProvisionError};
use crate::registry::{GoodbyeError, HelloError};
use crate::store::StoreError;

/// How long an internal API call may take before it is answered 503.
pub(crate) const DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Largest request body the internal API reads.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// Largest number of incidents one listing returns.
pub(super) const INCIDENTS_MAX: i64 = 1000;

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
    Goodbye(#[from] GoodbyeError),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error(transparent)]
    Ownership(#[from] OwnershipError),
    #[error("the secret must be 1 to {MAX_SECRET} bytes")]
    BadSecret,
    #[error("the database server is unreachable: {0}")]
    Store(#[from] StoreError),
    #[error("bad query string: limit must be a whole number from 1 to {INCIDENTS_MAX}")]
    BadQuery,
    #[error("bad query string: name must be a waifu name (a DNS label)")]
    BadQueryName,
    #[error(
        "bad query string: since must be an RFC 3339 time (2026-12-05T10:00:00Z) or a \
         duration back from now (90m, 7d)"
    )]
    BadSince,
    #[error("no waifu is registered under this name")]
    UnknownWaifu,
    #[error("the waifu has no healthy instance")]
    NoHealthyInstance,
    #[error("there is no such endpoint on the internal API")]
    NotFound,
    #[error("this call needs a valid bearer token (Authorization: Bearer ...)")]
    Unauthorized,
    #[error("this endpoint does not accept that method")]
    MethodNotAllowed,
    #[error(
        "no answer within {} s: the state database (or the secret check) is stalled or \
         overloaded; retry later",
        DEADLINE.as_secs()
    )]
    TimedOut,
    #[error("the orchestrator is shutting down; retry with another one")]
    Stopping,
    #[error("maxWait must be a duration from 1 ms to 10 min, such as \"30s\"")]
    BadMaxWait,
    #[error(
        "retryAfter must be whole seconds from 1 to 86400, and message at most 512 bytes \
         of text without control characters"
    )]
    BadMaintenance,
    #[error(
        "no instance of this waifu ever announced that version; known: {}",
        if .0.is_empty() { "none".to_owned() } else { .0.join(", ") }
    )]
    UnknownVersion(Vec<String>),
    #[error("no upgrade: {0}")]
    Upgrade(String),
    #[error("bad rollout: {0}")]
    BadRollout(String),
    #[error("no rollout runs for this waifu")]
    NoRollout,
}

impl ApiError {
    pub(super) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::BadBody => (StatusCode::BAD_REQUEST, "bad_body"),
            ApiError::BadJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            ApiError::Hello(HelloError::Name(_)) => (StatusCode::BAD_REQUEST, "invalid_name"),
            ApiError::Hello(HelloError::Host(_)) => (StatusCode::BAD_REQUEST, "invalid_host"),
            ApiError::Hello(HelloError::Version(_)) => (StatusCode::BAD_REQUEST, "invalid_version"),
            ApiError::Hello(HelloError::Health(_)) => (StatusCode::BAD_REQUEST, "invalid_health"),
            ApiError::Hello(HelloError::Limits(_)) => (StatusCode::BAD_REQUEST, "invalid_limits"),
            ApiError::Hello(HelloError::Store(_)) | ApiError::Goodbye(GoodbyeError::Store(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
            }
            ApiError::Goodbye(GoodbyeError::Name(_)) => (StatusCode::BAD_REQUEST, "invalid_name"),
            ApiError::Goodbye(GoodbyeError::Host(_)) => (StatusCode::BAD_REQUEST, "invalid_host"),
            ApiError::Goodbye(GoodbyeError::UnknownInstance) => {
                (StatusCode::NOT_FOUND, "unknown_instance")
            }
            ApiError::Provision(e) => match e {
                ProvisionError::Name(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
                ProvisionError::Secret => (StatusCode::BAD_REQUEST, "invalid_secret"),
                ProvisionError::WrongSecret => (StatusCode::FORBIDDEN, "wrong_secret"),
                ProvisionError::Throttled(_) => {
                    (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts")
                }
                ProvisionError::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
                ProvisionError::NoDatabase(_) => (StatusCode::NOT_FOUND, "no_database"),
                ProvisionError::SameSecret => (StatusCode::BAD_REQUEST, "same_secret"),
                ProvisionError::Unavailable(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
                }
            },
            ApiError::Ownership(e) => match e {
                OwnershipError::SecretRequired | OwnershipError::SecretAlwaysRequired => {
                    (StatusCode::UNAUTHORIZED, "secret_required")
                }
                OwnershipError::WrongSecret => (StatusCode::FORBIDDEN, "wrong_secret"),
                OwnershipError::Throttled(_) => {
                    (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts")
                }
                OwnershipError::Unavailable(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
                }
            },
            ApiError::BadSecret => (StatusCode::BAD_REQUEST, "invalid_secret"),
            ApiError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable"),
            ApiError::BadQuery | ApiError::BadQueryName | ApiError::BadSince => {
                (StatusCode::BAD_REQUEST, "bad_query")
            }
            ApiError::UnknownWaifu => (StatusCode::NOT_FOUND, "unknown_waifu"),
            ApiError::NoHealthyInstance => (StatusCode::SERVICE_UNAVAILABLE, "no_healthy_instance"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::TimedOut => (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable"),
            ApiError::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::BadMaxWait => (StatusCode::BAD_REQUEST, "invalid_max_wait"),
            ApiError::BadMaintenance => (StatusCode::BAD_REQUEST, "invalid_maintenance"),
            ApiError::UnknownVersion(_) => (StatusCode::NOT_FOUND, "unknown_version"),
            ApiError::Upgrade(_) => (StatusCode::CONFLICT, "upgrade_failed"),
            ApiError::BadRollout(_) => (StatusCode::BAD_REQUEST, "bad_rollout"),
            ApiError::NoRollout => (StatusCode::NOT_FOUND, "no_rollout"),
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
            ApiError::Provision(ProvisionError::Throttled(wait))
            | ApiError::Ownership(OwnershipError::Throttled(wait)) => Some(wait.as_secs().max(1)),
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
