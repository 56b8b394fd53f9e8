//! The `__internal` guard over real sockets: hostile targets never reach a
//! waifu's `__internal` paths, through the main domain or a bind.

use serde_json::json;

use crate::harness::{self, raw, raw_status};
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

/// Decodes `%XX` repeatedly, the way the laxest backend might.
fn decode_fully(s: &str) -> String {
    let mut s = s.to_owned();
    loop {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if bytes[i] == b'%'
                && let Some(b) = hex
            {
                out.push(b);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        let next = String::from_utf8_lossy(&out).into_owned();
        if next == s {
            return s;
        }
        s = next;
    }
}

fn reaches_internal(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or("");
    decode_fully(path)
        .replace('\\', "/")
        .split('/')
        .any(|seg| seg.to_ascii_lowercase().starts_with("__internal"))
}

#[tokio::test]
async fn hostile_targets_never_reach_internal_paths() {
    let orch = harness::start(&unique_db("guard"), &[]).await;
    let w = TestWaifu::start("w").await;
    orch.register(
        "w",
        &w.host(),
        json!({"http://bind.test": "/", "http://bind.test/p": "/q"}),
    )
    .await;
    let hostile = [
        ("localhost", "/w/__internal/health", 404),
        ("localhost", "/w/__INTERNAL/health", 404),
        ("localhost", "/w/__Internal", 404),
        ("localhost", "/w/%5f%5finternal/health", 404),
        ("localhost", "/w/%5F_internal/health", 404),
        ("localhost", "/w/__%69nternal/health", 404),
        ("localhost", "/w/x/../__internal/health", 404),
        ("localhost", "/w/%2e%2e/w/__internal", 404),
        ("localhost", "/w/./__internal", 404),
        ("localhost", "/w//__internal", 404),
        ("localhost", "/w/__internal;jsessionid=1", 404),
        ("localhost", "/__internal/health", 404),
        ("localhost", "/w/..;/__internal/health", 400),
        ("localhost", "/w/%2F__internal/health", 400),
        ("localhost", "/w%2F__internal/health", 400),
        ("localhost", "/w/%5C__internal", 400),
        ("localhost", "/w/..%5C__internal", 400),
        ("localhost", "/w/%255F_internal/health", 400),
        ("localhost", "/w/%25%35%46_internal", 400),
        ("localhost", "/w/%C0%AE%C0%AE/__internal", 400),
        ("localhost", "/w/%00/__internal", 400),
        ("localhost", "/w/%", 400),
        ("localhost", "/w/../../__internal", 400),
        ("localhost", "http://localhost/w/__internal/health", 404),
        ("bind.test", "/__internal/health", 404),
        ("bind.test", "/p/__internal", 404),
        ("bind.test", "/p/../__internal", 404),
        ("bind.test", "/%5F%5Finternal", 404),
        ("bind.test", "/p/%2e%2e/%5f_internal", 404),
    ];
    for (host, target, want) in hostile {
        let r = raw(
            orch.public,
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(raw_status(&r), want, "{host} {target}: {r}");
    }
    // Raw bytes hyper may or may not accept: never a success.
    for target in ["/w/\\__internal", "/w/__internal\t", "/w/%__internal"] {
        let r = raw(
            orch.public,
            format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(r.is_empty() || raw_status(&r) >= 400, "{target}: {r}");
    }
    // Benign targets next to the boundary are forwarded canonically.
    for (target, forwarded) in [
        ("/w/name__internal", "/name__internal"),
        ("/w/_internal", "/_internal"),
        ("/w/a/%2e%2e/b", "/b"),
        ("/w/%41%7e", "/A~"),
    ] {
        let r = orch.get("localhost", target).await;
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(r.json()["target"], forwarded, "{target}");
    }
    let seen = w.seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for target in &seen {
        assert!(!reaches_internal(target), "a waifu received {target}");
    }
    orch.stop().await.unwrap();
}
