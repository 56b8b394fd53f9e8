//! Header rewriting between the client and the waifu.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) are removed both ways, including
//! every header the `Connection` field names. `Upgrade` and
//! `HTTP2-Settings` never go upstream as the client sent them: only a
//! WebSocket handshake is relayed, and for it the proxy writes
//! `Upgrade: websocket` and `Connection: upgrade` itself
//! ([`super::websocket`]). The `X-Forwarded-*` family, `X-Real-IP` and
//! `Host` are written by us: a client's `X-Forwarded-Proto/Host/Prefix` and
//! `X-Real-IP` are replaced, never trusted; `X-Forwarded-For` is appended
//! to; `Host` is the authority the request was routed by (RFC 9112 §3.2.2).
//! Dropped outright, because a waifu that trusts them could be told another
//! path, origin or client address: `Forwarded`, `X-Original-URL`,
//! `X-Rewrite-URL`, `True-Client-IP`, `X-Client-IP`, `Client-IP`,
//! `X-Cluster-Client-IP`, `CF-Connecting-IP`, `Fastly-Client-IP`,
//! `X-Originating-IP`, and every field whose name contains `_` (CGI-style
//! servers read `X_Forwarded_For` and `Transfer_Encoding` as the real
//! thing; nginx drops them by default too).

use std::fmt::Write as _;
use std::net::IpAddr;

use bytes::BytesMut;
use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers from a waifu's response. With
/// `keep_upgrade` (a WebSocket handshake's `101`), `Upgrade` survives and
/// `Connection` is reset to `upgrade`, so the switch can be relayed.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        for name in connection_named(headers) {
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

/// What the proxy knows about the request that the waifu should be told.
#[derive(Debug)]
pub(crate) struct Forwarded<'a> {
    pub client: IpAddr,
    pub proto: &'static str,
    pub host: &'a HeaderValue,
    pub prefix: &'a str,
}

/// The `X-Request-Id` a request was sent with: the client's when sane,
/// else a new one.
#[derive(Debug)]
pub(crate) enum RequestId<'a> {
    Client(&'a HeaderValue),
    Minted([u8; 32]),
}

impl RequestId<'_> {
    /// An owned copy (it does not keep the client's request buffer alive).
    pub(crate) fn to_value(&self) -> HeaderValue {
        let bytes = match self {
            RequestId::Client(v) => v.as_bytes(),
            RequestId::Minted(id) => id,
        };
        HeaderValue::from_bytes(bytes).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

/// Writes the request's fields as the waifu gets them, as `name: value`
/// lines into `head`: the client's, less hop-by-hop fields, `Expect`,
/// `Content-Length` (framing is the caller's), `Host` and every field a
/// client could forge (see the module's list); then the proxy's own
/// `X-Forwarded-*`, `Host`, `X-Real-IP`, `X-Request-Id` unless the
/// client's is sane, and with `websocket` the handshake's `Upgrade` and
/// `Connection`.
///
/// Written straight into the request head rather than edited in the header
/// map first: no allocation and no hashing per field.
pub(crate) fn write_request_fields<'h>(
    head: &mut BytesMut,
    headers: &'h HeaderMap,
    websocket: bool,
    fwd: &Forwarded<'_>,
) -> RequestId<'h> {
    let named = connection_named(headers);
    let kept_id = headers
        .get(&X_REQUEST_ID)
        .filter(|v| is_sane_request_id(v.as_bytes()) && !named.contains(&X_REQUEST_ID));
    let mut prior_for = false;
    for (name, value) in headers {
        if is_not_forwarded(name) || named.contains(name) {
            continue;
        }
        if *name == X_FORWARDED_FOR {
            prior_for = true;
            continue;
        }
        if *name == X_REQUEST_ID {
            // Only the first value, and only if sane.
            if kept_id.is_some_and(|kept| std::ptr::eq(kept, value)) {
                write_field(head, name.as_str().as_bytes(), value.as_bytes());
            }
            continue;
        }
        write_field(head, name.as_str().as_bytes(), value.as_bytes());
    }
    // X-Forwarded-For is appended to: the client may sit behind proxies.
    head.extend_from_slice(b"x-forwarded-for: ");
    if prior_for {
        for value in headers.get_all(&X_FORWARDED_FOR) {
            if value.to_str().is_ok() {
                head.extend_from_slice(value.as_bytes());
                head.extend_from_slice(b", ");
            }
        }
    }
    let client = fwd.client.to_canonical();
    write_ip(head, client);
    head.extend_from_slice(b"\r\n");
    write_field(head, b"x-forwarded-proto", fwd.proto.as_bytes());
    write_field(head, b"x-forwarded-host", fwd.host.as_bytes());
    if !fwd.prefix.is_empty() && is_field_value(fwd.prefix) {
        write_field(head, b"x-forwarded-prefix", fwd.prefix.as_bytes());
    }
    write_field(head, b"host", fwd.host.as_bytes());
    head.extend_from_slice(b"x-real-ip: ");
    write_ip(head, client);
    head.extend_from_slice(b"\r\n");
    if websocket {
        write_field(head, b"upgrade", b"websocket");
        write_field(head, b"connection", b"upgrade");
    }
    match kept_id {
        Some(id) => RequestId::Client(id),
        None => {
            let id = new_request_id();
            write_field(head, b"x-request-id", &id);
            RequestId::Minted(id)
        }
    }
}

/// The fields the `Connection` header names: hop-by-hop too.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// Whether `HeaderValue` would take `s` (checked without building one,
/// which copies).
fn is_field_value(s: &str) -> bool {
    s.bytes().all(|b| (b >= 0x20 && b != 0x7f) || b == b'\t')
}

/// An address as `Display` writes it; IPv4 without the formatting
/// machinery, which cost as much as the rest of this header's rewrite.
fn write_ip(head: &mut BytesMut, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        let _ = write!(head, "{ip}");
        return;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            head.extend_from_slice(b".");
        }
        if octet >= 100 {
            head.extend_from_slice(&[b'0' + octet / 100]);
        }
        if octet >= 10 {
            head.extend_from_slice(&[b'0' + octet / 10 % 10]);
        }
        head.extend_from_slice(&[b'0' + octet % 10]);
    }
}

/// One `name: value` line.
pub(crate) fn write_field(head: &mut BytesMut, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// Client fields that never reach a waifu as sent: hop-by-hop ones
/// (`Upgrade` and `HTTP2-Settings` included), framing (the proxy re-frames),
/// `Host` and the forwarding fields (the proxy writes its own), and fields a
/// waifu could take for a trusted client address, path or origin.
fn is_not_forwarded(name: &HeaderName) -> bool {
    if *name == header::CONNECTION
        || *name == header::UPGRADE
        || *name == header::PROXY_AUTHENTICATE
        || *name == header::PROXY_AUTHORIZATION
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::TRANSFER_ENCODING
        || *name == header::EXPECT
        || *name == header::CONTENT_LENGTH
        || *name == header::HOST
        || *name == header::FORWARDED
    {
        return true;
    }
    matches!(
        name.as_str(),
        "keep-alive"
            | "proxy-connection"
            | "http2-settings"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "x-forwarded-prefix"
            | "x-real-ip"
            | "x-original-url"
            | "x-rewrite-url"
            | "true-client-ip"
            | "x-client-ip"
            | "client-ip"
            | "x-cluster-client-ip"
            | "cf-connecting-ip"
            | "fastly-client-ip"
            | "x-originating-ip"
    ) || name.as_str().contains('_')
}

fn is_sane_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len()) && id.iter().all(|b| b.is_ascii_graphic())
}

fn new_request_id() -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut id = [0u8; 32];
    for b in id.iter_mut() {
        *b = HEX[(n & 15) as usize];
        n >>= 4;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_values_are_judged_as_header_value_judges_them() {
        for b in 0..=255u8 {
            let s = [b'a', b, b'z'];
            let Ok(s) = std::str::from_utf8(&s) else {
                continue;
            };
            assert_eq!(
                is_field_value(s),
                HeaderValue::from_str(s).is_ok(),
                "{b:#x}"
            );
        }
        assert!(is_field_value("/ü/"));
    }

    #[test]
    fn addresses_are_written_as_displayed() {
        let mut ips: Vec<IpAddr> = [
            "0.0.0.0",
            "10.0.0.1",
            "192.168.100.25",
            "255.255.255.255",
            "::1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        ips.extend((0..=255u8).map(|o| IpAddr::from([o, 9, 10, 99])));
        for ip in ips {
            let mut out = BytesMut::new();
            write_ip(&mut out, ip);
            assert_eq!(out, ip.to_string().as_bytes(), "{ip}");
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "x"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);

        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    /// The fields `write_request_fields` writes, parsed back; `(name, value)`
    /// in order, and the request id it reports.
    fn sent(h: &HeaderMap, upgrade: bool, fwd: &Forwarded<'_>) -> (Vec<(String, String)>, String) {
        let mut head = BytesMut::new();
        let id = write_request_fields(&mut head, h, upgrade, fwd).to_value();
        let text = std::str::from_utf8(&head).unwrap();
        let fields = text
            .strip_suffix("\r\n")
            .unwrap()
            .split("\r\n")
            .map(|line| {
                let (name, value) = line.split_once(": ").unwrap();
                (name.to_owned(), value.to_owned())
            })
            .collect();
        (fields, id.to_str().unwrap().to_owned())
    }

    fn one<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
        let mut values = fields.iter().filter(|(n, _)| n == name);
        let first = values.next().map(|(_, v)| v.as_str());
        assert!(values.next().is_none(), "{name} twice in {fields:?}");
        first
    }

    #[test]
    fn forwarded() {
        let h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("x-forwarded-prefix", "/evil"),
            ("forwarded", "for=evil"),
            ("x-original-url", "/__internal/health"),
            ("x-rewrite-url", "/__internal/health"),
            ("x-request-id", "abc-123"),
            ("accept", "*/*"),
        ]);
        let host = HeaderValue::from_static("localhost:8080");
        let fwd = Forwarded {
            client: "::ffff:127.0.0.1".parse().unwrap(),
            proto: "http",
            host: &host,
            prefix: "",
        };
        let (f, id) = sent(&h, false, &fwd);
        assert_eq!(
            one(&f, "x-forwarded-for"),
            Some("1.1.1.1, 2.2.2.2, 127.0.0.1")
        );
        assert_eq!(one(&f, "x-forwarded-proto"), Some("http"));
        assert_eq!(one(&f, "x-forwarded-host"), Some("localhost:8080"));
        assert_eq!(one(&f, "x-forwarded-prefix"), None);
        assert_eq!(one(&f, "forwarded"), None);
        assert_eq!(one(&f, "x-original-url"), None);
        assert_eq!(one(&f, "x-rewrite-url"), None);
        assert_eq!(one(&f, "x-request-id"), Some("abc-123"));
        assert_eq!(id, "abc-123");
        assert_eq!(one(&f, "host"), Some("localhost:8080"));
        assert_eq!(one(&f, "accept"), Some("*/*"));

        // An insane id is replaced; the client's own Host is not what the
        // request was routed by, so it is replaced too.
        let h = map(&[("x-request-id", &"x".repeat(200)), ("host", "Example.test")]);
        let fwd = Forwarded {
            prefix: "/link",
            ..fwd
        };
        let (f, id) = sent(&h, false, &fwd);
        let minted = one(&f, "x-request-id").unwrap();
        assert_eq!(minted.len(), 32);
        assert_eq!(minted, id);
        assert_eq!(one(&f, "x-forwarded-prefix"), Some("/link"));
        assert_eq!(one(&f, "x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(one(&f, "host"), Some("localhost:8080"));
    }

    /// Fields a waifu could trust for the client's address, or read as
    /// framing or forwarding fields (CGI maps `_` and `-` alike), never
    /// reach it as the client sent them; `X-Real-IP` is the peer's address.
    #[test]
    fn forgeable_fields_are_dropped_or_replaced() {
        let h = map(&[
            ("x-real-ip", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("x-client-ip", "6.6.6.6"),
            ("client-ip", "6.6.6.6"),
            ("x-cluster-client-ip", "6.6.6.6"),
            ("cf-connecting-ip", "6.6.6.6"),
            ("fastly-client-ip", "6.6.6.6"),
            ("x-originating-ip", "6.6.6.6"),
            ("transfer_encoding", "chunked"),
            ("x_forwarded_for", "6.6.6.6"),
            ("content_length", "0"),
            ("x-kept", "1"),
        ]);
        let host = HeaderValue::from_static("h.test");
        let fwd = Forwarded {
            client: "10.0.0.1".parse().unwrap(),
            proto: "http",
            host: &host,
            prefix: "",
        };
        let (f, _) = sent(&h, false, &fwd);
        let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "x-kept",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "host",
                "x-real-ip",
                "x-request-id"
            ]
        );
        assert_eq!(one(&f, "x-real-ip"), Some("10.0.0.1"));
        assert_eq!(one(&f, "x-forwarded-for"), Some("10.0.0.1"));
    }

    /// No upgrade token but the WebSocket handshake's is ever sent, and
    /// that one only as the proxy writes it; `HTTP2-Settings` never.
    #[test]
    fn only_websocket_upgrades_go_upstream() {
        let host = HeaderValue::from_static("h.test");
        let fwd = Forwarded {
            client: "10.0.0.1".parse().unwrap(),
            proto: "http",
            host: &host,
            prefix: "",
        };
        for upgrade in ["h2c", "websocket, h2c", "WebSocket"] {
            // Whether or not the client names them in `Connection`.
            for connection in ["Upgrade", "Upgrade, HTTP2-Settings"] {
                let h = map(&[
                    ("connection", connection),
                    ("upgrade", upgrade),
                    ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
                ]);
                let (f, _) = sent(&h, false, &fwd);
                for (name, _) in &f {
                    assert!(
                        !["upgrade", "connection", "http2-settings"].contains(&name.as_str()),
                        "{upgrade} / {connection}: {f:?}"
                    );
                }
                let (f, _) = sent(&h, true, &fwd);
                assert_eq!(one(&f, "upgrade"), Some("websocket"), "{f:?}");
                assert_eq!(one(&f, "connection"), Some("upgrade"));
                assert_eq!(one(&f, "http2-settings"), None);
            }
        }
    }

    /// Hop-by-hop fields never reach the waifu, including those `Connection`
    /// names, even forwarding fields named there; an upgrade keeps `Upgrade`.
    #[test]
    fn request_hop_by_hop() {
        let host = HeaderValue::from_static("h.test");
        let fwd = Forwarded {
            client: "10.0.0.1".parse().unwrap(),
            proto: "https",
            host: &host,
            prefix: "",
        };
        let h = map(&[
            (
                "connection",
                "keep-alive, x-secret, x-request-id, X-Forwarded-For",
            ),
            ("x-secret", "1"),
            ("x-request-id", "kept?"),
            ("x-forwarded-for", "9.9.9.9"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
            ("expect", "100-continue"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "x"),
            ("proxy-connection", "keep-alive"),
            ("trailer", "x"),
            ("x-kept", "1"),
        ]);
        let (f, id) = sent(&h, false, &fwd);
        let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "x-kept",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "host",
                "x-real-ip",
                "x-request-id"
            ]
        );
        assert_eq!(one(&f, "x-forwarded-for"), Some("10.0.0.1"));
        assert_ne!(id, "kept?");

        let h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let (f, _) = sent(&h, true, &fwd);
        assert_eq!(one(&f, "upgrade"), Some("websocket"));
        assert_eq!(one(&f, "connection"), Some("upgrade"));
    }
}
