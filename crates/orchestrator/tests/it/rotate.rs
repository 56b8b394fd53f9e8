//! Rotating a waifu's secret: one call replaces it for hellos and the
//! database, the old secret and password stop working for new connections,
//! open sessions go on; a wrong secret changes nothing.

use http::{Method, StatusCode};
use serde_json::json;
use tokio_postgres::error::SqlState;

use crate::data::{as_waifu, credentials};
use crate::harness;
use crate::pg::unique_db;
use crate::waifu::TestWaifu;

#[tokio::test]
async fn a_rotation_replaces_secret_and_password_and_keeps_open_sessions() {
    let db = unique_db("rotate");
    let data_dir = harness::temp_dir("data");
    let orch = harness::start(&db, &["--data-dir", data_dir.to_str().unwrap()]).await;
    let w = TestWaifu::start("w").await;
    let (status, _) = orch
        .hello(json!({"name": "turn", "host": w.host(), "secret": "old-secret"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let old = credentials(&orch, "turn", "old-secret").await;
    let open = as_waifu(&old).await.unwrap();
    open.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let rotate = |secret: &str, new: &str| {
        json!({"name": "turn", "secret": secret, "newSecret": new}).to_string()
    };
    // A wrong secret: 403, an incident, nothing changes.
    let (status, body) = orch
        .internal_json(
            Method::POST,
            "/__internal/database/rotate",
            rotate("a-guess", "mine-now"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "wrong_secret");
    let (_, incidents) = orch
        .internal_json(Method::GET, "/__internal/incidents", String::new())
        .await;
    assert_eq!(incidents[0]["kind"], "wrong_secret", "{incidents}");
    as_waifu(&old).await.expect("the old password still works");
    // Bad input.
    for (body, want) in [
        (rotate("old-secret", "old-secret"), "same_secret"),
        (rotate("old-secret", ""), "invalid_secret"),
        (
            json!({"name": "nodb", "secret": "x", "newSecret": "y"}).to_string(),
            "no_database",
        ),
    ] {
        let (_, answer) = orch
            .internal_json(Method::POST, "/__internal/database/rotate", body)
            .await;
        assert_eq!(answer["error"], want, "{answer}");
    }
    // The rotation.
    let (status, new) = orch
        .internal_json(
            Method::POST,
            "/__internal/database/rotate",
            rotate("old-secret", "new-secret"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{new}");
    assert_ne!(new["password"], old["password"]);
    assert_eq!(new["user"], old["user"]);
    // New connections: the old password fails, the new one works; the
    // session that was open goes on.
    let e = as_waifu(&old)
        .await
        .expect_err("the old password stops working");
    assert_eq!(e.code(), Some(&SqlState::INVALID_PASSWORD), "{e:?}");
    let fresh = as_waifu(&new).await.expect("the new password works");
    assert_eq!(
        fresh
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        1
    );
    open.query_one("SELECT 1", &[])
        .await
        .expect("an open session goes on");
    // The secret is the name's everywhere: hellos and database calls.
    let (status, _) = orch
        .hello(json!({"name": "turn", "host": w.host(), "secret": "old-secret"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = orch
        .hello(json!({"name": "turn", "host": w.host(), "secret": "new-secret"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(credentials(&orch, "turn", "new-secret").await, new);
    let (_, audit) = orch
        .internal_json(Method::GET, "/__internal/audit?name=turn", String::new())
        .await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "secret_rotated"),
        "{audit}"
    );
    // An operator rotates it too, with no old secret: from a file, with the
    // orchestrator's own DATA_DIR (its password key).
    let file = data_dir.join("new-secret");
    std::fs::write(&file, "operator-secret\n").unwrap();
    let cli = |dir: &std::path::Path| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        cmd.args([
            "db",
            "rotate",
            "turn",
            "--new-secret-file",
            file.to_str().unwrap(),
        ])
        .env("DATABASE_URL", crate::pg::cluster().url(&db))
        .env("DATA_DIR", dir);
        harness::output_within(&mut cmd, std::time::Duration::from_secs(60))
    };
    let wrong_dir = harness::temp_dir("elsewhere");
    let out = cli(&wrong_dir);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("db-password.key"),
        "{out:?}"
    );
    assert!(
        !wrong_dir.join("db-password.key").exists(),
        "no key is made"
    );
    let out = cli(&data_dir);
    assert!(out.status.success(), "{out:?}");
    let third = credentials(&orch, "turn", "operator-secret").await;
    as_waifu(&third)
        .await
        .expect("the operator's secret gives working credentials");
    assert!(as_waifu(&new).await.is_err());
    let (status, _) = orch
        .hello(json!({"name": "turn", "host": w.host(), "secret": "new-secret"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    orch.stop().await.unwrap();
}
