//! What each waifu's role may use of the server: `DB_CONNECTION_LIMIT`
//! connections and statements of `DB_STATEMENT_TIMEOUT` at most, set when
//! the role is made and on existing roles when the settings change.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::json;
use tokio_postgres::error::SqlState;

use crate::harness;
use crate::pg::{self, unique_db};

#[tokio::test]
async fn connection_limit_and_statement_timeout_hold_per_role() {
    let db = unique_db("limits");
    let cluster = pg::cluster();
    let orch = harness::start(
        &db,
        &[
            "--db-connection-limit",
            "3",
            "--db-statement-timeout",
            "300ms",
        ],
    )
    .await;
    let (status, creds) = orch
        .internal_json(
            Method::POST,
            "/__internal/database",
            json!({"name": "capped", "secret": "capped-secret"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{creds}");
    let (user, password) = (
        creds["user"].as_str().unwrap(),
        creds["password"].as_str().unwrap(),
    );
    let database = creds["database"].as_str().unwrap();
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(
            cluster
                .connect(user, password, database)
                .await
                .expect("within the limit"),
        );
    }
    let e = cluster
        .connect(user, password, database)
        .await
        .expect_err("one connection over the limit");
    assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e:?}");
    let e = open[0]
        .query("SELECT pg_sleep(2)", &[])
        .await
        .expect_err("cancelled at the statement timeout");
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{e:?}");
    open[0].query("SELECT pg_sleep(0.05)", &[]).await.unwrap();
    drop(open);
    orch.stop().await.unwrap();

    // Restarted with other settings: the existing role takes them.
    let orch = harness::start(&db, &["--db-connection-limit", "5"]).await;
    let superuser = cluster.superuser(&db).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = superuser
            .query_one(
                "SELECT r.rolconnlimit, (SELECT count(*) FROM pg_db_role_setting s
                                         WHERE s.setrole = r.oid) FROM pg_roles r
                 WHERE r.rolname = $1",
                &[&user],
            )
            .await
            .unwrap();
        if (row.get::<_, i32>(0), row.get::<_, i64>(1)) == (5, 0) {
            break;
        }
        assert!(Instant::now() < deadline, "the new limits were not applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut open = Vec::new();
    for _ in 0..5 {
        open.push(
            cluster
                .connect(user, password, database)
                .await
                .expect("within the new limit"),
        );
    }
    open[0]
        .query("SELECT pg_sleep(0.5)", &[])
        .await
        .expect("no timeout any more");
    drop(open);
    orch.stop().await.unwrap();
}
