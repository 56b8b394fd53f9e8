//! The orchestrator's own process replaced under load (`kill -USR2`): the
//! new process takes the listening sockets and the managed PostgreSQL, no
//! request fails, no waifu database session is cut, and a new binary that
//! cannot start leaves the old process serving.

use super::*;

/// Sends `SIGUSR2` to the orchestrator serving now and waits until another
/// process serves and the old one has exited; the new process id.
async fn upgrade_by_signal(platform: &Platform) -> u32 {
    let old = platform.pid().expect("a pid file");
    let ok = Command::new("kill")
        .args(["-USR2", &old.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(new) = platform.pid()
            && new != old
            && !alive(old)
        {
            return new;
        }
        assert!(
            Instant::now() < deadline,
            "no new orchestrator after SIGUSR2 to {old}: see {}",
            platform.dir.join("orchestrator.log").display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /__internal/health` on a new connection every 20 ms until
/// stopped: every answer that was not 204.
pub(super) fn health_throughout(
    internal: SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut bad = Vec::new();
        let mut asked = 0;
        while !stop.load(Ordering::Relaxed) {
            asked += 1;
            match fetch(internal, "GET", "/__internal/health", None).await {
                Some((204, _)) => {}
                other => bad.push(format!("{other:?}")),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(asked > 50, "health asked only {asked} times");
        bad
    })
}

/// The waifu's sessions on its database: (backend pid, start time).
async fn sessions(platform: &Platform, role: &str) -> Vec<(i32, String)> {
    let client = platform.superuser("postgres").await;
    let mut rows: Vec<(i32, String)> = client
        .query(
            "SELECT pid, backend_start::text FROM pg_stat_activity WHERE usename = $1",
            &[&role],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_upgrades_under_load_fail_no_request_and_cut_no_session() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (platform, _w, log, load) = super::ledger_under_load("upgrade").await;
    let stop_health = Arc::new(AtomicBool::new(false));
    let health = health_throughout(platform.internal, stop_health.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = sessions(&platform, "waifu_ledger").await;
    assert!(!before.is_empty(), "the waifu has database sessions");
    let postmaster = platform.superuser("postgres").await;
    let server_started: String = postmaster
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .await
        .unwrap()
        .get(0);
    drop(postmaster);
    let first = platform.pid().unwrap();
    let mut pids = vec![first];
    for _ in 0..3 {
        pids.push(upgrade_by_signal(&platform).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = load.finish().await;
    stop_health.store(true, Ordering::Relaxed);
    let unhealthy = health.await.unwrap();
    let after = sessions(&platform, "waifu_ledger").await;
    eprintln!("orchestrator processes {pids:?}; waifu sessions before {before:?}, after {after:?}");

    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    assert!(outcomes.len() > 1000, "only {} requests", outcomes.len());
    each_post_done_once(&outcomes, &[&log]);
    // Every POST the load saw done is in the database, once.
    let db = platform.superuser("waifu_ledger").await;
    let stored: Vec<String> = db
        .query("SELECT key FROM work", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let unique: std::collections::HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "a POST stored twice");
    for o in outcomes.iter().filter(|o| o.key.is_some()) {
        assert!(
            unique.contains(o.key.as_ref().unwrap()),
            "POST {:?} answered 200 but not stored",
            o.key
        );
    }
    assert!(
        unhealthy.is_empty(),
        "/__internal/health failed: {unhealthy:?}"
    );
    // The same PostgreSQL, and every session the waifu had is still there.
    let postmaster = platform.superuser("postgres").await;
    let still: String = postmaster
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        still, server_started,
        "the managed PostgreSQL was restarted"
    );
    for session in &before {
        assert!(
            after.contains(session),
            "session {session:?} was cut: {after:?}"
        );
    }
    let orchestrator_log = std::fs::read_to_string(platform.dir.join("orchestrator.log")).unwrap();
    assert_eq!(
        orchestrator_log
            .matches("adopted the running managed PostgreSQL")
            .count(),
        3,
        "{orchestrator_log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binary_that_cannot_start_leaves_the_old_one_serving() {
    let _one = ONE_AT_A_TIME.lock().await;
    // The binary at a path of the test's own, so it can be replaced.
    let dir = std::env::temp_dir().join(format!("waifus-upgrade-bin-{}", fastrand::u32(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("orchestrator");
    std::fs::copy(orchestrator_bin(), &binary).unwrap();
    let platform = Platform::start_with("badupgrade", &binary).await;
    let (_w, _, _) = platform.sdk_waifu("steady", "1", "w");
    platform.until_answered("steady", "1 ").await;
    let load = Load::start(platform.public, "steady", true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let serving = platform.pid().unwrap();

    // A new binary that fails at start, as one would on a DATA_DIR it
    // cannot read: put in place by a rename, as a package manager does.
    let broken = dir.join("broken");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'error: cannot read DATA_DIR: Permission denied' >&2\nexit 3\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&broken, &binary).unwrap();
    let ok = Command::new("kill")
        .args(["-USR2", &serving.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let log_path = platform.dir.join("orchestrator.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log_path)
        .unwrap()
        .contains("upgrade failed")
    {
        assert!(Instant::now() < deadline, "no word of the failed upgrade");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The operator's command says why, too.
    let out = Command::new(orchestrator_bin())
        .arg("upgrade")
        .env("INTERNAL_ADDR", platform.internal.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("exited (exit status: 3) before it was ready"),
        "{stderr}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(platform.pid(), Some(serving), "the old process serves on");
    assert!(alive(serving));
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("cannot read DATA_DIR"),
        "the new process's own words: {log}"
    );
    assert!(log.contains("this orchestrator goes on serving"), "{log}");

    // The real binary back: the upgrade goes through.
    std::fs::copy(orchestrator_bin(), dir.join("fixed")).unwrap();
    std::fs::rename(dir.join("fixed"), &binary).unwrap();
    let out = Command::new(orchestrator_bin())
        .arg("upgrade")
        .env("INTERNAL_ADDR", platform.internal.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("upgraded: the new orchestrator"),
        "{stdout}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = load.finish().await;
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    assert_ne!(platform.pid(), Some(serving));
    drop(platform);
    let _ = std::fs::remove_dir_all(&dir);
}
