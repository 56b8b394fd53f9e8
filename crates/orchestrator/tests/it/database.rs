//! Database provisioning against a real PostgreSQL with password auth.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::harness::{self, Orch, temp_dir};
use crate::pg::{self, unique_db};
use crate::waifu::TestWaifu;

async fn database(orch: &Orch, name: &str, secret: &str) -> (StatusCode, Value, http::HeaderMap) {
    let body = json!({"name": name, "secret": secret});
    let r = harness::post_json(orch.internal, "/__internal/database", &body)
        .await
        .unwrap();
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v, r.headers)
}

async fn incidents(orch: &Orch) -> Vec<Value> {
    let (status, list) = orch
        .internal_json(Method::GET, "/__internal/incidents", String::new())
        .await;
    assert_eq!(status, StatusCode::OK);
    list.as_array().unwrap().clone()
}

/// Waits until an incident of `kind` for `name` is listed.
async fn wait_incident(orch: &Orch, kind: &str, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(i) = incidents(orch)
            .await
            .into_iter()
            .find(|i| i["kind"] == kind && i["name"] == name)
        {
            return i;
        }
        assert!(Instant::now() < deadline, "no {kind} incident for {name}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn credentials_work_over_tcp_and_are_stable() {
    let orch = harness::start(&unique_db("creds"), &[]).await;
    let (status, creds, _) = database(&orch, "creds", "s3cret-value").await;
    assert_eq!(status, StatusCode::OK, "{creds}");
    let keys: Vec<&str> = creds
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 5, "{creds}");
    for k in ["database", "user", "password", "host", "port"] {
        assert!(creds.get(k).is_some(), "{k} missing: {creds}");
    }
    assert!(creds["port"].is_u64(), "port is an integer: {creds}");
    assert_eq!(creds["port"], pg::cluster().port);
    assert_eq!(creds["host"], "127.0.0.1");
    assert!(creds["password"].as_str().unwrap().len() >= 64);

    let cluster = pg::cluster();
    let client = cluster
        .connect(
            creds["user"].as_str().unwrap(),
            creds["password"].as_str().unwrap(),
            creds["database"].as_str().unwrap(),
        )
        .await
        .expect("the credentials open the waifu's database");
    client
        .batch_execute("CREATE TABLE links (code text PRIMARY KEY, url text); INSERT INTO links VALUES ('a', 'b')")
        .await
        .expect("the waifu owns its database");
    let n: i64 = client
        .query_one("SELECT count(*) FROM links", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);

    let (status, again, _) = database(&orch, "creds", "s3cret-value").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, creds, "the second answer equals the first");

    // The role has exactly the privileges the design allows.
    let admin = cluster.superuser("postgres").await;
    let row = admin
        .query_one(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolconnlimit FROM pg_roles WHERE rolname = $1",
            &[&creds["user"].as_str().unwrap()],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0) && !row.get::<_, bool>(1) && !row.get::<_, bool>(2));
    assert!(row.get::<_, i32>(3) > 0, "a connection limit is set");
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn public_host_and_port_can_be_set() {
    let flags = ["--db-public-host", "postgres", "--db-public-port", "6543"];
    let orch = harness::start(&unique_db("publicdb"), &flags).await;
    let (status, creds, _) = database(&orch, "pub", "x").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(creds["host"], "postgres");
    assert_eq!(creds["port"], 6543);
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn waifus_are_isolated_both_ways() {
    let db = unique_db("isolation");
    let orch = harness::start(&db, &[]).await;
    let (_, a, _) = database(&orch, "iso-a", "secret-a").await;
    let (_, b, _) = database(&orch, "iso-b", "secret-b").await;
    let cluster = pg::cluster();
    let s = |v: &Value, k: &str| v[k].as_str().unwrap().to_owned();
    for (me, other) in [(&a, &b), (&b, &a)] {
        assert!(
            cluster
                .connect(&s(me, "user"), &s(me, "password"), &s(me, "database"))
                .await
                .is_ok()
        );
        let denied = cluster
            .connect(&s(me, "user"), &s(me, "password"), &s(other, "database"))
            .await;
        assert!(
            denied.is_err(),
            "{} opened {}",
            s(me, "user"),
            s(other, "database")
        );
        let wrong_password = cluster
            .connect(&s(other, "user"), &s(me, "password"), &s(other, "database"))
            .await;
        assert!(wrong_password.is_err());
        // The orchestrator's own state database is closed to waifus.
        let state = cluster
            .connect(&s(me, "user"), &s(me, "password"), &db)
            .await;
        assert!(state.is_err(), "a waifu opened the orchestrator's state");
    }
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_input_is_400_and_creates_nothing() {
    let db = unique_db("invalid");
    let orch = harness::start(&db, &[]).await;
    let long_secret = "s".repeat(2000);
    for (name, secret, code) in [
        ("Robert'); DROP TABLE databases;--", "x", "invalid_name"),
        ("a\"b", "x", "invalid_name"),
        ("x; DROP ROLE waifus", "x", "invalid_name"),
        ("UPPER", "x", "invalid_name"),
        ("", "x", "invalid_name"),
        ("__internal", "x", "invalid_name"),
        ("ok-name", "", "invalid_secret"),
        ("ok-name", long_secret.as_str(), "invalid_secret"),
    ] {
        let (status, body, _) = database(&orch, name, secret).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name:?}: {body}");
        assert_eq!(body["error"], code, "{name:?}: {body}");
    }
    for body in ["", "{", r#"{"name":"a"}"#, r#"{"name":"a","secret":5}"#] {
        let (status, reply) = orch
            .internal_json(Method::POST, "/__internal/database", body.to_owned())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
        assert_eq!(reply["error"], "invalid_json");
    }
    let state = pg::cluster().superuser(&db).await;
    let rows: i64 = state
        .query_one("SELECT count(*) FROM databases", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    let admin = pg::cluster().superuser("postgres").await;
    let roles: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_roles
             WHERE rolname = 'waifu_ok-name' OR rolname ILIKE '%drop%' OR rolname ILIKE '%robert%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(roles, 0);
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn concurrent_first_calls_create_one_database_with_one_answer() {
    let orch = Arc::new(harness::start(&unique_db("race"), &[]).await);
    let calls = (0..8).map(|_| {
        let orch = orch.clone();
        tokio::spawn(async move { database(&orch, "race", "same-secret").await })
    });
    let mut answers = Vec::new();
    for call in calls {
        let (status, body, _) = call.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        answers.push(body);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    let admin = pg::cluster().superuser("postgres").await;
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = 'waifu_race'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let creds = &answers[0];
    assert!(
        pg::cluster()
            .connect(
                creds["user"].as_str().unwrap(),
                creds["password"].as_str().unwrap(),
                "waifu_race"
            )
            .await
            .is_ok()
    );
    Arc::into_inner(orch).unwrap().stop().await.unwrap();
}

/// A webhook receiver that fails its first delivery, then accepts.
struct Hook {
    url: String,
    bodies: Arc<Mutex<Vec<String>>>,
}

async fn hook() -> Hook {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = bodies.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let mut all = seen.lock().unwrap();
                        all.push(String::from_utf8_lossy(&body).into_owned());
                        let status = if all.len() == 1 { 500 } else { 200 };
                        let mut r = http::Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Hook { url, bodies }
}

#[tokio::test]
async fn wrong_secrets_are_403_incidents_and_webhooks() {
    let hook = hook().await;
    let orch = harness::start(&unique_db("wrong"), &["--incident-webhook-url", &hook.url]).await;
    let (status, creds, _) = database(&orch, "victim", "the-real-secret").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body, _) = database(&orch, "victim", "an-attempted-secret").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "wrong_secret");
    assert!(body["message"].as_str().unwrap().contains("does not match"));

    let incident = wait_incident(&orch, "wrong_secret", "victim").await;
    assert_eq!(incident["source"], "127.0.0.1");
    assert!(incident["time"].as_str().unwrap().ends_with('Z'));
    // Retried after the receiver's first 500.
    let deadline = Instant::now() + Duration::from_secs(15);
    while hook.bodies.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "the webhook was not retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered: Value = serde_json::from_str(&hook.bodies.lock().unwrap()[1]).unwrap();
    assert!(delivered["text"].as_str().unwrap().contains("victim"));
    assert_eq!(delivered["text"], delivered["content"]);
    assert_eq!(delivered["kind"], "wrong_secret");

    // A bind taken by another waifu is an incident too.
    let w = TestWaifu::start("w").await;
    orch.register("owner", &w.host(), json!({"http://held.test": "/"}))
        .await;
    orch.register("intruder", &w.host(), json!({"http://held.test": "/"}))
        .await;
    let taken = wait_incident(&orch, "bind_taken", "intruder").await;
    assert!(
        taken["detail"]
            .as_str()
            .unwrap()
            .contains("http://held.test")
    );
    assert_eq!(
        incidents(&orch).await[0]["kind"],
        "bind_taken",
        "newest first"
    );

    // Nothing secret in incidents or webhook bodies.
    let everything = format!(
        "{:?}{:?}",
        incidents(&orch).await,
        hook.bodies.lock().unwrap()
    );
    for secret in [
        "the-real-secret",
        "an-attempted-secret",
        "argon2",
        creds["password"].as_str().unwrap(),
    ] {
        assert!(
            !everything.contains(secret),
            "{secret} leaked: {everything}"
        );
    }
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn wrong_secrets_are_throttled_per_name() {
    let orch = harness::start(&unique_db("throttle"), &[]).await;
    assert_eq!(database(&orch, "locked", "right").await.0, StatusCode::OK);
    assert_eq!(database(&orch, "free", "right").await.0, StatusCode::OK);
    for _ in 0..5 {
        assert_eq!(
            database(&orch, "locked", "wrong").await.0,
            StatusCode::FORBIDDEN
        );
    }
    for secret in ["wrong", "right"] {
        let (status, body, headers) = database(&orch, "locked", secret).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error"], "too_many_attempts");
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
    }
    assert_eq!(
        database(&orch, "free", "right").await.0,
        StatusCode::OK,
        "other names unaffected"
    );
    wait_incident(&orch, "throttled", "locked").await;
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn answers_survive_a_restart_and_secrets_never_reach_the_database() {
    let db = unique_db("dbrestart");
    let data = temp_dir("dbrestart");
    let flags = ["--data-dir", data.to_str().unwrap()];
    let orch = harness::start(&db, &flags).await;
    let (_, first, _) = database(&orch, "keeper", "keeper-secret-123").await;
    orch.stop().await.unwrap();
    let orch = harness::start(&db, &flags).await;
    let (status, second, _) = database(&orch, "keeper", "keeper-secret-123").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first, second);

    let dump = pg::cluster().dumpall();
    assert!(
        dump.contains("waifu_keeper"),
        "the dump covers the waifu's role"
    );
    assert!(
        !dump.contains("keeper-secret-123"),
        "the secret is in pg_dumpall"
    );
    assert!(
        !dump.contains(first["password"].as_str().unwrap()),
        "the password is in pg_dumpall"
    );
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn interrupted_provisioning_is_finished_and_squatters_are_refused() {
    let db = unique_db("reconcile");
    let data = temp_dir("reconcile");
    let flags = ["--data-dir", data.to_str().unwrap()];
    let orch = harness::start(&db, &flags).await;
    let (_, creds, _) = database(&orch, "half", "half-secret").await;
    orch.stop().await.unwrap();

    // Interrupted after the role, before the database: the row says
    // provisioning and the database is gone.
    let admin = pg::cluster().superuser("postgres").await;
    admin
        .batch_execute("DROP DATABASE waifu_half")
        .await
        .unwrap();
    let state = pg::cluster().superuser(&db).await;
    state
        .execute(
            "UPDATE databases SET state = 'provisioning' WHERE name = 'half'",
            &[],
        )
        .await
        .unwrap();
    let orch = harness::start(&db, &flags).await;
    // The reconciler finishes it at start-up, without the secret.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let row = state
            .query_one("SELECT state FROM databases WHERE name = 'half'", &[])
            .await
            .unwrap();
        if row.get::<_, &str>(0) == "ready" {
            break;
        }
        assert!(Instant::now() < deadline, "the reconciler did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = |k: &str| creds[k].as_str().unwrap().to_owned();
    assert!(
        pg::cluster()
            .connect(&s("user"), &s("password"), &s("database"))
            .await
            .is_ok()
    );

    // Interrupted between CREATE DATABASE and its comment: adopted.
    admin
        .batch_execute("COMMENT ON DATABASE waifu_half IS NULL")
        .await
        .unwrap();
    state
        .execute(
            "UPDATE databases SET state = 'provisioning' WHERE name = 'half'",
            &[],
        )
        .await
        .unwrap();
    let (status, again, _) = database(&orch, "half", "half-secret").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again, creds);

    // A database of that name not made by waifus is never adopted.
    admin
        .batch_execute("CREATE DATABASE waifu_squat")
        .await
        .unwrap();
    let (status, body, _) = database(&orch, "squat", "x").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "conflict");
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn database_outage_is_503_and_recovers_without_restart() {
    let (orch, relay) = harness::start_behind_relay(&unique_db("dbout")).await;
    assert_eq!(database(&orch, "before", "x").await.0, StatusCode::OK);
    relay.cut();
    let started = Instant::now();
    let (status, body, headers) = database(&orch, "during", "x").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "database_unavailable");
    assert!(headers.contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    relay.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    while database(&orch, "during", "x").await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "provisioning did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    orch.stop().await.unwrap();
}
