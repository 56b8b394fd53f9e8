//! Hellos are recorded on a connection of their own, whose statement is
//! ready before the first hello.

use waifus_protocol::{RequestLimits, parse_host};
use waifus_store::{HelloRecord, Store};
use waifus_testkit::pg;

/// The sessions of `db` whose latest statement was the hello's.
async fn hello_sessions(db: &str) -> i64 {
    let client = pg::cluster().superuser("postgres").await;
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = $1 AND query LIKE 'WITH waifu AS%'",
            &[&db],
        )
        .await
        .expect("pg_stat_activity");
    row.get(0)
}

fn record<'a>(name: &'a str, instance: &'a waifus_protocol::Upstream) -> HelloRecord<'a> {
    HelloRecord {
        name,
        instance,
        version: None,
        version_at: Some(0),
        claims: &[],
        source: "127.0.0.1",
        webhook: false,
        health_path: None,
        limits: RequestLimits::default(),
        refused: &[],
        auto_rollout: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hellos_share_one_connection_prepared_when_the_store_opens() {
    let db = pg::unique_db("hellos");
    let store = Store::open(&pg::cluster().url(&db)).await.expect("open");
    // Before any hello: its statement was parsed as its connection opened.
    assert_eq!(hello_sessions(&db).await, 1);

    // Many at once (the registry sends them one at a time; anyone else
    // waits for the one connection rather than preparing it on another).
    let instance = parse_host("127.0.0.1:9").expect("host");
    let names: Vec<String> = (0..32).map(|i| format!("w{i}")).collect();
    let hellos = names.iter().map(|name| {
        let store = store.clone();
        let instance = instance.clone();
        let name = name.clone();
        tokio::spawn(async move { store.hello(&record(&name, &instance)).await })
    });
    for hello in hellos.collect::<Vec<_>>() {
        hello.await.expect("task").expect("hello recorded");
    }
    assert_eq!(hello_sessions(&db).await, 1);
    let client = pg::cluster().superuser(&db).await;
    let row = client
        .query_one("SELECT count(*) FROM waifus", &[])
        .await
        .expect("count");
    assert_eq!(row.get::<_, i64>(0), 32);
}
