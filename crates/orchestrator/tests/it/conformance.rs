//! `orchestrator check --run -- CMD`: the examples in three languages pass
//! every rule (the Rust SDK's `hello`, `hello-python`, the Node app and the
//! Python app on its database under `waifu-run`), and three waifus that each
//! break one rule on purpose fail, naming it. The runs go four at a time:
//! each has its own throwaway orchestrator and waits some 30 s for a second
//! hello.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A workspace path from this crate's directory.
fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn present(program: &str, probe: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(probe)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `check --run` of `command` (with `options` before `--`): whether it
/// passed, and its report.
async fn check_run(options: &[&str], command: Vec<String>) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("waifus-conformance-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["check", "--run"])
        .args(options)
        .arg("--")
        .args(&command)
        .current_dir(&dir)
        .env_remove("DATABASE_URL")
        .env_remove("ADMIN_TOKEN")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), out)
        .await
        .expect("the conformance run finished within 300 s")
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), report)
}

/// One run: its label, the options before `--`, the command, and the
/// rules that must fail (none: it must pass).
type Run = (&'static str, Vec<String>, Vec<String>, Vec<&'static str>);

/// The rules a report says failed.
fn failed(report: &str) -> Vec<&str> {
    report
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("FAIL  "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_in_three_languages_pass_and_broken_waifus_fail_naming_the_rule() {
    let have_node = waifus_testkit::require(
        present("node", &["--version"]),
        "node",
        "apt-get install nodejs",
    );
    let have_psycopg2 = waifus_testkit::require(
        present("/usr/bin/python3", &["-c", "import psycopg2"]),
        "psycopg2 for /usr/bin/python3",
        "apt-get install python3-psycopg2",
    );
    let bin = |name: &str| waifus_testkit::workspace_binary(name).display().to_string();
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let fixture = repo("crates/orchestrator/tests/fixtures/misbehaving_waifu.py");
    let fixture = fixture.to_str().unwrap();
    let mut runs: Vec<Run> = vec![
        ("hello (Rust SDK)", vec![], vec![bin("hello")], vec![]),
        (
            "hello-python",
            vec![],
            s(&[
                "python3",
                repo("waifus/hello-python/main.py").to_str().unwrap(),
            ]),
            vec![],
        ),
        (
            "never says goodbye",
            vec![],
            s(&["python3", fixture, "no-goodbye"]),
            vec!["it says goodbye after SIGTERM"],
        ),
        (
            "hello before its health passes",
            vec![],
            s(&["python3", fixture, "early-hello"]),
            vec!["its health passes before it says hello"],
        ),
        (
            "health 200 with a body",
            vec![],
            s(&["python3", fixture, "health-body"]),
            vec![
                "health: it answers exactly 204 No Content",
                "health: its body is empty",
            ],
        ),
    ];
    if have_node {
        runs.push((
            "notes-node under waifu-run",
            s(&["--path", "/notes"]),
            s(&[
                &bin("waifu-run"),
                "--health",
                "/healthz",
                "--",
                "node",
                repo("waifus/notes-node/server.js").to_str().unwrap(),
            ]),
            vec![],
        ));
    }
    if have_psycopg2 {
        runs.push((
            "notes-python under waifu-run --database",
            s(&["--path", "/notes"]),
            s(&[
                &bin("waifu-run"),
                "--health",
                "/healthz",
                "--database",
                "--",
                "/usr/bin/python3",
                repo("waifus/notes-python/app.py").to_str().unwrap(),
            ]),
            vec![],
        ));
    }
    // One run against an orchestrator that runs already (this test's own,
    // with a longer upstream timeout than the harness's default).
    let given = crate::harness::start(
        &crate::pg::unique_db("conformance"),
        &["--upstream-timeout", "30s"],
    )
    .await;
    runs.push((
        "hello against --orchestrator",
        vec![
            "--orchestrator".to_owned(),
            format!("http://{}", given.internal),
            "--public".to_owned(),
            given.public.to_string(),
            "--name".to_owned(),
            "given".to_owned(),
        ],
        vec![bin("hello")],
        vec![],
    ));
    let four = Arc::new(tokio::sync::Semaphore::new(4));
    let handles: Vec<_> = runs
        .into_iter()
        .map(|(label, options, command, must_fail)| {
            let four = four.clone();
            tokio::spawn(async move {
                let _turn = four.acquire().await.unwrap();
                let options: Vec<&str> = options.iter().map(String::as_str).collect();
                let (passed, report) = check_run(&options, command).await;
                (label, must_fail, passed, report)
            })
        })
        .collect();
    let mut reports = Vec::new();
    for handle in handles {
        reports.push(handle.await.unwrap());
    }
    given.stop().await.unwrap();
    for report in reports {
        let (label, must_fail, passed, report) = report;
        eprintln!("== {label}\n{report}");
        if must_fail.is_empty() {
            assert!(passed, "{label} should pass:\n{report}");
            assert!(report.contains("rules passed."), "{label}:\n{report}");
        } else {
            assert!(!passed, "{label} should fail:\n{report}");
            let failed = failed(&report);
            for rule in &must_fail {
                assert!(
                    failed.contains(rule),
                    "{label} should fail {rule:?}:\n{report}"
                );
            }
            // Only what it breaks, and what follows from it.
            assert!(
                failed.len() <= must_fail.len() + 1,
                "{label} fails more than it breaks:\n{report}"
            );
        }
    }
}

#[tokio::test]
async fn a_run_without_a_command_says_how_to_give_one() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["check", "--run"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--") || err.contains("command"), "{err}");
}
