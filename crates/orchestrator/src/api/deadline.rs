//! The deadline every internal API call answers within, whatever PostgreSQL
//! or Argon2 are doing.
//!
//! A server that is stopped (`SIGSTOP`), swapping or overloaded keeps its
//! sockets open and acknowledges every byte, so neither connect timeouts
//! nor TCP bounds fire and a statement timeout is never read: a call would
//! wait as long as the server stalls. Here each call runs as a task of its
//! own and the client gets 503 `database_unavailable` with `Retry-After` at
//! [`DEADLINE`]. The task itself goes on and finishes (or fails) when the
//! server moves again, so a hello is never half applied to this process's
//! memory. A refusal is only ever answered after its incident is committed,
//! so a call cut off by the deadline is a 503, never a 401, 403 or 429
//! without its record. The tasks are tracked and cut at shutdown.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, DEADLINE};
use super::state::AppState;

/// The middleware: the call's answer, or 503 at the deadline.
pub(crate) async fn within_deadline(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    // An upgrade waits for the new process to serve.
    let deadline = if request.uri().path() == crate::upgrade::API_PATH {
        crate::upgrade::READY_WITHIN + std::time::Duration::from_secs(5)
    } else {
        DEADLINE
    };
    let stop = state.calls.stop.clone();
    let call = state.calls.tasks.spawn(async move {
        tokio::select! {
            response = next.run(request) => Some(response),
            () = stop.cancelled() => None,
        }
    });
    match tokio::time::timeout(deadline, call).await {
        Ok(Ok(Some(response))) => response,
        Ok(Ok(None)) | Ok(Err(_)) => ApiError::Stopping.into_response(),
        Err(_) => ApiError::TimedOut.into_response(),
    }
}
