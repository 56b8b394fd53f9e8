//! Deploys under load, end to end, every part a real process: the
//! orchestrator on its managed PostgreSQL, waifus built on this SDK (this test
//! binary started again as a waifu, see [`rollout_waifu`]) and the Python
//! waifu, with eight keep-alive clients sending requests through the public
//! proxy the whole time.
//!
//! - a new version replaces the old one and the old one gets SIGTERM: no
//!   request fails, every POST is done exactly once, and once the new version
//!   has answered, no request started later is answered by the old one;
//! - an SDK waifu gets SIGTERM: it says goodbye, leaves, exits 0, and no
//!   request fails;
//! - an instance that said goodbye is then killed with SIGKILL: no request fails;
//! - an instance is killed with SIGKILL without a goodbye: only requests it
//!   had already received may fail, and none is done twice;
//! - the Python waifu gets SIGTERM under load: no request fails;
//! - a waifu writing to and reading from its database under load has the
//!   database restored from a dump (`orchestrator db restore`): its
//!   requests are held while the database is swapped, none fails, and the
//!   held ones all complete after the swap.
//!
//! Tests run one at a time (each has its own orchestrator) so that their
//! load does not add up on a small machine.

#![allow(clippy::unwrap_used)]

mod load;
mod platform;
mod run;
mod systemd;
mod upgrade;

use load::*;
use platform::*;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use waifus_testkit::{Proc, free_port};

/// Set in the environment of this binary when it runs as a waifu; the value
/// is the file where the waifu writes the key of every `POST /work` it does.
const AS_WAIFU: &str = "ROLLOUT_TEST_WAIFU_LOG";

/// Not a test of its own: the waifu the other tests start, by running this
/// binary again with only this test selected and [`AS_WAIFU`] set. It answers
/// `GET /` and `POST /work` with `"{version} {host}"`, writing the request's
/// `x-key` to its log before answering.
#[test]
fn rollout_waifu() {
    let Ok(log) = std::env::var(AS_WAIFU) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let code = runtime.block_on(serve_as_waifu(PathBuf::from(log)));
    std::process::exit(code);
}

/// Set (in milliseconds) for a waifu that says hello again that often.
const REHELLO_MS: &str = "TEST_REHELLO_MS";

async fn serve_as_waifu(log: PathBuf) -> i32 {
    // The SDK's log goes to stderr (the platform keeps it in `{label}.log`).
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let mut waifu = waifu::Waifu::from_env().unwrap();
    if let Ok(ms) = std::env::var(REHELLO_MS) {
        waifu = waifu.rehello_every(Duration::from_millis(ms.parse().unwrap()));
    }
    let who = format!(
        "{} {}",
        std::env::var("WAIFU_VERSION").unwrap_or_default(),
        std::env::var("WAIFU_HOST").unwrap()
    );
    let log = Arc::new(Mutex::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap(),
    ));
    // With a database, every POST is a row and every GET counts them.
    let pool = match std::env::var(WITH_DATABASE) {
        Ok(_) => {
            let db = waifu.database().await.unwrap();
            // Two instances start at once: one creates the table (each
            // statement committed on its own, the lock held across them).
            let client = db.pool.get().await.unwrap();
            for statement in [
                "SELECT pg_advisory_lock(1)",
                "CREATE TABLE IF NOT EXISTS work (key text PRIMARY KEY)",
                "SELECT pg_advisory_unlock(1)",
            ] {
                client.batch_execute(statement).await.unwrap();
            }
            drop(client);
            Some(db.pool)
        }
        Err(_) => None,
    };
    let answer = who.clone();
    let reads = pool.clone();
    let recycled = pool.clone();
    let writes = pool;
    let rotating = waifu.clone();
    let app = Router::new()
        .route(
            "/",
            get(move || async move {
                let Some(pool) = reads else {
                    return Ok(answer);
                };
                let client = pool.get().await.map_err(failed)?;
                let row = client
                    .query_one("SELECT count(*) FROM work", &[])
                    .await
                    .map_err(failed)?;
                Ok::<_, (http::StatusCode, String)>(format!("{answer} {}", row.get::<_, i64>(0)))
            }),
        )
        // Test hooks: rotate this waifu's secret; make its pool open new
        // connections (those it has are closed once they are returned).
        .route(
            "/rotate",
            post(move |body: String| async move {
                rotating.rotate_secret(body).await.map_err(failed)?;
                Ok::<_, (http::StatusCode, String)>("rotated")
            }),
        )
        .route(
            "/recycle",
            post(move || async move {
                if let Some(pool) = recycled {
                    // Every connection opened before now is closed as soon
                    // as it is idle (under load most are in use at any
                    // moment), so the next requests open new ones.
                    let since = Instant::now();
                    tokio::spawn(async move {
                        for _ in 0..100 {
                            pool.retain(|_, metrics| metrics.created > since);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    });
                }
                "recycled"
            }),
        )
        .route(
            "/work",
            post(move |headers: http::HeaderMap, body: Bytes| async move {
                let key = headers["x-key"].to_str().unwrap().to_owned();
                assert_eq!(body.len(), BODY, "the whole upload arrives");
                if let Some(pool) = writes {
                    let client = pool.get().await.map_err(failed)?;
                    client
                        .execute("INSERT INTO work (key) VALUES ($1)", &[&key])
                        .await
                        .map_err(failed)?;
                }
                writeln!(log.lock().unwrap(), "{key}").unwrap();
                Ok::<_, (http::StatusCode, String)>(who)
            }),
        );
    match waifu.serve(app).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// A database error as the waifu answers it: 500.
fn failed(e: impl std::fmt::Display) -> (http::StatusCode, String) {
    (http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Set (to anything) when the waifu keeps its work in its database.
const WITH_DATABASE: &str = "ROLLOUT_TEST_WITH_DATABASE";

/// The size of every POST body.
const BODY: usize = 4096;
/// Keep-alive clients sending requests the whole time.
const CLIENTS: usize = 8;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_replaces_the_old_under_load_with_no_failed_request() {
    let _one = ONE_AT_A_TIME.lock().await;
    let platform = Platform::start("versions").await;
    let (mut old, old_log, _) = platform.sdk_waifu("roll", "1.0.0", "old");
    platform.until_answered("roll", "1.0.0 ").await;

    let load = Load::start(platform.public, "roll", true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut new, new_log, _) = platform.sdk_waifu("roll", "2.0.0", "new");
    let first_new = load.until_answered_by("2.0.0 ").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    old.signal("-TERM");
    assert_eq!(old.exit_code(Duration::from_secs(30)), Some(0));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcomes = load.finish().await;

    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    each_post_done_once(&outcomes, &[&old_log, &new_log]);
    let old_answers = outcomes.iter().filter(|o| o.body.starts_with("1.0.0 "));
    assert!(old_answers.clone().count() > 50, "the old version served");
    let late: Vec<_> = old_answers.filter(|o| o.started > first_new).collect();
    assert!(
        late.is_empty(),
        "the old version answered requests sent after the new one had: {late:?}"
    );
    new.signal("-TERM");
    assert_eq!(new.exit_code(Duration::from_secs(30)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_waifu_says_goodbye_on_sigterm_and_leaves_with_no_failed_request() {
    let _one = ONE_AT_A_TIME.lock().await;
    let platform = Platform::start("sigterm").await;
    let (mut a, a_log, a_host) = platform.sdk_waifu("calm", "1", "a");
    let (_b, b_log, b_host) = platform.sdk_waifu("calm", "1", "b");
    platform
        .until_answered("calm", &format!("1 {a_host}"))
        .await;
    platform
        .until_answered("calm", &format!("1 {b_host}"))
        .await;

    let load = Load::start(platform.public, "calm", true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.signal("-TERM");
    assert_eq!(a.exit_code(Duration::from_secs(30)), Some(0));
    // Its goodbye removed it: only b is left, with no health check needed.
    platform.until_serving("calm", 1).await;
    let (status, list) = fetch(platform.internal, "GET", "/__internal/waifus", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(!list.contains(&a_host), "{list}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = load.finish().await;

    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    each_post_done_once(&outcomes, &[&a_log, &b_log]);
    let actions = platform.audited("calm").await;
    assert!(actions.iter().any(|a| a == "goodbye"), "{actions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_after_its_goodbye_fails_no_request() {
    let _one = ONE_AT_A_TIME.lock().await;
    let platform = Platform::start("goodbye-kill").await;
    let (mut a, a_log, a_host) = platform.sdk_waifu("pair", "1", "a");
    let (_b, b_log, b_host) = platform.sdk_waifu("pair", "1", "b");
    platform
        .until_answered("pair", &format!("1 {a_host}"))
        .await;
    platform
        .until_answered("pair", &format!("1 {b_host}"))
        .await;

    let load = Load::start(platform.public, "pair", true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    platform.goodbye("pair", &a_host).await;
    let said_goodbye = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.signal("-KILL");
    a.exit_code(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcomes = load.finish().await;

    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    each_post_done_once(&outcomes, &[&a_log, &b_log]);
    let a_prefix = format!("1 {a_host}");
    let a_answers = outcomes.iter().filter(|o| o.body == a_prefix);
    assert!(
        a_answers.clone().count() > 20,
        "a served before its goodbye"
    );
    let late: Vec<_> = a_answers.filter(|o| o.started > said_goodbye).collect();
    assert!(late.is_empty(), "a answered after its goodbye: {late:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_without_goodbye_fails_only_requests_it_had_received() {
    let _one = ONE_AT_A_TIME.lock().await;
    let platform = Platform::start("kill").await;
    let (mut a, a_log, a_host) = platform.sdk_waifu("crash", "1", "a");
    let (_b, b_log, b_host) = platform.sdk_waifu("crash", "1", "b");
    platform
        .until_answered("crash", &format!("1 {a_host}"))
        .await;
    platform
        .until_answered("crash", &format!("1 {b_host}"))
        .await;

    let load = Load::start(platform.public, "crash", true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.signal("-KILL");
    a.exit_code(Duration::from_secs(10));
    // Its sockets are closed once it has exited.
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = load.finish().await;

    // At most the request each client had in flight on `a` when it died,
    // answered by the orchestrator (a 502), and none done twice.
    let failed = failures(&outcomes);
    assert!(failed.len() <= CLIENTS, "{failed:?}");
    for f in &failed {
        assert_eq!(f.status, Some(502), "{f:?}");
        assert!(
            f.started < killed,
            "a request sent after the kill failed: {f:?}"
        );
    }
    each_post_done_once(&outcomes, &[&a_log, &b_log]);
    let after = outcomes.iter().filter(|o| o.started > killed).count();
    assert!(after > 100, "only {after} requests after the kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_waifu_leaves_under_load_with_no_failed_request() {
    let _one = ONE_AT_A_TIME.lock().await;
    let platform = Platform::start("python").await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../waifus/hello-python/main.py");
    let python = |label: &str, version: &str| {
        let port = free_port();
        Proc::spawn(
            Command::new("python3")
                .arg(&script)
                .env("ORCHESTRATOR_URL", format!("http://{}", platform.internal))
                .env("WAIFU_NAME", "py")
                .env("WAIFU_HOST", format!("127.0.0.1:{port}"))
                .env("WAIFU_VERSION", version)
                .env("PORT", port.to_string())
                .env("LISTEN_ADDR", "127.0.0.1")
                .stderr(std::fs::File::create(platform.dir.join(format!("{label}.log"))).unwrap()),
        )
        .killed_when_dropped()
    };
    let mut a = python("a", "1");
    platform.until_answered("py", "hello from python").await;

    let load = Load::start(platform.public, "py", false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _b = python("b", "1");
    platform.until_serving("py", 2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.signal("-TERM");
    assert_eq!(a.exit_code(Duration::from_secs(30)), Some(0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = load.finish().await;

    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    assert!(outcomes.len() > 200, "only {} requests", outcomes.len());
    let log = std::fs::read_to_string(platform.dir.join("a.log")).unwrap();
    assert!(log.contains("saying goodbye"), "{log}");
    assert!(log.ends_with("bye\n"), "{log}");
    let actions = platform.audited("py").await;
    assert!(actions.iter().any(|a| a == "goodbye"), "{actions:?}");
}

/// A platform serving the SDK waifu `ledger`, on its own database, under
/// load: the platform, the waifu, its log of POSTs done, the load.
async fn ledger_under_load(test: &str) -> (Platform, Proc, PathBuf, Load) {
    let platform = Platform::start(test).await;
    let (waifu, log, _) = platform.sdk_waifu_with(
        "ledger",
        "1",
        "w",
        &[(WITH_DATABASE, "1"), ("WAIFU_SECRET", "ledger-secret")],
    );
    platform.until_answered("ledger", "1 ").await;
    let load = Load::start(platform.public, "ledger", true);
    (platform, waifu, log, load)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restored_under_load_fails_no_request() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (platform, _w, _log, load) = ledger_under_load("restore").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let file = platform.dir.join("ledger.dump");
    let dumped = platform.db(&["dump", "ledger", "-o", file.to_str().unwrap()]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restored =
        tokio::task::block_in_place(|| platform.db(&["restore", "ledger", file.to_str().unwrap()]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcomes = load.finish().await;
    eprintln!("{dumped}{restored}");

    assert!(restored.contains("as the dump recorded"), "{restored}");
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    // The requests sent once the orchestrator held the waifu's requests
    // (when it acknowledged the pause) were held, not refused, and
    // completed after the waifu was resumed, on the restored database.
    let paused = platform.acknowledged_at("ledger").await;
    let resumed = platform.audited_at("ledger", "waifu_resumed").await;
    assert!(resumed >= paused);
    // Nothing was answered between the acknowledgement and the resume…
    let answered_while_paused: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.wall.1 > paused + 2 && o.wall.1 + 2 < resumed)
        .collect();
    assert!(
        answered_while_paused.is_empty(),
        "{answered_while_paused:?}"
    );
    // …and what was sent meanwhile waited and then completed.
    let held: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.wall.0 <= paused + 2 && o.wall.1 + 2 >= resumed)
        .collect();
    eprintln!(
        "paused for {} ms after every orchestrator held the waifu's requests; {} held, the slowest took {:?}",
        resumed - paused,
        held.len(),
        held.iter().map(|o| o.ended - o.started).max()
    );
    assert!(!held.is_empty(), "no request was held");
    let after = outcomes
        .iter()
        .filter(|o| o.started.elapsed() < Duration::from_secs(1))
        .count();
    assert!(
        after > 20,
        "the waifu kept serving after the restore: {after}"
    );
    let actions = platform.audited("ledger").await;
    assert_eq!(actions[0], "database_restored", "{actions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_rotated_under_load_fails_no_request() {
    let _one = ONE_AT_A_TIME.lock().await;
    let platform = Platform::start("rotate").await;
    let secret_file = platform.dir.join("secret");
    std::fs::write(&secret_file, "first-secret\n").unwrap();
    let file = secret_file.to_str().unwrap();
    let env = [(WITH_DATABASE, "1"), ("WAIFU_SECRET_FILE", file)];
    // a rotates the secret itself; its own copy of the file is never
    // replaced, and it says hello every 100 ms, re-reading the file each
    // time: it must not take the old secret back from it.
    let a_file = platform.dir.join("secret-a");
    std::fs::write(&a_file, "first-secret\n").unwrap();
    let a_env = [
        (WITH_DATABASE, "1"),
        ("WAIFU_SECRET_FILE", a_file.to_str().unwrap()),
        (REHELLO_MS, "100"),
    ];
    let (_a, _, a_host) = platform.sdk_waifu_with("turnover", "1", "a", &a_env);
    let (_b, _, b_host) = platform.sdk_waifu_with("turnover", "1", "b", &env);
    platform
        .until_answered("turnover", &format!("1 {a_host}"))
        .await;
    platform
        .until_answered("turnover", &format!("1 {b_host}"))
        .await;
    let load = Load::start(platform.public, "turnover", true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // a rotates the secret (and the password) under load; the operator's
    // file follows. b still holds the old password for new connections.
    let a: SocketAddr = a_host.parse().unwrap();
    let b: SocketAddr = b_host.parse().unwrap();
    let (status, body) = fetch(a, "POST", "/rotate", Some("second-secret".into()))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    // Both open new connections: a with what it was given; b before the
    // operator's file follows (300 ms later), so PostgreSQL refuses its old
    // password (28P01) while the file still holds the old secret: it waits
    // for the file instead of failing (or asking with a dead secret).
    for instance in [a, b] {
        let (status, _) = fetch(instance, "POST", "/recycle", None).await.unwrap();
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&secret_file, "second-secret\n").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcomes = load.finish().await;
    if !failures(&outcomes).is_empty() {
        let pg_log = std::fs::read_to_string(platform.dir.join("data/postgres.log")).unwrap();
        for l in pg_log
            .lines()
            .filter(|l| l.contains("FATAL") || l.contains("ERROR"))
        {
            eprintln!("PGLOG {l}");
        }
        for who in ["a", "b"] {
            let log = std::fs::read_to_string(platform.dir.join(format!("{who}.log")));
            for l in log.unwrap_or_default().lines() {
                eprintln!("LOG{who} {l}");
            }
        }
    }
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    let late = outcomes
        .iter()
        .filter(|o| o.started.elapsed() < Duration::from_secs(1))
        .count();
    assert!(late > 20, "only {late} requests after the rotation");
    // b did try its old password once (PostgreSQL logged the refusal), and
    // no request failed for it.
    let pg_log = std::fs::read_to_string(platform.dir.join("data/postgres.log")).unwrap();
    assert!(
        pg_log.contains("password authentication failed for user \"waifu_turnover\""),
        "{pg_log}"
    );
    let actions = platform.audited("turnover").await;
    assert!(actions.iter().any(|a| a == "secret_rotated"), "{actions:?}");
    // No instance tried a secret that no longer works: a kept the one it
    // rotated to (20 hellos of the old one would have locked the name).
    let (_, incidents) = fetch(platform.internal, "GET", "/__internal/incidents", None)
        .await
        .unwrap();
    for kind in ["wrong_secret", "throttled"] {
        assert!(!incidents.contains(kind), "{incidents}");
    }
}
