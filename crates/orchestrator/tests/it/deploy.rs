//! `deploy/`: the compose file validates and says what the README
//! says, the images run as a non-root user from a small base, and the
//! health-check script the images use works against a real orchestrator.
//!
//! Here the Dockerfile is checked as text and `docker-compose config`
//! validates the compose file without a daemon; `tests/containers/` builds
//! the images and runs the stack.

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;
use yaml_rust2::{Yaml, YamlLoader};

use crate::harness;
use crate::pg;
use crate::waifu::TestWaifu;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// `docker-compose config` or `docker compose config`, whichever exists.
fn compose_config() -> Option<std::process::Output> {
    compose_config_of(&["compose.yaml"])
}

/// `config` of these files of `deploy/`, merged in order.
fn compose_config_of(files: &[&str]) -> Option<std::process::Output> {
    let candidates: [&[&str]; 2] = [&["docker-compose"], &["docker", "compose"]];
    for cmd in candidates {
        let works = Command::new(cmd[0])
            .args(&cmd[1..])
            .arg("version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if works {
            let mut config = Command::new(cmd[0]);
            config
                .args(&cmd[1..])
                .args(files.iter().flat_map(|f| ["-f", f]))
                .arg("config")
                .current_dir(deploy_dir())
                .env("SECRETS_DIR", "/nonexistent-secrets");
            return Some(crate::harness::output_within(
                &mut config,
                std::time::Duration::from_secs(60),
            ));
        }
    }
    None
}

#[test]
fn compose_file_is_valid_and_publishes_only_the_orchestrator() {
    let out = compose_config();
    if !crate::harness::tool_present(
        out.is_some(),
        "docker-compose (apt-get install docker-compose)",
    ) {
        return;
    }
    let Some(out) = out else { return };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = &YamlLoader::load_from_str(&String::from_utf8(out.stdout).unwrap()).unwrap()[0];
    let services = &config["services"];
    let names: Vec<&str> = services
        .as_hash()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    for want in ["postgres", "orchestrator", "link", "hello", "notes"] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    for name in &names {
        let service = &services[*name];
        assert!(
            !service["healthcheck"].is_badvalue(),
            "{name} has a healthcheck"
        );
        let published = !service["ports"].is_badvalue();
        assert_eq!(
            published,
            *name == "orchestrator",
            "{name}: only the orchestrator publishes ports"
        );
        let networks: Vec<&str> = service["networks"]
            .as_hash()
            .map(|h| h.keys().filter_map(Yaml::as_str).collect())
            .unwrap_or_default();
        assert!(
            networks.contains(&"internal"),
            "{name} is on the internal network"
        );
        if *name != "orchestrator" {
            assert_eq!(
                networks,
                ["internal"],
                "{name} is only on the internal network"
            );
        }
    }
    // The orchestrator publishes its public ports, never the internal API.
    let ports = format!("{:?}", services["orchestrator"]["ports"]);
    assert!(ports.contains("8080") && !ports.contains("2137"), "{ports}");
    assert_eq!(
        config["networks"]["internal"]["internal"].as_bool(),
        Some(true)
    );
    // State survives `docker compose down`: PostgreSQL's data and the
    // orchestrator's key are on volumes.
    for volume in ["postgres-data", "orchestrator-data", "backups"] {
        assert!(!config["volumes"][volume].is_badvalue(), "volume {volume}");
    }
    backups_on_a_volume(&services["orchestrator"]);
    // Every secret comes from a file (a compose secret), none from the
    // environment; the internal API wants its token, operators theirs, and
    // every hello its waifu's secret.
    for name in ["postgres", "orchestrator", "link", "hello", "notes"] {
        let env = format!("{:?}", services[name]["environment"]);
        for plain in [
            "\"DATABASE_URL\"",
            "\"INTERNAL_TOKEN\"",
            "\"ADMIN_TOKEN\"",
            "\"POSTGRES_PASSWORD\"",
            "\"WAIFU_SECRET\"",
            "\"ORCHESTRATOR_TOKEN\"",
        ] {
            assert!(!env.contains(plain), "{name} has {plain} in {env}");
        }
    }
    let env = &services["orchestrator"]["environment"];
    for file in [
        "DATABASE_URL_FILE",
        "INTERNAL_TOKEN_FILE",
        "ADMIN_TOKEN_FILE",
    ] {
        assert!(
            env[file].as_str().unwrap().starts_with("/run/secrets/"),
            "{file}"
        );
    }
    assert_eq!(env["HELLO_SECRET"].as_str(), Some("required"));
    assert!(!env["DB_PUBLIC_HOST"].is_badvalue());
    for waifu in ["link", "hello", "notes"] {
        let env = &services[waifu]["environment"];
        assert!(env["WAIFU_SECRET_FILE"].as_str().is_some(), "{waifu}");
        assert!(env["ORCHESTRATOR_TOKEN_FILE"].as_str().is_some(), "{waifu}");
    }
    let secrets = config["secrets"].as_hash().unwrap();
    assert_eq!(secrets.len(), 7, "{secrets:?}");
    for (name, secret) in secrets {
        assert!(secret["file"].as_str().is_some(), "{name:?} is a file");
    }
}

/// The orchestrator backs up into a volume, with every data setting given.
fn backups_on_a_volume(orchestrator: &Yaml) {
    let env = &orchestrator["environment"];
    assert_eq!(env["BACKUP_DIR"].as_str(), Some("/backups"));
    for setting in [
        "BACKUP_INTERVAL",
        "BACKUP_KEEP",
        "DB_CONNECTION_LIMIT",
        "DB_STATEMENT_TIMEOUT",
    ] {
        assert!(env[setting].as_str().is_some(), "{setting} in {env:?}");
    }
    let volumes = format!("{:?}", orchestrator["volumes"]);
    assert!(volumes.contains("backups:/backups"), "{volumes}");
}

/// `deploy/make-secrets.sh` makes every file compose.yaml reads, the
/// database URL with the PostgreSQL password in it, and keeps what exists.
#[test]
fn make_secrets_makes_what_compose_reads_and_keeps_what_exists() {
    let dir = harness::temp_dir("secrets");
    let run = || {
        let out = harness::output_within(
            Command::new("bash")
                .arg(deploy_dir().join("make-secrets.sh"))
                .env("SECRETS_DIR", &dir),
            std::time::Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let password = read("postgres-password");
    assert_eq!(password.trim().len(), 64);
    assert_eq!(
        read("database-url").trim(),
        format!("postgres://waifus:{}@postgres:5432/waifus", password.trim())
    );
    let names = [
        "internal-token",
        "admin-token",
        "link-secret",
        "hello-secret",
    ];
    let before: Vec<String> = names.iter().map(|n| read(n)).collect();
    assert!(before.iter().all(|v| v.trim().len() == 64));
    assert_ne!(before[0], before[1], "the two tokens differ");
    run();
    let after: Vec<String> = names.iter().map(|n| read(n)).collect();
    assert_eq!(before, after, "a second run keeps what exists");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

/// The services of a `config` output, by name.
fn services_of(out: std::process::Output) -> Yaml {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    YamlLoader::load_from_str(&String::from_utf8(out.stdout).unwrap())
        .unwrap()
        .remove(0)
}

#[test]
fn stack_files_publish_only_the_orchestrator_and_take_every_secret_from_a_file() {
    let out = compose_config_of(&["stack.yaml"]);
    if !crate::harness::tool_present(
        out.is_some(),
        "docker-compose (apt-get install docker-compose)",
    ) {
        return;
    }
    let config = services_of(out.unwrap());
    let services = &config["services"];
    for name in ["postgres", "orchestrator", "hello"] {
        let service = &services[name];
        assert!(
            service["ports"].is_badvalue(),
            "{name}: stack.yaml alone publishes nothing"
        );
        assert!(!service["healthcheck"].is_badvalue(), "{name}");
        if name != "postgres" {
            assert_eq!(service["read_only"].as_bool(), Some(true), "{name}");
        }
        // No secret in the environment: each comes from a file.
        let env = format!("{:?}", service["environment"]);
        for plain in [
            "\"DATABASE_URL\"",
            "\"INTERNAL_TOKEN\"",
            "\"ADMIN_TOKEN\"",
            "\"POSTGRES_PASSWORD\"",
            "\"WAIFU_SECRET\"",
            "\"ORCHESTRATOR_TOKEN\"",
        ] {
            assert!(!env.contains(plain), "{name} has {plain} in {env}");
        }
    }
    let env = &services["orchestrator"]["environment"];
    for file in [
        "DATABASE_URL_FILE",
        "INTERNAL_TOKEN_FILE",
        "ADMIN_TOKEN_FILE",
    ] {
        assert!(
            env[file].as_str().unwrap().starts_with("/run/secrets/"),
            "{file}"
        );
    }
    backups_on_a_volume(&services["orchestrator"]);
    assert!(!config["volumes"]["backups"].is_badvalue());
    // Every replica reads one password key, from a secret.
    assert_eq!(env["DATA_DIR"].as_str(), Some("/run/secrets"));
    let secrets = format!("{:?}", services["orchestrator"]["secrets"]);
    assert!(secrets.contains("db-password.key"), "{secrets}");
    let env = &services["hello"]["environment"];
    assert!(env["WAIFU_SECRET_FILE"].as_str().is_some());
    assert!(env["ORCHESTRATOR_TOKEN_FILE"].as_str().is_some());
    assert!(
        env["WAIFU_HOST"].is_badvalue(),
        "tasks say hello as their hostname"
    );
    for (name, secret) in config["secrets"].as_hash().unwrap() {
        assert_eq!(secret["external"].as_bool(), Some(true), "{name:?}");
    }
    let internal = &config["networks"]["internal"];
    assert_eq!(internal["driver"].as_str(), Some("overlay"));
    assert_eq!(internal["internal"].as_bool(), Some(true));
    assert_eq!(internal["attachable"].as_bool(), Some(true));

    // With the publishing file, the orchestrator's public ports only.
    let config = services_of(compose_config_of(&["stack.yaml", "stack.publish.yaml"]).unwrap());
    let services = &config["services"];
    assert!(services["postgres"]["ports"].is_badvalue());
    assert!(services["hello"]["ports"].is_badvalue());
    let ports = format!("{:?}", services["orchestrator"]["ports"]);
    assert!(
        ports.contains("8080") && ports.contains("8443") && !ports.contains("2137"),
        "{ports}"
    );
}

#[test]
fn images_are_small_and_run_as_a_user() {
    let dockerfile = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let mut stage = String::new();
    let mut stages: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut args = Vec::new();
    for line in dockerfile.lines().map(str::trim) {
        if stages.is_empty() && line.starts_with("ARG ") {
            args.push(line.to_owned());
        } else if let Some(from) = line.strip_prefix("FROM ") {
            let parts: Vec<&str> = from.split_whitespace().collect();
            stage = parts.last().unwrap().to_string();
            stages.push((stage.clone(), parts[0].to_owned(), Vec::new()));
        } else if !line.is_empty() && !line.starts_with('#') {
            stages.last_mut().unwrap().2.push(line.to_owned());
        }
    }
    let find = |name: &str| stages.iter().find(|s| s.0 == name).unwrap();
    // The base is a build argument, Debian's slim image unless given.
    assert_eq!(find("base").1, "${BASE_IMAGE}");
    assert!(
        args.iter()
            .any(|a| a == "ARG BASE_IMAGE=debian:bookworm-slim"),
        "{args:?}"
    );
    // The classic builder (no BuildKit) builds it too.
    for line in dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
    {
        assert!(
            !line.contains("--mount") && !line.contains("--chmod"),
            "{line}: BuildKit only"
        );
    }
    for image in ["orchestrator", "link", "hello"] {
        let (_, from, lines) = find(image);
        assert_eq!(from, "base", "{image} is built on the slim base");
        assert!(
            lines.iter().any(|l| l == "USER waifus"),
            "{image} runs as a user"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("HEALTHCHECK")),
            "{image} has a health check"
        );
        let copies: Vec<&String> = lines.iter().filter(|l| l.starts_with("COPY")).collect();
        assert!(copies[0].contains(&format!("/out/{image} ")), "{copies:?}");
        if image == "orchestrator" {
            // And the PostgreSQL client programs, for backups.
            assert_eq!(copies.len(), 2, "{copies:?}");
            assert!(copies[1].starts_with("COPY --from=pgclient "), "{copies:?}");
        } else {
            assert_eq!(copies.len(), 1, "{image} copies its binary only");
        }
    }
    // The client comes from the server's own image: never older than it.
    assert_eq!(find("pgclient").1, "${POSTGRES_IMAGE}");
    assert_eq!(stage, "hello");
    // The build context leaves out build output and local state.
    let ignore = std::fs::read_to_string(deploy_dir().join("../.dockerignore")).unwrap();
    for entry in ["target/", "data/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            "{entry} in .dockerignore"
        );
    }
}

#[tokio::test]
async fn healthcheck_script_probes_health_endpoints() {
    let orch = harness::start(&pg::unique_db("healthcheck"), &[]).await;
    let w = TestWaifu::start("hc").await;
    orch.register("hc", &w.host(), json!({})).await;
    let script = deploy_dir().join("healthcheck");
    let run = |port: u16| {
        let script = script.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new("bash")
                    .arg(script)
                    .arg(port.to_string())
                    .status()
                    .unwrap()
                    .success()
            })
            .await
            .unwrap()
        }
    };
    assert!(
        run(orch.internal.port()).await,
        "the orchestrator's internal API"
    );
    assert!(run(w.addr.port()).await, "a waifu");
    assert!(
        !run(orch.public.port()).await,
        "the public listener answers 404"
    );
    w.kill();
    assert!(!run(w.addr.port()).await, "nothing listening");
    orch.stop().await.unwrap();
}
