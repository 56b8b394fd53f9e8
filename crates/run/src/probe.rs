//! Asking the app for its health, as the orchestrator will: `GET` its
//! health path on the port it listens on, any 2xx is healthy.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on one health request.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest status line read.
const MAX_HEAD: usize = 1024;

/// Why the app is not healthy (yet).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum NotHealthy {
    #[error("nothing answers on port {0} yet: {1}")]
    Refused(u16, String),
    #[error("no answer within {} s", PROBE_TIMEOUT.as_secs())]
    TimedOut,
    #[error("it answered {0}")]
    Status(u16),
    #[error("its answer is not HTTP: {0:?}")]
    NotHttp(String),
}

/// One health request to `127.0.0.1:{port}{path}`: `Ok` for a 2xx.
pub(crate) async fn check(port: u16, path: &str) -> Result<(), NotHealthy> {
    tokio::time::timeout(PROBE_TIMEOUT, ask(port, path))
        .await
        .unwrap_or(Err(NotHealthy::TimedOut))
}

async fn ask(port: u16, path: &str) -> Result<(), NotHealthy> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| NotHealthy::Refused(port, e.to_string()))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: waifu-run\r\n\
         Connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| NotHealthy::Refused(port, e.to_string()))?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < MAX_HEAD {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| NotHealthy::Refused(port, e.to_string()))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line).trim_end().to_owned();
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or(NotHealthy::NotHttp(line.chars().take(80).collect()))?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(NotHealthy::Status(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server answering every connection with `answer`.
    async fn answering(answer: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn any_2xx_is_healthy_and_nothing_else() {
        let ok = answering("HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(check(ok, "/healthz").await, Ok(()));
        let ok = answering("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        assert_eq!(check(ok, "/").await, Ok(()));
        let down = answering("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        assert_eq!(check(down, "/").await, Err(NotHealthy::Status(503)));
        let redirect = answering("HTTP/1.1 301 Moved\r\n\r\n").await;
        assert_eq!(check(redirect, "/").await, Err(NotHealthy::Status(301)));
        let junk = answering("SSH-2.0-OpenSSH\r\n").await;
        assert!(matches!(
            check(junk, "/").await,
            Err(NotHealthy::NotHttp(_))
        ));
    }

    #[tokio::test]
    async fn nothing_listening_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        assert!(matches!(
            check(port, "/").await,
            Err(NotHealthy::Refused(p, _)) if p == port
        ));
    }
}
