//! Scheduled backups that are proven to restore: every 2 s over three
//! waifus, exactly `BACKUP_KEEP` verified files each; a dump that does not
//! restore is one `backup_unverified` incident and counts for nothing; a
//! read-only directory is one `backup_failed` incident and a metric that
//! stops; the good files survive both; `--latest` restores the newest.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use http::Method;

use crate::data::{as_waifu, contents, credentials, db_cli, fill, ok};
use crate::harness::{self, Orch, sample};
use crate::pg::{self, unique_db};

/// The verified dumps of `name` in `dir`.
fn dumps(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(name))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|f| f.extension().is_some_and(|e| e == "dump"));
    files.sort();
    files
}

/// The ids of `name`'s verified backup rows (pruned ones are gone).
async fn verified_ids(db: &str, name: &str) -> Vec<i64> {
    let client = pg::cluster().superuser(db).await;
    client
        .query(
            "SELECT id FROM backups WHERE name = $1 AND outcome = 'verified'",
            &[&name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// `name`'s backup rows: (outcome) newest first.
async fn outcomes(db: &str, name: &str) -> Vec<String> {
    let client = pg::cluster().superuser(db).await;
    client
        .query(
            "SELECT outcome FROM backups WHERE name = $1 AND outcome <> 'taking' ORDER BY id DESC",
            &[&name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn incidents_of(orch: &Orch, kind: &str, name: &str) -> usize {
    let (_, all) = orch
        .internal_json(
            Method::GET,
            "/__internal/incidents?limit=1000",
            String::new(),
        )
        .await;
    all.as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == kind && i["name"] == name)
        .count()
}

/// Mounts `dir` read-only onto itself (as root, where permissions do not
/// stop a write); undone when dropped.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn new(dir: &Path) -> Option<ReadOnly> {
        let run = |args: &[&str]| {
            Command::new("mount")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        let path = dir.to_str().unwrap();
        if !run(&["--bind", path, path]) {
            return None;
        }
        let guard = ReadOnly(dir.to_owned());
        run(&["-o", "remount,bind,ro", path]).then_some(guard)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_keep_what_restores_and_report_what_does_not() {
    let db = unique_db("backups");
    let dir = harness::temp_dir("backups");
    let orch = harness::start(
        &db,
        &[
            "--backup-dir",
            dir.to_str().unwrap(),
            "--backup-interval",
            "2s",
            "--backup-keep",
            "2",
        ],
    )
    .await;
    let mut reference = Vec::new();
    for name in ["bk-a", "bk-b", "bk-c"] {
        let creds = credentials(&orch, name, &format!("{name}-secret")).await;
        let client = as_waifu(&creds).await.unwrap();
        fill(&client).await;
        reference.push((name, creds, contents(&client).await));
    }
    // Three verified backups of each (rows of pruned ones are gone: count
    // the ids seen), and exactly two files kept.
    for name in ["bk-a", "bk-b", "bk-c"] {
        let mut seen = std::collections::BTreeSet::new();
        until(
            &format!("3 verified backups of {name}"),
            Duration::from_secs(120),
            async || {
                seen.extend(verified_ids(&db, name).await);
                seen.len() >= 3
            },
        )
        .await;
    }
    for name in ["bk-a", "bk-b", "bk-c"] {
        let files = dumps(&dir, name);
        assert_eq!(files.len(), 2, "{name}: {files:?}");
        use std::os::unix::fs::PermissionsExt;
        for f in &files {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
    }
    let listing = ok(&db_cli(&db, &["backups", "bk-a"]));
    assert!(listing.matches(" yes ").count() >= 2, "{listing}");
    let metrics = orch.scrape().await;
    let verified_a = sample(
        &metrics,
        "waifus_backup_last_verified_timestamp_seconds{waifu=\"bk-a\"}",
    )
    .expect("the metric");
    assert!(verified_a > 1.7e9, "{verified_a}");

    // c gets a table its dump cannot load: a check that asks a table
    // restored after it. Its backups are unverified: one incident, no
    // count, the good files kept.
    let c = as_waifu(&reference[2].1).await.unwrap();
    c.batch_execute(
        "CREATE TABLE zz_allowed (v int);
         INSERT INTO zz_allowed VALUES (1);
         CREATE FUNCTION allowed(x int) RETURNS boolean LANGUAGE sql
           AS 'SELECT EXISTS (SELECT 1 FROM public.zz_allowed WHERE v = x)';
         CREATE TABLE aa_checked (x int CHECK (allowed(x)));
         INSERT INTO aa_checked VALUES (1);",
    )
    .await
    .unwrap();
    let good_c = dumps(&dir, "bk-c");
    until(
        "two unverified backups of bk-c",
        Duration::from_secs(120),
        async || {
            outcomes(&db, "bk-c")
                .await
                .iter()
                .take(2)
                .all(|o| o == "unverified")
        },
    )
    .await;
    assert_eq!(incidents_of(&orch, "backup_unverified", "bk-c").await, 1);
    assert_eq!(dumps(&dir, "bk-c"), good_c, "the good files are kept");

    // a's directory turns read-only: one incident, the metric stops.
    let read_only = ReadOnly::new(&dir.join("bk-a"));
    waifus_testkit::require(
        read_only.is_some(),
        "permission to bind-mount a directory read-only (the read-only directory part)",
        "run as root",
    );
    if read_only.is_some() {
        let good_a = dumps(&dir, "bk-a");
        until(
            "two failed backups of bk-a",
            Duration::from_secs(120),
            async || {
                outcomes(&db, "bk-a")
                    .await
                    .iter()
                    .take(2)
                    .all(|o| o == "failed")
            },
        )
        .await;
        assert_eq!(incidents_of(&orch, "backup_failed", "bk-a").await, 1);
        assert_eq!(dumps(&dir, "bk-a"), good_a, "the good files are kept");
        let stalled = sample(
            &orch.scrape().await,
            "waifus_backup_last_verified_timestamp_seconds{waifu=\"bk-a\"}",
        )
        .unwrap();
        until(
            "one more failed backup of bk-a",
            Duration::from_secs(60),
            async || {
                outcomes(&db, "bk-a")
                    .await
                    .iter()
                    .take(3)
                    .all(|o| o == "failed")
            },
        )
        .await;
        let still = sample(
            &orch.scrape().await,
            "waifus_backup_last_verified_timestamp_seconds{waifu=\"bk-a\"}",
        )
        .unwrap();
        assert_eq!(still, stalled, "the metric does not advance");
    }
    drop(read_only);
    // b loses its rows; the newest verified backup brings them back. The
    // orchestrator stops first, so no later backup records the loss.
    orch.stop().await.unwrap();
    let b = as_waifu(&reference[1].1).await.unwrap();
    b.batch_execute("DELETE FROM tags; DELETE FROM notes")
        .await
        .unwrap();
    let out = ok(&db_cli(&db, &["restore", "bk-b", "--latest"]));
    assert!(out.contains("as the dump recorded"), "{out}");
    let b = as_waifu(&reference[1].1).await.unwrap();
    assert_eq!(contents(&b).await, reference[1].2);
}

/// The disaster-recovery path of docs/operating.md: a backup file from one
/// orchestrator, copied to another machine (another PostgreSQL cluster,
/// another data directory), restored there into a fresh orchestrator; the
/// waifu asks for its database with its own secret and reads its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_on_a_new_machine() {
    let db = unique_db("drsource");
    let dir = harness::temp_dir("drbackups");
    let orch = harness::start(
        &db,
        &[
            "--backup-dir",
            dir.to_str().unwrap(),
            "--backup-interval",
            "1h",
        ],
    )
    .await;
    let creds = credentials(&orch, "dr-notes", "dr-secret").await;
    let client = as_waifu(&creds).await.unwrap();
    fill(&client).await;
    let reference = contents(&client).await;
    drop(client);
    // The scheduler takes the first backup at once (none exists yet).
    until(
        "a verified backup of dr-notes",
        Duration::from_secs(60),
        async || {
            outcomes(&db, "dr-notes")
                .await
                .first()
                .is_some_and(|o| o == "verified")
        },
    )
    .await;
    orch.stop().await.unwrap();
    let files = dumps(&dir, "dr-notes");
    assert_eq!(files.len(), 1);
    // "Copied off the machine": the file and its figures, elsewhere.
    let copied = harness::temp_dir("offsite").join("dr-notes.dump");
    std::fs::copy(&files[0], &copied).unwrap();
    std::fs::copy(
        files[0].with_extension("dump.figures.json"),
        copied.with_extension("dump.figures.json"),
    )
    .unwrap();

    // The new machine: its own PostgreSQL, its own data directory.
    let cluster = pg::dedicated();
    let url = cluster.url("waifus");
    let data_dir = harness::temp_dir("drdata");
    let fresh = harness::start_with_url(&url, &["--data-dir", data_dir.to_str().unwrap()]).await;
    let restore = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        cmd.arg("db")
            .args(args)
            .env("DATABASE_URL", &url)
            .env("DATA_DIR", &data_dir)
            .env_remove("BACKUP_DIR");
        tokio::task::block_in_place(|| harness::output_within(&mut cmd, Duration::from_secs(120)))
    };
    let out = restore(&["restore", "dr-notes", copied.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("as the dump recorded"), "{stdout}");
    assert!(stdout.contains("there was no database before"), "{stdout}");
    // The waifu comes back with its own secret: a new password (another
    // key), its rows.
    let (status, creds) = fresh
        .internal_json(
            Method::POST,
            "/__internal/database",
            serde_json::json!({"name": "dr-notes", "secret": "dr-secret"}).to_string(),
        )
        .await;
    assert_eq!(status, http::StatusCode::OK, "{creds}");
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(cluster.port)
        .user(creds["user"].as_str().unwrap())
        .password(creds["password"].as_str().unwrap())
        .dbname(creds["database"].as_str().unwrap())
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    assert_eq!(contents(&client).await, reference);
    client
        .batch_execute("INSERT INTO notes (body) VALUES ('written on the new machine')")
        .await
        .unwrap();
    fresh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_made_after_a_backup_gets_its_first_within_seconds_not_an_interval() {
    let db = unique_db("backupnew");
    let dir = harness::temp_dir("backupnew");
    let orch = harness::start(
        &db,
        &[
            "--backup-dir",
            dir.to_str().unwrap(),
            "--backup-interval",
            "1h",
        ],
    )
    .await;
    credentials(&orch, "first", "first-secret").await;
    until(
        "a verified backup of first",
        Duration::from_secs(60),
        async || !verified_ids(&db, "first").await.is_empty(),
    )
    .await;
    // Made after that backup: with one database the spacing is the whole
    // hour, but a new one is looked for every 10 s.
    credentials(&orch, "second", "second-secret").await;
    until(
        "a verified backup of second",
        Duration::from_secs(60),
        async || !verified_ids(&db, "second").await.is_empty(),
    )
    .await;
    orch.stop().await.unwrap();
}
