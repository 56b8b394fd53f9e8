//! Two orchestrator containers on one PostgreSQL behind HAProxy, with real
//! partitions, a killed leader and a moved waifu.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::images::images;
use crate::support::*;

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
        published_port(&self.name(short), port)
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

fn leads(container: &str) -> bool {
    let (_, text) = internal_of(container, "GET", "/__internal/metrics", "");
    text.lines().any(|l| l.trim() == "waifus_health_leader 1")
}

/// Behind HAProxy: `a` and `b`, on the public port and on the internal API.
const HAPROXY_SERVERS: &str = "\
    default-server check port 2137 inter 500ms fall 2 rise 1 resolvers docker init-addr last,libc,none
    server a a:8080
    server b b:8080
frontend internal
    bind :2137
    default_backend internal_api
backend internal_api
    option forwardfor
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
    let _engine = ENGINE.read().await;
    let images = tokio::task::block_in_place(images);
    // The PostgreSQL image also holds HAProxy (one Debian root filesystem).
    let pg_image = images.postgres.clone();
    let cluster = tokio::task::block_in_place(|| Cluster::new("ha", &["db", "app"], &[]));
    // The key waifu passwords are derived under, the same file on both, as a
    // secret would be: read-only, made elsewhere.
    let key = std::env::temp_dir().join(format!("{}-db-password.key", cluster.prefix));
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
    let url = "postgres://waifus:ha-test-password@postgres:5432/waifus";
    // HAProxy has an address of its own, which the orchestrators trust to
    // name the waifu behind it (`option forwardfor`): the throttle, the
    // incidents and the audit log see each waifu, not the load balancer.
    let lb_address = cluster.subnet("10");
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
                "-e",
                &format!("TRUSTED_PROXIES={lb_address}"),
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
        std::fs::write(&config, format!("{HAPROXY_PUBLIC}{HAPROXY_SERVERS}")).unwrap();
        cluster.run(
            "lb",
            "app",
            &[
                "--ip",
                &lb_address,
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
    // Its hellos came through HAProxy; the audit log names the waifu's own
    // new address, as HAProxy said, not HAProxy's.
    let (status, audit) = tokio::task::block_in_place(|| {
        internal_of(
            &survivor,
            "GET",
            "/__internal/audit?name=hello&limit=20",
            "",
        )
    });
    assert_eq!(status, 200, "{audit}");
    let audit: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let added = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "instance_added")
        .unwrap_or_else(|| panic!("{audit}"));
    assert_eq!(added["source"], after.as_str(), "{audit}");
    assert_ne!(added["source"], lb_address.as_str());
    let _ = std::fs::remove_file(&key);
    let _ =
        std::fs::remove_file(std::env::temp_dir().join(format!("{}-haproxy.cfg", cluster.prefix)));
}
