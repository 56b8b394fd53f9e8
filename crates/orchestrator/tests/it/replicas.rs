//! The periodic full resync: a change that reached the state
//! database without a notification is still picked up. (Two orchestrators
//! sharing a database: `binary::two_orchestrators_share_routes_and_one_runs_health_checks`.)

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;

use crate::harness;
use crate::pg;
use crate::waifu::TestWaifu;

async fn wait_status(orch: &harness::Orch, host: &str, want: StatusCode) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if orch.get(host, "/x").await.status == want {
            return;
        }
        assert!(Instant::now() < deadline, "{host} never answered {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn silent_database_changes_are_picked_up_by_the_periodic_resync() {
    let db = pg::unique_db("resync");
    let orch = harness::start(&db, &["--resync-interval", "300ms"]).await;
    let w = TestWaifu::start("w").await;
    orch.register("w", &w.host(), json!({})).await;
    let sql = pg::cluster().superuser(&db).await;
    // Written behind the orchestrator's back: no notification.
    sql.execute(
        "INSERT INTO binds (host, prefix, bind, target, name)
         VALUES ('silent.test', '', 'http://silent.test', '', 'w')",
        &[],
    )
    .await
    .unwrap();
    wait_status(&orch, "silent.test", StatusCode::OK).await;
    sql.execute("DELETE FROM binds WHERE host = 'silent.test'", &[])
        .await
        .unwrap();
    wait_status(&orch, "silent.test", StatusCode::NOT_FOUND).await;
    // Hellos while resyncs run every 300 ms all stay routable.
    for i in 0..20 {
        let name = format!("quick{i}");
        let (status, _) = orch
            .hello(json!({"name": name, "host": w.host(), "additionalBinds": {format!("http://{name}.test"): "/"}}))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    for i in 0..20 {
        wait_status(&orch, &format!("quick{i}.test"), StatusCode::OK).await;
    }
    // ... and stay so over several resyncs.
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        for i in 0..20 {
            let host = format!("quick{i}.test");
            assert_eq!(orch.get(&host, "/x").await.status, StatusCode::OK, "{host}");
        }
    }
    orch.stop().await.unwrap();
}

/// More waifus than one page of the store's reads: a resync picks up every
/// page (those added behind the orchestrator's back, and one removed from
/// a middle page), and a second orchestrator starting on the same
/// database loads them all.
#[tokio::test]
async fn a_resync_and_a_start_read_every_page_of_the_store() {
    let db = pg::unique_db("pages");
    let one = harness::start(&db, &["--resync-interval", "300ms"]).await;
    let w = TestWaifu::start("w").await;
    one.register("w", &w.host(), json!({})).await;
    let sql = pg::cluster().superuser(&db).await;
    // 1,300 waifus, three pages; written behind the orchestrator's back.
    sql.batch_execute(
        "INSERT INTO waifus (name) SELECT 'p-' || i FROM generate_series(1, 1300) i;
         INSERT INTO instances (name, host, healthy)
             SELECT 'p-' || i, (SELECT host FROM instances WHERE name = 'w'), true
             FROM generate_series(1, 1300) i;
         INSERT INTO binds (host, prefix, bind, target, name)
             SELECT 'p' || i || '.test', '', 'http://p' || i || '.test', '', 'p-' || i
             FROM generate_series(1, 1300) i;",
    )
    .await
    .unwrap();
    // Known means routed to the waifu: 200, or 503 while the leader's
    // first checks of 1,300 instances at once overrun the one test
    // waifu's backlog; an unknown host is 404.
    let known = |status: StatusCode| status != StatusCode::NOT_FOUND;
    for i in [1, 513, 1300] {
        let host = format!("p{i}.test");
        let deadline = Instant::now() + Duration::from_secs(15);
        while !known(one.get(&host, "/x").await.status) {
            assert!(Instant::now() < deadline, "{host} never known");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Ordered by name, 'p-700' falls in the middle page.
    sql.execute("DELETE FROM waifus WHERE name = 'p-700'", &[])
        .await
        .unwrap();
    wait_status(&one, "p700.test", StatusCode::NOT_FOUND).await;
    let two = harness::start(&db, &[]).await;
    for orch in [&one, &two] {
        for i in (1..=1300).filter(|i| *i != 700) {
            let host = format!("p{i}.test");
            let status = orch.get(&host, "/x").await.status;
            assert!(known(status), "{host}: {status}");
        }
        assert_eq!(
            orch.get("p700.test", "/x").await.status,
            StatusCode::NOT_FOUND
        );
    }
    two.stop().await.unwrap();
    one.stop().await.unwrap();
}
