//! End to end, every part a real process: the orchestrator on its managed
//! PostgreSQL, `link` (started first, before the orchestrator exists) and the
//! Python waifu. A link is created through the public proxy, followed through
//! the main domain and through the bind, and followed again after `link`
//! restarts.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use waifus_testkit::{Proc, free_addr};

/// The orchestrator binary, built beside `link` by `cargo test --workspace`.
fn orchestrator_bin() -> PathBuf {
    waifus_testkit::workspace_binary("orchestrator")
}

struct Reply {
    status: u16,
    location: Option<String>,
    body: String,
}

async fn request(
    public: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    body: &str,
) -> Option<Reply> {
    let call = waifus_testkit::http::Call {
        headers: &[("host", host), ("content-type", "application/json")],
        body: body.to_owned().into(),
        ..waifus_testkit::http::Call::new(method.parse().ok()?, path)
    };
    let reply = waifus_testkit::http::send(public, call).await.ok()?;
    Some(Reply {
        status: reply.status.as_u16(),
        location: reply.header("location"),
        body: reply.text(),
    })
}

/// Retries until the reply has `status` (the fleet is still coming up).
async fn until(
    public: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    body: &str,
    status: u16,
) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(r) = request(public, method, host, path, body).await
            && r.status == status
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{method} {host}{path} never answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The orchestrator's tokens; waifus get the internal one.
const INTERNAL_TOKEN: &str = "e2e-internal-token-5f1c";
const ADMIN_TOKEN: &str = "e2e-admin-token-77ab90";

fn link(internal: SocketAddr, port: u16, cache: &Path) -> Proc {
    Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_link"))
            .env("ORCHESTRATOR_URL", format!("http://{internal}"))
            .env("ORCHESTRATOR_TOKEN", INTERNAL_TOKEN)
            .env("WAIFU_NAME", "link")
            .env("WAIFU_HOST", format!("127.0.0.1:{port}"))
            .env("PORT", port.to_string())
            .env("LISTEN_ADDR", "127.0.0.1")
            .env("WAIFU_SECRET", "link-secret")
            .env("WAIFU_BINDS", r#"{"https://link.waifu": "/link"}"#)
            .env("WAIFU_CACHE_DIR", cache),
    )
}

#[tokio::test]
async fn link_and_python_waifus_behind_the_orchestrator() {
    let dir = std::env::temp_dir().join(format!(
        "waifus-e2e-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (public, internal) = (free_addr(), free_addr());
    let (link_port, py_port) = (free_addr().port(), free_addr().port());

    // link first: it waits for the orchestrator.
    let mut link_proc = link(internal, link_port, &dir.join("cache"));
    std::thread::sleep(Duration::from_millis(500));

    let py_log = dir.join("python.log");
    let _python = Proc::spawn(
        Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../hello-python/main.py"))
            .env("ORCHESTRATOR_URL", format!("http://{internal}"))
            .env("WAIFU_NAME", "hello-python")
            .env("WAIFU_HOST", format!("127.0.0.1:{py_port}"))
            .env("PORT", py_port.to_string())
            .env("LISTEN_ADDR", "127.0.0.1")
            .env("WAIFU_SECRET", "python-secret")
            .env("ORCHESTRATOR_TOKEN", INTERNAL_TOKEN)
            .stderr(std::fs::File::create(&py_log).unwrap()),
    );
    let mut orchestrator = Proc::spawn(
        Command::new(orchestrator_bin())
            .env("DATA_DIR", dir.join("data"))
            .env("PUBLIC_ADDR", public.to_string())
            .env("INTERNAL_ADDR", internal.to_string())
            .env("HEALTH_INTERVAL", "200ms")
            .env("INTERNAL_TOKEN", INTERNAL_TOKEN)
            .env("ADMIN_TOKEN", ADMIN_TOKEN)
            .env("HELLO_SECRET", "required")
            .env("ACCESS_LOG", "true")
            .stderr(std::fs::File::create(dir.join("orchestrator.log")).unwrap()),
    );

    // Create a link through the public proxy, on the main domain.
    let created = until(
        public,
        "POST",
        "localhost",
        "/link/link",
        r#"{"url":"https://example.com/a?b=c"}"#,
        201,
    )
    .await;
    let created: serde_json::Value = serde_json::from_str(&created.body).unwrap();
    let code = created["code"].as_str().unwrap().to_owned();
    assert_eq!(created["url"], "https://example.com/a?b=c");

    // Follow it through the main domain and through the bind.
    let main = until(
        public,
        "GET",
        "localhost",
        &format!("/link/link/{code}"),
        "",
        302,
    )
    .await;
    assert_eq!(main.location.as_deref(), Some("https://example.com/a?b=c"));
    let bound = until(public, "GET", "link.waifu", &format!("/{code}"), "", 302).await;
    assert_eq!(bound.location.as_deref(), Some("https://example.com/a?b=c"));
    let bad = request(
        public,
        "POST",
        "localhost",
        "/link/link",
        r#"{"url":"ftp://x"}"#,
    )
    .await
    .unwrap();
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("invalid_url"), "{}", bad.body);
    let unknown = request(public, "GET", "link.waifu", "/nope123", "")
        .await
        .unwrap();
    assert_eq!(unknown.status, 404);

    // The Python waifu: routed, conformant, and it got its database.
    let hi = until(public, "GET", "localhost", "/hello-python/", "", 200).await;
    assert_eq!(hi.body, "hello from python\n");
    let check = Command::new(orchestrator_bin())
        .args(["check", &format!("127.0.0.1:{py_port}")])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let logged = loop {
        let log = std::fs::read_to_string(&py_log).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("database: {")) {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the Python waifu never got its database: {log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for field in ["\"database\"", "\"user\"", "\"host\"", "\"port\""] {
        assert!(logged.contains(field), "{logged}");
    }
    assert!(!logged.contains("password"), "{logged}");

    // link restarts: its links are still there.
    assert_eq!(link_proc.stop(), Some(0), "link exits cleanly on SIGTERM");
    let _link_again = link(internal, link_port, &dir.join("cache"));
    let again = until(public, "GET", "link.waifu", &format!("/{code}"), "", 302).await;
    assert_eq!(again.location.as_deref(), Some("https://example.com/a?b=c"));

    // Both waifus claimed their names with their first hello (the
    // orchestrator requires a secret); the audit log, read with the admin
    // token, says so, and the internal token does not open it.
    let cli = |token_var: &str, token: &str, args: &[&str]| {
        Command::new(orchestrator_bin())
            .args(args)
            .env_remove("ADMIN_TOKEN")
            .env_remove("INTERNAL_TOKEN")
            .env("INTERNAL_ADDR", internal.to_string())
            .env(token_var, token)
            .output()
            .unwrap()
    };
    let audit = cli("ADMIN_TOKEN", ADMIN_TOKEN, &["audit"]);
    let text = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    for name in ["link", "hello-python"] {
        assert!(
            text.lines()
                .any(|l| l.contains("secret_claimed") && l.contains(name)),
            "{text}"
        );
    }
    let refused = cli("INTERNAL_TOKEN", INTERNAL_TOKEN, &["incidents"]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("401") && said.contains("unauthorized"),
        "{said}"
    );
    // A hello for link without its secret is refused, even with the token.
    let impostor = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["-H", &format!("Authorization: Bearer {INTERNAL_TOKEN}")])
        .args(["-d", r#"{"name":"link","host":"127.0.0.1:1"}"#])
        .arg(format!("http://{internal}/__internal/hello"))
        .output();
    if let Ok(out) = impostor {
        assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    }

    assert_eq!(orchestrator.stop(), Some(0));
    drop(_link_again);
    // No token or secret in any log.
    for log in ["orchestrator.log", "python.log"] {
        let text = std::fs::read_to_string(dir.join(log)).unwrap();
        for secret in [INTERNAL_TOKEN, ADMIN_TOKEN, "link-secret", "python-secret"] {
            assert!(!text.contains(secret), "{secret} in {log}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
