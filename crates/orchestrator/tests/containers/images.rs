//! The images: root filesystems from Debian's packages, cached by recipe,
//! and the application images from this build's binaries.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::Digest;

use crate::support::*;

/// The images a test stack runs.
#[derive(Debug, Clone)]
pub(crate) struct Images {
    pub(crate) base: String,
    pub(crate) postgres: String,
    pub(crate) orchestrator: String,
    pub(crate) link: String,
    pub(crate) hello: String,
    /// The base of the any-language example: Debian's Python and psycopg2.
    pub(crate) app_base: String,
    /// The Python example run by waifu-run.
    pub(crate) notes: String,
}

/// A Debian bookworm root filesystem with `include`, imported as an image
/// tagged by its recipe (and `extra`, the content of files built on it), or
/// the one a previous run made.
pub(crate) fn rootfs(name: &str, include: &str, hooks: &[&str], extra: &[u8]) -> String {
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
pub(crate) fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let deploy = repo().join("deploy");
        let base = rootfs("base", "ca-certificates", &[], b"");
        let app_base = rootfs("python", "ca-certificates,python3,python3-psycopg2", &[], b"");
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
        let app = context.join("waifus/notes-python");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::copy(repo().join("waifus/notes-python/app.py"), app.join("app.py")).unwrap();
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_orchestrator")).parent().unwrap();
        for bin in ["orchestrator", "link", "hello", "waifu-run"] {
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
        for bin in ["orchestrator", "link", "hello", "notes-python"] {
            let started = Instant::now();
            ok(
                docker(&["build", "-q", "-f", "deploy/Dockerfile", "--target", bin])
                    .args(["--build-arg", &format!("BASE_IMAGE={base}")])
                    .args(["--build-arg", &format!("APP_BASE_IMAGE={app_base}")])
                    .args(["--build-arg", &format!("BUILD_IMAGE={base}")])
                    .args(["--build-arg", "PREBUILT=1"])
                    .args(["--build-arg", &format!("POSTGRES_IMAGE={postgres}")])
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
            app_base,
            notes: tag("notes-python"),
        }
    })
}

pub(crate) fn image_size_mb(image: &str) -> f64 {
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
    let app_base = image_size_mb(&images.app_base);
    // (image, its base, the most it may add in MB: the orchestrator holds
    // pg_dump, pg_restore, waifu-run and the zstd and brotli coders too;
    // these are debug builds, stripped, larger than release ones)
    for (image, base, most) in [
        (&images.orchestrator, base, 50.0),
        (&images.link, base, 40.0),
        (&images.hello, base, 40.0),
        (&images.notes, app_base, 10.0),
    ] {
        let size = image_size_mb(image);
        eprintln!(
            "{image} {size:.1} MB ({:.1} MB above its base)",
            size - base
        );
        assert!(size - base < most, "{image}: {size:.1} MB");
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
