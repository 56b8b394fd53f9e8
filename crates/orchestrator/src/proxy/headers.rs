//! Header rewriting between the client and the waifu.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) are removed both ways, including
//! every header the `Connection` field names. The `X-Forwarded-*` family is
//! written by us: a client's `X-Forwarded-Proto/Host/Prefix` is replaced,
//! never trusted; `X-Forwarded-For` is appended to. `Forwarded`,
//! `X-Original-URL` and `X-Rewrite-URL` are dropped: they would let a client
//! claim another path or origin to a waifu that trusts them.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static DROPPED: [HeaderName; 3] = [
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
];

/// Removes hop-by-hop headers. With `keep_upgrade`, `Upgrade` survives and
/// `Connection` is reset to `upgrade`, so a protocol switch can be relayed.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
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
    /// The host as the client sent it (with port, if any).
    pub host: &'a HeaderValue,
    /// The stripped public prefix; empty for none.
    pub prefix: &'a str,
}

/// The request id `set_forwarded` kept or generated.
pub(crate) fn request_id(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers.get(&X_REQUEST_ID)
}

/// Writes the forwarded headers onto a request going to a waifu.
pub(crate) fn set_forwarded(headers: &mut HeaderMap, fwd: &Forwarded<'_>) {
    for name in &DROPPED {
        headers.remove(name);
    }
    let client = fwd.client.to_canonical();
    let xff = match join_values(headers, &X_FORWARDED_FOR) {
        Some(prior) => HeaderValue::try_from(format!("{prior}, {client}")),
        None => HeaderValue::try_from(client.to_string()),
    };
    if let Ok(xff) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), xff);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(fwd.proto),
    );
    headers.insert(X_FORWARDED_HOST.clone(), fwd.host.clone());
    match HeaderValue::from_str(fwd.prefix) {
        Ok(prefix) if !fwd.prefix.is_empty() => {
            headers.insert(X_FORWARDED_PREFIX.clone(), prefix);
        }
        _ => {
            headers.remove(&X_FORWARDED_PREFIX);
        }
    }
    let keep_id = headers
        .get(&X_REQUEST_ID)
        .is_some_and(|v| is_sane_request_id(v.as_bytes()));
    if !keep_id {
        headers.insert(X_REQUEST_ID.clone(), new_request_id());
    }
    if !headers.contains_key(header::HOST) {
        headers.insert(header::HOST, fwd.host.clone());
    }
}

/// Comma-joins every value of a repeated header; `None` if absent.
fn join_values(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    Some(values.fold(first.to_owned(), |mut acc, v| {
        acc.push_str(", ");
        acc.push_str(v);
        acc
    }))
}

/// A client's request id is kept if it is short, visible ASCII.
fn is_sane_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len()) && id.iter().all(|b| b.is_ascii_graphic())
}

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut buf = [0u8; 32];
    for b in buf.iter_mut() {
        *b = HEX[(n & 15) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn forwarded() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("x-forwarded-prefix", "/evil"),
            ("forwarded", "for=evil"),
            ("x-original-url", "/__internal/health"),
            ("x-request-id", "abc-123"),
        ]);
        let host = HeaderValue::from_static("localhost:8080");
        let fwd = Forwarded {
            client: "::ffff:127.0.0.1".parse().unwrap(),
            proto: "http",
            host: &host,
            prefix: "",
        };
        set_forwarded(&mut h, &fwd);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "localhost:8080");
        assert!(!h.contains_key("x-forwarded-prefix"));
        assert!(!h.contains_key("forwarded"));
        assert!(!h.contains_key("x-original-url"));
        assert_eq!(h["x-request-id"], "abc-123");
        assert_eq!(h["host"], "localhost:8080");

        let mut h = map(&[("x-request-id", &"x".repeat(200))]);
        set_forwarded(
            &mut h,
            &Forwarded {
                prefix: "/link",
                ..fwd
            },
        );
        assert_eq!(h["x-request-id"].len(), 32);
        assert_eq!(h["x-forwarded-prefix"], "/link");
    }
}
