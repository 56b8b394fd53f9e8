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
    // Invisible (default-ignorable) characters, which NFKC_Casefold, IDNA
    // and many sanitisers delete: 36 forms, each 400.
    let invisible = [
        "%C2%AD",
        "%CD%8F",
        "%D8%9C",
        "%E1%85%9F",
        "%E1%85%A0",
        "%E1%9E%B4",
        "%E1%9E%B5",
        "%E1%A0%8B",
        "%E1%A0%8E",
        "%E1%A0%8F",
        "%E2%80%8B",
        "%E2%80%8C",
        "%E2%80%8D",
        "%E2%80%8E",
        "%E2%80%8F",
        "%E2%80%AA",
        "%E2%80%AE",
        "%E2%81%A0",
        "%E2%81%A4",
        "%E2%81%A6",
        "%E2%81%AF",
        "%E3%85%A4",
        "%EF%B8%80",
        "%EF%B8%8F",
        "%EF%BB%BF",
        "%EF%BE%A0",
        "%EF%BF%B0",
        "%EF%BF%B8",
        "%F0%9B%B2%A0",
        "%F0%9B%B2%A3",
        "%F0%9D%85%B3",
        "%F0%9D%85%BA",
        "%F3%A0%80%81",
        "%F3%A0%80%A0",
        "%F3%A0%87%AF",
        "%F3%A0%BF%BF",
    ];
    assert_eq!(invisible.len(), 36);
    for (i, c) in invisible.iter().enumerate() {
        let target = match i % 3 {
            0 => format!("/w/{c}__internal/secret"),
            1 => format!("/w/__inte{c}rnal/secret"),
            _ => format!("/w/__internal{c}/secret"),
        };
        for (host, target) in [
            ("localhost", target.clone()),
            ("bind.test", target[2..].to_owned()),
        ] {
            let r = raw(
                orch.public,
                format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            assert_eq!(raw_status(&r), 400, "{host} {target}: {r}");
        }
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
        assert!(
            !target.contains("%E2%80") && !target.contains("%C2%AD"),
            "a waifu received {target}"
        );
    }
    orch.stop().await.unwrap();
}
