//! `Database::migrate` against a real PostgreSQL: each migration once, in
//! order, all or nothing, safe when instances start together.

#![allow(clippy::unwrap_used)]

use waifu::waifus_protocol::DatabaseCredentials;
use waifu::{Database, MigrateError};
use waifus_testkit::pg;

/// A database of its own on the shared cluster, reached as its superuser.
async fn database(prefix: &str) -> Database {
    let cluster = pg::cluster();
    let name = pg::unique_db(prefix);
    cluster
        .superuser("postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let credentials = DatabaseCredentials {
        database: name,
        user: cluster.user.clone(),
        password: cluster.password.clone(),
        host: "127.0.0.1".into(),
        port: cluster.port,
    };
    let mut config = tokio_postgres::Config::new();
    config
        .host(&credentials.host)
        .port(credentials.port)
        .user(&credentials.user)
        .password(&credentials.password)
        .dbname(&credentials.database);
    let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
    let pool = deadpool_postgres::Pool::builder(manager).build().unwrap();
    Database { credentials, pool }
}

async fn versions(db: &Database) -> Vec<i32> {
    let client = db.pool.get().await.unwrap();
    let rows = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

const NOTES: &str = "CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL)";
const TAGS: &str = "ALTER TABLE notes ADD COLUMN tag text";
const SEED: &str = "INSERT INTO notes (body, tag) VALUES ('first', 'seed')";

#[tokio::test]
async fn migrations_apply_once_each_in_order() {
    let db = database("migrate_order").await;
    assert_eq!(db.migrate(&[NOTES, TAGS]).await.unwrap(), 2);
    assert_eq!(
        db.migrate(&[NOTES, TAGS]).await.unwrap(),
        0,
        "nothing twice"
    );
    assert_eq!(db.migrate(&[NOTES, TAGS, SEED]).await.unwrap(), 1);
    assert_eq!(versions(&db).await, [1, 2, 3]);
    let client = db.pool.get().await.unwrap();
    let row = client
        .query_one("SELECT body, tag FROM notes", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, &str>(0), row.get::<_, &str>(1)),
        ("first", "seed")
    );
}

#[tokio::test]
async fn a_failing_migration_leaves_nothing_of_its_run() {
    let db = database("migrate_fail").await;
    let err = db.migrate(&[NOTES, "ALTER TABLE nowhere ADD x int"]).await;
    assert!(matches!(err, Err(MigrateError::Sql(_))), "{err:?}");
    let client = db.pool.get().await.unwrap();
    let notes = client
        .query_one("SELECT to_regclass('notes') IS NULL", &[])
        .await
        .unwrap();
    assert!(
        notes.get::<_, bool>(0),
        "the first migration was rolled back too"
    );
    // Fixed, the same list applies from the start.
    assert_eq!(db.migrate(&[NOTES, TAGS]).await.unwrap(), 2);
}

#[tokio::test]
async fn an_older_program_refuses_a_database_that_is_ahead() {
    let db = database("migrate_ahead").await;
    db.migrate(&[NOTES, TAGS]).await.unwrap();
    let err = db.migrate(&[NOTES]).await;
    assert!(
        matches!(
            err,
            Err(MigrateError::Ahead {
                applied: 2,
                known: 1
            })
        ),
        "{err:?}"
    );
    assert_eq!(versions(&db).await, [1, 2]);
}

#[tokio::test]
async fn instances_starting_together_apply_each_migration_once() {
    let db = database("migrate_race").await;
    let starts: Vec<_> = (0..16)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { db.migrate(&[NOTES, TAGS, SEED]).await })
        })
        .collect();
    let mut applied = 0;
    for start in starts {
        applied += start.await.unwrap().unwrap();
    }
    assert_eq!(applied, 3, "each applied by one instance");
    assert_eq!(versions(&db).await, [1, 2, 3]);
    let client = db.pool.get().await.unwrap();
    let seeded: i64 = client
        .query_one("SELECT count(*) FROM notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seeded, 1, "the seed ran once");
}
