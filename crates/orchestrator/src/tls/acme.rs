//! Automatic certificates from an ACME server (RFC 8555), with instant-acme.
//!
//! Which hosts: those with an accepted `https://` bind, and the main domain,
//! when they are public DNS names ([`super::is_public_host`]) and `CERT_DIR`
//! has no certificate for them. Nothing else is ever ordered: a refused bind
//! is not in the route table, and a TLS handshake for an unknown name orders
//! nothing (no on-demand issuance).
//!
//! The account and every certificate are stored in PostgreSQL per directory
//! URL, so restarts and replicas reuse them instead of ordering again. An
//! order is made under a per-host advisory lock; a certificate is renewed
//! once two thirds of its lifetime have passed; a failed order is retried
//! after 1 min, doubling up to 1 day, alternating TLS-ALPN-01 and HTTP-01 so
//! one closed port does not block issuance.
//!
//! Behind a load balancer the CA's validation may reach any replica: the
//! one that orders publishes each challenge answer in PostgreSQL, every
//! replica reads the published answers every [`SHARED_EVERY`], and the CA
//! is told a challenge is ready only [`SHARE_WAIT`] after it was published.

mod client;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, anyhow, bail};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Certs, Issued, is_public_host, provider};
use crate::routing::Routes;
use crate::store::Store;
use crate::store::acme::{SharedChallenge, StoredCert};
use client::AcmeHttp;

/// The challenge tried first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Challenge {
    /// TLS-ALPN-01, answered on the HTTPS listener (port 443 must reach it).
    #[value(name = "tls-alpn-01")]
    TlsAlpn01,
    /// HTTP-01, answered on the public listener (port 80 must reach it).
    #[value(name = "http-01")]
    Http01,
}

impl Challenge {
    fn kind(self) -> ChallengeType {
        match self {
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            Challenge::Http01 => ChallengeType::Http01,
        }
    }

    fn other(self) -> Challenge {
        match self {
            Challenge::TlsAlpn01 => Challenge::Http01,
            Challenge::Http01 => Challenge::TlsAlpn01,
        }
    }
}

/// `ACME_*` settings, checked.
#[derive(Debug, Clone)]
pub(crate) struct AcmeConfig {
    pub directory: String,
    pub email: Option<String>,
    /// Extra trusted root (PEM) for talking to the directory.
    pub ca_file: Option<PathBuf>,
    pub challenge: Challenge,
}

/// First retry after a failed order; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);
/// Longest sleep between looks at what is due.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// How often every orchestrator reads the challenge answers others published.
const SHARED_EVERY: Duration = Duration::from_millis(500);
/// How long after publishing a challenge answer the CA is told it is
/// ready: every orchestrator has read it by then.
const SHARE_WAIT: Duration = Duration::from_millis(1500);

/// Retry when another orchestrator holds a host's ordering lock.
const BUSY_RETRY: Duration = Duration::from_secs(30);
/// Bound on one HTTP exchange with the ACME server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest ACME response body read.
const MAX_RESPONSE: usize = 1 << 20;

/// Delay before the next attempt after `failures` failed orders in a row.
pub(crate) fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

/// One host's failed orders: how many in a row, and when to try again.
#[derive(Debug, Clone, Copy)]
struct Failing {
    failures: u32,
    retry_at: SystemTime,
}

/// Obtains and renews certificates until `shutdown`.
pub(crate) async fn manage(
    config: AcmeConfig,
    certs: Arc<Certs>,
    routes: Routes,
    store: Store,
    shutdown: CancellationToken,
) {
    let run = async {
        let http = match AcmeHttp::new(config.ca_file.as_deref()) {
            Ok(http) => http,
            Err(e) => {
                warn!(error = %e, "ACME is off: cannot build its HTTP client");
                return;
            }
        };
        let mut pause = Duration::from_secs(1);
        let account = loop {
            match load_stored(&config.directory, &certs, &store).await {
                Ok(()) => match account(&config, &http, &store).await {
                    Ok(account) => break account,
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), retry_in = ?pause, "no ACME account yet")
                    }
                },
                Err(e) => warn!(error = %e, retry_in = ?pause, "cannot load stored certificates"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(FIRST_BACKOFF);
        };
        tokio::join!(
            renew_forever(&config, &account, &certs, &routes, &store),
            follow_shared(&certs, &store),
        );
    };
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = run => {}
    }
}

/// Reads the challenge answers other orchestrators published, for as long
/// as ACME runs here.
async fn follow_shared(certs: &Certs, store: &Store) {
    let mut failing = false;
    loop {
        match store.shared_challenges().await {
            Ok(rows) => {
                failing = false;
                let mut shared = super::Shared::default();
                for row in rows {
                    match (row.kind.as_str(), row.key) {
                        ("http-01", _) => {
                            if let Ok(ka) = String::from_utf8(row.value) {
                                shared.http.insert(row.name, ka);
                            }
                        }
                        ("tls-alpn-01", Some(key)) => match alpn_key(row.value, key) {
                            Ok(cert) => {
                                shared.alpn.insert(row.name, cert);
                            }
                            Err(e) => {
                                warn!(host = %row.name, error = %e, "a published challenge certificate is unusable")
                            }
                        },
                        _ => {}
                    }
                }
                certs.set_shared(shared);
            }
            Err(e) if !failing => {
                failing = true;
                warn!(error = %e, "cannot read the challenges other orchestrators published");
            }
            Err(_) => {}
        }
        tokio::time::sleep(SHARED_EVERY).await;
    }
}

async fn renew_forever(
    config: &AcmeConfig,
    account: &Account,
    certs: &Certs,
    routes: &Routes,
    store: &Store,
) {
    let mut failing: HashMap<String, Failing> = HashMap::new();
    loop {
        let wanted = wanted_hosts(routes, certs);
        failing.retain(|host, _| wanted.contains(host));
        let now = SystemTime::now();
        let due_at = |host: &str, failing: &HashMap<String, Failing>| {
            let renew = certs.acme_certs().get(host).map_or(now, |c| c.renew_at());
            failing.get(host).map_or(renew, |f| renew.max(f.retry_at))
        };
        let due: Vec<&String> = wanted
            .iter()
            .filter(|h| due_at(h, &failing) <= now)
            .collect();
        if !due.is_empty() {
            // Another orchestrator may have renewed them already.
            if let Err(e) = load_stored(&config.directory, certs, store).await {
                warn!(error = %e, "cannot load stored certificates");
            }
        }
        for host in due {
            if due_at(host, &failing) > SystemTime::now() {
                continue;
            }
            let failures = failing.get(host.as_str()).map_or(0, |f| f.failures);
            let challenge = if failures.is_multiple_of(2) {
                config.challenge
            } else {
                config.challenge.other()
            };
            match obtain(config, account, certs, store, host, challenge).await {
                Ok(Obtained::Issued) => {
                    failing.remove(host.as_str());
                }
                Ok(Obtained::Busy) => {
                    let retry_at = SystemTime::now() + BUSY_RETRY;
                    failing.insert(host.clone(), Failing { failures, retry_at });
                }
                Err(e) => {
                    let failures = failures + 1;
                    let wait = backoff(failures);
                    warn!(
                        %host, failures, retry_in = ?wait, error = %format!("{e:#}"),
                        "could not obtain a certificate"
                    );
                    let retry_at = SystemTime::now() + wait;
                    failing.insert(host.clone(), Failing { failures, retry_at });
                }
            }
        }
        let now = SystemTime::now();
        let next = wanted
            .iter()
            .map(|h| due_at(h, &failing))
            .min()
            .map_or(MAX_SLEEP, |t| {
                t.duration_since(now).unwrap_or(Duration::ZERO)
            })
            .clamp(Duration::from_millis(200), MAX_SLEEP);
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            () = routes.changed() => {}
        }
    }
}

/// Hosts to hold an ACME certificate for, sorted.
fn wanted_hosts(routes: &Routes, certs: &Certs) -> Vec<String> {
    let routes = routes.load();
    let mut hosts: Vec<String> = routes
        .tls_hosts()
        .chain(routes.main_domain())
        .filter(|h| is_public_host(h) && !certs.has_file_for(h))
        .map(str::to_owned)
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    hosts
}

/// Replaces the in-memory ACME certificates with the stored ones.
pub(crate) async fn load_stored(
    directory: &str,
    certs: &Certs,
    store: &Store,
) -> Result<(), crate::store::StoreError> {
    let mut loaded = HashMap::new();
    for stored in store.certificates(directory).await? {
        match Issued::from_pem(&stored.chain_pem, &stored.key_pem) {
            Ok(issued) => {
                loaded.insert(stored.host, Arc::new(issued));
            }
            Err(e) => {
                warn!(host = %stored.host, error = %e, "ignoring an unusable stored certificate")
            }
        }
    }
    certs.set_acme(loaded);
    Ok(())
}

/// The stored account for this directory, or a new one (stored unless
/// another orchestrator stored one first, which is then used).
async fn account(config: &AcmeConfig, http: &AcmeHttp, store: &Store) -> anyhow::Result<Account> {
    let builder = || Account::builder_with_http(Box::new(http.clone()));
    if let Some(stored) = store.acme_account(&config.directory).await? {
        let credentials: AccountCredentials =
            serde_json::from_str(&stored).context("stored ACME account is unreadable")?;
        return Ok(builder().from_credentials(credentials).await?);
    }
    let contact = config.email.as_ref().map(|e| format!("mailto:{e}"));
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contact,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) = builder()
        .create(&new, config.directory.clone(), None)
        .await
        .context("creating the ACME account")?;
    let json = serde_json::to_string(&credentials)?;
    let stored = store.save_acme_account(&config.directory, &json).await?;
    if stored == json {
        info!(directory = %config.directory, id = %account.id(), "created an ACME account");
        return Ok(account);
    }
    let credentials: AccountCredentials = serde_json::from_str(&stored)?;
    Ok(builder().from_credentials(credentials).await?)
}

enum Obtained {
    Issued,
    /// Another orchestrator is ordering this host.
    Busy,
}

/// Orders, validates and stores a certificate for one host.
async fn obtain(
    config: &AcmeConfig,
    account: &Account,
    certs: &Certs,
    store: &Store,
    host: &str,
    challenge: Challenge,
) -> anyhow::Result<Obtained> {
    let Some(_lock) = store.acme_lock(host).await? else {
        return Ok(Obtained::Busy);
    };
    // Another orchestrator may have stored one between our last look and
    // the lock: one order per name, whoever places it.
    load_stored(&config.directory, certs, store).await?;
    if certs
        .acme_certs()
        .get(host)
        .is_some_and(|c| c.renew_at() > SystemTime::now())
    {
        return Ok(Obtained::Issued);
    }
    info!(%host, ?challenge, "ordering a certificate");
    let identifiers = [Identifier::Dns(host.to_owned())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut pending = PendingChallenges {
        certs,
        store,
        tokens: Vec::new(),
        alpn_hosts: Vec::new(),
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => bail!("authorization is {other:?}"),
        }
        let offered = |c: Challenge| authz.challenges.iter().any(|o| o.r#type == c.kind());
        let pick = if offered(challenge) {
            challenge
        } else if offered(challenge.other()) {
            challenge.other()
        } else {
            bail!("the server offers neither tls-alpn-01 nor http-01");
        };
        let mut handle = authz
            .challenge(pick.kind())
            .ok_or_else(|| anyhow!("challenge vanished"))?;
        let key_authorization = handle.key_authorization();
        let published = match pick {
            Challenge::Http01 => {
                let ka = key_authorization.as_str().to_owned();
                certs.set_http_challenge(&handle.token, Some(ka.clone()));
                pending.tokens.push(handle.token.clone());
                SharedChallenge {
                    kind: "http-01".into(),
                    name: handle.token.clone(),
                    value: ka.into_bytes(),
                    key: None,
                }
            }
            Challenge::TlsAlpn01 => {
                let (cert, key) = alpn_certificate(host, key_authorization.digest().as_ref())?;
                certs.set_alpn_challenge(host, Some(alpn_key(cert.clone(), key.clone())?));
                pending.alpn_hosts.push(host.to_owned());
                SharedChallenge {
                    kind: "tls-alpn-01".into(),
                    name: host.to_owned(),
                    value: cert,
                    key: Some(key),
                }
            }
        };
        // Every replica answers it before the CA asks.
        store.publish_challenge(&published).await?;
        tokio::time::sleep(SHARE_WAIT).await;
        tracing::debug!(%host, url = %handle.url, ?pick, "challenge ready");
        handle.set_ready().await?;
    }
    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(Duration::from_secs(90));
    let status = order.poll_ready(&retries).await?;
    if status != OrderStatus::Ready {
        bail!("order is {status:?}: {}", order_problems(&mut order).await);
    }
    drop(pending);
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    order.finalize_csr(csr.der()).await?;
    let chain_pem = order.poll_certificate(&retries).await?;
    let stored = StoredCert {
        host: host.to_owned(),
        chain_pem,
        key_pem: key.serialize_pem(),
    };
    let issued = Issued::from_pem(&stored.chain_pem, &stored.key_pem)
        .map_err(|e| anyhow!("the issued certificate is unusable: {e}"))?;
    if let Err(e) = store
        .save_certificate(&config.directory, &stored, issued.not_after)
        .await
    {
        // Still served from memory; ordered again after a restart.
        warn!(%host, error = %e, "could not store the new certificate");
    }
    info!(
        %host,
        expires = %humantime::format_rfc3339_seconds(issued.not_after),
        "certificate obtained"
    );
    let mut all: HashMap<String, Arc<Issued>> = (**certs.acme_certs()).clone();
    all.insert(host.to_owned(), Arc::new(issued));
    certs.set_acme(all);
    Ok(Obtained::Issued)
}

/// What the server said went wrong, for the log.
async fn order_problems(order: &mut instant_acme::Order) -> String {
    let mut problems = Vec::new();
    if let Some(p) = &order.state().error {
        problems.push(p.to_string());
    }
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        for c in &authz.challenges {
            if let Some(p) = &c.error {
                problems.push(format!("{:?}: {p}", c.r#type));
            }
        }
    }
    if problems.is_empty() {
        "no detail given".to_owned()
    } else {
        problems.join("; ")
    }
}

/// Challenge answers published for one order, withdrawn when it ends
/// (here at once, from the store by a task of its own).
struct PendingChallenges<'a> {
    certs: &'a Certs,
    store: &'a Store,
    tokens: Vec<String>,
    alpn_hosts: Vec<String>,
}

impl Drop for PendingChallenges<'_> {
    fn drop(&mut self) {
        let mut published = Vec::new();
        for token in self.tokens.drain(..) {
            self.certs.set_http_challenge(&token, None);
            published.push(("http-01", token));
        }
        for host in self.alpn_hosts.drain(..) {
            self.certs.set_alpn_challenge(&host, None);
            published.push(("tls-alpn-01", host));
        }
        if published.is_empty() {
            return;
        }
        let store = self.store.clone();
        tokio::spawn(async move {
            for (kind, name) in published {
                if let Err(e) = store.withdraw_challenge(kind, &name).await {
                    warn!(%name, error = %e, "a challenge answer stays published until it expires");
                }
            }
        });
    }
}

/// The TLS-ALPN-01 certificate (RFC 8737): self-signed for the host, with
/// the key authorization's digest in the critical acmeIdentifier extension.
/// Its certificate and PKCS#8 key, DER.
fn alpn_certificate(host: &str, digest: &[u8]) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()])?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let cert = params.self_signed(&key)?;
    Ok((cert.der().to_vec(), key.serialize_der()))
}

/// A TLS-ALPN-01 certificate and key (DER) as the TLS listener serves it.
fn alpn_key(cert: Vec<u8>, key: Vec<u8>) -> anyhow::Result<Arc<CertifiedKey>> {
    let der = PrivateKeyDer::Pkcs8(key.into());
    // Not `CertifiedKey::from_der`: its consistency check parses the
    // certificate with webpki, which refuses the critical extension.
    let key = provider().key_provider.load_private_key(der)?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.into()], key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_day() {
        assert_eq!(backoff(1), Duration::from_secs(60));
        assert_eq!(backoff(2), Duration::from_secs(120));
        assert_eq!(backoff(5), Duration::from_secs(960));
        assert_eq!(backoff(12), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn alpn_certificate_carries_the_digest() {
        let digest = [7u8; 32];
        let (cert, key) = alpn_certificate("a.example.com", &digest).unwrap();
        let cert = alpn_key(cert, key).unwrap();
        let der = cert.cert[0].as_ref();
        // id-pe-acmeIdentifier (1.3.6.1.5.5.7.1.31), critical, OCTET STRING of the digest.
        let oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];
        let at = der
            .windows(oid.len())
            .position(|w| w == oid)
            .expect("extension");
        let rest = &der[at + oid.len()..];
        assert_eq!(&rest[..3], &[0x01, 0x01, 0xff], "critical");
        assert!(
            rest.windows(34)
                .any(|w| w[..2] == [0x04, 0x20] && w[2..] == digest)
        );
    }
}
