//! The `hello` binary serves its greeting and its health check before any
//! orchestrator exists (it keeps saying hello in the background), and leaves
//! on SIGTERM with exit code 0 even when its goodbye cannot be delivered. Its
//! log, redirected to a file, holds no colour codes; with `LOG_FORMAT=json`
//! every line is a JSON object.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    Some(answer)
}

#[test]
fn serves_before_the_orchestrator_exists_and_exits_zero_on_sigterm() {
    for format in ["text", "json"] {
        let log = run_once(format);
        assert!(log.contains("listening"), "{format}: {log}");
        assert!(
            !log.contains('\u{1b}'),
            "{format}: an escape code in {log:?}"
        );
        if format == "json" {
            for line in log.lines() {
                let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
                assert!(parsed.is_ok(), "not JSON: {line}");
            }
        }
    }
}

/// Runs hello once, its stderr in a file, as `serves_before…` describes;
/// that file's content.
fn run_once(format: &str) -> String {
    let log_path = std::env::temp_dir().join(format!("hello-{}-{format}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hello"))
        .env("ORCHESTRATOR_URL", format!("http://{unreachable}"))
        .env("WAIFU_NAME", "hello")
        .env("WAIFU_HOST", format!("127.0.0.1:{port}"))
        .env("PORT", port.to_string())
        .env("LISTEN_ADDR", "127.0.0.1")
        .env("LOG_FORMAT", format)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let greeting = loop {
        if let Some(answer) = get(port, "/") {
            break answer;
        }
        assert!(Instant::now() < deadline, "hello never listened");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(greeting.starts_with("HTTP/1.1 200"), "{greeting}");
    assert!(greeting.ends_with("hello from waifus\n"), "{greeting}");
    let health = get(port, "/__internal/health").unwrap();
    assert!(health.starts_with("HTTP/1.1 204"), "{health}");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "hello did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    let text = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    text
}
