//! A waifu that rotates its secret while its hello loop runs never sends
//! the old secret after the rotation: a hello started meanwhile waits for
//! it and carries the new one (against an orchestrator double that answers
//! the rotation slowly and records every secret it is sent).

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// What the double was sent, in order: (endpoint, secret, when it arrived,
/// when it was answered).
type Seen = Arc<Mutex<Vec<(&'static str, String, Instant, Instant)>>>;

/// The double; `arrived` is told when a rotation call has come in.
async fn orchestrator(seen: Seen, arrived: Arc<tokio::sync::Notify>) -> std::net::SocketAddr {
    let (on_hello, on_rotate) = (seen.clone(), seen);
    let app = Router::new()
        .route(
            "/__internal/hello",
            post(move |Json(body): Json<Value>| async move {
                let now = Instant::now();
                let secret = body["secret"].as_str().unwrap_or_default().to_owned();
                on_hello.lock().unwrap().push(("hello", secret, now, now));
                Json(json!({"name": body["name"], "url": "http://localhost/w", "binds": []}))
            }),
        )
        .route(
            "/__internal/database/rotate",
            post(move |Json(body): Json<Value>| async move {
                let now = Instant::now();
                arrived.notify_one();
                // Long enough for hellos sent meanwhile to arrive first,
                // if nothing holds them back.
                tokio::time::sleep(Duration::from_millis(400)).await;
                let secret = body["secret"].as_str().unwrap_or_default().to_owned();
                on_rotate
                    .lock()
                    .unwrap()
                    .push(("rotate", secret, now, Instant::now()));
                Json(json!({
                    "database": "w", "user": "waifu_w", "password": "new",
                    "host": "127.0.0.1", "port": 5432
                }))
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn no_hello_carries_the_old_secret_once_a_rotation_has_begun() {
    let seen: Seen = Arc::default();
    let arrived = Arc::new(tokio::sync::Notify::new());
    let addr = orchestrator(seen.clone(), arrived.clone()).await;
    let waifu = waifu::Waifu::new("w", "127.0.0.1:9")
        .orchestrator(format!("http://{addr}"))
        .secret("old-secret-0123456789");
    waifu.hello().await.unwrap();
    let rotating = {
        let waifu = waifu.clone();
        tokio::spawn(async move { waifu.rotate_secret("new-secret-0123456789").await })
    };
    // Hellos sent while the rotation is under way.
    arrived.notified().await;
    let hellos: Vec<_> = (0..3)
        .map(|_| {
            let waifu = waifu.clone();
            tokio::spawn(async move { waifu.hello().await })
        })
        .collect();
    rotating.await.unwrap().unwrap();
    for hello in hellos {
        hello.await.unwrap().unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    let (_, _, _, rotated) = seen.iter().find(|(what, ..)| *what == "rotate").unwrap();
    let late: Vec<_> = seen
        .iter()
        .filter(|(what, _, arrived, _)| *what == "hello" && arrived > rotated)
        .collect();
    assert_eq!(
        late.len(),
        3,
        "the hellos waited for the rotation: {seen:?}"
    );
    assert!(
        late.iter()
            .all(|(_, secret, ..)| secret == "new-secret-0123456789"),
        "{seen:?}"
    );
}
