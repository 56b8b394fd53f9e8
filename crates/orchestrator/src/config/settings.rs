//! [`Config::validate`]: the parsed settings checked once, and secrets read
//! from their `_FILE`s, into the [`Settings`] the orchestrator runs on.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{Config, ConfigError, DEFAULT_HTTPS_ADDR, check_pem_roots};
use crate::tls::TlsConfig;

/// Reads the setting `name` from `file` when that is given (and the setting
/// is not): a secret mounted as a file, as Docker and Kubernetes do, without
/// its trailing newline.
pub(super) fn read_secret(
    name: &'static str,
    value: &mut Option<String>,
    file: &Option<PathBuf>,
) -> Result<(), ConfigError> {
    let Some(path) = file.as_ref().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    if value.as_deref().is_some_and(|v| !v.trim().is_empty()) {
        return Err(ConfigError::SecretTwice(name));
    }
    let shown = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
        name,
        path: shown(),
        source,
    })?;
    let text = text.trim_end_matches(['\n', '\r']);
    if text.trim().is_empty() {
        return Err(ConfigError::SecretEmpty {
            name,
            path: shown(),
        });
    }
    *value = Some(text.to_owned());
    Ok(())
}

/// Shortest and longest bearer token accepted in the settings.
const MIN_TOKEN: usize = 16;
const MAX_TOKEN: usize = 1024;

impl Config {
    /// Optional settings given as empty strings count as unset, as
    /// `ACME_DIRECTORY=` or compose's `${ACME_DIRECTORY:-}` mean.
    pub fn normalized(mut self) -> Self {
        for text in [
            &mut self.database_url,
            &mut self.db_public_host,
            &mut self.incident_webhook_url,
            &mut self.acme_directory,
            &mut self.acme_email,
            &mut self.internal_token,
            &mut self.admin_token,
            &mut self.hsts,
        ] {
            if text.as_deref().is_some_and(|t| t.trim().is_empty()) {
                *text = None;
            }
        }
        for path in [
            &mut self.cert_dir,
            &mut self.acme_ca_file,
            &mut self.backup_dir,
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                *path = None;
            }
        }
        if self.db_statement_timeout.is_some_and(|d| d.is_zero()) {
            self.db_statement_timeout = None;
        }
        self
    }

    /// Whether the TLS listener is on (and must be bound).
    pub fn tls_on(&self) -> bool {
        self.https_addr.is_some() || self.cert_dir.is_some() || self.acme_directory.is_some()
    }

    /// `HTTPS_ADDR` or its default.
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr.unwrap_or_else(|| {
            DEFAULT_HTTPS_ADDR
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 8443)))
        })
    }

    /// The TLS settings, checked; `None` when TLS is off.
    pub(crate) fn tls(&self) -> Result<Option<TlsConfig>, ConfigError> {
        if self.acme_directory.is_none() {
            if self.acme_email.is_some() {
                return Err(ConfigError::AcmeUnused("ACME_EMAIL"));
            }
            if self.acme_ca_file.is_some() {
                return Err(ConfigError::AcmeUnused("ACME_CA_FILE"));
            }
        }
        if !self.tls_on() {
            return Ok(None);
        }
        if let Some(dir) = &self.cert_dir {
            crate::tls::files::check_dir(dir).map_err(|e| ConfigError::CertDir {
                path: dir.display().to_string(),
                error: e.to_string(),
            })?;
        }
        let acme = match &self.acme_directory {
            None => None,
            Some(url) => {
                let uri: Option<http::Uri> = url.parse().ok();
                if !uri.is_some_and(|u| u.scheme_str() == Some("https") && u.host().is_some()) {
                    return Err(ConfigError::AcmeDirectory(url.clone()));
                }
                if let Some(path) = &self.acme_ca_file {
                    check_pem_roots(path).map_err(|error| ConfigError::AcmeCaFile {
                        path: path.display().to_string(),
                        error,
                    })?;
                }
                Some(crate::tls::acme::AcmeConfig {
                    directory: url.clone(),
                    email: self.acme_email.clone(),
                    ca_file: self.acme_ca_file.clone(),
                    challenge: self.acme_challenge,
                })
            }
        };
        Ok(Some(TlsConfig {
            public_port: self.public_https_port,
            cert_dir: self.cert_dir.clone(),
            dev: self.cert_dir.is_none() && acme.is_none(),
            acme,
        }))
    }

    /// The incident webhook, checked.
    pub(crate) fn webhook_uri(&self) -> Result<Option<http::Uri>, ConfigError> {
        let Some(url) = &self.incident_webhook_url else {
            return Ok(None);
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|_| ConfigError::WebhookUrl(url.clone()))?;
        match uri.scheme_str() {
            Some("http" | "https") if uri.authority().is_some() => Ok(Some(uri)),
            _ => Err(ConfigError::WebhookUrl(url.clone())),
        }
    }

    /// Checks what clap cannot (after [`Config::normalized`]); the settings
    /// the orchestrator runs on.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let mut config = self.clone().normalized();
        read_secret(
            "DATABASE_URL",
            &mut config.database_url,
            &config.database_url_file,
        )?;
        read_secret(
            "INTERNAL_TOKEN",
            &mut config.internal_token,
            &config.internal_token_file,
        )?;
        read_secret(
            "ADMIN_TOKEN",
            &mut config.admin_token,
            &config.admin_token_file,
        )?;
        let main_domain = config.main_domain()?;
        let hsts = config.hsts_value()?;
        let trusted = crate::proxy::trusted::TrustedProxies::new(
            config
                .trusted_proxies
                .iter()
                .filter(|b| !b.trim().is_empty())
                .map(|b| b.parse())
                .collect::<Result<_, _>>()?,
        );
        let tls = config.tls()?;
        let webhook = config.webhook_uri()?;
        config.check_tokens()?;
        Ok(Settings {
            config,
            main_domain,
            tls,
            webhook,
            trusted,
            hsts,
        })
    }

    /// `HSTS` as a header value: `max-age` (RFC 6797 §6.1) first, then
    /// only `includeSubDomains` and `preload`, each once.
    fn hsts_value(&self) -> Result<Option<http::HeaderValue>, ConfigError> {
        let Some(value) = self.hsts.as_deref().filter(|v| !v.trim().is_empty()) else {
            return Ok(None);
        };
        let bad = || ConfigError::Hsts(value.to_owned());
        let mut directives = value.split(';').map(str::trim);
        let max_age = directives
            .next()
            .and_then(|d| d.strip_prefix("max-age="))
            .ok_or_else(bad)?;
        if max_age.is_empty() || !max_age.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let mut seen = Vec::new();
        for d in directives {
            let known =
                d.eq_ignore_ascii_case("includeSubDomains") || d.eq_ignore_ascii_case("preload");
            if !known || seen.iter().any(|s: &&str| s.eq_ignore_ascii_case(d)) {
                return Err(bad());
            }
            seen.push(d);
        }
        http::HeaderValue::from_str(value.trim())
            .map(Some)
            .map_err(|_| bad())
    }

    /// Tokens that can be sent in an `Authorization` header as they are,
    /// long enough not to be guessed, and not the same twice.
    fn check_tokens(&self) -> Result<(), ConfigError> {
        for (name, token) in [
            ("INTERNAL_TOKEN", &self.internal_token),
            ("ADMIN_TOKEN", &self.admin_token),
        ] {
            let usable = |t: &String| {
                (MIN_TOKEN..=MAX_TOKEN).contains(&t.len())
                    && t.bytes().all(|b| b.is_ascii_graphic())
            };
            if token.as_ref().is_some_and(|t| !usable(t)) {
                return Err(ConfigError::Token(name));
            }
        }
        if self.internal_token.is_some() && self.internal_token == self.admin_token {
            return Err(ConfigError::SameTokens);
        }
        Ok(())
    }

    /// The normalised main domain (`None` for `*`), after the durations
    /// are checked.
    fn main_domain(&self) -> Result<Option<String>, ConfigError> {
        for (name, d) in [
            ("HEALTH_INTERVAL", self.health_interval),
            ("HEALTH_TIMEOUT", self.health_timeout),
            ("UPSTREAM_CONNECT_TIMEOUT", self.upstream_connect_timeout),
            ("UPSTREAM_TIMEOUT", self.upstream_timeout),
            ("HEADER_READ_TIMEOUT", self.header_read_timeout),
            ("IDLE_TIMEOUT", self.idle_timeout),
            ("RESYNC_INTERVAL", self.resync_interval),
            ("AUDIT_RETENTION", self.audit_retention),
            ("HISTORY_RETENTION", self.history_retention),
            ("FLAP_WINDOW", self.flap_window),
            ("ROLLOUT_INTERVAL", self.rollout_interval),
            ("DRAIN_TIMEOUT", self.drain_timeout),
            ("BACKUP_INTERVAL", self.backup_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        if self.main_domain == "*" {
            return Ok(None);
        }
        let key = format!("http://{}", self.main_domain);
        match waifus_protocol::parse_bind_key(&key) {
            Ok(k) if k.prefix.is_empty() && k.port.is_none() => Ok(Some(k.host)),
            _ => Err(ConfigError::MainDomain(self.main_domain.clone())),
        }
    }
}

/// Settings checked by [`Config::validate`]: what [`crate::run`] takes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The settings as given (empty optional ones unset).
    pub config: Config,
    /// `None` for `MAIN_DOMAIN=*`; lowercase otherwise.
    pub(crate) main_domain: Option<String>,
    /// The TLS listener's settings; `None` when it is off.
    pub(crate) tls: Option<TlsConfig>,
    /// Where incidents are also sent.
    pub(crate) webhook: Option<http::Uri>,
    /// `TRUSTED_PROXIES`.
    pub(crate) trusted: crate::proxy::trusted::TrustedProxies,
    /// `HSTS`, checked.
    pub(crate) hsts: Option<http::HeaderValue>,
}

impl Settings {
    /// Whether the TLS listener is on (and must be bound).
    pub fn tls_on(&self) -> bool {
        self.tls.is_some()
    }
}
