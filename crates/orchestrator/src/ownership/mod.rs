//! Who owns a waifu name: one secret per name, for hellos and database
//! calls alike.
//!
//! The first hello or database call that carries a secret claims the name
//! (an Argon2id hash is stored, never the secret). From then on a call for
//! that name needs that secret: without it the answer is 401
//! (`secret_required`), with another 403 (`wrong_secret`). A name nobody
//! claimed takes a hello without a secret, as waifus that follow only the
//! seed protocol expect, unless `HELLO_SECRET=required`.
//!
//! Every refusal counts against the calling address (and the name over all
//! addresses) in the shared throttle ([`throttle`]) and is an incident,
//! stored in the same transaction, which commits before the refusal is
//! answered: if it cannot be stored, the answer is 503, never a refusal
//! nobody will find in the log. A check that runs Argon2 is reserved in
//! that throttle first, so many calls at once get no more checks than one
//! after another would.
//!
//! Argon2 runs on its own threads ([`hasher`]). A waifu says hello every
//! 30 s with its secret, so a secret once verified is remembered as a MAC
//! under a key of this process: the next hello costs a hash, not Argon2.

pub(crate) mod hasher;
pub(crate) mod throttle;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tracing::warn;

use crate::ops::incidents::{Gate, IncidentKind, Incidents, new_incident};
use crate::store::ownership::{Attempts, AttemptsChange, Claim};
use crate::store::{Store, StoreError};
use hasher::{HashError, Hasher};
use throttle::Scope;

/// Refused-while-locked incidents are stored at most this often per name
/// and address.
const THROTTLED_INCIDENT_EVERY: Duration = Duration::from_secs(10);
/// Verified secrets remembered (names); beyond it the memory starts over.
const MAX_VERIFIED: usize = 100_000;

/// What a secret was shown for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asked {
    Hello,
    Goodbye,
    Database,
}

impl Asked {
    fn as_str(self) -> &'static str {
        match self {
            Asked::Hello => "hello",
            Asked::Goodbye => "goodbye",
            Asked::Database => "database call",
        }
    }
}

/// How a call stands with the name's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Nobody claimed the name, and none was asked to (no secret given).
    Unclaimed,
    /// The secret is the name's.
    Owner,
    /// This call just claimed the name.
    Claimed,
}

/// Why a call is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OwnershipError {
    #[error("this name is claimed: its secret is required")]
    SecretRequired,
    #[error("every hello must carry a secret here (HELLO_SECRET=required)")]
    SecretAlwaysRequired,
    #[error("the secret does not match the one this name was claimed with")]
    WrongSecret,
    #[error("too many wrong or missing secrets for this name; retry in {} s", .0.as_secs().max(1))]
    Throttled(Duration),
    /// The refusal (or the check) could not be stored or made.
    #[error("the state database is unreachable, or Argon2 is not running: {0}")]
    Unavailable(#[from] OwnershipUnavailable),
}

/// What was unavailable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OwnershipUnavailable {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hasher(#[from] HashError),
}

impl OwnershipError {
    /// The label of a refused call in the metrics.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            OwnershipError::SecretRequired | OwnershipError::SecretAlwaysRequired => {
                "secret_required"
            }
            OwnershipError::WrongSecret => "wrong_secret",
            OwnershipError::Throttled(_) => "throttled",
            OwnershipError::Unavailable(_) => "unavailable",
        }
    }
}

impl From<StoreError> for OwnershipError {
    fn from(e: StoreError) -> Self {
        OwnershipUnavailable::from(e).into()
    }
}

impl From<HashError> for OwnershipError {
    fn from(e: HashError) -> Self {
        OwnershipUnavailable::from(e).into()
    }
}

/// A secret that passed Argon2, remembered.
#[derive(Debug)]
struct Verified {
    /// The stored hash it passed against: a new hash (another claim, a
    /// rotation) forgets it.
    hash: String,
    /// MAC of the secret under this process's key.
    mac: [u8; 32],
}

/// Decides who may act for a name.
#[derive(Debug)]
pub(crate) struct Ownership {
    store: Store,
    hasher: Hasher,
    incidents: Incidents,
    /// `HELLO_SECRET=required`.
    required: bool,
    /// Secrets verified by Argon2, by name.
    verified: Mutex<HashMap<String, Verified>>,
    /// Key of those MACs: random, never leaves this process.
    mac_key: [u8; 32],
    /// `throttled` incidents stored, at most one per name and address
    /// every [`THROTTLED_INCIDENT_EVERY`].
    throttled_reported: Gate<(String, IpAddr)>,
}

impl Ownership {
    pub(crate) fn new(
        store: Store,
        hasher: Hasher,
        incidents: Incidents,
        required: bool,
    ) -> Result<Ownership, getrandom::Error> {
        let mut mac_key = [0u8; 32];
        getrandom::fill(&mut mac_key)?;
        Ok(Ownership {
            store,
            hasher,
            incidents,
            required,
            verified: Mutex::default(),
            mac_key,
            throttled_reported: Gate::new(THROTTLED_INCIDENT_EVERY),
        })
    }

    /// Whether a call for `name` with `secret` from `source` may act for
    /// it; a refusal is stored (incident, attempts) before this returns.
    pub(crate) async fn admit(
        &self,
        name: &str,
        secret: Option<&str>,
        source: IpAddr,
        asked: Asked,
    ) -> Result<Standing, OwnershipError> {
        let address = source.to_canonical().to_string();
        let state = self.store.owner_state(name, &address).await?;
        let attempts = state.attempts;
        if let Some(wait) = throttle::locked_for(&attempts.source, &attempts.name, attempts.now) {
            self.report_throttled(name, source, asked, wait).await?;
            return Err(OwnershipError::Throttled(wait));
        }
        let standing = match (&state.secret_hash, secret) {
            (None, None) if asked != Asked::Database && self.required => {
                return Err(self.refuse(name, source, asked, Refusal::Always).await);
            }
            (None, None) => Standing::Unclaimed,
            // A goodbye claims nothing: the hello before it did, or nobody.
            (None, Some(_)) if asked == Asked::Goodbye => Standing::Unclaimed,
            (None, Some(secret)) => {
                let hash = self.hasher.hash(secret).await?;
                let claim = self
                    .store
                    .claim(
                        name,
                        &hash,
                        &address,
                        asked.as_str(),
                        self.incidents.webhook(),
                    )
                    .await?;
                match claim {
                    Claim::Claimed(incident) => {
                        if let Some(incident) = &incident {
                            self.incidents.noted(incident);
                        }
                        self.remember(name, &hash, secret);
                        self.succeeded(name, source, false).await?;
                        Standing::Claimed
                    }
                    // Another call claimed it meanwhile: judged by that.
                    Claim::Taken(theirs) => {
                        self.check(name, &theirs, secret, source, asked, &attempts)
                            .await?;
                        Standing::Owner
                    }
                }
            }
            (Some(_), None) => {
                return Err(self.refuse(name, source, asked, Refusal::Missing).await);
            }
            (Some(hash), Some(secret)) => {
                self.check(name, hash, secret, source, asked, &attempts)
                    .await?;
                Standing::Owner
            }
        };
        Ok(standing)
    }

    /// Checks `secret` against `hash`. A secret this process verified
    /// before needs no Argon2 (and no reservation: only the right secret
    /// is remembered, so a guess never passes here). Otherwise the attempt
    /// is reserved in the shared attempts first, so that no more checks run
    /// at once than failures are left, then judged: a wrong secret is
    /// refused and recorded, a right one forgets the address's failures.
    async fn check(
        &self,
        name: &str,
        hash: &str,
        secret: &str,
        source: IpAddr,
        asked: Asked,
        seen: &Attempts,
    ) -> Result<(), OwnershipError> {
        if self.is_remembered(name, hash, secret) {
            if !throttle::settled_success(&seen.source, seen.now) {
                self.succeeded(name, source, false).await?;
            }
            return Ok(());
        }
        let reserved = self
            .incidents
            .with_attempts(name, source, |a| {
                match throttle::reserve(a.source, a.name, a.now) {
                    Ok((source, name)) => AttemptsChange {
                        source,
                        name,
                        outcome: Ok(()),
                        incident: None,
                    },
                    Err(wait) => AttemptsChange {
                        source: a.source,
                        name: a.name,
                        outcome: Err(wait),
                        incident: None,
                    },
                }
            })
            .await?;
        if let Err(wait) = reserved {
            self.report_throttled(name, source, asked, wait).await?;
            return Err(OwnershipError::Throttled(wait));
        }
        // An error here leaves the reservation to lapse by itself.
        if !self.hasher.verify(secret, hash).await? {
            return Err(self.judge_wrong(name, source, asked, Refusal::Wrong).await);
        }
        self.remember(name, hash, secret);
        self.succeeded(name, source, true).await
    }

    /// The right secret from `source`: its failures are forgotten and it is
    /// trusted (`reserved`: the reservation it took is settled).
    async fn succeeded(
        &self,
        name: &str,
        source: IpAddr,
        reserved: bool,
    ) -> Result<(), OwnershipError> {
        self.incidents
            .with_attempts(name, source, |a| {
                let (source, name) = throttle::success(a.source, a.name, reserved, a.now);
                AttemptsChange {
                    source,
                    name,
                    outcome: (),
                    incident: None,
                }
            })
            .await?;
        Ok(())
    }

    /// An Argon2id hash of `secret` (a new one, for a rotation).
    pub(crate) async fn hash(&self, secret: &str) -> Result<String, HashError> {
        self.hasher.hash(secret).await
    }

    /// Whether this process verified `secret` against `hash` before.
    fn is_remembered(&self, name: &str, hash: &str, secret: &str) -> bool {
        let mac = self.mac(secret);
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .is_some_and(|v| v.hash == hash && constant_time_eq(&v.mac, &mac))
    }

    fn remember(&self, name: &str, hash: &str, secret: &str) {
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= MAX_VERIFIED {
            verified.clear();
        }
        verified.insert(
            name.to_owned(),
            Verified {
                hash: hash.to_owned(),
                mac: self.mac(secret),
            },
        );
    }

    fn mac(&self, secret: &str) -> [u8; 32] {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.mac_key).expect("any key length");
        mac.update(secret.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A refusal of a call that ran no check (a missing secret): counted
    /// and stored with its incident, unless the address turned out to be
    /// locked meanwhile (then it is a 429).
    async fn refuse(
        &self,
        name: &str,
        source: IpAddr,
        asked: Asked,
        why: Refusal,
    ) -> OwnershipError {
        self.record_failure(name, source, asked, why, false).await
    }

    /// A wrong secret whose check was reserved: counted (the reservation
    /// settled) and stored with its incident.
    async fn judge_wrong(
        &self,
        name: &str,
        source: IpAddr,
        asked: Asked,
        why: Refusal,
    ) -> OwnershipError {
        self.record_failure(name, source, asked, why, true).await
    }

    /// Stores one failure with its incident in one transaction and returns
    /// the error to answer with: the refusal, a 429 if the address was
    /// locked before this failure could count, or 503 if it could not be
    /// stored.
    async fn record_failure(
        &self,
        name: &str,
        source: IpAddr,
        asked: Asked,
        why: Refusal,
        reserved: bool,
    ) -> OwnershipError {
        // Goodbyes are recorded as hellos are: both speak for an instance.
        let kind = match (why, asked) {
            (Refusal::Wrong, Asked::Database) => IncidentKind::WrongSecret,
            (Refusal::Wrong, Asked::Hello | Asked::Goodbye) => IncidentKind::HelloWrongSecret,
            (Refusal::Missing | Refusal::Always, _) => IncidentKind::HelloWithoutSecret,
        };
        let what = match why {
            Refusal::Wrong => format!("a {} with a wrong secret was refused", asked.as_str()),
            Refusal::Missing => format!(
                "a {} without a secret was refused: the name is claimed",
                asked.as_str()
            ),
            Refusal::Always => format!(
                "a {} without a secret was refused (HELLO_SECRET=required)",
                asked.as_str()
            ),
        };
        let address = source.to_canonical();
        let stored = self
            .incidents
            .with_attempts(name, source, |a| {
                if !reserved && let Some(wait) = throttle::locked_for(&a.source, &a.name, a.now) {
                    return AttemptsChange {
                        source: a.source,
                        name: a.name,
                        outcome: Err(wait),
                        incident: None,
                    };
                }
                let (source_record, own_lock) =
                    throttle::failure(a.source, Scope::Source, reserved, a.now);
                let (name_record, name_lock) =
                    throttle::failure(a.name, Scope::Name, reserved, a.now);
                let mut detail = what;
                if let Some(lock) = own_lock {
                    let _ = write!(
                        detail,
                        "; {address} is locked out of this name for {} s",
                        lock.as_secs()
                    );
                }
                if let Some(lock) = name_lock {
                    let _ = write!(
                        detail,
                        "; too many failures from all addresses: the name is locked for {} s \
                         for every address that has not shown its secret",
                        lock.as_secs()
                    );
                }
                AttemptsChange {
                    source: source_record,
                    name: name_record,
                    outcome: Ok(()),
                    incident: Some(new_incident(kind, name, source, detail)),
                }
            })
            .await;
        match stored {
            Ok(Ok(())) => match why {
                Refusal::Wrong => OwnershipError::WrongSecret,
                Refusal::Missing => OwnershipError::SecretRequired,
                Refusal::Always => OwnershipError::SecretAlwaysRequired,
            },
            Ok(Err(wait)) => match self.report_throttled(name, source, asked, wait).await {
                Ok(()) => OwnershipError::Throttled(wait),
                Err(e) => e.into(),
            },
            Err(e) => {
                warn!(name, error = %e, "a refusal could not be stored: answering 503");
                e.into()
            }
        }
    }

    /// A call refused while the name is locked: an incident at most every
    /// [`THROTTLED_INCIDENT_EVERY`] per name, stored before the 429.
    async fn report_throttled(
        &self,
        name: &str,
        source: IpAddr,
        asked: Asked,
        wait: Duration,
    ) -> Result<(), StoreError> {
        let address = source.to_canonical();
        let detail = format!(
            "a {} from {address} was refused: too many wrong or missing secrets, retry in {} s \
             (further refusals of this address within {} s are not recorded separately)",
            asked.as_str(),
            wait.as_secs().max(1),
            THROTTLED_INCIDENT_EVERY.as_secs()
        );
        self.throttled_reported
            .record(&(name.to_owned(), address), || {
                self.incidents
                    .record(IncidentKind::Throttled, name, source, detail)
            })
            .await
    }
}

/// Why a secret was refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Wrong,
    Missing,
    Always,
}

/// Equality of two MACs without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
