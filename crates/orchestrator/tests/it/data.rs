//! A waifu's data with the real binary and a real PostgreSQL: dumped,
//! emptied, restored to the same rows and checksums with its credentials
//! unchanged; a broken file changes nothing; a drop takes everything.

use std::process::{Command, Output};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{self, Orch};
use crate::pg::{self, unique_db};

/// `orchestrator db ARGS` against the state database `db`.
pub fn db_cli(db: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    cmd.arg("db")
        .args(args)
        .env("DATABASE_URL", pg::cluster().url(db))
        .env_remove("DATABASE_URL_FILE")
        .env_remove("BACKUP_DIR");
    harness::output_within(&mut cmd, Duration::from_secs(120))
}

pub fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Database credentials for `name`.
pub async fn credentials(orch: &Orch, name: &str, secret: &str) -> Value {
    let (status, creds) = orch
        .internal_json(
            Method::POST,
            "/__internal/database",
            json!({"name": name, "secret": secret}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{creds}");
    creds
}

/// Connects as the waifu, with the credentials it was given.
pub async fn as_waifu(creds: &Value) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    pg::cluster()
        .connect(
            creds["user"].as_str().unwrap(),
            creds["password"].as_str().unwrap(),
            creds["database"].as_str().unwrap(),
        )
        .await
}

/// Every table's row count and the md5 of its rows in order, as the waifu
/// sees them.
pub async fn contents(client: &tokio_postgres::Client) -> Vec<(String, i64, String)> {
    let tables = client
        .query(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    for t in tables {
        let table: String = t.get(0);
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*), md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), ''))
                     FROM {table} x"
                ),
                &[],
            )
            .await
            .unwrap();
        out.push((table, row.get(0), row.get(1)));
    }
    out
}

/// Tables a waifu might have: serial keys, text in several scripts, JSON,
/// an empty table, a foreign key, a second schema.
pub async fn fill(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL, meta jsonb);
             INSERT INTO notes (body, meta)
               SELECT 'note ' || g || ' — ünïcødé ✓', jsonb_build_object('n', g)
               FROM generate_series(1, 2500) g;
             CREATE TABLE tags (note int REFERENCES notes (id), tag text);
             INSERT INTO tags SELECT g, 'tag' || (g % 7) FROM generate_series(1, 2500, 3) g;
             CREATE TABLE empty_one (x int);
             CREATE SCHEMA archive;
             CREATE TABLE archive.old (at timestamptz, v numeric);
             INSERT INTO archive.old SELECT '2020-01-01'::timestamptz + g * interval '1 hour', g / 3.0
               FROM generate_series(1, 100) g;",
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn dump_empty_restore_gives_back_every_row_and_the_credentials_keep_working() {
    let db = unique_db("dumprestore");
    let orch = harness::start(&db, &[]).await;
    let creds = credentials(&orch, "notes", "notes-secret").await;
    let waifu = as_waifu(&creds).await.unwrap();
    fill(&waifu).await;
    let reference = contents(&waifu).await;
    assert_eq!(reference.len(), 4);
    let dir = harness::temp_dir("dumps");
    let file = dir.join("notes.dump");
    let out = ok(&db_cli(
        &db,
        &["dump", "notes", "-o", file.to_str().unwrap()],
    ));
    assert!(out.contains("4 tables, 3434 rows"), "{out}");
    assert!(dir.join("notes.dump.figures.json").is_file());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "a dump holds data: private");
    // The waifu loses its data.
    waifu
        .batch_execute("DROP TABLE tags; DELETE FROM notes; DROP SCHEMA archive CASCADE")
        .await
        .unwrap();
    assert_ne!(contents(&waifu).await, reference);
    // Restored: the same rows, checked against the dump's figures; the
    // old database kept; the waifu's own credentials work unchanged.
    let out = ok(&db_cli(&db, &["restore", "notes", file.to_str().unwrap()]));
    assert!(out.contains("as the dump recorded"), "{out}");
    assert!(out.contains("kept as waifu_notes_before_"), "{out}");
    assert!(waifu.is_closed() || waifu.simple_query("SELECT 1").await.is_err());
    let waifu = as_waifu(&creds).await.expect("the same credentials");
    assert_eq!(contents(&waifu).await, reference);
    // It is the waifu's: it can write, and owns what was restored.
    waifu
        .batch_execute("INSERT INTO notes (body) VALUES ('after the restore')")
        .await
        .unwrap();
    let listed = ok(&db_cli(&db, &["list"]));
    assert!(listed.contains("waifu_notes_before_"), "{listed}");
    let (_, audit) = orch
        .internal_json(Method::GET, "/__internal/audit?name=notes", String::new())
        .await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    // Paused for the swap, resumed right after.
    assert_eq!(
        actions[..4],
        [
            "database_restored",
            "waifu_resumed",
            "waifu_paused",
            "database_dumped"
        ],
        "{actions:?}"
    );
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn a_broken_dump_changes_nothing_and_says_why() {
    let db = unique_db("brokendump");
    let orch = harness::start(&db, &[]).await;
    let creds = credentials(&orch, "keep", "keep-secret").await;
    let waifu = as_waifu(&creds).await.unwrap();
    fill(&waifu).await;
    let reference = contents(&waifu).await;
    let dir = harness::temp_dir("dumps");
    let file = dir.join("keep.dump");
    ok(&db_cli(
        &db,
        &["dump", "keep", "-o", file.to_str().unwrap()],
    ));
    let whole = std::fs::read(&file).unwrap();
    let truncated = dir.join("truncated.dump");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    let garbage = dir.join("garbage.dump");
    std::fs::write(&garbage, b"this is no dump at all").unwrap();
    let mut flipped = whole.clone();
    let middle = flipped.len() * 2 / 3;
    for b in &mut flipped[middle..middle + 64] {
        *b ^= 0x5a;
    }
    let corrupt = dir.join("corrupt.dump");
    std::fs::write(&corrupt, &flipped).unwrap();
    for (bad, why) in [
        (&truncated, "pg_restore failed"),
        (&garbage, "pg_restore failed"),
        (&corrupt, "pg_restore failed"),
        (&dir.join("missing.dump"), "No such file"),
    ] {
        let err = failed(&db_cli(&db, &["restore", "keep", bad.to_str().unwrap()]));
        assert!(err.contains(why), "{}: {err}", bad.display());
        // The live database as it was, serving the waifu throughout.
        assert_eq!(contents(&waifu).await, reference, "{}", bad.display());
    }
    // Figures that do not match (a dump file with another's figures): refused.
    std::fs::copy(
        dir.join("keep.dump.figures.json"),
        dir.join("other.dump.figures.json"),
    )
    .unwrap();
    let other = dir.join("other.dump");
    let creds2 = credentials(&orch, "keep-other", "keep-other-secret").await;
    as_waifu(&creds2)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE x (y int)")
        .await
        .unwrap();
    ok(&db_cli(
        &db,
        &["dump", "keep-other", "-o", other.to_str().unwrap()],
    ));
    std::fs::copy(
        dir.join("keep.dump.figures.json"),
        dir.join("other.dump.figures.json"),
    )
    .unwrap();
    let err = failed(&db_cli(
        &db,
        &["restore", "keep-other", other.to_str().unwrap()],
    ));
    assert!(err.contains("differs from what the file recorded"), "{err}");
    // No half-restored database is left behind.
    let superuser = pg::cluster().superuser(&db).await;
    let left: Vec<String> = superuser
        .query(
            "SELECT datname FROM pg_database
             WHERE datname LIKE 'waifu\\_keep%\\_restore\\_%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(
        waifu.simple_query("SELECT 1").await.is_ok(),
        "never cut off"
    );
    orch.stop().await.unwrap();
}

#[tokio::test]
async fn drop_takes_the_database_the_role_and_the_secret() {
    let db = unique_db("dropdata");
    let orch = harness::start(&db, &[]).await;
    let creds = credentials(&orch, "gone", "gone-secret").await;
    let reference = {
        let client = as_waifu(&creds).await.unwrap();
        fill(&client).await;
        contents(&client).await
    };
    let dir = harness::temp_dir("dumps");
    let file = dir.join("gone.dump");
    ok(&db_cli(
        &db,
        &["dump", "gone", "-o", file.to_str().unwrap()],
    ));
    let w = crate::waifu::TestWaifu::start("gone").await;
    let (status, _) = orch
        .hello(json!({"name": "gone", "host": w.host(), "secret": "gone-secret"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let err = failed(&db_cli(&db, &["drop", "gone", "--yes"]));
    assert!(err.contains("instance(s) registered"), "{err}");
    let err = failed(&db_cli(&db, &["drop", "nobody", "--yes"]));
    assert!(err.contains("nobody has no database"), "{err}");
    let err = failed(&db_cli(&db, &["drop", "Bad_Name", "--yes"]));
    assert!(err.contains("is not a waifu name"), "{err}");
    // Its instance gone, the drop goes through; without --yes it does not.
    let (status, _) = orch
        .internal_json(
            Method::POST,
            "/__internal/goodbye",
            json!({"name": "gone", "host": w.host(), "secret": "gone-secret"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let superuser = pg::cluster().superuser(&db).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while superuser
        .query_one("SELECT count(*) FROM instances WHERE name = 'gone'", &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the instance was never removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = failed(&db_cli(&db, &["drop", "gone"]));
    assert!(err.contains("--yes"), "{err}");
    ok(&db_cli(&db, &["drop", "gone", "--yes"]));
    assert!(as_waifu(&creds).await.is_err());
    let role: i64 = superuser
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = 'waifu_gone'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(role, 0);
    // The name is free: another secret claims it and gets a new database.
    let fresh = credentials(&orch, "gone", "a-new-secret").await;
    let client = as_waifu(&fresh).await.unwrap();
    assert!(contents(&client).await.is_empty());
    drop(client);
    ok(&db_cli(&db, &["drop", "gone", "--yes"]));
    // The whole waifu dropped, its dump restores: the rows come back and
    // the first database call (its own secret) owns them again.
    let out = ok(&db_cli(&db, &["restore", "gone", file.to_str().unwrap()]));
    assert!(out.contains("there was no database before"), "{out}");
    let back = credentials(&orch, "gone", "gone-secret").await;
    assert_eq!(contents(&as_waifu(&back).await.unwrap()).await, reference);
    orch.stop().await.unwrap();
}
