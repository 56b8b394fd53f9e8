//! Where a waifu finds its settings: the environment, or builder methods.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `PORT` is not a port number.
    #[error("PORT={value:?} is not a port number (1-65535)")]
    Port {
        /// What was given.
        value: String,
        /// Why it is not a number, if it is not one at all.
        #[source]
        source: Option<std::num::ParseIntError>,
    },
    /// `WAIFU_BINDS` is not a JSON object of strings.
    #[error("WAIFU_BINDS is not a JSON object like {{\"https://link.waifu\": \"/link\"}}: {0}")]
    Binds(serde_json::Error),
    /// `LISTEN_ADDR` is not an IP address.
    #[error("LISTEN_ADDR={value:?} is not an IP address (e.g. 0.0.0.0 or 127.0.0.1)")]
    Listen {
        /// What was given.
        value: String,
        #[source]
        source: std::net::AddrParseError,
    },
    /// `WAIFU_VERSION` is not 1-64 visible ASCII characters.
    #[error("WAIFU_VERSION={value:?} is not a version (1-64 visible ASCII characters)")]
    Version {
        /// What was given.
        value: String,
        #[source]
        source: waifus_protocol::VersionError,
    },
    /// No usable name: neither `WAIFU_NAME` nor a valid hostname.
    #[error(
        "the waifu name {value:?} is not a DNS label (lowercase a-z, 0-9, '-'); set WAIFU_NAME"
    )]
    Name {
        /// What was given.
        value: String,
        #[source]
        source: waifus_protocol::NameError,
    },
    /// `WAIFU_SECRET_FILE` or `ORCHESTRATOR_TOKEN_FILE` cannot be used.
    #[error("{name}_FILE={path:?}: {problem}")]
    SecretFile {
        /// The setting: `WAIFU_SECRET` or `ORCHESTRATOR_TOKEN`.
        name: &'static str,
        /// The file given.
        path: String,
        /// What is wrong: both set, empty, or why it cannot be read.
        problem: String,
        /// The read error, if that was it.
        #[source]
        source: Option<std::io::Error>,
    },
}

/// The setting `name`, or the content of the file `{name}_FILE` names (a
/// Docker or Kubernetes secret) without its trailing newline.
fn secret(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<String>, ConfigError> {
    let value = lookup(name).filter(|s| !s.is_empty());
    let Some(path) = lookup(&format!("{name}_FILE")).filter(|p| !p.is_empty()) else {
        return Ok(value);
    };
    let refused = |problem: &str, source| ConfigError::SecretFile {
        name,
        path: path.clone(),
        problem: problem.to_owned(),
        source,
    };
    if value.is_some() {
        return Err(refused(
            &format!("{name} is set too: set one of them"),
            None,
        ));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| refused(&format!("cannot be read: {e}"), Some(e)))?;
    let text = text.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return Err(refused("is empty", None));
    }
    Ok(Some(text.to_owned()))
}

/// Reads the settings from `lookup` (the environment in
/// [`crate::Waifu::from_env`]); kept pure so it can be tested.
pub(crate) fn from_vars(
    lookup: impl Fn(&str) -> Option<String>,
    hostname: &str,
) -> Result<crate::Waifu, ConfigError> {
    let port = match lookup("PORT") {
        Some(value) => match value.trim().parse::<u16>() {
            Ok(0) => {
                return Err(ConfigError::Port {
                    value,
                    source: None,
                });
            }
            Ok(port) => port,
            Err(e) => {
                return Err(ConfigError::Port {
                    value,
                    source: Some(e),
                });
            }
        },
        None => 8080,
    };
    let listen = match lookup("LISTEN_ADDR") {
        Some(value) => match value.trim().parse() {
            Ok(ip) => ip,
            Err(source) => return Err(ConfigError::Listen { value, source }),
        },
        None => std::net::IpAddr::from([0, 0, 0, 0]),
    };
    let name = lookup("WAIFU_NAME").unwrap_or_else(|| hostname.to_owned());
    if let Err(source) = waifus_protocol::validate_name(&name) {
        return Err(ConfigError::Name {
            value: name,
            source,
        });
    }
    let version = lookup("WAIFU_VERSION").filter(|v| !v.is_empty());
    if let Some(value) = &version
        && let Err(source) = waifus_protocol::validate_version(value)
    {
        return Err(ConfigError::Version {
            value: value.clone(),
            source,
        });
    }
    let binds: BTreeMap<String, String> = match lookup("WAIFU_BINDS") {
        Some(json) if !json.trim().is_empty() => {
            serde_json::from_str(&json).map_err(ConfigError::Binds)?
        }
        _ => BTreeMap::new(),
    };
    let initial_secret = secret(&lookup, "WAIFU_SECRET")?;
    let secret_file = lookup("WAIFU_SECRET_FILE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    // What the file held: only a change of it replaces the secret later.
    let file_seen = secret_file.as_ref().and(initial_secret.clone());
    Ok(crate::Waifu {
        orchestrator: lookup("ORCHESTRATOR_URL")
            .unwrap_or_else(|| "http://orchestrator:2137".to_owned())
            .trim_end_matches('/')
            .to_owned(),
        host: lookup("WAIFU_HOST").unwrap_or_else(|| format!("{hostname}:{port}")),
        name,
        port,
        listen,
        secret: std::sync::Arc::new(std::sync::RwLock::new(initial_secret)),
        secret_file,
        file_seen: std::sync::Arc::new(std::sync::Mutex::new(file_seen)),
        token: secret(&lookup, "ORCHESTRATOR_TOKEN")?,
        binds,
        cache_dir: lookup("WAIFU_CACHE_DIR").map(PathBuf::from),
        rehello_every: crate::DEFAULT_REHELLO,
        version,
        drain_for: crate::DEFAULT_DRAIN,
        health: None,
        credentials: Default::default(),
        rotation: Default::default(),
    })
}

/// This machine's hostname, as containers set it.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap_or_else(|_| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<crate::Waifu, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_vars(|k| vars.get(k).cloned(), "box-1")
    }

    #[test]
    fn defaults() {
        let w = parse(&[]).unwrap();
        assert_eq!(w.orchestrator, "http://orchestrator:2137");
        assert_eq!(w.name, "box-1");
        assert_eq!(w.host, "box-1:8080");
        assert_eq!(w.port, 8080);
        assert!(w.current_secret().is_none() && w.binds.is_empty() && w.cache_dir.is_none());
        assert_eq!(w.listen.to_string(), "0.0.0.0");
    }

    #[test]
    fn every_variable() {
        let w = parse(&[
            ("ORCHESTRATOR_URL", "http://127.0.0.1:2137/"),
            ("WAIFU_NAME", "link"),
            ("WAIFU_HOST", "link:9000"),
            ("PORT", "9000"),
            ("WAIFU_SECRET", "s"),
            ("WAIFU_BINDS", r#"{"https://link.waifu": "/link"}"#),
            ("WAIFU_CACHE_DIR", "/var/cache/link"),
            ("LISTEN_ADDR", "127.0.0.1"),
            ("WAIFU_VERSION", "1.4.2"),
        ])
        .unwrap();
        assert_eq!(w.version.as_deref(), Some("1.4.2"));
        assert_eq!(w.orchestrator, "http://127.0.0.1:2137");
        assert_eq!(
            (w.name.as_str(), w.host.as_str(), w.port),
            ("link", "link:9000", 9000)
        );
        assert_eq!(w.current_secret().as_deref(), Some("s"));
        assert_eq!(w.binds["https://link.waifu"], "/link");
        assert_eq!(w.cache_dir, Some(PathBuf::from("/var/cache/link")));
        assert_eq!(w.listen.to_string(), "127.0.0.1");
        // The host follows PORT when WAIFU_HOST is unset.
        assert_eq!(parse(&[("PORT", "3000")]).unwrap().host, "box-1:3000");
    }

    #[test]
    fn bad_values_are_precise_errors() {
        assert!(matches!(
            parse(&[("PORT", "http")]),
            Err(ConfigError::Port {
                source: Some(_),
                ..
            })
        ));
        assert!(matches!(
            parse(&[("PORT", "0")]),
            Err(ConfigError::Port { source: None, .. })
        ));
        let e = parse(&[("LISTEN_ADDR", "everywhere")]).unwrap_err();
        assert!(std::error::Error::source(&e).is_some(), "{e}");
        assert!(matches!(
            parse(&[("WAIFU_BINDS", "[1]")]),
            Err(ConfigError::Binds(_))
        ));
        let e = parse(&[("WAIFU_VERSION", "1 2")]).unwrap_err();
        assert!(e.to_string().contains("WAIFU_VERSION"), "{e}");
        let e = parse(&[("WAIFU_NAME", "Bad_Name")]).unwrap_err();
        assert!(e.to_string().contains("WAIFU_NAME"), "{e}");
        assert!(std::error::Error::source(&e).is_some(), "{e}");
        assert!(from_vars(|_| None, "My_Laptop").is_err());
    }

    #[test]
    fn secrets_can_be_files_like_docker_secrets() {
        let dir = std::env::temp_dir().join(format!("waifu-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "tok-0123456789abcdef\r\n").unwrap();
        let (secret, token) = (secret.display().to_string(), token.display().to_string());
        let w = parse(&[
            ("WAIFU_SECRET_FILE", &secret),
            ("ORCHESTRATOR_TOKEN_FILE", &token),
        ])
        .unwrap();
        assert_eq!(w.current_secret().as_deref(), Some("s3cret"));
        assert_eq!(w.token.as_deref(), Some("tok-0123456789abcdef"));
        let e = parse(&[("WAIFU_SECRET", "s"), ("WAIFU_SECRET_FILE", &secret)]).unwrap_err();
        assert!(e.to_string().contains("WAIFU_SECRET is set too"), "{e}");
        let missing = dir.join("missing").display().to_string();
        let e = parse(&[("ORCHESTRATOR_TOKEN_FILE", &missing)]).unwrap_err();
        assert!(e.to_string().starts_with("ORCHESTRATOR_TOKEN_FILE="), "{e}");
        assert!(std::error::Error::source(&e).is_some(), "{e}");
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let e = parse(&[("WAIFU_SECRET_FILE", &empty.display().to_string())]).unwrap_err();
        assert!(e.to_string().ends_with("is empty"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
