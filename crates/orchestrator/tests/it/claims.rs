//! A claimed name can be recovered: claiming a name that instances serve
//! without a secret is an incident naming them, and `orchestrator claim
//! release` frees the name, takes the database password its secret gave,
//! and lets the owner claim it again.

use std::process::Command;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{self, Orch};
use crate::pg::{self, unique_db};
use crate::waifu::TestWaifu;

async fn post(orch: &Orch, path: &str, body: Value) -> (StatusCode, Value) {
    orch.internal_json(Method::POST, path, body.to_string())
        .await
}

async fn list(orch: &Orch, path: &str) -> Vec<Value> {
    let (status, body) = orch.internal_json(Method::GET, path, String::new()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body.as_array().unwrap().clone()
}

/// `orchestrator claim release NAME` against `db`; its output.
fn release(db: &str, name: &str) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    cmd.args(["claim", "release", name])
        .env("DATABASE_URL", pg::cluster().url(db))
        .env_remove("DATABASE_URL_FILE")
        .env_remove("INCIDENT_WEBHOOK_URL");
    harness::output_within(&mut cmd, Duration::from_secs(60))
}

#[tokio::test]
async fn a_hijacked_name_is_released_and_its_owner_claims_it_again() {
    let db = unique_db("release");
    let orch = harness::start(&db, &[]).await;
    let cluster = pg::cluster();
    // A seed-only waifu: no secret.
    let owner = TestWaifu::start("owner").await;
    orch.register("blog", &owner.host(), json!({})).await;
    // Someone else claims its name with a secret of their own.
    let intruder = TestWaifu::start("intruder").await;
    let (status, body) = post(
        &orch,
        "/__internal/hello",
        json!({"name": "blog", "host": intruder.host(), "secret": "intruder-secret"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let incidents = list(&orch, "/__internal/incidents").await;
    let claimed = incidents
        .iter()
        .find(|i| i["kind"] == "name_claimed" && i["name"] == "blog")
        .unwrap_or_else(|| panic!("no name_claimed incident: {incidents:?}"));
    let detail = claimed["detail"].as_str().unwrap();
    assert!(detail.contains(&owner.addr.to_string()), "{detail}");
    assert!(!detail.contains(&intruder.addr.to_string()), "{detail}");
    // It takes the database, and the owner is locked out of its own name.
    let (status, taken) = post(
        &orch,
        "/__internal/database",
        json!({"name": "blog", "secret": "intruder-secret"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{taken}");
    let password = taken["password"].as_str().unwrap();
    let session = cluster
        .connect("waifu_blog", password, "waifu_blog")
        .await
        .expect("the intruder's credentials work before the release");
    let (status, _) = post(
        &orch,
        "/__internal/hello",
        json!({"name": "blog", "host": owner.host()}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The operator releases the claim.
    let out = release(&db, "blog");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("released the claim on blog"), "{stdout}");
    assert!(stdout.contains("1 session(s) ended"), "{stdout}");
    // What the intruder's secret gave stops working at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !session.is_closed() {
        assert!(
            std::time::Instant::now() < deadline,
            "the session was not ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        cluster
            .connect("waifu_blog", password, "waifu_blog")
            .await
            .is_err()
    );
    let audit = list(&orch, "/__internal/audit?name=blog").await;
    assert_eq!(audit[0]["action"], "claim_released", "{audit:?}");
    assert_eq!(audit[0]["source"], "operator (command line)");
    let incidents = list(&orch, "/__internal/incidents").await;
    assert_eq!(incidents[0]["kind"], "claim_released", "{incidents:?}");

    // The owner claims its name, and its database answers to its secret.
    let (status, body) = post(
        &orch,
        "/__internal/hello",
        json!({"name": "blog", "host": owner.host(), "secret": "owner-secret"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, mine) = post(
        &orch,
        "/__internal/database",
        json!({"name": "blog", "secret": "owner-secret"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{mine}");
    let new_password = mine["password"].as_str().unwrap();
    assert_ne!(new_password, password);
    cluster
        .connect("waifu_blog", new_password, "waifu_blog")
        .await
        .expect("the owner's new credentials work");
    let (status, _) = post(
        &orch,
        "/__internal/database",
        json!({"name": "blog", "secret": "intruder-secret"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Repeating is harmless; a bad name is a precise error.
    let out = release(&db, "nobody-here");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nobody-here was not claimed"));
    let out = release(&db, "Not_A_Name");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"Not_A_Name\" is not a waifu name"),
        "{stderr}"
    );
    orch.stop().await.unwrap();
}
