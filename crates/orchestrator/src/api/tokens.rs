//! The bearer tokens of the internal API, and which endpoint each opens.
//!
//! - `INTERNAL_TOKEN`, when set, is needed by every call but
//!   `GET /__internal/health` (what waifus call: hello, database, the
//!   health of other waifus).
//! - `ADMIN_TOKEN`, when set, is needed by the operator endpoints
//!   ([`is_operator`]: the waifus list, incidents, audit, metrics, status,
//!   `/__internal/admin/`), and `INTERNAL_TOKEN` does not open them; the
//!   admin token opens everything.
//!
//! Tokens are kept and compared as SHA-256 digests with no early exit, and
//! never logged.

use std::net::IpAddr;
use std::time::Duration;

use axum::http::Method;
use sha2::{Digest, Sha256};

use crate::ops::incidents::Gate;

/// Unauthorized calls are stored as incidents at most this often per source.
pub(super) const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The configured tokens, as digests.
#[derive(Debug)]
pub(crate) struct Tokens {
    internal: Option<[u8; 32]>,
    admin: Option<[u8; 32]>,
    /// Unauthorized calls stored, at most one per source address every
    /// [`REPORT_EVERY`].
    pub(super) reported: Gate<IpAddr>,
}

impl Tokens {
    pub(crate) fn new(internal: Option<&str>, admin: Option<&str>) -> Tokens {
        Tokens {
            internal: internal.map(digest),
            admin: admin.map(digest),
            reported: Gate::new(REPORT_EVERY),
        }
    }

    /// Whether a call to `path` with `method` carrying `bearer` may go on.
    pub(super) fn allows(&self, method: &Method, path: &str, bearer: Option<&str>) -> bool {
        if *method == Method::GET && path == "/__internal/health" {
            return true;
        }
        let presented = bearer.map(digest);
        let matches = |token: &Option<[u8; 32]>| match (token, &presented) {
            (Some(t), Some(p)) => constant_time_eq(t, p),
            _ => false,
        };
        let admin = matches(&self.admin);
        if is_operator(path) && self.admin.is_some() {
            return admin;
        }
        match self.internal {
            Some(_) => admin || matches(&self.internal),
            None => true,
        }
    }
}

/// The endpoints operators use, which `ADMIN_TOKEN` guards.
pub(crate) fn is_operator(path: &str) -> bool {
    matches!(
        path,
        "/__internal/waifus"
            | "/__internal/incidents"
            | "/__internal/audit"
            | "/__internal/metrics"
            | "/__internal/status"
    ) || path.starts_with("/__internal/admin/")
        || (path.starts_with("/__internal/waifus/")
            && (path.ends_with("/maintenance")
                || path.ends_with("/pause")
                || path.ends_with("/version")
                || path.ends_with("/history")
                || path.ends_with("/rollout")))
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equality without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_may_call_what() {
        let get = Method::GET;
        let post = Method::POST;
        let both = Tokens::new(Some("inside"), Some("boss"));
        let cases: &[(&Method, &str, Option<&str>, bool)] = &[
            (&get, "/__internal/health", None, true),
            (&post, "/__internal/health", None, false),
            (&post, "/__internal/hello", None, false),
            (&post, "/__internal/hello", Some("inside"), true),
            (&post, "/__internal/hello", Some("boss"), true),
            (&post, "/__internal/hello", Some("insidex"), false),
            (&get, "/__internal/waifus/w/health", Some("inside"), true),
            (&get, "/__internal/waifus", Some("inside"), false),
            (&get, "/__internal/waifus", Some("boss"), true),
            (&get, "/__internal/incidents", Some("inside"), false),
            (&get, "/__internal/audit", Some("boss"), true),
            (&get, "/__internal/metrics", None, false),
            (&get, "/__internal/status", Some("inside"), false),
            (&post, "/__internal/admin/anything", Some("inside"), false),
            (
                &Method::PUT,
                "/__internal/waifus/w/pause",
                Some("inside"),
                false,
            ),
            (
                &Method::PUT,
                "/__internal/waifus/w/pause",
                Some("boss"),
                true,
            ),
            (&Method::DELETE, "/__internal/waifus/w/pause", None, false),
            (&get, "/__internal/nothing-here", None, false),
        ];
        for (method, path, bearer, want) in cases {
            assert_eq!(
                both.allows(method, path, *bearer),
                *want,
                "{method} {path} {bearer:?}"
            );
        }
        // Only the internal token: it opens the operator endpoints too.
        let internal = Tokens::new(Some("inside"), None);
        assert!(internal.allows(&get, "/__internal/metrics", Some("inside")));
        assert!(!internal.allows(&get, "/__internal/metrics", None));
        // Only the admin token: waifus' calls stay open.
        let admin = Tokens::new(None, Some("boss"));
        assert!(admin.allows(&post, "/__internal/hello", None));
        assert!(!admin.allows(&get, "/__internal/incidents", None));
        assert!(admin.allows(&get, "/__internal/incidents", Some("boss")));
        assert!(!admin.allows(&get, "/__internal/waifus/link/history", None));
        assert!(admin.allows(&get, "/__internal/waifus/link/history", Some("boss")));
        // Neither: everything is open, as before tokens existed.
        let none = Tokens::new(None, None);
        assert!(none.allows(&get, "/__internal/incidents", None));
    }
}
