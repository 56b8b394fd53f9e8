//! The command line as a user meets it: a mistake is named and exits 2, an
//! app that cannot be started exits as a shell would, and an app that
//! never becomes healthy is never announced and its end is passed on.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn waifu_run() -> Command {
    Command::new(env!("CARGO_BIN_EXE_waifu-run"))
}

#[test]
fn mistakes_are_named_and_exit_2() {
    for (args, says) in [
        (&[][..], "no command"),
        (&["python3", "app.py"][..], "put the command after --"),
        (&["--port", "99999", "--", "true"][..], "not a port"),
        (&["--health", "healthz", "--", "true"][..], "--health"),
    ] {
        let out = waifu_run().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(err.contains("usage: waifu-run"), "{args:?}: {err}");
    }
    let out = waifu_run()
        .env("WAIFU_NAME", "Not A Name")
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WAIFU_NAME"));
    let help = waifu_run().arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("DATABASE_URL"));
}

#[test]
fn an_app_that_cannot_start_or_dies_before_its_health_passes_is_passed_on() {
    let run = |args: &[&str]| {
        waifu_run()
            .args(["--name", "cli", "--port", "1"])
            .arg("--")
            .args(args)
            // Nothing listens there: a hello would fail, none is tried.
            .env("ORCHESTRATOR_URL", "http://127.0.0.1:1")
            .output()
            .unwrap()
    };
    assert_eq!(run(&["/nonexistent/app"]).status.code(), Some(127));
    let out = run(&["sh", "-c", "exit 7"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(err.contains("ended before its health passed"), "{err}");
    assert!(!err.contains("hello"), "{err}");
    // The app is given PORT and none of waifu-run's secrets.
    let out = waifu_run()
        .args(["--name", "cli", "--port", "4242", "--"])
        .args([
            "sh",
            "-c",
            "test \"$PORT\" = 4242 && test -z \"$WAIFU_SECRET$ORCHESTRATOR_TOKEN\" && exit 5",
        ])
        .env("WAIFU_SECRET", "s3cret")
        .env("ORCHESTRATOR_TOKEN", "t0ken")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn as_a_containers_first_process_it_passes_on_the_apps_status() {
    // A new PID namespace makes waifu-run process 1, as in a container:
    // it reaps every child, the app's status among them. The app leaves
    // an orphan behind, which becomes waifu-run's.
    let unshare = Command::new("unshare")
        .args(["-fp", "--mount-proc", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !waifus_testkit::require(unshare, "unshare -fp (root)", "run the suite as root") {
        return;
    }
    let out = Command::new("unshare")
        .args(["-fp", "--mount-proc"])
        .arg(env!("CARGO_BIN_EXE_waifu-run"))
        .args(["--name", "pid1", "--port", "1", "--"])
        .args(["sh", "-c", "sleep 0.3 & sleep 0.1; exit 3"])
        .env("ORCHESTRATOR_URL", "http://127.0.0.1:1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("exit status 3"), "{err}");
    assert!(!err.contains("waiting for the app failed"), "{err}");
}
