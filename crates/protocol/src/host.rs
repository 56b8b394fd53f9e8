//! Waifu instance addresses: the `host` field of a hello.
//!
//! Accepted forms: `hostname`, `hostname:port`, `ip:port`, `[v6]:port`, each
//! optionally behind `http://` or `https://`. A bare host means port 80 (443
//! for `https://`). Everything is normalised to one canonical spelling so the
//! same instance is never registered twice under two names.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// How the orchestrator talks to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A validated, normalised instance address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Upstream {
    /// Protocol spoken to the instance.
    pub scheme: Scheme,
    /// Lowercase hostname, dotted IPv4, or IPv6 in brackets (`[::1]`).
    pub host: String,
    /// Always explicit, so `link` and `link:80` are one instance.
    pub port: u16,
}

impl Upstream {
    /// `host:port`, the authority the proxy connects to.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)
    }
}

/// Why a host was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the host is empty")]
    Empty,
    #[error("only http:// and https:// are allowed before the host")]
    BadScheme,
    #[error("the host may not carry a user, a path, a query or a fragment")]
    ExtraParts,
    #[error("the port must be a number from 1 to 65535")]
    BadPort,
    #[error("the host is not a valid hostname or IP address")]
    BadHost,
}

/// Parses the `host` of a hello into its canonical form.
pub fn parse_host(input: &str) -> Result<Upstream, HostError> {
    if input.is_empty() {
        return Err(HostError::Empty);
    }
    let (scheme, rest) = match input.split_once("://") {
        Some((s, rest)) if s.eq_ignore_ascii_case("http") => (Scheme::Http, rest),
        Some((s, rest)) if s.eq_ignore_ascii_case("https") => (Scheme::Https, rest),
        Some(_) => return Err(HostError::BadScheme),
        None => (Scheme::Http, input),
    };
    // One trailing slash is what people paste from a browser; more is a path.
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@', '\\']) {
        return Err(HostError::ExtraParts);
    }
    let (host, port) = split_host_port(rest)?;
    let port = match port {
        Some(p) => p,
        None => scheme.default_port(),
    };
    Ok(Upstream { scheme, host, port })
}

/// Splits `host[:port]` / `[v6][:port]`, validating and normalising the host.
pub(crate) fn split_host_port(input: &str) -> Result<(String, Option<u16>), HostError> {
    let (host, port) = if let Some(rest) = input.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or(HostError::BadHost)?;
        let addr: Ipv6Addr = v6.parse().map_err(|_| HostError::BadHost)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(HostError::BadHost)?),
        };
        (format!("[{addr}]"), port)
    } else {
        let (host, port) = match input.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (input, None),
        };
        (normalize_hostname(host, true)?, port)
    };
    let port = port.map(parse_port).transpose()?;
    Ok((host, port))
}

fn parse_port(p: &str) -> Result<u16, HostError> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::BadPort);
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(HostError::BadPort),
        Ok(n) => Ok(n),
    }
}

/// Lowercases and checks a DNS name or dotted IPv4 address.
///
/// `allow_underscore` admits `_` in labels: container runtimes name hosts
/// like `app_web_1`, which resolvers accept though RFC 1123 does not.
pub(crate) fn normalize_hostname(host: &str, allow_underscore: bool) -> Result<String, HostError> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return Err(HostError::BadHost);
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        // All digits and dots: it must be an IPv4 address, not a DNS name.
        let ip: Ipv4Addr = host.parse().map_err(|_| HostError::BadHost)?;
        return Ok(ip.to_string());
    }
    for label in host.split('.') {
        let ok_len = !label.is_empty() && label.len() <= 63;
        let ok_chars = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || (allow_underscore && b == b'_'));
        if !ok_len || !ok_chars || label.starts_with('-') || label.ends_with('-') {
            return Err(HostError::BadHost);
        }
    }
    Ok(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(scheme: Scheme, host: &str, port: u16) -> Result<Upstream, HostError> {
        Ok(Upstream {
            scheme,
            host: host.to_owned(),
            port,
        })
    }

    #[test]
    fn hosts() {
        use Scheme::*;
        let cases: &[(&str, Result<Upstream, HostError>)] = &[
            ("link", up(Http, "link", 80)),
            ("Link:8080", up(Http, "link", 8080)),
            ("link.svc.local:8080", up(Http, "link.svc.local", 8080)),
            ("app_web_1:3000", up(Http, "app_web_1", 3000)),
            ("127.0.0.1:9000", up(Http, "127.0.0.1", 9000)),
            ("127.0.0.1", up(Http, "127.0.0.1", 80)),
            ("[::1]:9000", up(Http, "[::1]", 9000)),
            ("[::1]", up(Http, "[::1]", 80)),
            ("[0:0::1]:1", up(Http, "[::1]", 1)),
            ("http://link:8080", up(Http, "link", 8080)),
            ("HTTP://link:8080/", up(Http, "link", 8080)),
            ("https://link", up(Https, "link", 443)),
            ("https://[::1]:8443", up(Https, "[::1]", 8443)),
            ("", Err(HostError::Empty)),
            ("ftp://link", Err(HostError::BadScheme)),
            ("http://user@link", Err(HostError::ExtraParts)),
            ("http://link/path", Err(HostError::ExtraParts)),
            ("link:8080?x", Err(HostError::ExtraParts)),
            ("link#x", Err(HostError::ExtraParts)),
            ("link:0", Err(HostError::BadPort)),
            ("link:65536", Err(HostError::BadPort)),
            ("link:", Err(HostError::BadPort)),
            ("link:+80", Err(HostError::BadPort)),
            ("link:80:80", Err(HostError::BadHost)),
            ("::1", Err(HostError::BadHost)),
            ("[::1", Err(HostError::BadHost)),
            ("[::1]x", Err(HostError::BadHost)),
            ("[zz]:80", Err(HostError::BadHost)),
            ("999.1.1.1:80", Err(HostError::BadHost)),
            ("-link", Err(HostError::BadHost)),
            ("li nk", Err(HostError::BadHost)),
            ("a..b", Err(HostError::BadHost)),
            ("http://", Err(HostError::BadHost)),
            // Five digits at most, leading zeros allowed within them.
            ("link:65535", up(Http, "link", 65535)),
            ("link:00080", up(Http, "link", 80)),
            ("link:000080", Err(HostError::BadPort)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_host(input), *want, "{input:?}");
        }
    }

    #[test]
    fn names_up_to_253_bytes() {
        // Labels of 63, as DNS allows: 4 × 63 + 3 dots = 255; cut to 253.
        let label = "a".repeat(63);
        let longest = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(longest.len(), 253);
        assert_eq!(normalize_hostname(&longest, false), Ok(longest.clone()));
        assert_eq!(
            normalize_hostname(&format!("{longest}c"), false),
            Err(HostError::BadHost)
        );
        // A trailing dot is not counted.
        assert_eq!(
            normalize_hostname(&format!("{longest}."), false),
            Ok(longest)
        );
    }

    #[test]
    fn display_is_canonical() {
        let u = parse_host("LINK").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(u.to_string(), "http://link:80");
        assert_eq!(u.authority(), "link:80");
        assert_eq!(parse_host(&u.to_string()), Ok(u));
    }
}
