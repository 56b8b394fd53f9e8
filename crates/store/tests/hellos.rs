//! Hellos are recorded on a connection of their own, whose statement is
//! ready before the first hello.

use waifus_protocol::{RequestLimits, parse_host};
use waifus_store::{HelloRecord, Store};
use waifus_testkit::pg;

/// The sessions of `db` whose latest statement was the hello's.
async fn hello_sessions(db: &str) -> i64 {
    let client = pg::cluster().superuser("postgres").await;
    one(
        &client,
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = $1 AND query LIKE 'WITH waifu AS%'",
        &[&db],
    )
    .await
}

/// A bind, parsed.
fn key(bind: &str) -> waifus_protocol::BindKey {
    waifus_protocol::parse_bind_key(bind).expect("bind")
}

/// A hello's one bind: `key`, to `target`.
fn claim<'a>(
    key: &'a waifus_protocol::BindKey,
    target: &'a str,
) -> [waifus_store::BindClaim<'a>; 1] {
    [waifus_store::BindClaim { key, target }]
}

/// The one value a query returns.
async fn one<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> T {
    let row = client.query_one(sql, params).await.expect(sql);
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
        new_waifu: true,
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
    let value: i64 = one(&client, "SELECT count(*) FROM waifus", &[]).await;
    assert_eq!(value, 32);
}

/// The row versions (`xmin`) of the waifu's and its instance's rows, and
/// of its versions' and binds' rows together.
async fn row_versions(client: &tokio_postgres::Client, name: &str) -> (String, String, String) {
    let row = client
        .query_one(
            "SELECT w.xmin::text, i.xmin::text,
                    (SELECT string_agg(xmin::text, ',' ORDER BY version) FROM waifu_versions
                     WHERE name = $1)
                    || ';' || coalesce((SELECT string_agg(xmin::text, ',' ORDER BY host)
                                        FROM binds WHERE name = $1), '')
             FROM waifus w JOIN instances i USING (name)
             WHERE name = $1",
            &[&name],
        )
        .await
        .expect("rows");
    (row.get(0), row.get(1), row.get(2))
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

    // With a bind it holds alone, the same: the hello is answered as
    // granted, and nothing is written.
    let key = key("http://w.test/p");
    let claims = claim(&key, "/t");
    let bound = HelloRecord {
        claims: &claims,
        ..again
    };
    assert_eq!(store.hello(&bound).await.expect("bind").granted, [true]);
    let first = row_versions(&client, "w").await;
    for _ in 0..3 {
        let granted = store.hello(&bound).await.expect("repeated hello");
        assert_eq!(granted.granted, [true]);
        assert!(granted.reported.is_empty());
    }
    assert_eq!(row_versions(&client, "w").await, first);
    // Another target for the bind is written.
    let claims = claim(&key, "/u");
    let retargeted = HelloRecord {
        claims: &claims,
        ..again
    };
    assert_eq!(
        store.hello(&retargeted).await.expect("bind").granted,
        [true]
    );
    let value: String = one(&client, "SELECT target FROM binds WHERE name = 'w'", &[]).await;
    assert_eq!(value, "/u");

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
    let value: Option<String> = one(
        &client,
        "SELECT health_path FROM instances WHERE name = 'w'",
        &[],
    )
    .await;
    assert_eq!(value.as_deref(), Some("/up"));
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
    let key = key("http://w.test");
    let claims = claim(&key, "");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_waifus_racing_for_one_host_through_many_stores_get_it_once() {
    let db = pg::unique_db("hostrace");
    // Eight stores, as eight orchestrators: eight hello connections, so
    // up to eight hellos in the database at once.
    let mut stores = Vec::new();
    for _ in 0..8 {
        stores.push(Store::open(&pg::cluster().url(&db)).await.expect("open"));
    }
    let instance = parse_host("127.0.0.1:9").expect("host");
    let names: Vec<String> = (0..24).map(|i| format!("racer-{i}")).collect();
    for name in &names {
        stores[0]
            .hello(&record(name, &instance))
            .await
            .expect("hello");
    }
    let client = pg::cluster().superuser(&db).await;
    client
        .execute(
            "INSERT INTO waifu_secrets (name, secret_hash) SELECT name, 'x' FROM waifus",
            &[],
        )
        .await
        .expect("claimed");
    // Each claimed waifu asks for its own path on one new host, all at
    // once: the host's first claimed holder keeps it alone. Ten hosts, one
    // after another, each raced for by all.
    for round in 0..10 {
        let host = format!("race{round}.test");
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(names.len()));
        let racers: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let store = stores[i % stores.len()].clone();
                let (name, instance, start) = (name.clone(), instance.clone(), start.clone());
                let bind = format!("http://{host}/p{i}");
                tokio::spawn(async move {
                    let key = key(&bind);
                    let claims = claim(&key, "");
                    start.wait().await;
                    let hello = HelloRecord {
                        version_at: None,
                        claims: &claims,
                        ..record(&name, &instance)
                    };
                    store.hello(&hello).await.map(|g| g.granted[0])
                })
            })
            .collect();
        let mut winners = 0;
        for racer in racers {
            winners += usize::from(racer.await.expect("task").expect("hello recorded"));
        }
        let value: i64 = one(
            &client,
            "SELECT count(DISTINCT name) FROM binds WHERE host = $1",
            &[&host],
        )
        .await;
        assert_eq!((winners, value), (1, 1), "{host}");
    }
    // Every hello ended its transaction: no session waits in one.
    let value: i64 = one(
        &client,
        "SELECT count(*) FROM pg_stat_activity
             WHERE datname = $1 AND state LIKE 'idle in transaction%'",
        &[&db],
    )
    .await;
    assert_eq!(value, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_with_binds_that_fails_leaves_nothing_behind() {
    let db = pg::unique_db("hellofails");
    let store = Store::open(&pg::cluster().url(&db)).await.expect("open");
    let client = pg::cluster().superuser(&db).await;
    // The statement fails when it writes a bind on boom.test.
    client
        .batch_execute(
            "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'boom'; END $$;
             CREATE TRIGGER boom BEFORE INSERT ON binds FOR EACH ROW
               WHEN (NEW.host = 'boom.test') EXECUTE FUNCTION boom();",
        )
        .await
        .expect("trigger");
    let instance = parse_host("127.0.0.1:9").expect("host");
    let boom = key("http://boom.test");
    let fine = key("http://fine.test");
    let claims = claim(&boom, "");
    let failing = HelloRecord {
        claims: &claims,
        ..record("w", &instance)
    };
    let err = store
        .hello(&failing)
        .await
        .expect_err("the statement fails");
    assert!(err.to_string().contains("boom"), "{err}");
    // Nothing of it was kept, and its connection is back outside any
    // transaction: the next hello on it commits.
    let value: i64 = one(&client, "SELECT count(*) FROM waifus", &[]).await;
    assert_eq!(value, 0);
    let claims = claim(&fine, "");
    let granted = store
        .hello(&HelloRecord {
            claims: &claims,
            ..record("w", &instance)
        })
        .await
        .expect("the next hello");
    assert_eq!(granted.granted, [true]);
    let value: i64 = one(
        &client,
        "SELECT count(*) FROM binds WHERE host = 'fine.test'",
        &[],
    )
    .await;
    assert_eq!(value, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_hello_still_decides_what_changed_beside_it() {
    let db = pg::unique_db("rehellobeside");
    let store = Store::open(&pg::cluster().url(&db)).await.expect("open");
    let client = pg::cluster().superuser(&db).await;
    let instance = parse_host("127.0.0.1:9").expect("host");
    let a = key("http://shared.test/a");
    let b = key("http://shared.test/b");
    let on_a = claim(&a, "");
    let on_b = claim(&b, "");
    // Two waifus nobody claimed share a host by path, early first.
    let early = HelloRecord {
        claims: &on_a,
        ..record("early", &instance)
    };
    let late = HelloRecord {
        claims: &on_b,
        ..record("late", &instance)
    };
    assert_eq!(store.hello(&early).await.expect("early").granted, [true]);
    assert_eq!(store.hello(&late).await.expect("late").granted, [true]);
    let late_again = HelloRecord {
        version_at: None,
        ..late
    };
    assert_eq!(
        store.hello(&late_again).await.expect("late").granted,
        [true]
    );

    // Then early is claimed: it held the host first, so late's next
    // hello, unchanged itself, loses the bind.
    client
        .execute(
            "INSERT INTO waifu_secrets (name, secret_hash) VALUES ('early', 'x')",
            &[],
        )
        .await
        .expect("claimed");
    let granted = store.hello(&late_again).await.expect("late again");
    assert_eq!(granted.granted, [false]);
    assert_eq!(granted.reported.len(), 1, "{:?}", granted.reported);
    let value: i64 = one(
        &client,
        "SELECT count(*) FROM binds WHERE name = 'late'",
        &[],
    )
    .await;
    assert_eq!(value, 0);
    // Asking for no bind any more, late's refusals are cleared.
    let plain = HelloRecord {
        claims: &[],
        ..late_again
    };
    store.hello(&plain).await.expect("late without binds");
    let value: i32 = one(
        &client,
        "SELECT cardinality(binds) FROM hello_refusals WHERE name = 'late'",
        &[],
    )
    .await;
    assert_eq!(value, 0);

    // An instance that said goodbye (on another orchestrator) is back at
    // its next hello, unchanged as the hello is.
    let early_again = HelloRecord {
        version_at: None,
        ..early
    };
    client
        .execute(
            "UPDATE instances SET goodbye_at = now() WHERE name = 'early'",
            &[],
        )
        .await
        .expect("goodbye");
    store.hello(&early_again).await.expect("early again");
    let value: bool = one(
        &client,
        "SELECT goodbye_at IS NULL FROM instances WHERE name = 'early'",
        &[],
    )
    .await;
    assert!(value, "back after its goodbye");
}

/// The statement the hello connection of `db` ran last.
async fn last_hello_statement(db: &str) -> String {
    let client = pg::cluster().superuser("postgres").await;
    one(
        &client,
        "SELECT query FROM pg_stat_activity
         WHERE datname = $1 AND query LIKE 'WITH waifu AS%'",
        &[&db],
    )
    .await
}

/// Every row a hello may write about `name`, without the ids and times
/// PostgreSQL fills in: what two ways of recording one hello are compared
/// by.
async fn rows_of(client: &tokio_postgres::Client, name: &str) -> Vec<String> {
    let mut rows = Vec::new();
    for table in [
        "waifus",
        "instances",
        "waifu_versions",
        "binds",
        "health_history",
        "audit",
        "incidents",
        "hello_refusals",
        "rollouts",
    ] {
        let sql = format!(
            "SELECT '{table} ' || (to_jsonb(t) - ARRAY['registered_at', 'updated_at',
                 'last_hello', 'time', 'id', 'at', 'started_at', 'step_at'])::text
             FROM {table} t WHERE name = $1 ORDER BY 1"
        );
        for row in client.query(&sql, &[&name]).await.expect(&sql) {
            rows.push(row.get(0));
        }
    }
    rows
}

/// A new waifu's first hello has a statement of its own: for every kind
/// of first hello it writes the rows the full statement writes, and
/// announces it; a name that exists after all (another orchestrator added
/// it) goes to the full statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_hello_writes_what_the_full_statement_writes() {
    let short_db = pg::unique_db("first_short");
    let full_db = pg::unique_db("first_full");
    let short = Store::open(&pg::cluster().url(&short_db))
        .await
        .expect("open");
    let full = Store::open(&pg::cluster().url(&full_db))
        .await
        .expect("open");
    let (_listening, mut changes) = listen(&short_db).await;
    let short_client = pg::cluster().superuser(&short_db).await;
    let full_client = pg::cluster().superuser(&full_db).await;
    let instance = parse_host("127.0.0.1:9").expect("host");
    let other = parse_host("127.0.0.1:10").expect("host");
    let limits = RequestLimits {
        max_body_size: Some(1024),
        max_in_flight: Some(3),
        timeout: Some(std::time::Duration::from_millis(2500)),
    };
    let cases = [
        ("a", &instance, None, None, RequestLimits::default()),
        ("b", &instance, Some("v1"), Some("/up"), limits),
        ("c", &other, Some("v2"), None, RequestLimits::default()),
    ];
    for (name, upstream, version, health_path, limits) in cases {
        let hello = HelloRecord {
            version,
            version_at: Some(1_700_000_000_123),
            health_path,
            limits,
            ..record(name, upstream)
        };
        let by_short = short.hello(&hello).await.expect("first hello");
        assert!(
            last_hello_statement(&short_db).await.contains("DO NOTHING"),
            "{name}: the short statement ran"
        );
        assert!(next(&mut changes).await.ends_with(&format!(" {name}")));
        let by_full = full
            .hello(&HelloRecord {
                new_waifu: false,
                ..hello
            })
            .await
            .expect("first hello");
        assert_eq!(by_short.version_at_ms, 1_700_000_000_123);
        assert_eq!(by_short.version_at_ms, by_full.version_at_ms);
        assert_eq!(by_short.granted, by_full.granted);
        assert_eq!(by_short.reported, by_full.reported);
        assert_eq!(by_short.rollout.is_none(), by_full.rollout.is_none());
        let written = rows_of(&short_client, name).await;
        assert!(written.len() >= 6, "{name}: {written:?}");
        assert_eq!(written, rows_of(&full_client, name).await, "{name}");
    }

    // Forgotten and back: the history goes on from where it was.
    for (store, client, new_waifu) in [(&short, &short_client, true), (&full, &full_client, false)]
    {
        client
            .execute(
                "INSERT INTO health_history (name, instance, from_state, to_state, reason, origin)
                 VALUES ('b', 'http://127.0.0.1:9', 'added', 'healthy', 'checked', 'test')",
                &[],
            )
            .await
            .expect("history");
        client
            .execute("DELETE FROM waifus WHERE name = 'b'", &[])
            .await
            .expect("forget");
        store
            .hello(&HelloRecord {
                version: Some("v3"),
                version_at: Some(1_700_000_000_456),
                new_waifu,
                ..record("b", &instance)
            })
            .await
            .expect("back");
    }
    assert!(last_hello_statement(&short_db).await.contains("DO NOTHING"));
    let written = rows_of(&short_client, "b").await;
    assert!(
        written
            .iter()
            .any(|r| r.contains(r#""from_state": "healthy""#)),
        "{written:?}"
    );
    assert_eq!(written, rows_of(&full_client, "b").await);

    // Thought new, but another orchestrator added it: the full statement
    // records a second instance.
    for (store, new_waifu) in [(&short, true), (&full, false)] {
        store
            .hello(&HelloRecord {
                version: Some("v2"),
                version_at: Some(1_700_000_000_789),
                new_waifu,
                ..record("c", &instance)
            })
            .await
            .expect("second instance");
    }
    assert!(!last_hello_statement(&short_db).await.contains("DO NOTHING"));
    let written = rows_of(&short_client, "c").await;
    assert_eq!(
        written
            .iter()
            .filter(|r| r.starts_with("instances "))
            .count(),
        2,
        "{written:?}"
    );
    assert_eq!(written, rows_of(&full_client, "c").await);
}

/// Many orchestrators saying one new waifu's first hello at once: it is
/// added once, with every instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_hellos_of_one_name_racing_through_many_stores_add_it_once() {
    let db = pg::unique_db("first_race");
    let url = pg::cluster().url(&db);
    let mut stores = Vec::new();
    for _ in 0..8 {
        stores.push(Store::open(&url).await.expect("open"));
    }
    let client = pg::cluster().superuser(&db).await;
    for round in 0..5 {
        let name = format!("r{round}");
        let hellos = stores.iter().enumerate().map(|(i, store)| {
            let store = store.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let instance = parse_host(&format!("127.0.0.1:{}", 9000 + i)).expect("host");
                store.hello(&record(&name, &instance)).await
            })
        });
        for hello in hellos.collect::<Vec<_>>() {
            hello.await.expect("task").expect("hello recorded");
        }
        let count = |sql: &'static str| {
            let client = &client;
            let name = name.clone();
            async move { one::<i64>(client, sql, &[&name]).await }
        };
        assert_eq!(
            count("SELECT count(*) FROM audit WHERE name = $1 AND action = 'waifu_added'").await,
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM instances WHERE name = $1").await,
            8
        );
        assert_eq!(
            count("SELECT count(*) FROM audit WHERE name = $1 AND action = 'instance_added'").await,
            8
        );
        assert_eq!(
            count("SELECT count(*) FROM waifu_versions WHERE name = $1").await,
            1
        );
    }
}
