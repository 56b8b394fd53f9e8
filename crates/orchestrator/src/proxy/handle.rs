//! One public request, from its head to the waifu's answer: checked,
//! routed, encoded, sent, relayed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderValue};
use http_body_util::{Either, Full};
use hyper::upgrade::OnUpgrade;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::access;
use super::answered::Answered;
use super::body::{ClientBody, ProxyBody};
use super::compress::{self, Compressed};
use super::error::ProxyError;
use super::fields::{ClientRequest, Fields, name, text};
use super::guard::{self, Rejection};
use super::headers::{self, Forwarded, write_request_fields};
use super::host::{https_location, request_authority};
use super::limits;

mod relay;
use super::trusted::TrustedProxies;
use super::via::Via;
use super::websocket;
use crate::routing::stats::AllStats;
use crate::routing::switch::Found;
use crate::routing::{Busy, Instance, Outcome, Routes, WaifuRoute};
use crate::tls::Certs;
use crate::upstream::{self, Answer, Outgoing, Reply, SendError, Unanswered};

/// What one exchange with a waifu came to.
type Attempt = Result<Result<Answer, SendError>, tokio::time::error::Elapsed>;

/// Longest request target accepted (path and query), in bytes; longer is 414.
pub(crate) const MAX_TARGET_LEN: usize = 8 * 1024;

/// A request checked, routed and encoded, or answered without a waifu.
enum Prepared {
    Send(Exchange),
    /// Boxed: rare (an ACME validation), and this is part of every
    /// request's future.
    Answer(Box<Response<ProxyBody>>),
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

/// What a request turned out to be, for metrics and the access log.
#[derive(Debug, Default)]
struct Served {
    waifu: Option<Arc<WaifuRoute>>,
    instance: Option<Arc<Instance>>,
    request_id: Option<HeaderValue>,
    trace_id: Option<super::trace::TraceId>,
    /// During a rollout: whom it went to, and the cookie of a client
    /// assigned a side now. Boxed: nothing when no rollout runs.
    rollout: Option<Box<RolloutServed>>,
}

#[derive(Debug)]
struct RolloutServed {
    instance: Arc<Instance>,
    set_cookie: Option<HeaderValue>,
}

/// Timeouts towards waifus, what to record, and what to add to answers.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamConfig {
    pub connect_timeout: Duration,
    /// Until the waifu's response headers arrive.
    pub response_timeout: Duration,
    /// `MAX_BODY_SIZE`: the largest request body passed on.
    pub max_body_size: u64,
    /// `COMPRESSION=on`: responses compressed as the client accepts.
    pub compression: bool,
    /// One access log line per request.
    pub access_log: bool,
    /// `HSTS`: the `Strict-Transport-Security` value of answers over TLS.
    pub hsts: Option<HeaderValue>,
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
    routes: Routes,
    /// `None` when the TLS listener is off: `https://` binds are then
    /// served on the plain listener as before.
    https: Option<HttpsInfo>,
    /// Counts requests that matched no waifu (each waifu's own counters
    /// live with its route, and are known here once made).
    stats: Arc<AllStats>,
    access_log: bool,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// `MAX_BODY_SIZE`.
    max_body_size: u64,
    /// `COMPRESSION=on`.
    compression: bool,
    /// Owns upgraded tunnels so shutdown can wait for them.
    tunnels: TaskTracker,
    /// Cancelled when draining is over: closes remaining tunnels.
    hard_stop: CancellationToken,
    /// Load balancers whose `X-Forwarded-For` is believed.
    trusted: TrustedProxies,
    /// `Strict-Transport-Security` for answers over TLS that carry none.
    hsts: Option<HeaderValue>,
}

impl Proxy {
    pub(crate) fn new(
        routes: Routes,
        config: UpstreamConfig,
        tunnels: TaskTracker,
        hard_stop: CancellationToken,
        https: Option<HttpsInfo>,
        stats: Arc<AllStats>,
        trusted: TrustedProxies,
    ) -> Self {
        Proxy {
            routes,
            https,
            stats,
            access_log: config.access_log,
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
            max_body_size: config.max_body_size,
            compression: config.compression,
            tunnels,
            hard_stop,
            trusted,
            hsts: config.hsts,
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
        req: ClientRequest<'_>,
        client: SocketAddr,
        via: &Via,
    ) -> impl Future<Output = Result<Answered<ClientBody>, Infallible>> + Send + use<> {
        let started = Instant::now();
        let method = req.method.clone();
        // Boxed: the request's future stays small when the log is off.
        let entry = self.access_log.then(|| {
            let who = self.trusted.client(client.ip(), forwarded_for(req.fields));
            Box::new(access::Entry::begin(&req, who, started, via.tls))
        });
        let mut served = Served::default();
        // Read before the request is taken apart; nothing when off.
        let coding = self
            .compression
            .then(|| compress::choose(req.fields))
            .flatten();
        // Only over TLS (RFC 6797 §7.2: never on plain HTTP).
        let hsts = via.tls.then(|| self.hsts.clone()).flatten();
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
                })) => match this.exchange(instance, outgoing, &mut served).await {
                    Ok((answer, busy)) => this.relay(answer, busy, upgrade, &served),
                    Err(e) => Err(e),
                },
                Ok(Prepared::Answer(response)) => Ok(Answered::own(*response)),
                Err(e) => Err(e),
            };
            let mut answered =
                response.unwrap_or_else(|e| Answered::own(ProxyError::into_response(e)));
            if let Some(hsts) = hsts
                && !answered.contains(&header::STRICT_TRANSPORT_SECURITY)
            {
                answered
                    .response
                    .headers_mut()
                    .insert(header::STRICT_TRANSPORT_SECURITY, hsts);
            }
            let status = answered.response.status();
            let stats = match &served.waifu {
                Some(waifu) => waifu.stats().get(&this.stats),
                None => &this.stats.unrouted,
            };
            stats.record(&method, status, started.elapsed());
            if let Some(rollout) = served.rollout.take() {
                rollout
                    .instance
                    .rollout_stats
                    .get()
                    .record(status, started.elapsed());
                if let Some(cookie) = rollout.set_cookie {
                    answered
                        .response
                        .headers_mut()
                        .append(header::SET_COOKIE, cookie);
                }
            }
            // Compression reads and edits the fields: it takes them whole.
            let response = if this.compression {
                let whole = answered.into_http();
                Answered::own(compress::apply(whole, coding, method == http::Method::HEAD))
            } else {
                answered.map(Compressed::plain)
            };
            Ok(match entry {
                None => response.map(access::Logged::off),
                Some(mut entry) => {
                    entry.status = status.as_u16();
                    entry.waifu = served.waifu.map(|w| w.name.clone());
                    entry.instance = served.instance.map(|i| i.upstream.to_string());
                    entry.request_id = served.request_id;
                    entry.trace_id = served.trace_id;
                    response.map(|body| access::Logged::new(body, entry))
                }
            })
        }
    }

    /// Checks, routes and encodes a request: what to send where, or the
    /// answer without a waifu.
    fn prepare(
        &self,
        req: ClientRequest<'_>,
        client: SocketAddr,
        via: &Via,
        served: &mut Served,
    ) -> Result<Prepared, ProxyError> {
        if req.method == http::Method::CONNECT {
            return Err(ProxyError::Connect);
        }
        if req.target_len() > MAX_TARGET_LEN {
            return Err(ProxyError::TargetTooLong);
        }
        let (host_value, host) = request_authority(&req, via)?;
        if let Some(https) = &self.https
            && !via.tls
            && let Some(token) = req.path.strip_prefix(ACME_CHALLENGE_PATH)
            && let Some(answer) = https.certs.http_challenge(token)
        {
            return Ok(Prepared::Answer(Box::new(challenge_answer(answer))));
        }
        let path = guard::normalize(req.path).map_err(ProxyError::Guard)?;
        let table = self.routes.load();
        let Some(resolved) = table.resolve(&host, &path) else {
            return Err(if table.serves_host(&host) {
                ProxyError::NoRoute
            } else {
                ProxyError::UnknownHost
            });
        };
        if guard::reaches_internal(&resolved.path) {
            return Err(ProxyError::Guard(Rejection::Internal));
        }
        if resolved.tls
            && !via.tls
            && let Some(https) = &self.https
        {
            return Err(ProxyError::ToHttps(https_location(
                &host, https.port, req.path, req.query,
            )));
        }
        served.waifu = Some(resolved.waifu.clone());
        // During a rollout a client keeps the side its cookie names; a new
        // one is given one by the share, and the cookie.
        let (picked, assigned) = match &resolved.waifu.rollout {
            None => (resolved.waifu.pick(), None),
            Some(rollout) => {
                match rollout.side_of(req.fields.all(&name::COOKIE).filter_map(text)) {
                    Some(side) => (resolved.waifu.pick_side(side), None),
                    None => {
                        let side = rollout.assign(fastrand::u8(0..100));
                        let cookie = rollout_cookie(rollout, side, resolved.prefix);
                        (resolved.waifu.pick_side(side), cookie)
                    }
                }
            }
        };
        let Some(instance) = picked else {
            // In maintenance with no instance up (the usual reason for it):
            // the operator's answer, not an outage.
            if let Found::Maintenance {
                message,
                retry_after,
            } = resolved.waifu.switch().find()
            {
                return Err(ProxyError::Maintenance(message, retry_after));
            }
            return Err(ProxyError::NoHealthy);
        };
        let instance = instance.clone();
        if resolved.waifu.rollout.is_some() {
            served.rollout = Some(Box::new(RolloutServed {
                instance: instance.clone(),
                set_cookie: assigned,
            }));
        }
        let max_body = limits::max_body(&instance, self.max_body_size);
        if limits::declared_over(req.body.as_ref(), max_body) {
            return Err(ProxyError::BodyTooLarge);
        }
        if self.access_log {
            served.instance = Some(instance.clone());
        }

        let ClientRequest {
            method,
            version,
            query,
            fields,
            body,
            upgrade,
            ..
        } = req;
        // Only a connection that can be switched is looked at for a
        // handshake (never one on the fast path, which hands upgrades off).
        let upgrade = upgrade.and_then(|client| {
            Some(Switch {
                key: websocket::Key::of(&method, version, fields)?,
                client,
                switched: via.switched.clone(),
            })
        });
        let peer = client.ip();
        let chain = self.trusted.contains(peer);
        let forwarded = Forwarded {
            client: if chain {
                self.trusted.client(peer, forwarded_for(fields))
            } else {
                peer
            },
            peer,
            chain,
            proto: match (chain, via.tls) {
                (true, false) => trusted_proto(fields).unwrap_or("http"),
                (_, true) => "https",
                (false, false) => "http",
            },
            host: &host_value,
            prefix: resolved.prefix,
            path: &path,
            query,
        };
        let websocket = upgrade.is_some();
        let had_length = fields.contains(&name::CONTENT_LENGTH);
        let (mut outgoing, (request_id, trace_id)) = Outgoing::new(
            method,
            &resolved.path,
            query,
            had_length,
            body,
            websocket,
            |head| write_request_fields(head, fields, websocket, &forwarded),
        );
        outgoing.limit_body(max_body);
        if self.access_log {
            served.request_id = Some(request_id.to_value());
            served.trace_id = Some(trace_id);
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

    /// Sends the request and waits for the response head. A request that
    /// could not be written to its instance at all (no connection, or a
    /// socket that failed before taking a byte) goes to another healthy
    /// instance, whatever its method: it cannot have done anything yet.
    /// Returns what came of it, counted as in flight to the last instance
    /// tried while the returned [`Busy`] lives (a response body holds it to
    /// its end).
    ///
    /// A waifu that is paused holds the request here, before it is counted
    /// in flight, until it opens (or the pause's bound: 503); one in
    /// maintenance answers 503. The switch is read again once the request
    /// counts as in flight, so a pause that came in between is never
    /// missed: either the pause sees the request in flight and waits for
    /// it, or the request sees the pause and waits.
    async fn exchange(
        &self,
        mut instance: Arc<Instance>,
        mut outgoing: Outgoing,
        served: &mut Served,
    ) -> Result<(Attempt, Arc<Busy>), ProxyError> {
        let mut tried: Vec<Arc<Instance>> = Vec::new();
        loop {
            if let Some(waifu) = &served.waifu
                && !waifu.switch().is_open()
            {
                match waifu.switch().find() {
                    Found::Open => {}
                    Found::Maintenance {
                        message,
                        retry_after,
                    } => return Err(ProxyError::Maintenance(message, retry_after)),
                    Found::Paused(max_wait) => {
                        if !waifu.switch().wait_open(max_wait).await {
                            return Err(match waifu.switch().find() {
                                Found::Maintenance {
                                    message,
                                    retry_after,
                                } => ProxyError::Maintenance(message, retry_after),
                                _ => ProxyError::Paused,
                            });
                        }
                        // Instances may have come and gone meanwhile.
                        instance = waifu.pick().ok_or(ProxyError::NoHealthy)?.clone();
                        if self.access_log {
                            served.instance = Some(instance.clone());
                        }
                    }
                }
            }
            let Some(busy) = limits::enter(instance.clone()) else {
                // At its limit: another healthy instance with room, or 503
                // at once (never a queue).
                tried.push(instance);
                let next = served
                    .waifu
                    .as_ref()
                    .and_then(|waifu| waifu.pick_except(&tried).cloned());
                instance = next.ok_or(ProxyError::Overloaded)?;
                continue;
            };
            if let Some(waifu) = &served.waifu
                && !waifu.switch().is_open()
            {
                instance = busy.instance().clone();
                drop(busy);
                continue;
            }
            let sent = upstream::try_send(&busy, outgoing, self.connect_timeout);
            let timeout = limits::response_timeout(busy.instance(), self.response_timeout);
            let answer = tokio::time::timeout(timeout, sent).await;
            let (error, unsent) = match answer {
                Ok(Err(Unanswered {
                    error,
                    unsent: Some(unsent),
                })) => (error, unsent),
                Ok(Ok(answer)) => return Ok((Ok(Ok(answer)), busy)),
                Ok(Err(u)) => return Ok((Ok(Err(u.error)), busy)),
                Err(elapsed) => return Ok((Err(elapsed), busy)),
            };
            let failed = busy.instance().clone();
            let next = served.waifu.as_ref().and_then(|waifu| {
                tried.push(failed.clone());
                waifu.pick_except(&tried).cloned()
            });
            let Some(next) = next else {
                return Ok((Ok(Err(error)), busy));
            };
            self.unreachable(&failed, &error, served);
            debug!(from = %failed.upstream, to = %next.upstream, error = %error, "request not sent; trying another instance");
            if self.access_log {
                served.instance = Some(next.clone());
            }
            instance = next;
            outgoing = unsent;
        }
    }

    /// Records a failed connection to `instance`: it is down.
    fn unreachable(&self, instance: &Instance, error: &SendError, served: &Served) {
        if matches!(error, SendError::Connect(_)) {
            instance.record(Outcome::Down);
            if let Some(waifu) = &served.waifu {
                waifu.stats().get(&self.stats).connect_error();
                if waifu.rollout.is_some() {
                    instance.rollout_stats.get().connect_error();
                }
            }
        }
    }
}

/// The `X-Forwarded-For` values, for a trusted proxy's chain.
fn forwarded_for(fields: Fields<'_>) -> impl DoubleEndedIterator<Item = &[u8]> {
    fields.all(&name::X_FORWARDED_FOR)
}

/// The scheme a trusted proxy says the client used.
fn trusted_proto(fields: Fields<'_>) -> Option<&'static str> {
    match fields.first(&name::X_FORWARDED_PROTO)? {
        b"https" => Some("https"),
        b"http" => Some("http"),
        _ => None,
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

/// The `Set-Cookie` value that keeps a client on `side` of `rollout`, for
/// the path it reached the waifu under (`/{name}`, a bind's prefix, or
/// `/`).
fn rollout_cookie(
    rollout: &crate::routing::rollout::RolloutRoute,
    side: crate::routing::rollout::Side,
    prefix: &str,
) -> Option<HeaderValue> {
    let path = if prefix.is_empty() { "/" } else { prefix };
    HeaderValue::from_str(&format!(
        "{}={}; Path={path}; HttpOnly; SameSite=Lax",
        rollout.cookie_name(),
        rollout.cookie_value(side)
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    /// What every request moves around (returned, awaited, stored in its
    /// future) stays small: a rare part (a compressor, an upload, an ACME
    /// answer) is boxed, not carried inline by every request. Before they
    /// were boxed: 472, 312 and 312 bytes.
    #[test]
    fn what_each_request_moves_stays_small() {
        assert!(size_of::<http::Response<super::ClientBody>>() <= 256);
        // The waifu's fields where they lie: 64 bytes beside it.
        assert!(size_of::<super::Answered<super::ClientBody>>() <= 320);
        assert!(size_of::<super::Prepared>() <= 128);
        assert!(size_of::<super::Attempt>() <= 232);
    }
}
