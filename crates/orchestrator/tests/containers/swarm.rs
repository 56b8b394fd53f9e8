//! `deploy/stack.yaml` on a single-node Docker Swarm made by the test (and
//! left after it): two orchestrator replicas, `hello` as a replicated
//! service whose tasks say hello with their own container address, every
//! token and secret a Docker secret; scaled to four tasks, then rolled to a
//! new image under load.
//!
//! This machine's kernel has no IPVS, so swarm's virtual service addresses
//! (and with them the routing mesh of `deploy/stack.publish.yaml`) cannot
//! work here: the stack runs with `ORCHESTRATOR_ENDPOINT_MODE=dnsrr`, and a
//! HAProxy container on the stack's attachable network, published on
//! 127.0.0.1, stands where the mesh would.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::images::images;
use crate::support::*;

/// A single-node swarm of the test's own, on loopback addresses only, left
/// when dropped. While it lives, VXLAN packets (UDP 4789, which the kernel
/// listens for on every interface once an overlay network is in use) are
/// dropped unless they come over loopback.
struct Swarm;

const VXLAN_GUARD: [&str; 10] = [
    "INPUT", "!", "-i", "lo", "-p", "udp", "--dport", "4789", "-j", "DROP",
];

impl Swarm {
    /// `None` (and SKIPPED) when this engine is already part of a swarm:
    /// the test does not touch one it did not make.
    fn init() -> Option<Swarm> {
        let state = ok(
            &mut docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]),
            Duration::from_secs(30),
        );
        if state.trim() != "inactive" {
            waifus_testkit::skipped(&format!(
                "this engine is in a swarm already ({}); the test makes and leaves its own",
                state.trim()
            ));
            return None;
        }
        ok(
            Command::new("iptables").arg("-I").args(VXLAN_GUARD),
            Duration::from_secs(30),
        );
        let swarm = Swarm;
        ok(
            &mut docker(&[
                "swarm",
                "init",
                "--advertise-addr",
                "127.0.0.1",
                "--listen-addr",
                "127.0.0.1:2377",
                "--data-path-addr",
                "127.0.0.1",
            ]),
            Duration::from_secs(120),
        );
        Some(swarm)
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let _ = run(
            &mut docker(&["swarm", "leave", "--force"]),
            Duration::from_secs(120),
        );
        let _ = run(
            Command::new("iptables").arg("-D").args(VXLAN_GUARD),
            Duration::from_secs(30),
        );
    }
}

/// One `docker stack deploy` of `deploy/stack.yaml`, removed when dropped
/// (before the swarm is left).
struct SwarmStack {
    name: String,
    env: Vec<(String, String)>,
    lb: Option<String>,
    lb_network: String,
}

impl SwarmStack {
    fn deploy(&self) {
        let started = Instant::now();
        ok(
            docker(&["stack", "deploy", "--resolve-image", "never", "-c"])
                .arg(repo().join("deploy/stack.yaml"))
                .arg(&self.name)
                .envs(self.env.iter().map(|(k, v)| (k, v))),
            Duration::from_secs(300),
        );
        eprintln!("docker stack deploy: {:?}", started.elapsed());
    }

    fn service(&self, short: &str) -> String {
        format!("{}_{short}", self.name)
    }

    /// The running containers of a service on this node.
    fn containers(&self, short: &str) -> Vec<String> {
        let label = format!(
            "label=com.docker.swarm.service.name={}",
            self.service(short)
        );
        ok(
            &mut docker(&["ps", "-q", "--filter", &label]),
            Duration::from_secs(60),
        )
        .lines()
        .map(str::to_owned)
        .collect()
    }

    /// An internal API call inside one of the orchestrator's containers.
    fn internal(&self, token: Option<&str>, method: &str, path: &str, body: &str) -> (u16, String) {
        let Some(container) = self.containers("orchestrator").pop() else {
            return (0, String::new());
        };
        internal_as(&container, token, method, path, body)
    }

    /// `name`'s healthy instances that are not draining, with their
    /// versions, as each orchestrator replica sees them.
    fn serving(&self, admin: &str, name: &str) -> Vec<Vec<(String, String)>> {
        self.containers("orchestrator")
            .iter()
            .map(|container| {
                let (status, body) =
                    internal_as(container, Some(admin), "GET", "/__internal/waifus", "");
                if status != 200 {
                    return Vec::new();
                }
                serving_in(&body, name)
            })
            .collect()
    }

    /// The access log lines of every orchestrator replica (from each
    /// container: `docker service logs` can hang on this engine).
    fn access_log(&self) -> String {
        self.containers("orchestrator")
            .iter()
            .map(|container| {
                let out = run(&mut docker(&["logs", container]), Duration::from_secs(60));
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr)
            })
            .collect()
    }
}

impl Drop for SwarmStack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for service in ["orchestrator", "hello", "postgres"] {
                let out = run(
                    &mut docker(&["service", "ps", "--no-trunc", &self.service(service)]),
                    Duration::from_secs(60),
                );
                eprintln!("{}", String::from_utf8_lossy(&out.stdout));
                for container in self.containers(service) {
                    let out = run(
                        &mut docker(&["logs", "--tail", "40", &container]),
                        Duration::from_secs(60),
                    );
                    eprintln!(
                        "--- {service} {container}\n{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        if let Some(lb) = &self.lb {
            let _ = run(&mut docker(&["rm", "-f", lb]), Duration::from_secs(60));
        }
        let _ = run(
            &mut docker(&["stack", "rm", &self.name]),
            Duration::from_secs(120),
        );
        // Task containers stop on their own time (a waifu drains first).
        let label = format!("label=com.docker.stack.namespace={}", self.name);
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            let out = run(
                &mut docker(&["ps", "-aq", "--filter", &label]),
                Duration::from_secs(30),
            );
            if out.stdout.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let _ = run(
            &mut docker(&["network", "rm", &self.lb_network]),
            Duration::from_secs(60),
        );
    }
}

/// The orchestrator tasks behind HAProxy, found by the service's name on
/// the stack's network (DNS round robin), as the routing mesh would be.
const HAPROXY_SERVERS: &str = "    server-template orchestrator 4 orchestrator:8080 check port 2137 inter 500ms fall 2 rise 1 resolvers docker init-addr none\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_stack_scales_hello_and_rolls_out_a_new_image_with_no_failed_request() {
    if !docker_ready() {
        return;
    }
    // Making and leaving a swarm changes the engine's networking: nothing
    // else runs meanwhile.
    let _engine = ENGINE.write().await;
    let images = tokio::task::block_in_place(images);
    let Some(_swarm) = tokio::task::block_in_place(Swarm::init) else {
        return;
    };
    // Not the compose test's project name: its networks are named alike.
    let name = format!("waifusw{}", std::process::id());
    let admin = "swarm-test-admin-token-0123456789";
    let internal = "swarm-test-internal-token-0123456789";
    let hello_v2 = format!("{}-v2", images.hello.trim_end_matches(":dev"));
    let mut stack = SwarmStack {
        env: [
            ("POSTGRES_IMAGE", images.postgres.as_str()),
            ("ORCHESTRATOR_IMAGE", &images.orchestrator),
            ("HELLO_IMAGE", &images.hello),
            ("ORCHESTRATOR_ENDPOINT_MODE", "dnsrr"),
            ("ACCESS_LOG", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        lb: None,
        lb_network: format!("{name}-lb"),
        name,
    };
    let port = tokio::task::block_in_place(|| {
        // The secrets, as an operator makes them.
        let password = "swarm-test-postgres-password";
        for (secret, value) in [
            ("waifus_postgres_password", password.to_owned()),
            (
                "waifus_database_url",
                format!("postgres://waifus:{password}@postgres:5432/waifus"),
            ),
            ("waifus_db_password_key", format!("{}\n", "c3".repeat(32))),
            ("waifus_internal_token", format!("{internal}\n")),
            ("waifus_admin_token", format!("{admin}\n")),
            (
                "waifus_hello_secret",
                "swarm-test-hello-secret\n".to_owned(),
            ),
        ] {
            let mut create = docker(&["secret", "create", secret, "-"]);
            create.stdin(std::process::Stdio::piped());
            let mut child = create.stdout(std::process::Stdio::null()).spawn().unwrap();
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(value.as_bytes())
                .unwrap();
            assert!(
                child.wait().unwrap().success(),
                "docker secret create {secret}"
            );
        }
        let node = ok(
            &mut docker(&["info", "--format", "{{.Swarm.NodeID}}"]),
            Duration::from_secs(30),
        );
        ok(
            &mut docker(&[
                "node",
                "update",
                "--label-add",
                "waifus.postgres=true",
                node.trim(),
            ]),
            Duration::from_secs(60),
        );
        // The next version of hello: the same binary, announcing another
        // version.
        let context = std::env::temp_dir().join(format!("{}-hello-v2", stack.name));
        std::fs::create_dir_all(&context).unwrap();
        std::fs::write(
            context.join("Dockerfile"),
            format!(
                "FROM {}\nENV WAIFU_VERSION=2.0.0-swarm\nLABEL waifus-test=app\n",
                images.hello
            ),
        )
        .unwrap();
        ok(
            docker(&["build", "-q", "-t", &hello_v2]).arg(&context),
            Duration::from_secs(300),
        );
        let _ = std::fs::remove_dir_all(&context);

        stack.deploy();
        // The load balancer: published on loopback from a network of its
        // own, and attached to the stack's.
        ok(
            &mut docker(&["network", "create", &stack.lb_network]),
            Duration::from_secs(60),
        );
        let config = std::env::temp_dir().join(format!("{}-haproxy.cfg", stack.name));
        std::fs::write(&config, format!("{HAPROXY_PUBLIC}{HAPROXY_SERVERS}")).unwrap();
        let lb = format!("{}-lb", stack.name);
        ok(
            docker(&["run", "-d", "--name", &lb, "--network", &stack.lb_network])
                .args([
                    "-v",
                    &format!("{}:/etc/haproxy/haproxy.cfg:ro", config.display()),
                ])
                .args(["-p", "127.0.0.1::80", "--entrypoint", "haproxy"])
                .args([&images.postgres, "-db", "-f", "/etc/haproxy/haproxy.cfg"]),
            Duration::from_secs(120),
        );
        stack.lb = Some(lb.clone());
        ok(
            &mut docker(&[
                "network",
                "connect",
                &format!("{}_internal", stack.name),
                &lb,
            ]),
            Duration::from_secs(60),
        );
        published_port(&lb, 80)
    });

    // Two orchestrator replicas, both serving both hello tasks.
    let started = Instant::now();
    tokio::task::block_in_place(|| {
        wait_for(
            "two orchestrators, each routing to two hello tasks",
            Duration::from_secs(300),
            || {
                let seen = stack.serving(admin, "hello");
                seen.len() == 2 && seen.iter().all(|s| s.len() == 2)
            },
        );
    });
    until_status(port, "localhost", "/hello/", 200, Duration::from_secs(60)).await;
    eprintln!(
        "stack serving through the load balancer after {:?}",
        started.elapsed()
    );

    // The secrets are the ones in use: the internal API wants the tokens,
    // the admin token opens the operator endpoints, and hello's name is
    // claimed by its secret.
    tokio::task::block_in_place(|| {
        assert_eq!(stack.internal(None, "GET", "/__internal/waifus", "").0, 401);
        assert_eq!(
            stack
                .internal(Some(internal), "GET", "/__internal/waifus", "")
                .0,
            401
        );
        let (status, body) = stack.internal(
            Some(internal),
            "POST",
            "/__internal/hello",
            r#"{"name":"hello","host":"impostor:8080"}"#,
        );
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("secret_required"), "{body}");
        // Each task said hello with its own container's name.
        let hosts: Vec<String> = stack.serving(admin, "hello")[0]
            .iter()
            .map(|(host, _)| host.clone())
            .collect();
        let mut ids: Vec<String> = stack
            .containers("hello")
            .iter()
            .map(|id| format!("http://{}:8080", &id[..12]))
            .collect();
        ids.sort();
        assert_eq!(hosts, ids, "hello instances are the task containers");
    });

    // Four tasks, and requests spread over all four.
    let started = Instant::now();
    let four = tokio::task::block_in_place(|| {
        ok(
            &mut docker(&["service", "scale", &format!("{}=4", stack.service("hello"))]),
            Duration::from_secs(300),
        );
        wait_for(
            "both orchestrators routing to four hello tasks",
            Duration::from_secs(120),
            || {
                let seen = stack.serving(admin, "hello");
                seen.len() == 2 && seen.iter().all(|s| s.len() == 4)
            },
        );
        stack.serving(admin, "hello").remove(0)
    });
    eprintln!("scaled to four tasks, routed after {:?}", started.elapsed());
    for _ in 0..400 {
        let (status, _, _) = public(port, "GET", "localhost", "/hello/", "")
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    let log = tokio::task::block_in_place(|| stack.access_log());
    let hosts: Vec<String> = four.iter().map(|(host, _)| host.clone()).collect();
    let counts = served_by(&log, "hello", &hosts);
    eprintln!("four hello tasks served {counts:?} of 400");
    assert!(counts.iter().all(|&c| c >= 40), "{four:?}: {counts:?}");

    // A rolling update to a new image under load: each new task starts and
    // says hello before an old one is stopped (goodbye, drain, exit).
    let load = Load::start(port);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    tokio::task::block_in_place(|| {
        ok(
            docker(&[
                "service",
                "update",
                "--no-resolve-image",
                "--image",
                &hello_v2,
            ])
            .arg(stack.service("hello")),
            Duration::from_secs(600),
        );
    });
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sent, failures) = load.finish().await;
    eprintln!(
        "docker service update --image of four hello tasks under load: {sent} requests, {} failed, update took {took:?}",
        failures.len()
    );
    assert_none_failed(&failures);
    assert!(sent > 500, "only {sent} requests");
    tokio::task::block_in_place(|| {
        wait_for(
            "both orchestrators routing to four tasks of the new version",
            Duration::from_secs(60),
            || {
                let seen = stack.serving(admin, "hello");
                seen.len() == 2
                    && seen.iter().all(|s| {
                        s.len() == 4 && s.iter().all(|(_, version)| version == "2.0.0-swarm")
                    })
            },
        );
    });
}
