//! Real containers, the way users run waifus: images built here from nothing
//! but Debian's packages (mmdebstrap, `docker import`) and the workspace's own
//! binaries, and the stack of `deploy/compose.yaml` brought up with
//! docker-compose, used through its published port, restarted, scaled and
//! thinned under load.
//!
//! The root filesystems are cached between runs under a tag derived from
//! their recipe (`waifus-test/base:<key>`, `waifus-test/postgres:<key>`); the
//! application images are rebuilt from the binaries of this build each run.
//! Without a Docker engine every test here says SKIPPED and passes (a machine
//! with only Rust and PostgreSQL runs the rest of the suite); with one, a
//! missing mmdebstrap or docker-compose fails under `CI=true`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Digest;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `cmd`, killing it after `within`; its output.
fn run(cmd: &mut Command, within: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let (out, err) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{shown} took more than {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Runs `cmd` and insists that it succeeds; its stdout.
fn ok(cmd: &mut Command, within: Duration) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd, within);
    assert!(
        out.status.success(),
        "{shown}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn docker(args: &[&str]) -> Command {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    cmd
}

fn present(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the container tests can run here; prints why not.
fn docker_ready() -> bool {
    if !present("docker", &["info"]) {
        eprintln!("SKIPPED: no Docker engine answers `docker info`");
        return false;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    for (tool, args, package) in [
        ("mmdebstrap", &["--version"][..], "mmdebstrap"),
        ("docker-compose", &["version"][..], "docker-compose"),
    ] {
        if !present(tool, args) {
            assert!(!ci, "{tool} is missing, and CI=true: .ci/run installs it");
            eprintln!("SKIPPED: {tool} is missing (apt-get install {package})");
            return false;
        }
    }
    true
}

/// The images a test stack runs.
#[derive(Debug, Clone)]
struct Images {
    base: String,
    postgres: String,
    orchestrator: String,
    link: String,
    hello: String,
}

/// A Debian bookworm root filesystem with `include`, imported as an image
/// tagged by its recipe (and `extra`, the content of files built on it), or
/// the one a previous run made.
fn rootfs(name: &str, include: &str, hooks: &[&str], extra: &[u8]) -> String {
    let mut args: Vec<String> = vec![
        "--variant=minbase".into(),
        format!("--include={include}"),
        "--dpkgopt=path-exclude=/usr/share/doc/*".into(),
        "--dpkgopt=path-exclude=/usr/share/man/*".into(),
        "--dpkgopt=path-exclude=/usr/share/locale/*".into(),
        r#"--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*"#.into(),
    ];
    args.extend(hooks.iter().map(|h| h.to_string()));
    let mut key = sha2::Sha256::new();
    key.update(args.join("\n").as_bytes());
    key.update(extra);
    let key: String = key.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let tag = format!("waifus-test/{name}-rootfs:{key}");
    if present("docker", &["image", "inspect", &tag]) {
        return tag;
    }
    let started = Instant::now();
    let script = format!(
        "set -o pipefail; mmdebstrap {} bookworm - | docker import - {tag}",
        args.iter()
            .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
            .collect::<Vec<_>>()
            .join(" ")
    );
    ok(
        Command::new("bash").args(["-c", &script]),
        Duration::from_secs(900),
    );
    eprintln!("built {tag} in {:?}", started.elapsed());
    tag
}

/// The images, built once per test binary.
fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let deploy = repo().join("deploy");
        let base = rootfs("base", "ca-certificates", &[], b"");
        let pg_files = [
            std::fs::read(deploy.join("postgres/Dockerfile")).unwrap(),
            std::fs::read(deploy.join("postgres/entrypoint")).unwrap(),
        ]
        .concat();
        let pg_rootfs = rootfs(
            "postgres",
            "ca-certificates,postgresql,haproxy",
            &[r#"--essential-hook=mkdir -p "$1"/etc/postgresql-common/createcluster.d && echo "create_main_cluster = false" > "$1"/etc/postgresql-common/createcluster.d/waifus.conf"#],
            b"",
        );
        let key: String = sha2::Sha256::digest(&pg_files)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let postgres = format!("waifus-test/postgres:{key}");
        ok(
            docker(&["build", "-q", "--build-arg"])
                .arg(format!("ROOTFS_IMAGE={pg_rootfs}"))
                .args(["-t", &postgres])
                .arg(deploy.join("postgres")),
            Duration::from_secs(300),
        );

        // The application images, from this build's binaries (stripped),
        // through deploy/Dockerfile with PREBUILT=1.
        let context = std::env::temp_dir().join(format!("waifus-images-{}", std::process::id()));
        let prebuilt = context.join("deploy/prebuilt");
        std::fs::create_dir_all(&prebuilt).unwrap();
        for file in ["Dockerfile", "healthcheck"] {
            std::fs::copy(deploy.join(file), context.join("deploy").join(file)).unwrap();
        }
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_orchestrator")).parent().unwrap();
        for bin in ["orchestrator", "link", "hello"] {
            let built = bin_dir.join(bin);
            assert!(
                built.is_file(),
                "{} is missing: run the suite with `cargo test --workspace`, which builds it",
                built.display()
            );
            ok(
                Command::new("strip")
                    .arg("-o")
                    .arg(prebuilt.join(bin))
                    .arg(&built),
                Duration::from_secs(60),
            );
        }
        let tag = |bin: &str| format!("waifus-test/{bin}:dev");
        for bin in ["orchestrator", "link", "hello"] {
            let started = Instant::now();
            ok(
                docker(&["build", "-q", "-f", "deploy/Dockerfile", "--target", bin])
                    .args(["--build-arg", &format!("BASE_IMAGE={base}")])
                    .args(["--build-arg", &format!("BUILD_IMAGE={base}")])
                    .args(["--build-arg", "PREBUILT=1"])
                    .args(["--label", "waifus-test=app", "-t", &tag(bin), "."])
                    .current_dir(&context),
                Duration::from_secs(600),
            );
            eprintln!("built {} in {:?}", tag(bin), started.elapsed());
        }
        let _ = std::fs::remove_dir_all(&context);
        // Earlier runs' application images, now untagged.
        let _ = run(
            &mut docker(&[
                "image",
                "prune",
                "-f",
                "--filter",
                "label=waifus-test=app",
            ]),
            Duration::from_secs(120),
        );
        Images {
            base,
            postgres,
            orchestrator: tag("orchestrator"),
            link: tag("link"),
            hello: tag("hello"),
        }
    })
}

fn image_size_mb(image: &str) -> f64 {
    let bytes: f64 = ok(
        &mut docker(&["image", "inspect", "-f", "{{.Size}}", image]),
        Duration::from_secs(30),
    )
    .trim()
    .parse()
    .unwrap();
    bytes / 1e6
}

#[test]
fn images_are_small_run_as_a_user_and_hold_no_compiler() {
    if !docker_ready() {
        return;
    }
    let images = images();
    let base = image_size_mb(&images.base);
    eprintln!("base {} {base:.1} MB", images.base);
    eprintln!(
        "postgres {} {:.1} MB",
        images.postgres,
        image_size_mb(&images.postgres)
    );
    for image in [&images.orchestrator, &images.link, &images.hello] {
        let size = image_size_mb(image);
        eprintln!(
            "{image} {size:.1} MB ({:.1} MB above the base)",
            size - base
        );
        assert!(size - base < 40.0, "{image}: {size:.1} MB");
        let user = ok(
            &mut docker(&["image", "inspect", "-f", "{{.Config.User}}", image]),
            Duration::from_secs(30),
        );
        assert_eq!(user.trim(), "waifus", "{image} runs as a user");
        let found = run(
            &mut docker(&[
                "run",
                "--rm",
                "--entrypoint",
                "bash",
                image,
                "-c",
                "id -u; command -v cc gcc rustc cargo apt-get curl wget || true",
            ]),
            Duration::from_secs(60),
        );
        let found = String::from_utf8_lossy(&found.stdout);
        let mut lines = found.lines();
        assert_eq!(lines.next(), Some("10001"), "{image}: {found}");
        let tools: Vec<&str> = lines.collect();
        // apt-get stays (the base is Debian's own minimal system); no
        // compiler and no HTTP client.
        assert!(
            tools.iter().all(|t| t.ends_with("apt-get")),
            "{image} holds {tools:?}"
        );
    }
}

/// One `docker-compose` project running `deploy/compose.yaml`, taken down
/// with its volumes when dropped.
struct Stack {
    project: String,
    env: Vec<(String, String)>,
    http: u16,
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
        let env = [
            ("POSTGRES_IMAGE", images.postgres.as_str()),
            ("ORCHESTRATOR_IMAGE", &images.orchestrator),
            ("LINK_IMAGE", &images.link),
            ("HELLO_IMAGE", &images.hello),
            ("WAIFUS_BASE_IMAGE", &images.base),
            ("PUBLISH_ADDR", "127.0.0.1"),
            ("HTTP_PORT", &http.to_string()),
            ("HTTPS_PORT", &https.to_string()),
            ("POSTGRES_PASSWORD", "compose-test-password"),
            ("LINK_SECRET", "compose-test-link-secret"),
            ("ACCESS_LOG", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let stack = Stack { project, env, http };
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

    /// A call to the internal API from inside the orchestrator's container
    /// (the only place it can be reached): status and body.
    fn internal(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        internal_of(&self.orchestrator(), method, path, body)
    }

    /// The healthy instances of `name` that are not draining.
    fn serving(&self, name: &str) -> Vec<String> {
        let (status, body) = self.internal("GET", "/__internal/waifus", "");
        if status != 200 {
            return Vec::new();
        }
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .filter(|w| w["name"] == name)
            .flat_map(|w| w["instances"].as_array().unwrap())
            .filter(|i| i["healthy"] == true && i["draining"] == false)
            .map(|i| i["host"].as_str().unwrap().to_owned())
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
    }
}

/// One request through the published port; status, `Location` and body.
async fn public(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    body: &str,
) -> Option<(u16, Option<String>, String)> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .ok()?
        .ok()?;
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((
        status,
        location,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

async fn until_status(port: u16, host: &str, path: &str, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Some((status, _, _)) = public(port, "GET", host, path, "").await
            && status == want
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{host}{path} never answered {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Eight keep-alive clients sending `GET /hello/` until stopped; the
/// requests sent and the failures (any answer but 200, or none).
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    clients: Vec<tokio::task::JoinHandle<u64>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let clients = (0..8)
            .map(|_| {
                let (stop, failures) = (stop.clone(), failures.clone());
                tokio::spawn(async move {
                    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
                        .pool_max_idle_per_host(1)
                        .build_http();
                    let mut sent = 0;
                    while !stop.load(Ordering::Relaxed) {
                        sent += 1;
                        let request = http::Request::builder()
                            .uri(format!("http://127.0.0.1:{port}/hello/"))
                            .header("host", "localhost")
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        let got = async {
                            let response =
                                client.request(request).await.map_err(|e| e.to_string())?;
                            let status = response.status();
                            let body = response
                                .into_body()
                                .collect()
                                .await
                                .map_err(|e| e.to_string())?;
                            Ok::<_, String>((status, body.to_bytes()))
                        };
                        match tokio::time::timeout(Duration::from_secs(60), got).await {
                            Ok(Ok((status, _))) if status == 200 => {}
                            Ok(Ok((status, body))) => failures
                                .lock()
                                .unwrap()
                                .push(format!("{status}: {}", String::from_utf8_lossy(&body))),
                            Ok(Err(e)) => failures.lock().unwrap().push(e),
                            Err(_) => failures.lock().unwrap().push("timed out".into()),
                        }
                    }
                    sent
                })
            })
            .collect();
        Load {
            stop,
            failures,
            clients,
        }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut sent = 0;
        for client in self.clients {
            sent += client.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (sent, failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_serves_restarts_scales_and_loses_nothing() {
    if !docker_ready() {
        return;
    }
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
    // may have said it again, but not all three.
    assert!(
        hellos < 3.0,
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
    let counts: Vec<usize> = instances
        .iter()
        .map(|i| {
            log.lines()
                .filter(|l| l.contains("waifu=hello") && l.contains(&format!("instance={i}")))
                .count()
        })
        .collect();
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
    assert!(failures.is_empty(), "{failures:?}");
    let exit = ok(
        &mut docker(&["inspect", "-f", "{{.State.ExitCode}}", &victim]),
        Duration::from_secs(30),
    );
    assert_eq!(exit.trim(), "0", "the stopped hello exited 0");
    assert_eq!(
        tokio::task::block_in_place(|| stack.serving("hello")).len(),
        2
    );

    // PostgreSQL restarted: provisioning works again, nothing else restarted.
    tokio::task::block_in_place(|| {
        stack.compose(&["restart", "postgres"], Duration::from_secs(120));
        wait_for(
            "a database after PostgreSQL restarted",
            Duration::from_secs(120),
            || {
                stack
                    .internal(
                        "POST",
                        "/__internal/database",
                        r#"{"name":"after-restart","secret":"compose-test-secret"}"#,
                    )
                    .0
                    == 200
            },
        );
    });
    until_status(port, "localhost", "/hello/", 200, Duration::from_secs(10)).await;
}

/// Containers, networks and volumes made with plain `docker` commands,
/// removed when dropped.
struct Cluster {
    prefix: String,
    containers: Mutex<Vec<String>>,
    networks: Vec<String>,
    volumes: Vec<String>,
}

impl Cluster {
    fn new(tag: &str, networks: &[&str], volumes: &[&str]) -> Cluster {
        let prefix = format!("waifusit{}{tag}", std::process::id());
        let cluster = Cluster {
            networks: networks.iter().map(|n| format!("{prefix}-{n}")).collect(),
            volumes: volumes.iter().map(|v| format!("{prefix}-{v}")).collect(),
            prefix,
            containers: Mutex::new(Vec::new()),
        };
        // The last network gets a subnet of its own, so that a test can
        // give a container an address of its choosing there.
        for (i, network) in cluster.networks.iter().enumerate() {
            let mut create = docker(&["network", "create"]);
            if i + 1 == cluster.networks.len() {
                create.args(["--subnet", &cluster.subnet("0/24")]);
            }
            ok(create.arg(network), Duration::from_secs(60));
        }
        for volume in &cluster.volumes {
            ok(
                &mut docker(&["volume", "create", volume]),
                Duration::from_secs(60),
            );
        }
        cluster
    }

    fn name(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// An address in the last network's subnet, `10.231.N.{host}`.
    fn subnet(&self, host: &str) -> String {
        format!("10.231.{}.{host}", 20 + std::process::id() % 200)
    }

    /// `docker run -d --name {prefix}-{short}` with `args`, on `network`
    /// under the alias `short`.
    fn run(&self, short: &str, network: &str, args: &[&str]) -> String {
        let name = self.name(short);
        self.containers.lock().unwrap().push(name.clone());
        ok(
            docker(&[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                &self.name(network),
            ])
            .args(["--network-alias", short])
            .args(args),
            Duration::from_secs(120),
        );
        name
    }

    fn connect(&self, network: &str, short: &str) {
        ok(
            &mut docker(&[
                "network",
                "connect",
                "--alias",
                short,
                &self.name(network),
                &self.name(short),
            ]),
            Duration::from_secs(60),
        );
    }

    fn disconnect(&self, network: &str, short: &str) {
        ok(
            &mut docker(&[
                "network",
                "disconnect",
                &self.name(network),
                &self.name(short),
            ]),
            Duration::from_secs(60),
        );
    }

    /// The host port `port` of container `short` is published on.
    fn published(&self, short: &str, port: u16) -> u16 {
        let out = ok(
            &mut docker(&["port", &self.name(short), &format!("{port}/tcp")]),
            Duration::from_secs(30),
        );
        out.lines()
            .next()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("{short}:{port} is not published: {out}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let containers = self.containers.lock().unwrap().clone();
        if std::thread::panicking() {
            for c in &containers {
                let out = run(
                    &mut docker(&["logs", "--tail", "30", c]),
                    Duration::from_secs(30),
                );
                eprintln!(
                    "--- {c}\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let mut rm = docker(&["rm", "-f", "-v"]);
        rm.args(&containers);
        let _ = run(&mut rm, Duration::from_secs(120));
        for network in &self.networks {
            let _ = run(
                &mut docker(&["network", "rm", network]),
                Duration::from_secs(60),
            );
        }
        for volume in &self.volumes {
            let _ = run(
                &mut docker(&["volume", "rm", volume]),
                Duration::from_secs(60),
            );
        }
    }
}

/// A call to the internal API of `container` from inside it.
fn internal_of(container: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/2137 && printf '{method} {path} HTTP/1.0\\r\\nContent-Type: application/json\\r\\nContent-Length: {}\\r\\n\\r\\n%s' \"$BODY\" >&3 && cat <&3",
        body.len()
    );
    let out = run(
        docker(&["exec", "-e", &format!("BODY={body}"), container]).args(["bash", "-c", &script]),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn leads(container: &str) -> bool {
    let (_, text) = internal_of(container, "GET", "/__internal/metrics", "");
    text.lines().any(|l| l.trim() == "waifus_health_leader 1")
}

const HAPROXY: &str = "\
global
    maxconn 2000
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
    retry-on conn-failure empty-response
resolvers docker
    nameserver dns 127.0.0.11:53
    hold valid 1s
frontend public
    bind :80
    default_backend orchestrators
backend orchestrators
    balance roundrobin
    option httpchk GET /__internal/health
    http-check expect status 204
    default-server check port 2137 inter 500ms fall 2 rise 1 resolvers docker init-addr last,libc,none
    server a a:8080
    server b b:8080
frontend internal
    bind :2137
    default_backend internal_api
backend internal_api
    option httpchk GET /__internal/health
    http-check expect status 204
    default-server check inter 500ms fall 2 rise 1 resolvers docker init-addr last,libc,none
    server a a:2137
    server b b:2137
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orchestrators_behind_haproxy_survive_partitions_a_lost_leader_and_a_moved_waifu() {
    if !docker_ready() {
        return;
    }
    let images = tokio::task::block_in_place(images);
    // The PostgreSQL image also holds HAProxy (one Debian root filesystem).
    let pg_image = images.postgres.clone();
    let cluster = tokio::task::block_in_place(|| Cluster::new("ha", &["db", "app"], &[]));
    // The key waifu passwords are derived under, the same file on both, as a
    // secret would be: read-only, made elsewhere.
    let key = std::env::temp_dir().join(format!("{}-db-password.key", cluster.prefix));
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
    let url = "postgres://waifus:ha-test-password@postgres:5432/waifus";
    let orchestrator = |short: &str| {
        cluster.run(
            short,
            "db",
            &[
                "-e",
                &format!("DATABASE_URL={url}"),
                "-e",
                "DB_PUBLIC_HOST=postgres",
                "-e",
                "HEALTH_INTERVAL=1s",
                "-e",
                "RESYNC_INTERVAL=10s",
                "--read-only",
                "-v",
                &format!("{}:/data/db-password.key:ro", key.display()),
                "-p",
                "127.0.0.1::8080",
                &images.orchestrator,
            ],
        );
        cluster.connect("app", short);
    };
    let ready = |short: &str| {
        let name = cluster.name(short);
        wait_for(&format!("{short} ready"), Duration::from_secs(120), || {
            internal_of(&name, "GET", "/__internal/health", "").0 == 204
        });
    };
    // Waifus reach the internal API through HAProxy too, so their hellos and
    // goodbyes go to whichever orchestrator is up.
    let waifu = |short: &str, name: &str| {
        cluster.run(
            short,
            "app",
            &[
                "-e",
                "ORCHESTRATOR_URL=http://lb:2137",
                "-e",
                &format!("WAIFU_NAME={name}"),
                "--read-only",
                &images.hello,
            ],
        )
    };
    let (a, b) = (cluster.name("a"), cluster.name("b"));
    tokio::task::block_in_place(|| {
        cluster.run(
            "postgres",
            "db",
            &[
                "-e",
                "POSTGRES_USER=waifus",
                "-e",
                "POSTGRES_PASSWORD=ha-test-password",
                "-e",
                "POSTGRES_DB=waifus",
                &pg_image,
            ],
        );
        orchestrator("a");
        ready("a");
        orchestrator("b");
        ready("b");
        // One key: both derive the same database password.
        let database = |short: &str| {
            let (status, body) = internal_of(
                &cluster.name(short),
                "POST",
                "/__internal/database",
                r#"{"name":"keyed","secret":"keyed-test-secret"}"#,
            );
            assert_eq!(status, 200, "{body}");
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["password"].clone()
        };
        assert_eq!(database("a"), database("b"));
        let config = std::env::temp_dir().join(format!("{}-haproxy.cfg", cluster.prefix));
        std::fs::write(&config, HAPROXY).unwrap();
        cluster.run(
            "lb",
            "app",
            &[
                "-v",
                &format!("{}:/etc/haproxy/haproxy.cfg:ro", config.display()),
                "-p",
                "127.0.0.1::80",
                "--entrypoint",
                "haproxy",
                &pg_image,
                "-db",
                "-f",
                "/etc/haproxy/haproxy.cfg",
            ],
        );
        waifu("hello1", "hello");
    });
    let (lb, port_b) = (cluster.published("lb", 80), cluster.published("b", 8080));
    until_status(lb, "localhost", "/hello/", 200, Duration::from_secs(120)).await;
    until_status(port_b, "localhost", "/hello/", 200, Duration::from_secs(60)).await;

    // b cut off from PostgreSQL: it keeps proxying what it knows, its hellos
    // answer 503, and once reconnected it learns what a learned meanwhile.
    tokio::task::block_in_place(|| cluster.disconnect("db", "b"));
    for _ in 0..20 {
        let (status, _, _) = public(port_b, "GET", "localhost", "/hello/", "")
            .await
            .unwrap();
        assert_eq!(status, 200, "b proxies while partitioned");
    }
    let cut = Instant::now();
    tokio::task::block_in_place(|| {
        wait_for("a hello to b answered 503", Duration::from_secs(60), || {
            internal_of(
                &b,
                "POST",
                "/__internal/hello",
                r#"{"name":"late","host":"late:8080"}"#,
            )
            .0 == 503
        })
    });
    eprintln!("partitioned b answers hellos 503 after {:?}", cut.elapsed());
    tokio::task::block_in_place(|| waifu("hello2", "hello2"));
    until_status(lb, "localhost", "/hello2/", 200, Duration::from_secs(60)).await;
    let (status, _, _) = public(port_b, "GET", "localhost", "/hello/", "")
        .await
        .unwrap();
    assert_eq!(status, 200, "b still proxies");
    tokio::task::block_in_place(|| cluster.connect("db", "b"));
    let healed = Instant::now();
    until_status(
        port_b,
        "localhost",
        "/hello2/",
        200,
        Duration::from_secs(60),
    )
    .await;
    eprintln!("b caught up {:?} after reconnecting", healed.elapsed());

    // The health-check leader killed under load through HAProxy: the other
    // leads within 2 s; only requests in flight on the killed one may fail.
    let (leader, survivor, survivor_port) = tokio::task::block_in_place(|| {
        let mut found = None;
        wait_for("one leader", Duration::from_secs(30), || {
            found = match (leads(&a), leads(&b)) {
                (true, false) => Some((a.clone(), b.clone(), port_b)),
                (false, true) => Some((b.clone(), a.clone(), cluster.published("a", 8080))),
                _ => None,
            };
            found.is_some()
        });
        found.unwrap()
    });
    let load = Load::start(lb);
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| ok(&mut docker(&["kill", &leader]), Duration::from_secs(60)));
    let killed = Instant::now();
    tokio::task::block_in_place(|| {
        wait_for("the survivor leads", Duration::from_secs(10), || {
            leads(&survivor)
        })
    });
    let took_over = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (sent, failures) = load.finish().await;
    eprintln!(
        "leader {leader} killed under load: {survivor} leads after {took_over:?}; {sent} requests through HAProxy, {} failed",
        failures.len()
    );
    assert!(took_over < Duration::from_millis(2500), "{took_over:?}");
    assert!(failures.len() <= 8, "{failures:?}");

    // A waifu moved to another address: it says hello again (its restart)
    // and traffic follows within one health interval.
    let hello1 = cluster.name("hello1");
    let address = || {
        ok(
            &mut docker(&[
                "inspect",
                "-f",
                &format!(
                    "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                    cluster.name("app")
                ),
                &hello1,
            ]),
            Duration::from_secs(30),
        )
        .trim()
        .to_owned()
    };
    let (before, after) = tokio::task::block_in_place(|| {
        let before = address();
        cluster.disconnect("app", "hello1");
        ok(
            &mut docker(&[
                "network",
                "connect",
                "--ip",
                &cluster.subnet("200"),
                &cluster.name("app"),
                &hello1,
            ]),
            Duration::from_secs(60),
        );
        ok(
            &mut docker(&["restart", "-t", "10", &hello1]),
            Duration::from_secs(60),
        );
        (before, address())
    });
    assert_ne!(before, after, "the waifu moved");
    let moved = Instant::now();
    until_status(
        survivor_port,
        "localhost",
        "/hello/",
        200,
        Duration::from_secs(30),
    )
    .await;
    eprintln!(
        "waifu moved from {before} to {after}: routable again {:?} after its restart",
        moved.elapsed()
    );
    for _ in 0..20 {
        let (status, _, _) = public(survivor_port, "GET", "localhost", "/hello/", "")
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    let _ = std::fs::remove_file(&key);
    let _ =
        std::fs::remove_file(std::env::temp_dir().join(format!("{}-haproxy.cfg", cluster.prefix)));
}
