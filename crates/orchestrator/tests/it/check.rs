//! `orchestrator check URL` against waifus that do and do not follow the rules.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::waifu::TestWaifu;

async fn check(target: &str, extra: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .arg("check")
        .arg(target)
        .args(extra)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), out)
        .await
        .expect("orchestrator check finished within 60 s")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A server that answers every request with `response`, or never answers.
async fn canned(response: Option<&'static str>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                match response {
                    Some(r) => {
                        let _ = s.write_all(r.as_bytes()).await;
                    }
                    None => tokio::time::sleep(std::time::Duration::from_secs(30)).await,
                }
            });
        }
    });
    addr.to_string()
}

#[tokio::test]
async fn a_conforming_waifu_passes() {
    let w = TestWaifu::start("w").await;
    let (ok, out) = check(&w.host(), &[]).await;
    assert!(ok, "{out}");
    assert!(out.contains("All 4 rules passed"), "{out}");
    let (ok, out) = check(&format!("http://{}", w.host()), &[]).await;
    assert!(ok, "{out}");
}

#[tokio::test]
async fn a_200_fails_and_names_204() {
    let target = canned(Some(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    ))
    .await;
    let (ok, out) = check(&target, &[]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL  it answers exactly 204 No Content"),
        "{out}"
    );
    assert!(
        out.contains("200 OK") && out.contains("requires 204"),
        "{out}"
    );
    assert!(out.contains("FAIL  its body is empty"), "{out}");
    assert!(out.contains("2 of 4 rules failed"), "{out}");
}

#[tokio::test]
async fn silence_and_absence_fail() {
    let target = canned(None).await;
    let (ok, out) = check(&target, &["--timeout", "300ms"]).await;
    assert!(!ok);
    assert!(out.contains("FAIL  it answers within the timeout"), "{out}");
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (ok, out) = check(&free.to_string(), &[]).await;
    assert!(!ok);
    assert!(out.contains("could not get an answer"), "{out}");
}
