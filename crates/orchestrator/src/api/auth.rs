//! The middleware that checks the bearer token of every internal API call
//! ([`super::tokens`] says which token opens what). A call without a valid
//! token is 401 `unauthorized` and an incident, stored at most once per
//! source address every 10 s, and answered only once that incident is
//! stored.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::AppState;
use super::tokens::REPORT_EVERY;
use crate::ops::incidents::IncidentKind;

/// The middleware: lets a call through, or answers 401 (503 if the
/// incident it makes cannot be stored).
pub(crate) async fn authorize(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    if state
        .tokens
        .allows(request.method(), request.uri().path(), bearer)
    {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let source = super::source::source_of(&parts, &state);
    let request = Request::from_parts(parts, body);
    let detail = format!(
        "{} {} without a valid token (further ones from this address within {} s are \
         not recorded separately)",
        request.method(),
        request.uri().path(),
        REPORT_EVERY.as_secs()
    );
    let stored = state
        .tokens
        .reported
        .record(&source, || {
            state
                .incidents
                .record(IncidentKind::Unauthorized, "-", source, detail)
        })
        .await;
    if let Err(e) = stored {
        return ApiError::Store(e).into_response();
    }
    let mut response = ApiError::Unauthorized.into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}
