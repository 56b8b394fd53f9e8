//! Apps with no waifus code in them, run by `waifu-run`: the Node example
//! (standard library only) and the Python `http.server` example on its own
//! database, each through a rolling deploy under load; and `--database`
//! handing an app its credentials, from the cache while the orchestrator
//! is away.

use super::*;

/// `waifu-run`, built beside this test by `cargo test --workspace`.
fn waifu_run() -> PathBuf {
    waifus_testkit::workspace_binary("waifu-run")
}

/// Debian's Python, which has Debian's psycopg2.
const PYTHON: &str = "/usr/bin/python3";

fn has_psycopg2() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import psycopg2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn has(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Platform {
    /// `waifu-run [options] -- app` as instance `label` of waifu `name`, with
    /// `env` added; its log is `{label}.log`.
    fn run_app(
        &self,
        name: &str,
        label: &str,
        options: &[&str],
        app: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let port = free_port();
        Proc::spawn(
            Command::new(waifu_run())
                .args(["--name", name, "--port", &port.to_string()])
                .args(options)
                .arg("--")
                .args(app)
                .env("ORCHESTRATOR_URL", format!("http://{}", self.internal))
                .env("WAIFU_HOST", format!("127.0.0.1:{port}"))
                .env("RUST_LOG", "info")
                .envs(env.iter().copied())
                .stdout(std::fs::File::create(self.dir.join(format!("{label}.out"))).unwrap())
                .stderr(std::fs::File::create(self.dir.join(format!("{label}.log"))).unwrap()),
        )
        .killed_when_dropped()
    }

    /// Kills the orchestrator (SIGKILL): its managed PostgreSQL goes on, as
    /// after a crash, until the returned handle stops it.
    fn kill_keeping_postgres(&mut self) -> Postmaster {
        let pid_file = self.dir.join("data/postgres/postmaster.pid");
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()))
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        self.orchestrator.signal("-KILL");
        assert!(
            self.orchestrator
                .exit_code(Duration::from_secs(30))
                .is_none()
        );
        Postmaster(pid)
    }

    fn log(&self, label: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{label}.log"))).unwrap_or_default()
    }
}

/// A PostgreSQL server left running: stopped (fast shutdown) when dropped.
struct Postmaster(u32);

impl Drop for Postmaster {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while alive(self.0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Instance `a` of `notes` serves; `b` starts, both serve under load, `a`
/// gets SIGTERM and exits 0; no request fails, and every POST is in the
/// app's own list exactly once.
async fn rolling_deploy(
    platform: &Platform,
    start: impl Fn(&str) -> Proc,
    banner: &str,
) -> Vec<Outcome> {
    let mut a = start("a");
    platform.until_answered("notes", banner).await;
    let load = Load::posting_to(platform.public, "notes", Some("/notes"));
    load.until_answered_by(banner).await;
    let _b = start("b");
    platform.until_serving("notes", 2).await;
    // Both serve for a moment; slow requests are sent so that `a` is
    // sure to have some in flight when it is told to stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let public = platform.public;
    let slow: Vec<_> = (0..8)
        .map(|_| tokio::spawn(fetch(public, "GET", "/notes/slow?ms=2500", None)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.signal("-TERM");
    let code = a.exit_code(Duration::from_secs(40));
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = load.finish().await;
    let log = platform.log("a");
    for slow in slow {
        let answer = slow.await.unwrap();
        assert_eq!(answer, Some((200, "slept 2500\n".to_owned())), "{log}");
    }
    assert_eq!(code, Some(0), "waifu-run did not exit 0:\n{log}");
    assert!(log.contains("nothing in flight any more"), "{log}");
    assert!(
        failures(&outcomes).is_empty(),
        "{:?}\n{log}",
        failures(&outcomes)
    );
    assert!(outcomes.len() > 200, "only {} requests", outcomes.len());
    let after = outcomes.iter().filter(|o| o.started > stopped).count();
    assert!(after > 20, "only {after} requests after the stop");
    let (status, listed) = fetch(platform.public, "GET", "/notes/notes", None)
        .await
        .expect("the notes");
    assert_eq!(status, 200, "{listed}");
    each_post_done_once_in(&outcomes, counted_keys(&listed));
    let actions = platform.audited("notes").await;
    assert!(actions.iter().any(|a| a == "goodbye"), "{actions:?}");
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_app_under_waifu_run_deploys_with_no_failed_request() {
    if !waifus_testkit::require(has("node"), "node", "apt-get install nodejs") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let platform = Platform::start("run-node").await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../waifus/notes-node/server.js");
    let notes = platform.dir.join("notes.log");
    let start = |label: &str| {
        platform.run_app(
            "notes",
            label,
            &["--health", "/healthz"],
            &["node", script.to_str().unwrap()],
            &[
                ("WAIFU_VERSION", "7"),
                ("NOTES_FILE", notes.to_str().unwrap()),
            ],
        )
    };
    rolling_deploy(&platform, start, "7 notes from node").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_app_under_waifu_run_on_its_database_deploys_with_no_failed_request() {
    if !waifus_testkit::require(
        has_psycopg2(),
        "psycopg2 for /usr/bin/python3",
        "apt-get install python3-psycopg2",
    ) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let platform = Platform::start("run-python").await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../waifus/notes-python/app.py");
    let start = |label: &str| {
        platform.run_app(
            "notes",
            label,
            &["--health", "/healthz", "--database"],
            &[PYTHON, script.to_str().unwrap()],
            &[("WAIFU_VERSION", "3"), ("WAIFU_SECRET", "notes-secret")],
        )
    };
    rolling_deploy(&platform, start, "3 notes from python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waifu_run_hands_the_app_its_database_from_the_cache_when_the_orchestrator_is_away() {
    if !waifus_testkit::require(has("psql"), "psql", "apt-get install postgresql-client") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut platform = Platform::start("run-db").await;
    let cache = platform.dir.join("cache");
    // The app reads a row through DATABASE_URL, writes what it read, and
    // serves its directory.
    let app = |platform: &Platform, label: &str| {
        let seen = platform.dir.join(format!("{label}.seen"));
        let script = format!(
            "psql \"$DATABASE_URL\" -Atc \"select current_user || ' ' || current_database()\" \
             > {seen} 2>&1 && test -z \"$WAIFU_SECRET\" && exec {PYTHON} -m http.server \
             --bind 127.0.0.1 \"$PORT\"",
            seen = seen.display()
        );
        let proc = platform.run_app(
            "dbapp",
            label,
            &["--health", "/", "--database"],
            &["sh", "-c", &script],
            &[
                ("WAIFU_SECRET", "dbapp-secret"),
                ("WAIFU_CACHE_DIR", cache.to_str().unwrap()),
            ],
        );
        (proc, seen)
    };
    let (mut first, seen) = app(&platform, "first");
    platform.until_answered("dbapp", "<!DOCTYPE").await;
    let read = std::fs::read_to_string(&seen).unwrap();
    assert!(read.starts_with("waifu_dbapp "), "{read}");
    first.signal("-TERM");
    assert_eq!(first.exit_code(Duration::from_secs(40)), Some(0));

    // The orchestrator is gone (its PostgreSQL stays, as after a crash):
    // the app still gets its database, from the cache.
    let _cluster = platform.kill_keeping_postgres();
    let (mut second, seen) = app(&platform, "second");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&seen).is_ok_and(|s| s.ends_with('\n')) {
        assert!(Instant::now() < deadline, "{}", platform.log("second"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), read);
    // Healthy, it keeps saying hello to an orchestrator that is not there.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !platform.log("second").contains("hello failed") {
        assert!(Instant::now() < deadline, "{}", platform.log("second"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.signal("-TERM");
    assert_eq!(second.exit_code(Duration::from_secs(40)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_ends_by_itself_is_said_goodbye_for_and_its_status_passed_on() {
    let _one = ONE_AT_A_TIME.lock().await;
    let platform = Platform::start("run-ends").await;
    let stop = platform.dir.join("stop");
    // A server that stops when told (the file appears) and exits 9.
    let script = format!(
        "{PYTHON} -m http.server --bind 127.0.0.1 \"$PORT\" & server=$!; \
         while [ ! -e {stop} ]; do sleep 0.05; done; kill $server; exit 9",
        stop = stop.display()
    );
    let mut app = platform.run_app("ends", "a", &["--health", "/"], &["sh", "-c", &script], &[]);
    platform.until_answered("ends", "<!DOCTYPE").await;
    std::fs::write(&stop, "").unwrap();
    assert_eq!(
        app.exit_code(Duration::from_secs(30)),
        Some(9),
        "{}",
        platform.log("a")
    );
    let log = platform.log("a");
    assert!(log.contains("the app ended: saying goodbye"), "{log}");
    let actions = platform.audited("ends").await;
    assert!(actions.iter().any(|a| a == "goodbye"), "{actions:?}");
    // It is no longer routed: the waifu answers 503 until an instance returns.
    let (status, _) = fetch(platform.public, "GET", "/ends/", None).await.unwrap();
    assert_eq!(status, 503);
}
