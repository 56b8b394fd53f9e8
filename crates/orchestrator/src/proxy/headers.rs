//! Header rewriting between the client and the waifu.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) are removed both ways, including
//! every header the `Connection` field names. `Upgrade` and
//! `HTTP2-Settings` never go upstream as the client sent them: only a
//! WebSocket handshake is relayed, and for it the proxy writes
//! `Upgrade: websocket` and `Connection: upgrade` itself
//! ([`super::websocket`]). `Host` is the authority the request was routed
//! by, in its canonical form (RFC 9112 §3.2.2).
//!
//! A client may not pose as a proxy: every field by which one tells an
//! application who the client is, which scheme, host, port, path or
//! certificate it used, or which user an authenticating proxy let in, is
//! dropped ([`poses_as_proxy`]: the `X-Forwarded-*` and `Forwarded` families,
//! `X-Real-IP`, `X-Original-*`, `X-Remote-*`, `X-Client-*`, `Front-End-Https`,
//! `X-Url-Scheme`, CDN and cloud fields, `X-Envoy-*`, `Via`, `Proxy` (the
//! httpoxy field), client certificate fields, identity-aware proxies' user
//! fields, and every field whose name contains `_`, which CGI-style servers
//! read as `X_Forwarded_For`), as Rack, Spring's `ForwardedHeaderFilter`,
//! Werkzeug's `ProxyFix`, Django and Express read several of them. Then the
//! proxy writes its own `X-Forwarded-For`, `-Proto`, `-Host`, `-Prefix` and
//! `X-Real-IP`. `X-Forwarded-For` starts afresh with the peer's address,
//! unless the peer is a trusted proxy ([`super::trusted`]): then the chain
//! it sent is kept, the peer appended, and its `X-Forwarded-Proto` believed.

use std::fmt::Write as _;
use std::net::IpAddr;

use std::borrow::Cow;

use bytes::BytesMut;
use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use waifus_http1::response::ResponseFields;
use waifus_http1::token::{is_field_value, list_elements};

use super::fields::{Fields, name, text};
use super::trace::{self, TraceId};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers from a waifu's response. With
/// `keep_upgrade` (a WebSocket handshake's `101`), `Upgrade` survives and
/// `Connection` is reset to `upgrade`, so the switch can be relayed.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most answers carry none: one look at each name, rather than a hashed
    // removal of every hop-by-hop name.
    if !headers
        .keys()
        .any(|name| is_hop_by_hop(name.as_str().as_bytes()))
    {
        if keep_upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        for name in connection_named(Fields::Map(headers)) {
            if !(keep_upgrade && name == header::UPGRADE) {
                headers.remove(&name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// The same for a waifu's answer other than a switch, its fields where
/// they lie: hop-by-hop ones, `Upgrade` and every one `Connection` names
/// are marked removed.
pub(crate) fn strip_hop_by_hop_fields(fields: &mut ResponseFields) {
    if !fields.iter().any(|(name, _)| is_hop_by_hop(name)) {
        return;
    }
    let named: Vec<HeaderName> = fields
        .get_all(b"connection")
        .flat_map(list_elements)
        .filter_map(|name| HeaderName::from_bytes(name).ok())
        .collect();
    fields.retain(|name, _| {
        !is_hop_by_hop(name) && !named.iter().any(|n| n.as_str().as_bytes() == name)
    });
}

/// Hop-by-hop names (lower case), removed whatever `Connection` says: from
/// answers by [`strip_hop_by_hop`] and [`strip_hop_by_hop_fields`], from requests by [`is_not_forwarded`].
fn is_hop_by_hop(name: &[u8]) -> bool {
    matches!(
        name,
        b"connection"
            | b"upgrade"
            | b"proxy-authenticate"
            | b"proxy-authorization"
            | b"te"
            | b"trailer"
            | b"transfer-encoding"
            | b"keep-alive"
            | b"proxy-connection"
    )
}

/// What the proxy knows about the request that the waifu should be told.
#[derive(Debug)]
pub(crate) struct Forwarded<'a> {
    /// The client: the peer, or the address a trusted proxy named.
    pub client: IpAddr,
    /// The connection's own peer, appended to `X-Forwarded-For`.
    pub peer: IpAddr,
    /// The peer is a trusted proxy: its `X-Forwarded-For` chain is kept.
    pub chain: bool,
    pub proto: &'static str,
    /// The routed authority, canonical.
    pub host: &'a str,
    pub prefix: &'a str,
    /// The public path as checked, and the query: `X-Forwarded-Uri`.
    pub path: &'a str,
    pub query: Option<&'a str>,
}

/// The `X-Request-Id` a request was sent with: the client's when sane,
/// else a new one.
#[derive(Debug)]
pub(crate) enum RequestId<'a> {
    Client(&'a [u8]),
    Minted([u8; 32]),
}

impl RequestId<'_> {
    /// An owned copy (it does not keep the client's request buffer alive).
    pub(crate) fn to_value(&self) -> HeaderValue {
        let bytes = match self {
            RequestId::Client(v) => *v,
            RequestId::Minted(id) => &id[..],
        };
        HeaderValue::from_bytes(bytes).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

/// Writes the request's fields as the waifu gets them, as `name: value`
/// lines into `head`, every name in lower case: the client's, less
/// hop-by-hop fields, `Expect`, `Content-Length` (framing is the caller's),
/// `Host` and every field a client could forge (see the module's list);
/// then the proxy's own `X-Forwarded-*`, `Host`, `X-Real-IP`,
/// `X-Request-Id` unless the client's is sane, and with `websocket` the
/// handshake's `Upgrade` and `Connection`.
///
/// Written straight into the request head rather than edited in a header
/// map first: no allocation and no hashing per field.
pub(crate) fn write_request_fields<'h>(
    head: &mut BytesMut,
    fields: Fields<'h>,
    websocket: bool,
    fwd: &Forwarded<'_>,
) -> (RequestId<'h>, TraceId) {
    let seen = Seen::of(fields);
    let named = if seen.connection {
        connection_named(fields)
    } else {
        Vec::new()
    };
    let is_named = |name: &[u8]| named.iter().any(|n| n.as_str().as_bytes() == name);
    let kept_id = seen
        .request_id
        .filter(|v| is_sane_request_id(v) && !is_named(b"x-request-id"));
    let mut cookies_written = false;
    let mut id_written = false;
    let mut lower = [0u8; LOWER_BUF];
    for (name, value) in fields.each() {
        let name = lowercase(name, &mut lower);
        let name = &*name;
        if is_not_forwarded(name) || is_named(name) {
            continue;
        }
        match name {
            b"cookie" => {
                // HTTP/2 sends each cookie as a field of its own; an
                // HTTP/1.1 server expects one (RFC 9113 §8.2.3, RFC 6265
                // §5.4).
                if !cookies_written {
                    write_cookies(head, fields);
                    cookies_written = true;
                }
            }
            // Written below: exactly one traceparent, valid.
            b"traceparent" | b"tracestate" => {}
            b"x-request-id" => {
                // Only the first value, and only if sane.
                if kept_id.is_some() && !id_written {
                    write_field(head, name, value);
                    id_written = true;
                }
            }
            _ => write_field(head, name, value),
        }
    }
    // X-Forwarded-For: the peer; after the chain a trusted proxy sent.
    head.extend_from_slice(b"x-forwarded-for: ");
    if fwd.chain && !is_named(b"x-forwarded-for") {
        for value in fields.all(&name::X_FORWARDED_FOR) {
            if text(value).is_some() {
                head.extend_from_slice(value);
                head.extend_from_slice(b", ");
            }
        }
    }
    let peer = fwd.peer.to_canonical();
    let peer_at = head.len();
    write_ip(head, peer);
    let peer_text = peer_at..head.len();
    head.extend_from_slice(b"\r\n");
    let client = fwd.client.to_canonical();
    write_field(head, b"x-forwarded-proto", fwd.proto.as_bytes());
    write_field(head, b"x-forwarded-host", fwd.host.as_bytes());
    if !fwd.prefix.is_empty() && is_field_value(fwd.prefix) {
        write_field(head, b"x-forwarded-prefix", fwd.prefix.as_bytes());
    }
    if is_field_value(fwd.path) && fwd.query.is_none_or(is_field_value) {
        head.extend_from_slice(b"x-forwarded-uri: ");
        head.extend_from_slice(fwd.path.as_bytes());
        if let Some(query) = fwd.query {
            head.extend_from_slice(b"?");
            head.extend_from_slice(query.as_bytes());
        }
        head.extend_from_slice(b"\r\n");
    }
    write_field(head, b"host", fwd.host.as_bytes());
    head.extend_from_slice(b"x-real-ip: ");
    if client == peer {
        // Usually the peer itself: its text is copied, not written again.
        copy_within_end(head, peer_text);
    } else {
        write_ip(head, client);
    }
    head.extend_from_slice(b"\r\n");
    if websocket {
        write_field(head, b"upgrade", b"websocket");
        write_field(head, b"connection", b"upgrade");
    }
    let trace = write_trace_context(head, fields, &seen, &is_named);
    let id = match kept_id {
        Some(id) => RequestId::Client(id),
        None => {
            let id = new_request_id();
            write_field(head, b"x-request-id", &id);
            RequestId::Minted(id)
        }
    };
    (id, trace)
}

/// Names up to this long are lowered on the stack.
const LOWER_BUF: usize = 64;

/// `name` in lower case: itself when it is already, else a copy (in `buf`
/// when it fits).
fn lowercase<'n>(name: &'n [u8], buf: &'n mut [u8; LOWER_BUF]) -> Cow<'n, [u8]> {
    if !name.iter().any(u8::is_ascii_uppercase) {
        return Cow::Borrowed(name);
    }
    match buf.get_mut(..name.len()) {
        Some(lower) => {
            lower.copy_from_slice(name);
            lower.make_ascii_lowercase();
            Cow::Borrowed(lower)
        }
        None => Cow::Owned(name.to_ascii_lowercase()),
    }
}

/// The client's `traceparent` and `tracestate` if it sent one valid
/// `traceparent` (and named neither as hop-by-hop), else a new
/// `traceparent` alone; the trace id sent.
fn write_trace_context(
    head: &mut BytesMut,
    fields: Fields<'_>,
    seen: &Seen<'_>,
    is_named: &impl Fn(&[u8]) -> bool,
) -> TraceId {
    let kept = match seen.traceparent {
        Some((v, 1)) if trace::is_valid(v) && !is_named(b"traceparent") => Some(v),
        _ => None,
    };
    match kept {
        Some(v) => {
            write_field(head, b"traceparent", v);
            if seen.tracestate && !is_named(b"tracestate") {
                for state in fields.all(&name::TRACESTATE) {
                    write_field(head, b"tracestate", state);
                }
            }
            trace::trace_id(v)
        }
        None => {
            let v = trace::generate();
            write_field(head, b"traceparent", &v);
            trace::trace_id(&v)
        }
    }
}

/// What [`write_request_fields`] needs to know before it writes the first
/// field, gathered in one pass over the fields rather than a hashed lookup
/// for each name.
struct Seen<'h> {
    /// A `Connection` field is present (it may name more hop-by-hop fields).
    connection: bool,
    /// The first `X-Request-Id`.
    request_id: Option<&'h [u8]>,
    /// The first `traceparent` and how many there are.
    traceparent: Option<(&'h [u8], usize)>,
    tracestate: bool,
}

impl<'h> Seen<'h> {
    fn of(fields: Fields<'h>) -> Self {
        let mut seen = Seen {
            connection: false,
            request_id: None,
            traceparent: None,
            tracestate: false,
        };
        for (name, value) in fields.each() {
            if name.eq_ignore_ascii_case(b"connection") {
                seen.connection = true;
            } else if name.eq_ignore_ascii_case(b"x-request-id") {
                seen.request_id.get_or_insert(value);
            } else if name.eq_ignore_ascii_case(b"traceparent") {
                match &mut seen.traceparent {
                    Some((_, n)) => *n += 1,
                    None => seen.traceparent = Some((value, 1)),
                }
            } else if name.eq_ignore_ascii_case(b"tracestate") {
                seen.tracestate = true;
            }
        }
        seen
    }
}

/// Every `Cookie` field as one, joined with `; `.
fn write_cookies(head: &mut BytesMut, fields: Fields<'_>) {
    head.extend_from_slice(b"cookie: ");
    for (i, value) in fields.all(&name::COOKIE).enumerate() {
        if i > 0 {
            head.extend_from_slice(b"; ");
        }
        head.extend_from_slice(value);
    }
    head.extend_from_slice(b"\r\n");
}

/// The fields the `Connection` header names: hop-by-hop too.
fn connection_named(fields: Fields<'_>) -> Vec<HeaderName> {
    fields
        .all(&name::CONNECTION)
        .flat_map(list_elements)
        .filter_map(|name| HeaderName::from_bytes(name).ok())
        .collect()
}

/// Appends a copy of `head[range]` (at most an address's text long).
fn copy_within_end(head: &mut BytesMut, range: std::ops::Range<usize>) {
    let mut text = [0u8; 64];
    let len = range.len().min(text.len());
    text[..len].copy_from_slice(&head[range.start..range.start + len]);
    head.extend_from_slice(&text[..len]);
}

/// An address as `Display` writes it; IPv4 without the formatting
/// machinery, which cost as much as the rest of this header's rewrite.
fn write_ip(head: &mut BytesMut, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        let _ = write!(head, "{ip}");
        return;
    };
    // Gathered on the stack and copied once: one capacity check, not one
    // per digit.
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    head.extend_from_slice(&text[..len]);
}

/// One `name: value` line.
pub(crate) fn write_field(head: &mut BytesMut, name: &[u8], value: &[u8]) {
    head.reserve(name.len() + value.len() + 4);
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// Client fields that never reach a waifu as sent: hop-by-hop ones
/// (`Upgrade` and `HTTP2-Settings` included), framing (the proxy re-frames),
/// `Host`, and every field by which a client could pose as a proxy.
fn is_not_forwarded(name: &[u8]) -> bool {
    is_hop_by_hop(name)
        || matches!(
            name,
            b"expect" | b"content-length" | b"host" | b"http2-settings"
        )
        || poses_as_proxy(name)
}

/// Prefixes of the names [`poses_as_proxy`] refuses.
const PROXY_PREFIXES: &[&str] = &[
    // The de facto and the standard families (Rack, Spring, Werkzeug,
    // Django, Express, Tomcat's RemoteIpValve, RFC 7239).
    "x-forwarded",
    "forwarded",
    "x-original-",
    "x-real-",
    "x-remote-",
    "x-client-",
    "x-cluster-client-",
    "x-proxyuser-",
    "x-proxy-",
    "x-envoy-",
    // TLS and client certificates as terminating proxies pass them.
    "x-ssl",
    "ssl-",
    "x-arr-",
    "x-client-cert",
    // CDNs and clouds.
    "cf-",
    "true-client-",
    "fastly-",
    "akamai-",
    "x-akamai-",
    "cloudfront-",
    "x-appengine-",
    "x-amzn-oidc-",
    "x-goog-authenticated-user-",
    "x-goog-iap-",
    "x-ms-client-principal",
    // Users let in by an authenticating proxy (oauth2-proxy, Grafana's
    // auth proxy, Apache's REMOTE_USER).
    "x-auth-request-",
    "x-webauth-",
    "remote-user",
];

/// Whole names [`poses_as_proxy`] refuses.
const PROXY_NAMES: &[&str] = &[
    "client-ip",
    "front-end-https",
    "x-url-scheme",
    "x-scheme",
    "x-host",
    "x-http-host-override",
    "x-rewrite-url",
    "x-originating-ip",
    "x-client-ip",
    "via",
    "proxy",
];

/// Whether a (lowercase) field name is one by which a proxy tells an
/// application about the client, the connection or the user; from a
/// client, each is a lie a waifu might believe. By family, so new members
/// (`X-Forwarded-Anything`) are covered too.
pub(crate) fn poses_as_proxy(name: &[u8]) -> bool {
    // Most names start with a letter no listed name starts with.
    let listed = name.first().is_some_and(|b| POSSIBLE_FIRST.contains(b));
    name.contains(&b'_')
        || listed
            && (PROXY_NAMES.iter().any(|n| n.as_bytes() == name)
                || PROXY_PREFIXES
                    .iter()
                    .any(|p| name.starts_with(p.as_bytes())))
}

/// The first letters of the names and prefixes [`poses_as_proxy`] lists
/// (a unit test keeps the two in step).
const POSSIBLE_FIRST: &[u8] = b"acfprstvx";

fn is_sane_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len()) && id.iter().all(|b| b.is_ascii_graphic())
}

fn new_request_id() -> [u8; 32] {
    let mut id = [0u8; 32];
    trace::hex_into(&mut id, fastrand::u128(..));
    id
}

#[cfg(test)]
mod tests;
