//! The host a request is for (RFC 9112 §3.2, RFC 9113 §8.3.1), and where a
//! plain request for an HTTPS-only bind is sent instead.

use std::borrow::Cow;

use http::Version;
use waifus_http1::token::{ALPHANUMERIC, ByteSet};

use super::error::ProxyError;
use super::fields::{ClientRequest, name, text};
use super::via::Via;

/// The authority a request is routed by, canonical, and its host
/// normalised (lowercase, no port, no trailing dot).
///
/// The canonical authority is what the waifu gets as `Host` and
/// `X-Forwarded-Host`, whoever spelled it how (`HC.TEST`, `hc.test.`,
/// `hc.test:`, `hc.test:0`, `localhost:99999`): the host in lower case
/// without a trailing dot, and the port only when it is the listener's own
/// (and not the scheme's default). A waifu builds redirects and links from
/// it, so it must not be the client's to choose.
///
/// An absolute-form target's authority wins over `Host`, which a proxy
/// must replace with it (RFC 9112 §3.2.2); HTTP/2 carries it in
/// `:authority`, and a `host` field naming anything else makes the request
/// malformed (RFC 9113 §8.3.1). Over TLS, neither may name another host
/// than the connection was made for.
pub(super) fn request_authority<'a>(
    req: &ClientRequest<'a>,
    via: &Via,
) -> Result<(Cow<'a, str>, Cow<'a, str>), ProxyError> {
    let mut fields = req.fields.all(&name::HOST);
    let field = fields.next();
    if fields.next().is_some() {
        return Err(ProxyError::BadHost);
    }
    let raw = match req.authority {
        Some(authority) => {
            if req.version == Version::HTTP_2
                && let Some(field) = field
                && !same_authority(field, authority)
            {
                return Err(if via.tls {
                    ProxyError::Misdirected
                } else {
                    ProxyError::HostMismatch
                });
            }
            authority
        }
        None => field.and_then(text).ok_or(ProxyError::BadHost)?,
    };
    let host = normalize_host(raw).ok_or(ProxyError::BadHost)?;
    if let Some(sni) = via.sni.as_deref() {
        // A connection set up for one name must not serve another.
        let named = field.and_then(text).and_then(normalize_host);
        if sni != host || named.is_some_and(|named| named != sni) {
            return Err(ProxyError::Misdirected);
        }
    }
    let value = match canonical_authority(raw, &host, via) {
        None => Cow::Borrowed(raw),
        Some(canonical) => Cow::Owned(canonical),
    };
    Ok((value, host))
}

/// The canonical spelling of `raw` (whose host normalises to `host`), or
/// `None` when `raw` is already canonical (the common case: no allocation).
fn canonical_authority(raw: &str, host: &str, via: &Via) -> Option<String> {
    let default = if via.tls { 443 } else { 80 };
    let keep_port =
        via.port != default && port(raw).and_then(|p| p.parse::<u16>().ok()) == Some(via.port);
    let canonical = |with_port: bool| match with_port {
        true => format!("{host}:{}", via.port),
        false => host.to_owned(),
    };
    let same = match raw.strip_prefix(host) {
        Some("") => !keep_port,
        Some(rest) => {
            keep_port
                && rest
                    .strip_prefix(':')
                    .is_some_and(|p| p.parse() == Ok(via.port) && !p.starts_with('0'))
        }
        None => false,
    };
    (!same).then(|| canonical(keep_port))
}

/// Whether a `host` field names the same host and port as an authority.
fn same_authority(field: &[u8], authority: &str) -> bool {
    let Ok(field) = std::str::from_utf8(field) else {
        return false;
    };
    normalize_host(field).is_some_and(|h| normalize_host(authority).is_some_and(|a| a == h))
        && port(field) == port(authority)
}

/// Where an ASCII byte first is in a short string: a plain loop, where
/// `str::find(char)` costs a searcher's setup for a few bytes.
fn position(s: &str, byte: u8) -> Option<usize> {
    s.bytes().position(|b| b == byte)
}

/// The port of an authority, if it names one.
fn port(raw: &str) -> Option<&str> {
    let after_host = match raw.strip_prefix('[') {
        Some(v6) => &v6[position(v6, b']')? + 1..],
        None => position(raw, b':').map_or("", |i| &raw[i..]),
    };
    after_host.strip_prefix(':').filter(|p| !p.is_empty())
}

fn normalize_host(raw: &str) -> Option<Cow<'_, str>> {
    let host = if raw.starts_with('[') {
        &raw[..=position(raw, b']')?]
    } else {
        position(raw, b':').map_or(raw, |i| &raw[..i])
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    static HOST: ByteSet = ByteSet::new(&ALPHANUMERIC, b"-._[]:");
    let valid = HOST.holds_all(host.as_bytes());
    if host.is_empty() || !valid {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// `https://{host}[:port]{path}[?query]` for a redirect from plain HTTP.
pub(super) fn https_location(host: &str, port: u16, path: &str, query: Option<&str>) -> String {
    let mut location = match port {
        443 => format!("https://{host}{path}"),
        port => format!("https://{host}:{port}{path}"),
    };
    if let Some(query) = query {
        location.push('?');
        location.push_str(query);
    }
    location
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_locations() {
        assert_eq!(
            https_location("x.test", 443, "/a/b", Some("q=1")),
            "https://x.test/a/b?q=1"
        );
        assert_eq!(
            https_location("x.test", 8443, "/a/b", Some("q=1")),
            "https://x.test:8443/a/b?q=1"
        );
        assert_eq!(
            https_location("x.test", 443, "/p", None),
            "https://x.test/p"
        );
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
    fn canonical_authorities() {
        let plain = Via {
            port: 8080,
            ..Via::default()
        };
        let on_80 = Via {
            port: 80,
            ..Via::default()
        };
        let tls = Via {
            tls: true,
            port: 443,
            ..Via::default()
        };
        let cases: &[(&str, &Via, &str)] = &[
            ("hc.test", &plain, "hc.test"),
            ("hc.test:8080", &plain, "hc.test:8080"),
            ("HC.TEST", &plain, "hc.test"),
            ("hc.test.", &plain, "hc.test"),
            ("hc.test.:8080", &plain, "hc.test:8080"),
            ("hc.test:", &plain, "hc.test"),
            ("hc.test:0", &plain, "hc.test"),
            ("hc.test:08080", &plain, "hc.test:8080"),
            ("localhost:99999", &plain, "localhost"),
            ("hc.test:9090", &plain, "hc.test"),
            ("hc.test:80", &on_80, "hc.test"),
            ("hc.test:443", &tls, "hc.test"),
            ("[::1]:8080", &plain, "[::1]:8080"),
            ("[::1]:1", &plain, "[::1]"),
            ("127.0.0.1:8080", &plain, "127.0.0.1:8080"),
        ];
        for (raw, via, want) in cases {
            let host = normalize_host(raw).unwrap();
            let got = canonical_authority(raw, &host, via).unwrap_or_else(|| raw.to_string());
            assert_eq!(got, *want, "{raw}");
            // A canonical spelling is its own canonical form.
            assert_eq!(canonical_authority(want, &host, via), None, "{want}");
        }
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
