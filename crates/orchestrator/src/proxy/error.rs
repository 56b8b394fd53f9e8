//! Every way a proxied request ends without a waifu's answer, and the JSON
//! `{"error","message"}` answer each gets.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use waifus_protocol::ErrorBody;

use super::body::ProxyBody;
use super::guard::Rejection;

/// Every way a proxied request can end without a waifu's answer.
#[derive(Debug)]
pub(super) enum ProxyError {
    TargetTooLong,
    BadHost,
    /// Over HTTP/2 without TLS: `host` and `:authority` disagree.
    HostMismatch,
    /// The client's request body broke off or broke its framing.
    BadBody,
    Guard(Rejection),
    /// A host that is neither the main domain nor bound by any waifu.
    UnknownHost,
    NoRoute,
    NoHealthy,
    Upstream,
    Timeout,
    /// An `https://` bind asked for over plain HTTP: where to go instead.
    ToHttps(String),
    /// The Host is not the name the TLS connection was made for.
    Misdirected,
    /// `CONNECT`: this is no forward proxy, and a connection that asked
    /// for a tunnel is not trusted with another request.
    Connect,
    /// The waifu is in maintenance: its message, and when to come back.
    Maintenance(Option<String>, std::time::Duration),
    /// The waifu was paused for longer than the request may wait.
    Paused,
    /// The body is larger than the instance takes (413; the connection
    /// closes, the rest of the body unread).
    BodyTooLarge,
    /// Every healthy instance has as many requests in flight as it allows.
    Overloaded,
}

impl ProxyError {
    pub(super) fn into_response(self) -> Response<ProxyBody> {
        let mut location = None;
        let mut retry_after = 5;
        let mut own_message = None;
        // What is left of a broken request body cannot be read past.
        let close = matches!(
            self,
            ProxyError::BadBody | ProxyError::Connect | ProxyError::BodyTooLarge
        );
        let (status, code, message) = match self {
            ProxyError::ToHttps(to) => {
                location = HeaderValue::from_str(&to).ok();
                (
                    StatusCode::PERMANENT_REDIRECT,
                    "https_only",
                    "this address is served over HTTPS only",
                )
            }
            ProxyError::Misdirected => (
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected",
                "the Host does not match the name this TLS connection was made for",
            ),
            ProxyError::TargetTooLong => (
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                "the request target is too long",
            ),
            ProxyError::Maintenance(message, after) => {
                retry_after = after.as_secs().max(1);
                own_message = message;
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "maintenance",
                    "the waifu is in maintenance; retry later",
                )
            }
            ProxyError::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than this waifu takes",
            ),
            ProxyError::Overloaded => {
                retry_after = 1;
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "the waifu has as many requests in flight as it takes; retry shortly",
                )
            }
            ProxyError::Paused => {
                retry_after = 1;
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "paused",
                    "the waifu is paused (its data is being restored or migrated); retry shortly",
                )
            }
            ProxyError::Connect => (
                StatusCode::BAD_REQUEST,
                "bad_request",
                "CONNECT is not served: this is a reverse proxy, not a forward one",
            ),
            ProxyError::BadHost => (
                StatusCode::BAD_REQUEST,
                "bad_host",
                "the request has no valid Host",
            ),
            ProxyError::HostMismatch => (
                StatusCode::BAD_REQUEST,
                "bad_host",
                "the host field and the request's authority disagree",
            ),
            ProxyError::BadBody => (
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request body ended early or broke its framing",
            ),
            ProxyError::Guard(Rejection::Ambiguous(why)) => {
                (StatusCode::BAD_REQUEST, "bad_path", why)
            }
            ProxyError::Guard(Rejection::Internal) | ProxyError::NoRoute => (
                StatusCode::NOT_FOUND,
                "not_found",
                "no waifu serves this host and path",
            ),
            ProxyError::UnknownHost => (
                StatusCode::NOT_FOUND,
                "not_found",
                "no waifu is bound to this host and it is not the main domain \
                 (MAIN_DOMAIN): waifus are served at {main domain}/{name}/ and at \
                 the hosts of their binds",
            ),
            ProxyError::NoHealthy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the waifu has no healthy instance right now",
            ),
            ProxyError::Upstream => (
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "the waifu could not be reached or answered badly",
            ),
            ProxyError::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "gateway_timeout",
                "the waifu did not answer in time",
            ),
        };
        let body = serde_json::to_vec(&ErrorBody {
            error: code.to_owned(),
            message: own_message.unwrap_or_else(|| message.to_owned()),
        })
        .unwrap_or_default();
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        if close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(location) = location {
            headers.insert(header::LOCATION, location);
        }
        response
    }
}
