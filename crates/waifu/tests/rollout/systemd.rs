//! The orchestrator under systemd: a `.socket` unit holds the listeners
//! across restarts, `Type=notify` follows the process across upgrades, and
//! the units in `deploy/systemd` say what the orchestrator expects.

use super::*;

/// A unit file of `deploy/systemd`.
fn unit(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/systemd")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The values of `key=` in a unit's text, in order.
fn settings(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
        .map(|value| value.trim().to_owned())
        .collect()
}

/// Whether a systemd tool is here; under `CI=true` its absence fails.
fn have(tool: &str) -> bool {
    let present = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    waifus_testkit::require(
        present,
        tool,
        "apt-get install systemd; .ci/run installs it",
    )
}

/// What systemd does for the two `.socket` units, in Python: it holds the
/// public and internal listening sockets the whole time and, on `start`,
/// runs the orchestrator through `systemd-socket-activate`, which passes
/// them on (`LISTEN_FDS=2`, `LISTEN_FDNAMES` as the units name them);
/// `stop` sends it SIGTERM and waits.
const SOCKET_HOLDER: &str = r#"
import os, socket, subprocess, sys
ports, names, binary = sys.argv[1].split(":"), sys.argv[2], sys.argv[3]
held = [socket.socket() for _ in ports]
for s, port in zip(held, ports):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(port)))
    s.listen(1024)
# Above any number dup2 overwrites, then at 3 and 4, kept open in `held`.
held = [os.dup(s.fileno()) for s in held] + held
for fd in (3, 4):
    os.dup2(held[fd - 3], fd)
child = None
for line in sys.stdin:
    if line.strip() == "start":
        child = subprocess.Popen(
            ["sh", "-c",
             'LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES="$1" exec systemd-socket-activate '
             '--fdname="$1" -E PATH -E DATA_DIR -E INTERNAL_ADDR -E HEALTH_INTERVAL "$0"',
             binary, names],
            pass_fds=(3, 4))
        print("started", child.pid, flush=True)
    elif line.strip() == "stop":
        child.terminate()
        print("stopped", child.wait(), flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activated_restarts_under_load_fail_no_connection() {
    if !have("systemd-socket-activate") {
        return;
    }
    // The names the shipped units give their sockets.
    let names: Vec<String> = ["waifus-public.socket", "waifus-internal.socket"]
        .iter()
        .flat_map(|file| settings(&unit(file), "FileDescriptorName"))
        .collect();
    assert_eq!(names.len(), 2, "one name per socket unit: {names:?}");
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = std::env::temp_dir().join(format!(
        "waifus-rollout-socket-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("holder.py");
    std::fs::write(&script, SOCKET_HOLDER).unwrap();
    let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let internal: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut holder = Command::new("python3")
        .arg(&script)
        .arg(format!("{}:{}", public.port(), internal.port()))
        .arg(names.join(":"))
        .arg(orchestrator_bin())
        .env("DATA_DIR", dir.join("data"))
        .env("INTERNAL_ADDR", internal.to_string())
        .env("HEALTH_INTERVAL", "500ms")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("orchestrator.log")).unwrap())
        .spawn()
        .unwrap();
    let mut commands = holder.stdin.take().unwrap();
    let mut answers = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut say = move |command: &str| {
        use std::io::BufRead;
        writeln!(commands, "{command}").unwrap();
        let mut answer = String::new();
        tokio::task::block_in_place(|| answers.read_line(&mut answer)).unwrap();
        answer
    };
    assert!(say("start").starts_with("started"));
    let platform = Platform {
        dir,
        public,
        internal,
        orchestrator: Proc::from_child(holder).killed_when_dropped(),
    };
    let (_w, log, _) = platform.sdk_waifu("sock", "1", "w");
    platform.until_answered("sock", "1 ").await;
    let load = Load::start(platform.public, "sock", true);
    let stop_health = Arc::new(AtomicBool::new(false));
    let health = super::upgrade::health_throughout(platform.internal, stop_health.clone());
    let mut gaps = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stopped = Instant::now();
        let answer = say("stop");
        assert_eq!(answer.trim(), "stopped 0", "it exits 0 on SIGTERM");
        assert!(say("start").starts_with("started"));
        platform.until_answered("sock", "1 ").await;
        gaps.push(stopped.elapsed());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = load.finish().await;
    stop_health.store(true, Ordering::Relaxed);
    let unhealthy = health.await.unwrap();
    eprintln!("stop to serving again: {gaps:?}");
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    // The internal socket is held too: its callers only waited.
    assert!(unhealthy.is_empty(), "{unhealthy:?}");
    each_post_done_once(&outcomes, &[&log]);
    let orchestrator_log = std::fs::read_to_string(platform.dir.join("orchestrator.log")).unwrap();
    assert_eq!(
        orchestrator_log
            .matches(r#"listening on an inherited socket addr="#)
            .count(),
        8,
        "{orchestrator_log}"
    );
    // A plain stop stops the managed PostgreSQL; the next start starts it.
    assert_eq!(
        orchestrator_log
            .matches("managed PostgreSQL stopped")
            .count(),
        3,
        "{orchestrator_log}"
    );
}

/// Reads `NOTIFY_SOCKET` messages until one holds `READY=1` or
/// `STOPPING=1`; every message read.
async fn notified_until(socket: &tokio::net::UnixDatagram, word: &str) -> Vec<String> {
    let mut said = Vec::new();
    let mut buf = vec![0; 4096];
    while !said.iter().any(|m: &String| m.lines().any(|l| l == word)) {
        let n = tokio::time::timeout(Duration::from_secs(120), socket.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {word} within 120 s; said {said:?}"))
            .unwrap();
        said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    said
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_units_verify_and_systemd_follows_the_process_across_an_upgrade() {
    // What the orchestrator expects of its units.
    let service = unit("waifus-orchestrator.service");
    assert_eq!(settings(&service, "Type"), ["notify"]);
    assert_eq!(
        settings(&service, "NotifyAccess"),
        ["all"],
        "the new process speaks"
    );
    assert_eq!(
        settings(&service, "ExecReload"),
        ["/usr/local/bin/orchestrator upgrade"]
    );
    assert_eq!(settings(&service, "KillMode"), ["mixed"]);
    let sockets = settings(&service, "Sockets").join(" ");
    for (file, name) in [
        ("waifus-public.socket", "public"),
        ("waifus-internal.socket", "internal"),
    ] {
        assert!(sockets.contains(file), "{file} in Sockets=");
        let socket = unit(file);
        assert_eq!(settings(&socket, "FileDescriptorName"), [name], "{file}");
        assert_eq!(
            settings(&socket, "Service"),
            ["waifus-orchestrator.service"],
            "{file}"
        );
    }
    // ExecReload's CLI finds the internal listener at INTERNAL_ADDR's default.
    assert_eq!(
        settings(&unit("waifus-internal.socket"), "ListenStream"),
        ["127.0.0.1:2137"]
    );
    let dir = std::env::temp_dir().join(format!(
        "waifus-rollout-units-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    if have("systemd-analyze") {
        let binary = orchestrator_bin();
        let mut files = Vec::new();
        for file in [
            "waifus-orchestrator.service",
            "waifus-public.socket",
            "waifus-internal.socket",
        ] {
            let text = unit(file).replace("/usr/local/bin/orchestrator", binary.to_str().unwrap());
            std::fs::write(dir.join(file), text).unwrap();
            files.push(dir.join(file));
        }
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .args(&files)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
    }

    // Type=notify across `systemctl reload`: the new process says READY=1
    // with its own MAINPID, the old one never says STOPPING=1; a stop does.
    let _one = ONE_AT_A_TIME.lock().await;
    let path = dir.join("notify");
    let notify = tokio::net::UnixDatagram::bind(&path).unwrap();
    let platform = Platform::start_env(
        "notify",
        &orchestrator_bin(),
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    )
    .await;
    let said = notified_until(&notify, "READY=1").await;
    let first = platform.pid().unwrap();
    assert!(
        said.last().unwrap().contains(&format!("MAINPID={first}")),
        "{said:?}"
    );
    let out = Command::new(orchestrator_bin())
        .arg("upgrade")
        .env("INTERNAL_ADDR", platform.internal.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = notified_until(&notify, "READY=1").await;
    let second = platform.pid().unwrap();
    assert_ne!(second, first, "{said:?}");
    assert!(
        said.last().unwrap().contains(&format!("MAINPID={second}")),
        "{said:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while alive(first) {
        assert!(
            Instant::now() < deadline,
            "the old process drains and exits"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut buf = vec![0; 4096];
    if let Ok(n) = notify.try_recv(&mut buf) {
        let late = String::from_utf8_lossy(&buf[..n]);
        assert!(!late.contains("STOPPING=1"), "the old process: {late}");
    }
    assert!(
        Command::new("kill")
            .args(["-TERM", &second.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let said = notified_until(&notify, "STOPPING=1").await;
    assert!(!said.iter().any(|m| m.contains("READY=1")), "{said:?}");
    drop(platform);
    let _ = std::fs::remove_dir_all(&dir);
}
