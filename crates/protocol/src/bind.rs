//! Additional binds: `{"https://link.waifu/p": "/link"}`.
//!
//! A bind key is an absolute `http`/`https` URL with a host and an optional
//! path prefix; no userinfo, query or fragment. A target is a path on the
//! waifu. Paths here are deliberately restricted to characters that need no
//! percent-encoding, so the proxy can compare them byte for byte with its
//! canonical request paths and nothing is ever decoded twice.

use crate::host::{HostError, Scheme, normalize_hostname, split_host_port};
use crate::path::is_internal_segment;

/// A validated bind key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BindKey {
    /// `https` binds are meant to be served over TLS.
    pub scheme: Scheme,
    /// Lowercase hostname or IP literal; matching ignores the port.
    pub host: String,
    /// Port as written, if any; informational only.
    pub port: Option<u16>,
    /// `""` for the whole host, else `/a/b` without a trailing slash.
    pub prefix: String,
}

impl BindKey {
    /// The canonical spelling, e.g. `https://link.waifu/p`.
    pub fn canonical(&self) -> String {
        match self.port {
            Some(port) => format!(
                "{}://{}:{}{}",
                self.scheme.as_str(),
                self.host,
                port,
                self.prefix
            ),
            None => format!("{}://{}{}", self.scheme.as_str(), self.host, self.prefix),
        }
    }
}

/// A validated bind target: `""` for `/`, else `/a/b` without trailing slash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BindTarget(pub String);

/// Why a bind key or target was refused; maps onto the stable refusal codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error("the bind must be an absolute http:// or https:// URL")]
    BadScheme,
    #[error("the bind may not carry a user, a query or a fragment")]
    ExtraParts,
    #[error("the bind's host is not valid: {0}")]
    BadHost(HostError),
    #[error(
        "paths may contain only letters, digits and -._~!$&'()*+,;=:@, with no empty, '.' or '..' segments"
    )]
    BadPath,
    #[error("the target must be a path starting with '/'")]
    BadTarget,
    #[error("paths may not contain a segment starting with __internal")]
    InternalPath,
}

/// Parses a bind key such as `https://link.waifu/p`.
pub fn parse_bind_key(input: &str) -> Result<BindKey, BindError> {
    let (scheme, rest) = match input.split_once("://") {
        Some((s, rest)) if s.eq_ignore_ascii_case("http") => (Scheme::Http, rest),
        Some((s, rest)) if s.eq_ignore_ascii_case("https") => (Scheme::Https, rest),
        _ => return Err(BindError::BadScheme),
    };
    if rest.contains(['?', '#', '@']) {
        return Err(BindError::ExtraParts);
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(BindError::BadHost(HostError::Empty));
    }
    let (host, port) = split_host_port(authority).map_err(BindError::BadHost)?;
    if !host.starts_with('[') {
        // Bind hosts are public DNS names: no underscores.
        normalize_hostname(&host, false).map_err(BindError::BadHost)?;
    }
    let prefix = parse_path(if path.is_empty() { "/" } else { path })?;
    Ok(BindKey {
        scheme,
        host,
        port,
        prefix,
    })
}

/// Parses a bind target such as `/link`.
pub fn parse_bind_target(input: &str) -> Result<BindTarget, BindError> {
    if !input.starts_with('/') {
        return Err(BindError::BadTarget);
    }
    parse_path(input).map(BindTarget)
}

/// Validates `/a/b/` and returns it without its trailing slash (`/` → `""`).
///
/// A percent-encoded byte that needs no encoding (`%61` for `a`, `%7E` for
/// `~`) is decoded, as RFC 3986 §6.2.2.2 normalises it, so that every
/// spelling of one path is one bind; any other escape (`%2F`, `%20`, `%25`)
/// is refused, so nothing is ever decoded twice.
fn parse_path(path: &str) -> Result<String, BindError> {
    let path = decode_plain(path)?;
    let trimmed = path.strip_suffix('/').unwrap_or(&path);
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let mut internal = false;
    for segment in trimmed.split('/').skip(1) {
        internal |= is_internal_segment(segment);
        let bad = segment.is_empty()
            || segment == "."
            || segment == ".."
            || !segment.bytes().all(is_plain_path_byte);
        if bad && !internal {
            return Err(BindError::BadPath);
        }
    }
    if internal {
        return Err(BindError::InternalPath);
    }
    Ok(trimmed.to_owned())
}

/// `path` with each `%HH` that stands for a plain path byte decoded; an
/// escape of anything else is [`BindError::BadPath`].
fn decode_plain(path: &str) -> Result<String, BindError> {
    if !path.contains('%') {
        return Ok(path.to_owned());
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(char::from(bytes[i]));
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3).ok_or(BindError::BadPath)?;
        let hex = std::str::from_utf8(hex).map_err(|_| BindError::BadPath)?;
        let byte = u8::from_str_radix(hex, 16).map_err(|_| BindError::BadPath)?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) || !is_plain_path_byte(byte) {
            return Err(BindError::BadPath);
        }
        out.push(char::from(byte));
        i += 3;
    }
    Ok(out)
}

/// RFC 3986 `pchar` without `%`: unreserved, sub-delims, `:` and `@`.
fn is_plain_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scheme: Scheme, host: &str, port: Option<u16>, prefix: &str) -> BindKey {
        BindKey {
            scheme,
            host: host.into(),
            port,
            prefix: prefix.into(),
        }
    }

    #[test]
    fn keys() {
        use Scheme::*;
        let cases: &[(&str, Result<BindKey, BindError>)] = &[
            ("https://link.waifu", Ok(key(Https, "link.waifu", None, ""))),
            (
                "https://link.waifu/",
                Ok(key(Https, "link.waifu", None, "")),
            ),
            (
                "HTTPS://Link.Waifu/p",
                Ok(key(Https, "link.waifu", None, "/p")),
            ),
            (
                "http://a.b:8080/p/q/",
                Ok(key(Http, "a.b", Some(8080), "/p/q")),
            ),
            ("http://127.0.0.1/x", Ok(key(Http, "127.0.0.1", None, "/x"))),
            ("http://[::1]/x", Ok(key(Http, "[::1]", None, "/x"))),
            ("link.waifu", Err(BindError::BadScheme)),
            ("ftp://link.waifu", Err(BindError::BadScheme)),
            ("//link.waifu", Err(BindError::BadScheme)),
            ("https://u@link.waifu", Err(BindError::ExtraParts)),
            ("https://link.waifu/?q", Err(BindError::ExtraParts)),
            ("https://link.waifu/#f", Err(BindError::ExtraParts)),
            ("https:///p", Err(BindError::BadHost(HostError::Empty))),
            (
                "https://a_b.waifu",
                Err(BindError::BadHost(HostError::BadHost)),
            ),
            (
                "https://*.waifu",
                Err(BindError::BadHost(HostError::BadHost)),
            ),
            (
                "https://a.waifu:0",
                Err(BindError::BadHost(HostError::BadPort)),
            ),
            ("https://a.waifu//p", Err(BindError::BadPath)),
            ("https://a.waifu/./p", Err(BindError::BadPath)),
            ("https://a.waifu/../p", Err(BindError::BadPath)),
            ("https://a.waifu/%70", Ok(key(Https, "a.waifu", None, "/p"))),
            (
                "http://hc.test/%61ccount/",
                Ok(key(Http, "hc.test", None, "/account")),
            ),
            ("http://hc.test./x", Ok(key(Http, "hc.test", None, "/x"))),
            ("https://a.waifu/%2F", Err(BindError::BadPath)),
            ("https://a.waifu/a%2fb", Err(BindError::BadPath)),
            ("https://a.waifu/%20", Err(BindError::BadPath)),
            ("https://a.waifu/%25", Err(BindError::BadPath)),
            ("https://a.waifu/%2", Err(BindError::BadPath)),
            ("https://a.waifu/%+1x", Err(BindError::BadPath)),
            ("https://a.waifu/%2e%2e/x", Err(BindError::BadPath)),
            ("https://a.waifu/%5F_internal", Err(BindError::InternalPath)),
            ("https://a.waifu/a b", Err(BindError::BadPath)),
            ("https://a.waifu/a\\b", Err(BindError::BadPath)),
            ("https://a.waifu/é", Err(BindError::BadPath)),
            ("https://a.waifu/__internal", Err(BindError::InternalPath)),
            (
                "https://a.waifu/x/__INTERNAL/y",
                Err(BindError::InternalPath),
            ),
            ("https://a.waifu/__internalx", Err(BindError::InternalPath)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_bind_key(input), *want, "{input:?}");
        }
    }

    #[test]
    fn targets() {
        let cases: &[(&str, Result<&str, BindError>)] = &[
            ("/", Ok("")),
            ("/link", Ok("/link")),
            ("/link/", Ok("/link")),
            ("/a/b;c=d", Ok("/a/b;c=d")),
            ("", Err(BindError::BadTarget)),
            ("link", Err(BindError::BadTarget)),
            ("http://x/link", Err(BindError::BadTarget)),
            ("//", Err(BindError::BadPath)),
            ("/a/../b", Err(BindError::BadPath)),
            ("/%5F_internal", Err(BindError::InternalPath)),
            ("/%2F", Err(BindError::BadPath)),
            ("/__internal", Err(BindError::InternalPath)),
            ("/a/__Internal_x", Err(BindError::InternalPath)),
        ];
        for (input, want) in cases {
            let got = parse_bind_target(input).map(|t| t.0);
            assert_eq!(got.as_deref(), want.as_ref().map(|s| *s), "{input:?}");
        }
    }

    #[test]
    fn canonical_round_trips() {
        for input in [
            "https://link.waifu/p",
            "http://a.b:8080",
            "http://[::1]/x/y",
        ] {
            let k = parse_bind_key(input).unwrap();
            assert_eq!(k.canonical(), input);
            assert_eq!(parse_bind_key(&k.canonical()), Ok(k));
        }
    }
}
