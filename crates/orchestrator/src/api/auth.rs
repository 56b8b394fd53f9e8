//! The middleware that checks the bearer token of every internal API call
//! ([`super::tokens`] says which token opens what). A call without a valid
//! token is 401 `unauthorized` and an incident, stored at most once per
//! source address every 10 s, and answered only once that incident is
//! stored.
//!
//! The status page is also opened by HTTP Basic authentication with the
//! token as the password (any user name), so a browser can show it with
//! its own prompt: its 401 asks for `Basic` first, then (in a second
//! header) `Bearer`. A token never goes in a URL.

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
    let page = is_status_page(request.method(), request.uri().path());
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .and_then(|(scheme, value)| {
            if scheme.eq_ignore_ascii_case("bearer") {
                Some(value.trim().to_owned())
            } else if page && scheme.eq_ignore_ascii_case("basic") {
                basic_password(value.trim())
            } else {
                None
            }
        });
    if state
        .tokens
        .allows(request.method(), request.uri().path(), presented.as_deref())
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
    // The status page asks a browser for Basic credentials (its own
    // prompt), then says Bearer works too, in a header of its own (a
    // browser does not read two challenges in one); every other endpoint
    // asks for Bearer only.
    let headers = response.headers_mut();
    if page {
        headers.append(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(r#"Basic realm="waifus status", charset="UTF-8""#),
        );
    }
    headers.append(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// The page a browser opens: Basic credentials count there.
fn is_status_page(method: &axum::http::Method, path: &str) -> bool {
    (method == axum::http::Method::GET || method == axum::http::Method::HEAD)
        && path == "/__internal/status"
}

/// The password of Basic credentials (`base64(user:password)`); `None`
/// when they are not well formed.
fn basic_password(encoded: &str) -> Option<String> {
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_give_their_password() {
        // "anyone:s3cr:et" and ":tok"
        assert_eq!(
            basic_password("YW55b25lOnMzY3I6ZXQ=").as_deref(),
            Some("s3cr:et")
        );
        assert_eq!(basic_password("OnRvaw==").as_deref(), Some("tok"));
        assert_eq!(basic_password("bm9jb2xvbg=="), None, "no colon");
        assert_eq!(basic_password("%%%"), None, "not base64");
        assert!(is_status_page(
            &axum::http::Method::GET,
            "/__internal/status"
        ));
        assert!(!is_status_page(
            &axum::http::Method::GET,
            "/__internal/waifus"
        ));
        assert!(!is_status_page(
            &axum::http::Method::POST,
            "/__internal/status"
        ));
    }
}
