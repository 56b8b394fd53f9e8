//! The load a deploy is judged under: keep-alive clients sending GETs to
//! the waifu through the orchestrator's public port the whole time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Clients at once.
const CLIENTS: usize = 8;
/// Bound on one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The clients, until [`Load::finish`].
#[derive(Debug)]
pub(super) struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

/// What the load saw.
#[derive(Debug)]
pub(super) struct Outcome {
    pub sent: u64,
    /// What each failed request got: no answer, or 502, 503 or 504.
    pub failed: Vec<String>,
}

impl Load {
    /// Starts sending `GET /{name}{path}` to `public`.
    pub fn start(public: SocketAddr, name: &str, path: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let url = format!("http://{public}/{name}{path}");
        let clients = (0..CLIENTS)
            .map(|_| {
                let (stop, sent, failed, url) =
                    (stop.clone(), sent.clone(), failed.clone(), url.clone());
                tokio::spawn(async move {
                    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
                        .pool_max_idle_per_host(1)
                        .build_http();
                    while !stop.load(Ordering::Relaxed) {
                        let request = http::Request::get(&url)
                            .header(http::header::HOST, "localhost")
                            .body(Empty::new());
                        let Ok(request) = request else { return };
                        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
                            let response =
                                client.request(request).await.map_err(|e| e.to_string())?;
                            let status = response.status();
                            response
                                .into_body()
                                .collect()
                                .await
                                .map_err(|e| format!("{status}, body cut: {e}"))?;
                            Ok::<_, String>(status)
                        })
                        .await
                        .unwrap_or_else(|_| Err("no answer within 30 s".to_owned()));
                        sent.fetch_add(1, Ordering::Relaxed);
                        let failure = match answer {
                            Ok(status) if matches!(status.as_u16(), 502..=504) => {
                                Some(status.to_string())
                            }
                            Ok(_) => None,
                            Err(e) => Some(e),
                        };
                        if let Some(f) = failure {
                            failed.lock().unwrap_or_else(|e| e.into_inner()).push(f);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failed,
            clients,
        }
    }

    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub async fn finish(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            let _ = client.await;
        }
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Outcome {
            sent: self.sent.load(Ordering::Relaxed),
            failed,
        }
    }
}
