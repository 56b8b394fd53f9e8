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

/// The row versions (`xmin`) of the waifu's and its instance's rows.
async fn row_versions(client: &tokio_postgres::Client, name: &str) -> (String, String) {
    let row = client
        .query_one(
            "SELECT w.xmin::text, i.xmin::text FROM waifus w JOIN instances i USING (name)
             WHERE name = $1",
            &[&name],
        )
        .await
        .expect("rows");
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_hello_rewrites_no_row_it_leaves_as_it_was() {
    let db = pg::unique_db("rehello");
    let store = Store::open(&pg::cluster().url(&db)).await.expect("open");
    let client = pg::cluster().superuser(&db).await;
    let instance = parse_host("127.0.0.1:9").expect("host");
    store.hello(&record("w", &instance)).await.expect("hello");
    let first = row_versions(&client, "w").await;

    // As the registry repeats it: the instance known, no new version time.
    let again = HelloRecord {
        version_at: None,
        ..record("w", &instance)
    };
    for _ in 0..3 {
        store.hello(&again).await.expect("repeated hello");
    }
    assert_eq!(row_versions(&client, "w").await, first);

    // A change is written: a health path, then a version.
    let health = HelloRecord {
        health_path: Some("/up"),
        ..again
    };
    store
        .hello(&health)
        .await
        .expect("hello with a health path");
    let changed = row_versions(&client, "w").await;
    assert_eq!(changed.0, first.0, "the waifu's row stays");
    assert_ne!(changed.1, first.1, "the instance's row is rewritten");
    let row = client
        .query_one("SELECT health_path FROM instances WHERE name = 'w'", &[])
        .await
        .expect("instance");
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("/up"));
    let version = HelloRecord {
        version: Some("2"),
        ..health
    };
    store.hello(&version).await.expect("hello with a version");
    let row = client
        .query_one(
            "SELECT version, healthy FROM instances WHERE name = 'w'",
            &[],
        )
        .await
        .expect("instance");
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("2"));
    assert!(!row.get::<_, bool>(1), "another version starts unhealthy");
}

/// A session listening on the change channel (it listens while the client
/// is kept); its notifications' payloads arrive on the receiver.
async fn listen(
    db: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (client, mut connection) =
        tokio_postgres::connect(&pg::cluster().url(db), tokio_postgres::NoTls)
            .await
            .expect("listener");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n.payload().to_owned());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {}", waifus_store::CHANGES))
        .await
        .expect("LISTEN");
    (client, rx)
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("a notification within 10 s")
        .expect("the listener runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_hello_that_changes_something_is_announced() {
    let db = pg::unique_db("announced");
    let store = Store::open(&pg::cluster().url(&db)).await.expect("open");
    let (_listening, mut changes) = listen(&db).await;
    let instance = parse_host("127.0.0.1:9").expect("host");
    store.hello(&record("w", &instance)).await.expect("hello");
    assert!(next(&mut changes).await.ends_with(" w"));

    let again = HelloRecord {
        version_at: None,
        ..record("w", &instance)
    };
    store.hello(&again).await.expect("repeated hello");
    store.hello(&again).await.expect("repeated hello");
    // Notifications arrive in commit order: the next one is x's.
    store.hello(&record("x", &instance)).await.expect("hello");
    assert!(next(&mut changes).await.ends_with(" x"));

    // A bind, and its release, are announced.
    let key = waifus_protocol::parse_bind_key("http://w.test").expect("bind");
    let claims = [waifus_store::BindClaim {
        key: &key,
        target: "",
    }];
    let bound = HelloRecord {
        claims: &claims,
        ..again
    };
    store.hello(&bound).await.expect("hello with a bind");
    assert!(next(&mut changes).await.ends_with(" w"));
    store.hello(&bound).await.expect("the same again");
    store.hello(&again).await.expect("hello without it");
    assert!(next(&mut changes).await.ends_with(" w"));
    store.hello(&record("y", &instance)).await.expect("hello");
    assert!(next(&mut changes).await.ends_with(" y"));
}
