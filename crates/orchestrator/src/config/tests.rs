//! Parsing and checking of the settings.

use clap::Parser as _;

use super::commands::{Cli, Command};
use super::*;

fn parse(args: &[&str]) -> Cli {
    Cli::try_parse_from(args).unwrap()
}

#[test]
fn serve_is_the_default() {
    let cli = parse(&["orchestrator", "--main-domain", "Example.COM"]);
    assert!(cli.command.is_none());
    assert_eq!(cli.serve.public_addr.port(), 8080);
    assert_eq!(cli.serve.health_interval, Duration::from_secs(5));
    let cli = parse(&["orchestrator", "serve", "--health-interval", "500ms"]);
    let Some(Command::Serve(c)) = cli.command else {
        panic!("serve expected")
    };
    assert_eq!(c.health_interval, Duration::from_millis(500));
}

#[test]
fn empty_optional_settings_are_unset() {
    let cli = parse(&[
        "orchestrator",
        "--acme-directory",
        "",
        "--cert-dir",
        "",
        "--acme-email",
        " ",
    ]);
    let c = cli.serve.normalized();
    assert!(c.acme_directory.is_none() && c.cert_dir.is_none() && c.acme_email.is_none());
    assert!(!c.tls_on());
    assert!(c.validate().is_ok());
}

#[test]
fn tokens_are_checked() {
    let good = "0123456789abcdef";
    let check = |internal: &str, admin: &str| {
        parse(&[
            "orchestrator",
            "--internal-token",
            internal,
            "--admin-token",
            admin,
        ])
        .serve
        .validate()
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    assert!(check(good, "fedcba9876543210").is_ok());
    assert!(check("", "").is_ok(), "empty is unset");
    let short = check("short", "").unwrap_err();
    assert!(short.contains("INTERNAL_TOKEN"), "{short}");
    let spaced = check(good, "has a space in it!").unwrap_err();
    assert!(spaced.contains("ADMIN_TOKEN"), "{spaced}");
    assert!(check(good, good).unwrap_err().contains("must differ"));
}

#[test]
fn validation() {
    let mut c = parse(&["orchestrator"]).serve;
    c.main_domain = "Example.COM".into();
    assert_eq!(
        c.validate().unwrap().main_domain.as_deref(),
        Some("example.com")
    );
    c.main_domain = "*".into();
    assert_eq!(c.validate().unwrap().main_domain, None);
    c.main_domain = "a/b".into();
    assert!(matches!(c.validate(), Err(ConfigError::MainDomain(_))));
    c.main_domain = "localhost".into();
    for (url, ok) in [
        ("https://hooks.slack.com/services/T/B/X", true),
        ("http://127.0.0.1:9000/hook", true),
        ("ftp://example.com/x", false),
        ("not a url", false),
        ("/relative", false),
    ] {
        c.incident_webhook_url = Some(url.into());
        assert_eq!(c.validate().is_ok(), ok, "{url}");
    }
    c.incident_webhook_url = None;
    c.health_interval = Duration::ZERO;
    assert!(matches!(c.validate(), Err(ConfigError::ZeroDuration(_))));
}

#[test]
fn secrets_can_be_files_like_docker_secrets() {
    let dir = std::env::temp_dir().join(format!("waifus-config-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let url = file("url", "postgres://waifus:pw@db:5432/waifus\n");
    let internal = file("internal", "internal-token-0123456789\r\n");
    let admin = file("admin", "admin-token-0123456789");
    let cli = parse(&[
        "orchestrator",
        "--database-url-file",
        &url,
        "--internal-token-file",
        &internal,
        "--admin-token-file",
        &admin,
    ]);
    let settings = cli.serve.validate().unwrap();
    assert_eq!(
        settings.config.database_url.as_deref(),
        Some("postgres://waifus:pw@db:5432/waifus")
    );
    assert_eq!(
        settings.config.internal_token.as_deref(),
        Some("internal-token-0123456789")
    );
    assert_eq!(
        settings.config.admin_token.as_deref(),
        Some("admin-token-0123456789")
    );
    // A token from a file is checked like one from the environment.
    let short = file("short", "short\n");
    let cli = parse(&["orchestrator", "--admin-token-file", &short]);
    assert!(matches!(
        cli.serve.validate(),
        Err(ConfigError::Token("ADMIN_TOKEN"))
    ));
    // Both, a missing file and an empty one are refused by name.
    let cli = parse(&[
        "orchestrator",
        "--admin-token",
        "admin-token-0123456789",
        "--admin-token-file",
        &admin,
    ]);
    let both = cli.serve.validate().unwrap_err();
    assert_eq!(
        both.to_string(),
        "ADMIN_TOKEN and ADMIN_TOKEN_FILE are both set: set one of them"
    );
    let missing = dir.join("missing").display().to_string();
    let cli = parse(&["orchestrator", "--database-url-file", &missing]);
    let error = cli.serve.validate().unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("DATABASE_URL_FILE {missing}: ")),
        "{error}"
    );
    let empty = file("empty", "\n");
    let cli = parse(&["orchestrator", "--internal-token-file", &empty]);
    assert_eq!(
        cli.serve.validate().unwrap_err().to_string(),
        format!("INTERNAL_TOKEN_FILE {empty} is empty")
    );
    // The client commands read them too.
    let cli = parse(&["orchestrator", "status", "--admin-token-file", &admin]);
    let Some(Command::Status(client)) = cli.command else {
        panic!("status expected")
    };
    let client = client.read_files().unwrap();
    assert_eq!(client.token(), Some("admin-token-0123456789"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hsts_values_are_checked() {
    let hsts = |v: &str| {
        parse(&["orchestrator", "--hsts", v])
            .serve
            .validate()
            .map(|s| s.hsts)
    };
    for good in [
        "max-age=0",
        "max-age=31536000",
        "max-age=31536000; includeSubDomains",
        "max-age=63072000; includeSubDomains; preload",
        "max-age=1;preload",
    ] {
        assert_eq!(hsts(good).unwrap().unwrap(), good, "{good}");
    }
    assert!(hsts("").unwrap().is_none());
    for bad in [
        "includeSubDomains",
        "max-age=",
        "max-age=-1",
        "max-age=1d",
        "max-age=1; includeSubDomains; includeSubDomains",
        "max-age=1; foo",
        "max-age=1;",
    ] {
        assert!(matches!(hsts(bad), Err(ConfigError::Hsts(_))), "{bad}");
    }
}

#[test]
fn trusted_proxies_are_checked() {
    let trusted = |v: &str| {
        parse(&["orchestrator", "--trusted-proxies", v])
            .serve
            .validate()
            .map(|s| s.trusted)
    };
    let t = trusted("10.0.0.5, fd00::/8").unwrap();
    assert!(t.contains("10.0.0.5".parse().unwrap()));
    assert!(t.contains("fd00::1".parse().unwrap()));
    assert!(!t.contains("10.0.0.6".parse().unwrap()));
    assert!(!trusted("").unwrap().contains("127.0.0.1".parse().unwrap()));
    let e = trusted("10.0.0.0/33").unwrap_err().to_string();
    assert!(
        e.contains("TRUSTED_PROXIES") && e.contains("10.0.0.0/33"),
        "{e}"
    );
}
