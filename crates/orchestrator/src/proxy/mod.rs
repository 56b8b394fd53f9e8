//! The public reverse proxy (DESIGN.md §2 "Public proxy").
//!
//! One request: check the target's length, find the host, run the
//! [`guard`], resolve a route in the current table (no lock), pick a healthy
//! instance, rewrite headers, stream the body to the waifu and its answer
//! back. Bodies are never collected. The only upgrade relayed is a
//! WebSocket handshake ([`websocket`]), and only once the waifu has
//! completed it with its `101 Switching Protocols`.

mod access;
pub(crate) mod guard;
mod headers;
pub(crate) mod upstream;
mod websocket;

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;
use waifus_protocol::ErrorBody;

use crate::health::{self, Outcome};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::routes::{Instance, WaifuRoute};
use crate::tls::Certs;
use guard::Rejection;
use headers::Forwarded;
use upstream::{Answer, Outgoing, SendError, UpstreamBody};

/// Longest request target accepted (path and query), in bytes; longer is 414.
pub(crate) const MAX_TARGET_LEN: usize = 8 * 1024;

/// Body of every proxied response: the waifu's stream, or our own error.
pub(crate) type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// What the client gets: the body, written to the access log when it ends.
pub(crate) type ClientBody = access::Logged<ProxyBody>;

/// A request checked, routed and encoded, or answered without a waifu.
enum Prepared {
    Send(Exchange),
    Answer(Response<ProxyBody>),
}

/// What waiting for the waifu needs.
struct Exchange {
    instance: Arc<Instance>,
    outgoing: Outgoing,
    upgrade: Option<Switch>,
}

/// A WebSocket handshake sent on to the waifu.
struct Switch {
    /// The client's side of the connection, once its `101` is written.
    client: OnUpgrade,
    key: websocket::Key,
    /// The connection's flag to raise once the switch is relayed.
    switched: Option<Arc<AtomicBool>>,
}

/// What the proxy knows of the connection a request came on.
#[derive(Debug, Clone, Default)]
pub(crate) struct Via {
    /// The TLS listener.
    pub tls: bool,
    /// The name the client asked for in its TLS handshake.
    pub sni: Option<Arc<str>>,
    /// Raised when a `101` is relayed on this HTTP/1 connection: its bytes
    /// are a tunnel's from then on, no longer requests to check. Until
    /// then, an upgrade request is just a request.
    pub switched: Option<Arc<AtomicBool>>,
}

/// What a request turned out to be, for metrics and the access log.
#[derive(Debug, Default)]
struct Served {
    waifu: Option<Arc<WaifuRoute>>,
    instance: Option<Arc<Instance>>,
    request_id: Option<HeaderValue>,
}

/// Timeouts towards waifus, and what to record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpstreamConfig {
    pub connect_timeout: Duration,
    /// Until the waifu's response headers arrive.
    pub response_timeout: Duration,
    /// One access log line per request.
    pub access_log: bool,
}

/// What the plain listener needs to know about HTTPS.
#[derive(Debug)]
pub(crate) struct HttpsInfo {
    /// Answers to HTTP-01 validations.
    pub certs: Arc<Certs>,
    /// Port put in redirects to HTTPS.
    pub port: u16,
}

/// Where ACME HTTP-01 validations ask (RFC 8555 §8.3).
const ACME_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// The proxy's shared state.
#[derive(Debug)]
pub(crate) struct Proxy {
    registry: Arc<Registry>,
    /// `None` when the TLS listener is off: `https://` binds are then
    /// served on the plain listener as before.
    https: Option<HttpsInfo>,
    metrics: Arc<Metrics>,
    access_log: bool,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// Owns upgraded tunnels so shutdown can wait for them.
    tunnels: TaskTracker,
    /// Cancelled when draining is over: closes remaining tunnels.
    hard_stop: CancellationToken,
}

impl Proxy {
    pub(crate) fn new(
        registry: Arc<Registry>,
        config: UpstreamConfig,
        tunnels: TaskTracker,
        hard_stop: CancellationToken,
        https: Option<HttpsInfo>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Proxy {
            registry,
            https,
            metrics,
            access_log: config.access_log,
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
            tunnels,
            hard_stop,
        }
    }

    /// Serves one request from a public listener.
    ///
    /// Everything up to sending is done here, synchronously; the future
    /// returned holds only what waiting for the waifu needs. hyper boxes
    /// and moves this future for every request: an `async fn` taking the
    /// request kept it twice across the wait (an argument is stored as well
    /// as the local it moves to), 2.1 KiB in all, where small blocks are
    /// cheaper to allocate.
    pub(crate) fn handle(
        self: &Arc<Self>,
        req: Request<Option<Incoming>>,
        client: SocketAddr,
        via: &Via,
    ) -> impl Future<Output = Result<Response<ClientBody>, Infallible>> + Send + use<> {
        let started = Instant::now();
        let method = req.method().clone();
        // Boxed: the request's future stays small when the log is off.
        let entry = self
            .access_log
            .then(|| Box::new(access::Entry::begin(&req, client.ip(), started, via.tls)));
        let mut served = Served::default();
        let prepared = self.prepare(req, client, via, &mut served);
        let this = self.clone();
        // One flat block: nested `async fn`s would each keep their own
        // copy of what they were given.
        async move {
            let response = match prepared {
                Ok(Prepared::Send(Exchange {
                    instance,
                    outgoing,
                    upgrade,
                })) => {
                    let sent = upstream::send(&instance, outgoing, this.connect_timeout);
                    let answer = tokio::time::timeout(this.response_timeout, sent).await;
                    this.relay(answer, &instance, upgrade, &served)
                }
                Ok(Prepared::Answer(response)) => Ok(response),
                Err(e) => Err(e),
            };
            let response = response.unwrap_or_else(ProxyError::into_response);
            let status = response.status();
            let stats = match &served.waifu {
                Some(waifu) => waifu.stats.get(),
                None => &this.metrics.unrouted,
            };
            stats.record(&method, status, started.elapsed());
            Ok(match entry {
                None => response.map(access::Logged::off),
                Some(mut entry) => {
                    entry.status = status.as_u16();
                    entry.waifu = served.waifu.map(|w| w.name.clone());
                    entry.instance = served.instance.map(|i| i.upstream.to_string());
                    entry.request_id = served.request_id;
                    response.map(|body| access::Logged::new(body, entry))
                }
            })
        }
    }

    /// Checks, routes and encodes a request: what to send where, or the
    /// answer without a waifu.
    fn prepare(
        &self,
        req: Request<Option<Incoming>>,
        client: SocketAddr,
        via: &Via,
        served: &mut Served,
    ) -> Result<Prepared, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let target_len = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
        if target_len > MAX_TARGET_LEN {
            return Err(ProxyError::TargetTooLong);
        }
        let (host_value, host) = request_authority(&parts, via)?;
        if let Some(https) = &self.https
            && !via.tls
            && let Some(token) = parts.uri.path().strip_prefix(ACME_CHALLENGE_PATH)
            && let Some(answer) = https.certs.http_challenge(token)
        {
            return Ok(Prepared::Answer(challenge_answer(answer)));
        }
        let path = guard::normalize(parts.uri.path()).map_err(ProxyError::Guard)?;
        let table = self.registry.routes();
        let resolved = table.resolve(&host, &path).ok_or(ProxyError::NoRoute)?;
        if guard::reaches_internal(&resolved.path) {
            return Err(ProxyError::Guard(Rejection::Internal));
        }
        if resolved.tls
            && !via.tls
            && let Some(https) = &self.https
        {
            return Err(ProxyError::ToHttps(https_location(
                &host, https.port, &parts.uri,
            )));
        }
        served.waifu = Some(resolved.waifu.clone());
        let instance = resolved.waifu.pick().ok_or(ProxyError::NoHealthy)?.clone();
        if self.access_log {
            served.instance = Some(instance.clone());
        }

        let upgrade =
            websocket::Key::of(&parts.method, parts.version, &parts.headers).and_then(|key| {
                Some(Switch {
                    client: parts.extensions.remove::<OnUpgrade>()?,
                    key,
                    switched: via.switched.clone(),
                })
            });
        let forwarded = Forwarded {
            client: client.ip(),
            proto: if via.tls { "https" } else { "http" },
            host: &host_value,
            prefix: resolved.prefix,
        };
        let (outgoing, request_id) = Outgoing::new(
            parts.method,
            &resolved.path,
            parts.uri.query(),
            &parts.headers,
            body,
            upgrade.is_some(),
            &forwarded,
        );
        if self.access_log {
            served.request_id = Some(request_id.to_value());
        }
        // The target, the Host value and the header values are slices of
        // hyper's read buffer; they all end here, so that buffer is free
        // again while the waifu answers.
        Ok(Prepared::Send(Exchange {
            instance,
            outgoing,
            upgrade,
        }))
    }

    /// The client's response to what the waifu answered (or did not).
    fn relay(
        &self,
        answer: Result<Result<Answer, SendError>, tokio::time::error::Elapsed>,
        instance: &Arc<Instance>,
        upgrade: Option<Switch>,
        served: &Served,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let answer = match answer {
            Err(_) | Ok(Err(SendError::ConnectTimeout)) => return Err(ProxyError::Timeout),
            // The client's body broke off or broke its framing: the
            // exchange with the waifu is dropped (its connection closed)
            // and this is the request's only answer.
            Ok(Err(SendError::RequestBody(e))) => {
                debug!(error = %e, "the request body failed");
                return Err(ProxyError::BadBody);
            }
            Ok(Err(e)) => {
                if matches!(e, SendError::Connect(_)) {
                    health::record(instance, Outcome::Down);
                    if let Some(waifu) = &served.waifu {
                        self.metrics.connect_error(&waifu.name);
                    }
                }
                debug!(instance = %instance.upstream, error = %e, "upstream failed");
                return Err(ProxyError::Upstream);
            }
            Ok(Ok(answer)) => answer,
        };
        match answer {
            Answer::Response(response) => {
                let (mut rparts, rbody) = response.into_parts();
                headers::strip_hop_by_hop(&mut rparts.headers, false);
                Ok(Response::from_parts(rparts, Either::Left(rbody)))
            }
            Answer::Switched {
                response,
                io,
                early,
            } => {
                let switch = upgrade.ok_or(ProxyError::Upstream)?;
                if !switch.key.is_accepted_by(response.headers()) {
                    // Not the handshake we forwarded: its server may still
                    // be reading HTTP, so nothing is relayed, and `io` is
                    // closed here.
                    debug!(instance = %instance.upstream, "a 101 that does not complete the WebSocket handshake");
                    return Err(ProxyError::Upstream);
                }
                if let Some(switched) = &switch.switched {
                    switched.store(true, Ordering::Release);
                }
                let (mut rparts, ()) = response.into_parts();
                headers::strip_hop_by_hop(&mut rparts.headers, true);
                self.tunnel(switch.client, io, early);
                let empty = Either::Right(Full::new(Bytes::new()));
                Ok(Response::from_parts(rparts, empty))
            }
        }
    }

    /// Relays bytes both ways once the client's side has switched protocols
    /// too; `early` is what the waifu sent right after its 101.
    fn tunnel(&self, client_side: OnUpgrade, mut upstream: TcpStream, early: Bytes) {
        let stop = self.hard_stop.clone();
        self.tunnels.spawn(async move {
            let Ok(client_io) = client_side.await else {
                return;
            };
            let mut client_io = TokioIo::new(client_io);
            let relay = async {
                if !early.is_empty() {
                    client_io.write_all(&early).await?;
                }
                tokio::io::copy_bidirectional(&mut client_io, &mut upstream).await
            };
            tokio::select! {
                _ = relay => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

/// `200` with a pending HTTP-01 key authorization.
fn challenge_answer(key_authorization: String) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(key_authorization))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// `https://{host}[:port]{path}[?query]` for a redirect from plain HTTP.
fn https_location(host: &str, port: u16, uri: &http::Uri) -> String {
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    match port {
        443 => format!("https://{host}{target}"),
        port => format!("https://{host}:{port}{target}"),
    }
}

/// The authority a request is routed by, as sent, and its host normalised
/// (lowercase, no port, no trailing dot).
///
/// An absolute-form target's authority wins over `Host`, which a proxy
/// must replace with it (RFC 9112 §3.2.2); HTTP/2 carries it in
/// `:authority`, and a `host` field naming anything else makes the request
/// malformed (RFC 9113 §8.3.1). Over TLS, neither may name another host
/// than the connection was made for.
fn request_authority<'a>(
    req: &'a http::request::Parts,
    via: &Via,
) -> Result<(HeaderValue, Cow<'a, str>), ProxyError> {
    let mut fields = req.headers.get_all(header::HOST).iter();
    let field = fields.next();
    if fields.next().is_some() {
        return Err(ProxyError::BadHost);
    }
    let (value, raw) = match req.uri.authority() {
        Some(authority) => {
            if req.version == Version::HTTP_2
                && let Some(field) = field
                && !same_authority(field.as_bytes(), authority.as_str())
            {
                return Err(if via.tls {
                    ProxyError::Misdirected
                } else {
                    ProxyError::HostMismatch
                });
            }
            let value =
                HeaderValue::from_str(authority.as_str()).map_err(|_| ProxyError::BadHost)?;
            (value, authority.as_str())
        }
        None => {
            let value = field.ok_or(ProxyError::BadHost)?;
            let raw = value.to_str().map_err(|_| ProxyError::BadHost)?;
            (value.clone(), raw)
        }
    };
    let host = normalize_host(raw).ok_or(ProxyError::BadHost)?;
    if let Some(sni) = via.sni.as_deref() {
        // A connection set up for one name must not serve another.
        let named = field.and_then(|f| f.to_str().ok()).and_then(normalize_host);
        if sni != host || named.is_some_and(|named| named != sni) {
            return Err(ProxyError::Misdirected);
        }
    }
    Ok((value, host))
}

/// Whether a `host` field names the same host and port as an authority.
fn same_authority(field: &[u8], authority: &str) -> bool {
    let Ok(field) = std::str::from_utf8(field) else {
        return false;
    };
    normalize_host(field).is_some_and(|h| normalize_host(authority).is_some_and(|a| a == h))
        && port(field) == port(authority)
}

/// The port of an authority, if it names one.
fn port(raw: &str) -> Option<&str> {
    let after_host = match raw.strip_prefix('[') {
        Some(v6) => &v6[v6.find(']')? + 1..],
        None => raw.find(':').map_or("", |i| &raw[i..]),
    };
    after_host.strip_prefix(':').filter(|p| !p.is_empty())
}

fn normalize_host(raw: &str) -> Option<Cow<'_, str>> {
    let host = if raw.starts_with('[') {
        &raw[..=raw.find(']')?]
    } else {
        raw.split_once(':').map_or(raw, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b));
    if host.is_empty() || !valid {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// Every way a proxied request can end without a waifu's answer.
#[derive(Debug)]
enum ProxyError {
    TargetTooLong,
    BadHost,
    /// Over HTTP/2 without TLS: `host` and `:authority` disagree.
    HostMismatch,
    /// The client's request body broke off or broke its framing.
    BadBody,
    Guard(Rejection),
    NoRoute,
    NoHealthy,
    Upstream,
    Timeout,
    /// An `https://` bind asked for over plain HTTP: where to go instead.
    ToHttps(String),
    /// The Host is not the name the TLS connection was made for.
    Misdirected,
}

impl ProxyError {
    fn into_response(self) -> Response<ProxyBody> {
        let mut location = None;
        // What is left of a broken request body cannot be read past.
        let close = matches!(self, ProxyError::BadBody);
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
            message: message.to_owned(),
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
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_locations() {
        let uri: http::Uri = "/a/b?q=1".parse().unwrap();
        assert_eq!(
            https_location("x.test", 443, &uri),
            "https://x.test/a/b?q=1"
        );
        assert_eq!(
            https_location("x.test", 8443, &uri),
            "https://x.test:8443/a/b?q=1"
        );
        let absolute: http::Uri = "http://x.test/p".parse().unwrap();
        assert_eq!(https_location("x.test", 443, &absolute), "https://x.test/p");
    }

    #[test]
    fn authorities_compare_by_host_and_port() {
        let same = [
            ("localhost", "localhost"),
            ("LocalHost", "localhost"),
            ("a.test.", "a.test"),
            ("a.test:8080", "A.test:8080"),
            ("[::1]:80", "[::1]:80"),
        ];
        for (field, authority) in same {
            assert!(
                same_authority(field.as_bytes(), authority),
                "{field} {authority}"
            );
        }
        let different = [
            ("secure.localhost", "localhost"),
            ("localhost:8080", "localhost"),
            ("localhost", "localhost:8080"),
            ("[::1]:80", "[::1]:81"),
            ("[::1]", "[::2]"),
            ("a b", "a b"),
        ];
        for (field, authority) in different {
            assert!(
                !same_authority(field.as_bytes(), authority),
                "{field} {authority}"
            );
        }
        assert_eq!(port("[::1]:8080"), Some("8080"));
        assert_eq!(port("[::1]"), None);
        assert_eq!(port("a:"), None);
        assert_eq!(port("a:1"), Some("1"));
    }

    #[test]
    fn hosts() {
        let cases: &[(&str, Option<&str>)] = &[
            ("localhost", Some("localhost")),
            ("LocalHost:8080", Some("localhost")),
            ("link.waifu.", Some("link.waifu")),
            ("[::1]:8080", Some("[::1]")),
            ("127.0.0.1:1", Some("127.0.0.1")),
            ("", None),
            (":80", None),
            ("a b", None),
            ("a/b", None),
            ("[::1", None),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_host(raw).as_deref(), *want, "{raw:?}");
        }
    }
}
