//! `deploy/compose.yaml` brought up with docker-compose, used through its
//! published port, restarted, scaled and thinned under load.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::images::{Images, images};
use crate::support::*;

/// One `docker-compose` project running `deploy/compose.yaml`, taken down
/// with its volumes when dropped.
struct Stack {
    project: String,
    env: Vec<(String, String)>,
    http: u16,
    /// What `deploy/make-secrets.sh` made, as an operator runs it.
    secrets: std::path::PathBuf,
}

impl Stack {
    fn up(images: &Images) -> Stack {
        let project = format!("waifusit{}", std::process::id());
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (http, https) = (free(), free());
        // The secrets as the compose file's comment says to make them.
        let secrets = std::env::temp_dir().join(format!("{project}-secrets"));
        let _ = std::fs::remove_dir_all(&secrets);
        ok(
            Command::new("bash")
                .arg(repo().join("deploy/make-secrets.sh"))
                .env("SECRETS_DIR", &secrets),
            Duration::from_secs(30),
        );
        let secrets_dir = secrets.to_str().unwrap().to_owned();
        let env = [
            ("POSTGRES_IMAGE", images.postgres.as_str()),
            ("ORCHESTRATOR_IMAGE", &images.orchestrator),
            ("LINK_IMAGE", &images.link),
            ("HELLO_IMAGE", &images.hello),
            ("NOTES_IMAGE", &images.notes),
            ("WAIFUS_BASE_IMAGE", &images.base),
            ("APP_BASE_IMAGE", &images.app_base),
            ("PUBLISH_ADDR", "127.0.0.1"),
            ("HTTP_PORT", &http.to_string()),
            ("HTTPS_PORT", &https.to_string()),
            ("SECRETS_DIR", &secrets_dir),
            ("ACCESS_LOG", "true"),
            ("BACKUP_INTERVAL", "1h"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let stack = Stack {
            project,
            env,
            http,
            secrets,
        };
        let started = Instant::now();
        stack.compose(&["up", "-d", "--no-build"], Duration::from_secs(600));
        eprintln!("docker-compose up -d: {:?}", started.elapsed());
        stack
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.args(["-p", &self.project, "-f"])
            .arg(repo().join("deploy/compose.yaml"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn compose(&self, args: &[&str], within: Duration) -> String {
        ok(&mut self.command(args), within)
    }

    /// The containers of `service`.
    fn containers(&self, service: &str) -> Vec<String> {
        self.compose(&["ps", "-q", service], Duration::from_secs(60))
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn orchestrator(&self) -> String {
        self.containers("orchestrator").pop().unwrap()
    }

    /// One of the secrets the stack runs with.
    fn secret(&self, name: &str) -> String {
        std::fs::read_to_string(self.secrets.join(name))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// A call to the internal API from inside the orchestrator's container
    /// (the only place it can be reached), with the admin token: status
    /// and body.
    fn internal(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let admin = self.secret("admin-token");
        internal_as(&self.orchestrator(), Some(&admin), method, path, body)
    }

    /// The healthy instances of `name` that are not draining.
    fn serving(&self, name: &str) -> Vec<String> {
        let (status, body) = self.internal("GET", "/__internal/waifus", "");
        if status != 200 {
            return Vec::new();
        }
        serving_in(&body, name)
            .into_iter()
            .map(|(host, _)| host)
            .collect()
    }

    fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.internal("GET", "/__internal/metrics", "");
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn logs(&self, container: &str) -> String {
        let out = run(&mut docker(&["logs", container]), Duration::from_secs(60));
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let out = run(
                &mut self.command(&["logs", "--tail", "60"]),
                Duration::from_secs(60),
            );
            eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        }
        let _ = run(
            &mut self.command(&["down", "-v", "-t", "5"]),
            Duration::from_secs(300),
        );
        let _ = std::fs::remove_dir_all(&self.secrets);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_serves_restarts_scales_and_loses_nothing() {
    if !docker_ready() {
        return;
    }
    let _engine = ENGINE.read().await;
    let images = tokio::task::block_in_place(images);
    let stack = tokio::task::block_in_place(|| Stack::up(images));
    let port = stack.http;

    // Up and healthy: hello through the published port.
    until_status(port, "localhost", "/hello/", 200, Duration::from_secs(180)).await;
    let (_, _, greeting) = public(port, "GET", "localhost", "/hello/", "")
        .await
        .unwrap();
    assert_eq!(greeting, "hello from waifus\n");

    // link creates a short link on its database and follows it through the
    // main domain and through its bind.
    let deadline = Instant::now() + Duration::from_secs(120);
    let created = loop {
        if let Some((201, _, body)) = public(
            port,
            "POST",
            "localhost",
            "/link/link",
            r#"{"url":"https://example.com/compose"}"#,
        )
        .await
        {
            break body;
        }
        assert!(Instant::now() < deadline, "link never created a link");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let code = created["code"].as_str().unwrap().to_owned();
    let follow = |host: &'static str, path: String| async move {
        let (status, location, _) = public(port, "GET", host, &path, "").await.unwrap();
        assert_eq!(status, 302, "{host}{path}");
        assert_eq!(location.as_deref(), Some("https://example.com/compose"));
    };
    follow("localhost", format!("/link/link/{code}")).await;
    follow("link.localhost", format!("/{code}")).await;

    // notes, a Python app with no waifus code run by waifu-run, stores a
    // note in the database waifu-run handed it and lists it.
    until_status(port, "localhost", "/notes/", 200, Duration::from_secs(180)).await;
    let (status, _, key) = public(port, "POST", "localhost", "/notes/notes", "a note")
        .await
        .unwrap();
    assert_eq!(status, 200, "{key}");
    let (status, _, listed) = public(port, "GET", "localhost", "/notes/notes", "")
        .await
        .unwrap();
    assert_eq!(status, 200, "{listed}");
    assert!(listed.lines().any(|l| l == key.trim()), "{key} in {listed}");

    // Backups run in the container with the server's own pg_dump: link's
    // new database gets a first verified backup on the `backups` volume,
    // and it restores there (paused, swapped, resumed) with its link in it.
    let cli = |args: &[&str]| {
        let mut all = vec!["exec", "-T", "orchestrator", "orchestrator"];
        all.extend_from_slice(args);
        tokio::task::block_in_place(|| stack.compose(&all, Duration::from_secs(180)))
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let listed = loop {
        let listed = cli(&["db", "backups", "link"]);
        if listed
            .lines()
            .any(|l| l.contains(" yes ") && l.contains("/backups/link/"))
        {
            break listed;
        }
        assert!(
            Instant::now() < deadline,
            "no verified backup of link: {listed}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!("{listed}");
    let restored = cli(&["db", "restore", "link", "--latest"]);
    assert!(restored.contains("as the dump recorded"), "{restored}");
    follow("link.localhost", format!("/{code}")).await;

    // In its container the orchestrator is process 1: replacing it in
    // place would stop the container, so an upgrade there is refused with
    // the reason, and it serves on.
    let refused = tokio::task::block_in_place(|| {
        run(
            &mut stack.command(&["exec", "-T", "orchestrator", "orchestrator", "upgrade"]),
            Duration::from_secs(60),
        )
    });
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("is process 1"),
        "{said}"
    );
    follow("link.localhost", format!("/{code}")).await;

    // The internal API is not published: only the public ports are.
    let orchestrator = stack.orchestrator();
    let ports = ok(
        &mut docker(&["port", &orchestrator]),
        Duration::from_secs(30),
    );
    assert!(
        ports.contains("8080/tcp") && !ports.contains("2137"),
        "{ports}"
    );
    let mapped = run(
        &mut stack.command(&["port", "orchestrator", "2137"]),
        Duration::from_secs(30),
    );
    assert!(
        String::from_utf8_lossy(&mapped.stdout).trim().is_empty()
            || String::from_utf8_lossy(&mapped.stdout).trim() == ":0",
        "{mapped:?}"
    );

    // Locked down as shipped: without a token nothing but health answers;
    // the internal token does not open operator endpoints; a hello for a
    // waifu's name without its secret is refused; what is in the internal
    // network cannot get a database by naming a new waifu without a token.
    let internal_token = stack.secret("internal-token");
    let orchestrator = stack.orchestrator();
    let (status, _) = internal_of(&orchestrator, "GET", "/__internal/waifus", "");
    assert_eq!(status, 401);
    let (status, _) = internal_as(
        &orchestrator,
        Some(&internal_token),
        "GET",
        "/__internal/waifus",
        "",
    );
    assert_eq!(status, 401);
    let (status, body) = internal_as(
        &orchestrator,
        Some(&internal_token),
        "POST",
        "/__internal/hello",
        r#"{"name":"link","host":"intruder:8080"}"#,
    );
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("secret_required"), "{body}");
    let (status, _) = internal_of(
        &orchestrator,
        "POST",
        "/__internal/database",
        r#"{"name":"squatter","secret":"mine"}"#,
    );
    assert_eq!(status, 401);

    // A restarted orchestrator routes from its state before any waifu says
    // hello again (they do every 30 s).
    let started = Instant::now();
    tokio::task::block_in_place(|| {
        stack.compose(&["restart", "orchestrator"], Duration::from_secs(120))
    });
    until_status(port, "localhost", "/hello/", 200, Duration::from_secs(60)).await;
    let back = started.elapsed();
    follow("link.localhost", format!("/{code}")).await;
    let hellos =
        tokio::task::block_in_place(|| stack.metric("waifus_hellos_total{outcome=\"ok\"}"));
    eprintln!("orchestrator restart: routes back after {back:?}, {hellos} hellos since");
    // Waifus say hello every 30 s; one whose turn fell in the restart
    // may have said it again, but not all four.
    assert!(
        hellos < 4.0,
        "routes came back from the stored state, not from hellos"
    );

    // Three hello containers share the load.
    tokio::task::block_in_place(|| {
        stack.compose(
            &[
                "up",
                "-d",
                "--no-build",
                "--no-recreate",
                "--scale",
                "hello=3",
                "hello",
            ],
            Duration::from_secs(300),
        );
        wait_for(
            "three hello instances serving",
            Duration::from_secs(120),
            || stack.serving("hello").len() == 3,
        );
    });
    let instances = tokio::task::block_in_place(|| stack.serving("hello"));
    for _ in 0..300 {
        let (status, _, _) = public(port, "GET", "localhost", "/hello/", "")
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    let log = tokio::task::block_in_place(|| stack.logs(&stack.orchestrator()));
    let counts = served_by(&log, "hello", &instances);
    eprintln!("three hello containers: {instances:?} served {counts:?}");
    assert!(counts.iter().all(|&c| c >= 50), "{instances:?}: {counts:?}");

    // One of them stopped under load (SIGTERM: goodbye, drain, exit): no
    // request fails.
    let load = Load::start(port);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = tokio::task::block_in_place(|| stack.containers("hello"))
        .pop()
        .unwrap();
    let stopped = Instant::now();
    tokio::task::block_in_place(|| ok(&mut docker(&["stop", &victim]), Duration::from_secs(60)));
    let took = stopped.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sent, failures) = load.finish().await;
    eprintln!(
        "docker stop of one hello under load: {sent} requests, {} failed, stop took {took:?}",
        failures.len()
    );
    assert_none_failed(&failures);
    let exit = ok(
        &mut docker(&["inspect", "-f", "{{.State.ExitCode}}", &victim]),
        Duration::from_secs(30),
    );
    assert_eq!(exit.trim(), "0", "the stopped hello exited 0");
    assert_eq!(
        tokio::task::block_in_place(|| stack.serving("hello")).len(),
        2
    );

    // docker stop of the notes container: waifu-run says goodbye, waits
    // for nothing in flight, stops the app; the container exits 0.
    let notes = tokio::task::block_in_place(|| stack.containers("notes"))
        .pop()
        .unwrap();
    tokio::task::block_in_place(|| ok(&mut docker(&["stop", &notes]), Duration::from_secs(60)));
    let exit = ok(
        &mut docker(&["inspect", "-f", "{{.State.ExitCode}}", &notes]),
        Duration::from_secs(30),
    );
    let log = tokio::task::block_in_place(|| stack.logs(&notes));
    assert_eq!(exit.trim(), "0", "{log}");
    assert!(log.contains("nothing in flight any more"), "{log}");

    // PostgreSQL restarted: provisioning works again, nothing else restarted.
    tokio::task::block_in_place(|| {
        stack.compose(&["restart", "postgres"], Duration::from_secs(120));
        wait_for(
            "a database after PostgreSQL restarted",
            Duration::from_secs(120),
            || {
                internal_as(
                    &stack.orchestrator(),
                    Some(&internal_token),
                    "POST",
                    "/__internal/database",
                    r#"{"name":"after-restart","secret":"compose-test-secret"}"#,
                )
                .0 == 200
            },
        );
    });
    until_status(port, "localhost", "/hello/", 200, Duration::from_secs(10)).await;
}
