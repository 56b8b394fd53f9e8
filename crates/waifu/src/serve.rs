//! Serving a waifu's router with its health endpoint, and leaving
//! gracefully on SIGTERM: goodbye, a grace period, then the drain.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tracing::{info, warn};

use std::time::Duration;

use crate::{GOODBYE_GRACE, ServeError, Waifu, backoff};

impl Waifu {
    /// Serves `router` plus `GET /__internal/health` (204) on all
    /// interfaces at [`Waifu::port`], announces the waifu (see
    /// [`Waifu::announce`]) once listening, and on SIGTERM or SIGINT leaves
    /// gracefully: it stops saying hello, says goodbye (so no new request
    /// comes), keeps accepting for [`GOODBYE_GRACE`], stops accepting, waits
    /// for the requests in flight (at most [`Waifu::drain_for`]) and
    /// returns. ([`Waifu::listen`] narrows the interfaces.)
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), waifu::ServeError> {
    /// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
    /// waifu::Waifu::new("hi", "hi:8080").serve(app).await
    /// # }
    /// ```
    pub async fn serve(self, router: Router) -> Result<(), ServeError> {
        let app = router.route(
            "/__internal/health",
            get(|| async { StatusCode::NO_CONTENT }),
        );
        let listener = tokio::net::TcpListener::bind((self.listen, self.port))
            .await
            .map_err(|source| ServeError::Listen {
                port: self.port,
                source,
            })?;
        info!(name = %self.name, port = self.port, "listening");
        let announcer = tokio::spawn(self.clone().announce());
        let (draining_tx, draining) = tokio::sync::oneshot::channel::<()>();
        let leave = {
            let waifu = self.clone();
            async move {
                shutdown_signal().await;
                announcer.abort();
                waifu.leave().await;
                let _ = draining_tx.send(());
            }
        };
        let served = axum::serve(listener, app).with_graceful_shutdown(leave);
        let served = served.into_future();
        tokio::pin!(served);
        tokio::select! {
            r = &mut served => return r.map_err(ServeError::Serve),
            _ = draining => {}
        }
        // Listening has stopped: requests in flight get `drain_for`.
        match tokio::time::timeout(self.drain_for, served).await {
            Ok(r) => r.map_err(ServeError::Serve),
            Err(_) => {
                warn!(within = ?self.drain_for, "requests still in flight: stopping anyway");
                Ok(())
            }
        }
    }

    /// Says goodbye (a few tries within 5 s), then lets [`GOODBYE_GRACE`]
    /// pass so that every orchestrator has stopped sending.
    async fn leave(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut attempt = 0;
        loop {
            match tokio::time::timeout_at(deadline, self.goodbye()).await {
                Ok(Ok(())) => {
                    info!("said goodbye: draining");
                    break;
                }
                Ok(Err(e)) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                    let wait = backoff(attempt).min(Duration::from_millis(500));
                    attempt += 1;
                    warn!(error = %e, "goodbye failed; retrying");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "goodbye refused; stopping anyway");
                    return;
                }
                Err(_) => {
                    warn!("the orchestrator did not take the goodbye within 5 s; stopping anyway");
                    return;
                }
            }
        }
        tokio::time::sleep(GOODBYE_GRACE).await;
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!("shutting down");
}
