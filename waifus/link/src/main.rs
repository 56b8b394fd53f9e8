//! `link`, a URL shortener waifu on its own database.
//!
//! - `POST /link` `{"url"}` → 201 `{"code","url"}`; only absolute http/https
//!   URLs, else 400 with a JSON error;
//! - `GET /link/{code}` → 302 to the URL; unknown code → 404.
//!
//! Deployed with `WAIFU_BINDS='{"https://link.waifu": "/link"}'`, so
//! `link.waifu/{code}` redirects too. Its schema is created on start; links
//! live in PostgreSQL and survive restarts.

use std::process::ExitCode;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use deadpool_postgres::Pool;
use serde_json::json;
use tracing::warn;

/// Schema migrations, applied in order on start; never edit a shipped one.
const MIGRATIONS: &[&str] = &["CREATE TABLE IF NOT EXISTS links (
        code       text PRIMARY KEY,
        url        text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )"];
/// Longest URL accepted.
const MAX_URL: usize = 2048;
const CODE_LEN: usize = 7;

#[tokio::main]
async fn main() -> ExitCode {
    waifu::init_logging();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let waifu = waifu::Waifu::from_env()?.default_version(env!("CARGO_PKG_VERSION"));
    let pool = waifu.migrated_database(MIGRATIONS).await?.pool;
    let app = Router::new()
        .route("/link", post(create))
        .route("/link/{code}", get(follow))
        .with_state(pool);
    waifu.serve(app).await?;
    Ok(())
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

/// Whether `url` is an absolute http(s) URL with a host.
fn valid_url(url: &str) -> bool {
    if url.len() > MAX_URL || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    match url.parse::<http::Uri>() {
        Ok(uri) => {
            matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.host().is_some_and(|h| !h.is_empty())
        }
        Err(_) => false,
    }
}

async fn create(State(pool): State<Pool>, body: axum::body::Bytes) -> Response {
    let url = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("url")?.as_str().map(str::to_owned));
    let Some(url) = url else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "send {\"url\": \"https://...\"}",
        );
    };
    if !valid_url(&url) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_url",
            "only absolute http:// or https:// URLs with a host can be shortened",
        );
    }
    let Ok(client) = pool.get().await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "try again",
        );
    };
    for _ in 0..5 {
        let code: String = (0..CODE_LEN).map(|_| fastrand::alphanumeric()).collect();
        let inserted = client
            .execute(
                "INSERT INTO links (code, url) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&code, &url],
            )
            .await;
        match inserted {
            Ok(1) => {
                return (StatusCode::CREATED, Json(json!({"code": code, "url": url})))
                    .into_response();
            }
            Ok(_) => continue, // the code was taken: draw another
            Err(e) => {
                warn!(error = %e, "could not store a link");
                break;
            }
        }
    }
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
        "try again",
    )
}

async fn follow(State(pool): State<Pool>, Path(code): Path<String>) -> Response {
    let Ok(client) = pool.get().await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "try again",
        );
    };
    match client
        .query_opt("SELECT url FROM links WHERE code = $1", &[&code])
        .await
    {
        Ok(Some(row)) => {
            let url: String = row.get(0);
            (StatusCode::FOUND, [(header::LOCATION, url)]).into_response()
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "unknown_code",
            "no link has this code",
        ),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "try again",
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls() {
        for ok in [
            "https://example.com",
            "http://a.b/c?d=e#f",
            "https://[::1]:8080/x",
        ] {
            assert!(super::valid_url(ok), "{ok}");
        }
        for bad in [
            "",
            "example.com",
            "/relative",
            "ftp://x",
            "javascript:alert(1)",
            "https://",
            "http:// a",
        ] {
            assert!(!super::valid_url(bad), "{bad}");
        }
        assert!(!super::valid_url(&format!(
            "https://a.b/{}",
            "x".repeat(3000)
        )));
    }
}
