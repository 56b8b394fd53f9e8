//! HTTPS: the certificates the TLS listener presents.
//!
//! Per host, the first source that has a certificate wins:
//! 1. `CERT_DIR`: `{host}.crt` / `{host}.key` PEM files (a `*.example.com`
//!    pair covers one label below), re-read when they change ([`files`]);
//! 2. ACME: certificates the [`acme`] manager obtained for hosts this
//!    orchestrator routes over `https://`, kept in PostgreSQL;
//! 3. a self-signed development certificate, made on first use, for
//!    localhost-style hosts this orchestrator routes, only when TLS was asked
//!    for (`HTTPS_ADDR` set) and neither of the others is configured.
//!
//! A TLS-ALPN-01 validation (ALPN `acme-tls/1`) gets the challenge
//! certificate of a pending ACME order and nothing else. A client without SNI
//! gets the main domain's certificate.

pub(crate) mod acme;
mod build;
pub(crate) mod files;
mod tickets;

pub(crate) use build::{Https, SetupError, TlsConfig, build};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::routing::Routes;

/// ALPN protocol of TLS-ALPN-01 validations (RFC 8737).
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Certificates by lowercase host.
pub(crate) type CertMap = HashMap<String, Arc<CertifiedKey>>;

/// A certificate obtained from an ACME server.
#[derive(Debug)]
pub(crate) struct Issued {
    pub key: Arc<CertifiedKey>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Issued {
    /// Parses a PEM chain and key as stored; checks that they belong together.
    pub(crate) fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Issued, String> {
        let key = certified_key(chain_pem.as_bytes(), key_pem.as_bytes())?;
        let (not_before, not_after) = key
            .cert
            .first()
            .and_then(|c| validity(c))
            .ok_or("the certificate's validity cannot be read")?;
        Ok(Issued {
            key,
            not_before,
            not_after,
        })
    }

    /// When to renew: once two thirds of the lifetime have passed (30 days
    /// before expiry for a 90-day certificate, as Let's Encrypt advises).
    pub(crate) fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_after
            .checked_sub(lifetime / 3)
            .unwrap_or(self.not_before)
    }
}

/// Challenge answers published through the store.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// HTTP-01 key authorizations by token.
    pub http: HashMap<String, String>,
    /// TLS-ALPN-01 certificates by host.
    pub alpn: HashMap<String, Arc<CertifiedKey>>,
}

/// The TLS listener's certificate resolver and the ACME challenge answers.
#[derive(Debug)]
pub(crate) struct Certs {
    files: ArcSwap<CertMap>,
    acme: ArcSwap<HashMap<String, Arc<Issued>>>,
    /// Pending TLS-ALPN-01 challenge certificates by host.
    alpn_challenges: Mutex<CertMap>,
    /// Pending HTTP-01 key authorizations by token.
    http_challenges: Mutex<HashMap<String, String>>,
    /// The answers other orchestrators published for their orders (the CA
    /// may validate through any of them), as last read from the store.
    shared: ArcSwap<Shared>,
    /// Self-signed certificates made so far; `None` when not in development mode.
    dev: Option<Mutex<CertMap>>,
    routes: Routes,
}

impl Certs {
    pub(crate) fn new(routes: Routes, dev: bool) -> Certs {
        Certs {
            files: ArcSwap::default(),
            acme: ArcSwap::default(),
            alpn_challenges: Mutex::default(),
            http_challenges: Mutex::default(),
            shared: ArcSwap::default(),
            dev: dev.then(Mutex::default),
            routes,
        }
    }

    pub(crate) fn set_files(&self, files: CertMap) {
        self.files.store(Arc::new(files));
    }

    /// Whether `CERT_DIR` has a certificate for this host (then ACME leaves
    /// it alone).
    pub(crate) fn has_file_for(&self, host: &str) -> bool {
        lookup(&self.files.load(), host).is_some()
    }

    pub(crate) fn acme_certs(&self) -> arc_swap::Guard<Arc<HashMap<String, Arc<Issued>>>> {
        self.acme.load()
    }

    pub(crate) fn set_acme(&self, certs: HashMap<String, Arc<Issued>>) {
        self.acme.store(Arc::new(certs));
    }

    pub(crate) fn set_alpn_challenge(&self, host: &str, key: Option<Arc<CertifiedKey>>) {
        let mut map = self
            .alpn_challenges
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match key {
            Some(key) => map.insert(host.to_owned(), key),
            None => map.remove(host),
        };
    }

    pub(crate) fn set_http_challenge(&self, token: &str, key_authorization: Option<String>) {
        let mut map = self
            .http_challenges
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match key_authorization {
            Some(ka) => map.insert(token.to_owned(), ka),
            None => map.remove(token),
        };
    }

    /// The answer to `GET /.well-known/acme-challenge/{token}`, if pending
    /// here or at another orchestrator.
    pub(crate) fn http_challenge(&self, token: &str) -> Option<String> {
        let own = self
            .http_challenges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned();
        own.or_else(|| self.shared.load().http.get(token).cloned())
    }

    /// What other orchestrators have published, replacing what was.
    pub(crate) fn set_shared(&self, shared: Shared) {
        self.shared.store(Arc::new(shared));
    }

    /// The certificate for a lowercase host, from the first source that has one.
    fn for_host(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(key) = lookup(&self.files.load(), host) {
            return Some(key);
        }
        if let Some(issued) = self.acme.load().get(host) {
            return Some(issued.key.clone());
        }
        let dev = self.dev.as_ref()?;
        if !is_dev_host(host) || !self.routes.load().serves_host(host) {
            return None;
        }
        let mut made = dev.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(key) = made.get(host) {
            return Some(key.clone());
        }
        match self_signed(host) {
            Ok(key) => {
                tracing::info!(%host, "made a self-signed development certificate");
                made.insert(host.to_owned(), key.clone());
                Some(key)
            }
            Err(e) => {
                tracing::warn!(%host, error = %e, "could not make a development certificate");
                None
            }
        }
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        let validation = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if validation {
            let name = name?;
            let own = self
                .alpn_challenges
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&name)
                .cloned();
            return own.or_else(|| self.shared.load().alpn.get(&name).cloned());
        }
        match name {
            Some(host) => self.for_host(&host),
            None => {
                let routes = self.routes.load();
                self.for_host(routes.main_domain()?)
            }
        }
    }
}

/// Exact host first, then a `*.parent` wildcard one label up.
fn lookup(map: &CertMap, host: &str) -> Option<Arc<CertifiedKey>> {
    if let Some(key) = map.get(host) {
        return Some(key.clone());
    }
    let (_, parent) = host.split_once('.')?;
    map.get(&format!("*.{parent}")).cloned()
}

/// Hosts that never have a public certificate: the self-signed development
/// certificate is only made for these.
pub(crate) fn is_dev_host(host: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        ".localhost",
        ".test",
        ".local",
        ".internal",
        ".example",
        ".invalid",
        ".home.arpa",
    ];
    host == "localhost" || SUFFIXES.iter().any(|s| host.ends_with(s))
}

/// A host an ACME server can issue for: a DNS name with a dot, not a
/// development name or an IP address.
pub(crate) fn is_public_host(host: &str) -> bool {
    host.contains('.')
        && !is_dev_host(host)
        && host.parse::<std::net::IpAddr>().is_err()
        && !host.starts_with('[')
}

/// The crypto provider every TLS part uses.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its private key from PEM; fails when either is
/// unreadable or they do not belong together.
pub(crate) fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad certificate PEM: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in the PEM".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("bad key PEM: {e}"))?;
    let key = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("unusable certificate or key: {e}"))?;
    Ok(Arc::new(key))
}

/// A self-signed certificate for one host (ECDSA P-256).
pub(crate) fn self_signed(host: &str) -> Result<Arc<CertifiedKey>, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let params = rcgen::CertificateParams::new(vec![host.to_owned()]).map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let key = CertifiedKey::from_der(vec![cert.der().clone()], der, &provider())
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(key))
}

/// The TLS server configuration: TLS 1.2 and 1.3, ALPN h2 then http/1.1
/// (and `acme-tls/1` for validations), certificates from `certs`, session
/// tickets from `tickets` (a returning client resumes instead of a full
/// handshake; TLS 1.2 clients without tickets from a session cache).
pub(crate) fn server_config(
    certs: Arc<Certs>,
    tickets: Arc<dyn rustls::server::ProducesTickets>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    config.ticketer = tickets;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    Ok(config)
}

/// `notBefore` and `notAfter` of an X.509 certificate (DER).
pub(crate) fn validity(cert: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let (_, certificate, _) = der_read(cert, 0x30)?;
    let (_, mut tbs, _) = der_read(certificate, 0x30)?;
    if tbs.first() == Some(&0xa0) {
        tbs = der_read(tbs, 0xa0)?.2; // version
    }
    tbs = der_read(tbs, 0x02)?.2; // serialNumber
    tbs = der_read(tbs, 0x30)?.2; // signature
    tbs = der_read(tbs, 0x30)?.2; // issuer
    let (_, validity, _) = der_read(tbs, 0x30)?;
    let (tag, not_before, rest) = der_any(validity)?;
    let not_before = der_time(tag, not_before)?;
    let (tag, not_after, _) = der_any(rest)?;
    let not_after = der_time(tag, not_after)?;
    Some((not_before, not_after))
}

/// One DER element with the expected tag: (tag, contents, rest).
fn der_read(input: &[u8], tag: u8) -> Option<(u8, &[u8], &[u8])> {
    let read = der_any(input)?;
    (read.0 == tag).then_some(read)
}

fn der_any(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        let len = bytes.iter().fold(0usize, |a, &b| (a << 8) | usize::from(b));
        (len, rest)
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn der_time(tag: u8, text: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let yy: i64 = text.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        (0x18, 14) => (text.get(..4)?.parse().ok()?, &text[4..]),
        _ => return None,
    };
    if !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |i: usize| rest.get(i..i + 2)?.parse::<i64>().ok();
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_validity(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn unix(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn validity_is_read_from_der() {
        // UTCTime before 2050, GeneralizedTime from 2050 on (RFC 5280).
        let der = cert_with_validity((2026, 11, 27), (2051, 3, 1));
        let (nb, na) = validity(&der).unwrap();
        assert_eq!(unix(nb), 1_795_737_600, "2026-11-27T00:00:00Z");
        assert_eq!(unix(na), 2_561_241_600, "2051-03-01T00:00:00Z");
        assert_eq!(validity(&der[..der.len() / 2]), None);
        assert_eq!(validity(b"\x30\x03\x02\x01\x00"), None);
    }

    #[test]
    fn renewal_is_at_two_thirds_of_the_lifetime() {
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let key = self_signed("a.test").unwrap();
        let issued = Issued {
            key,
            not_before: t(1000),
            not_after: t(1000 + 90 * 86_400),
        };
        assert_eq!(issued.renew_at(), t(1000 + 60 * 86_400));
    }

    #[test]
    fn pem_pairs_must_match() {
        let key = rcgen::KeyPair::generate().unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pem = cert.pem();
        assert!(certified_key(pem.as_bytes(), key.serialize_pem().as_bytes()).is_ok());
        let err = certified_key(pem.as_bytes(), other.serialize_pem().as_bytes()).unwrap_err();
        assert!(err.contains("unusable"), "{err}");
        assert!(certified_key(b"junk", key.serialize_pem().as_bytes()).is_err());
        assert!(certified_key(pem.as_bytes(), b"").is_err());
        let issued = Issued::from_pem(&pem, &key.serialize_pem()).unwrap();
        assert!(issued.not_after > issued.not_before);
    }

    #[test]
    fn host_kinds() {
        for dev in [
            "localhost",
            "app.localhost",
            "a.test",
            "x.internal",
            "b.home.arpa",
        ] {
            assert!(is_dev_host(dev), "{dev}");
            assert!(!is_public_host(dev), "{dev}");
        }
        for public in ["example.com", "link.waifu", "a.b.example.org"] {
            assert!(!is_dev_host(public), "{public}");
            assert!(is_public_host(public), "{public}");
        }
        for neither in ["127.0.0.1", "[::1]", "intranet"] {
            assert!(!is_public_host(neither), "{neither}");
        }
    }

    #[test]
    fn wildcards_cover_one_label() {
        let key = self_signed("a.test").unwrap();
        let mut map = CertMap::new();
        map.insert("*.example.com".into(), key.clone());
        assert!(lookup(&map, "api.example.com").is_some());
        assert!(lookup(&map, "example.com").is_none());
        assert!(lookup(&map, "a.b.example.com").is_none());
    }
}
