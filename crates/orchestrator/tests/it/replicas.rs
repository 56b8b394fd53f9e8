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
