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
//! Every refusal counts against the name in the shared throttle
//! ([`throttle`]) and is an incident, stored in the same transaction, which
//! commits before the refusal is answered: if it cannot be stored, the
//! answer is 503, never a refusal nobody will find in the log.
//!
//! Argon2 runs on its own threads ([`hasher`]). A waifu says hello every
//! 30 s with its secret, so a secret once verified is remembered as a MAC
//! under a key of this process: the next hello costs a hash, not Argon2.

pub(crate) mod hasher;
pub(crate) mod throttle;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tracing::warn;

use crate::ops::incidents::{IncidentKind, Incidents};
use crate::store::{Store, StoreError};
use hasher::{HashError, Hasher};

/// Refused-while-locked incidents are stored at most this often per name.
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
    /// When a `throttled` incident was last stored, per name.
    throttled_reported: Mutex<HashMap<String, Instant>>,
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
            throttled_reported: Mutex::default(),
        })
    }

    /// Whether a call for `name` with `secret` may act for it; a refusal is
    /// stored (incident, throttle) before this returns.
    pub(crate) async fn admit(
        &self,
        name: &str,
        secret: Option<&str>,
        source: IpAddr,
        asked: Asked,
    ) -> Result<Standing, OwnershipError> {
        let state = self.store.owner_state(name).await?;
        if let Some(wait) = throttle::locked_for(state.failures.as_ref(), state.now) {
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
                let via = asked.as_str();
                match self
                    .store
                    .claim(name, &hash, &source.to_canonical().to_string(), via)
                    .await?
                {
                    None => {
                        self.remember(name, &hash, secret);
                        Standing::Claimed
                    }
                    // Another call claimed it meanwhile: judged by that.
                    Some(theirs) => {
                        if !self.verify(name, &theirs, secret).await? {
                            return Err(self.refuse(name, source, asked, Refusal::Wrong).await);
                        }
                        Standing::Owner
                    }
                }
            }
            (Some(_), None) => {
                return Err(self.refuse(name, source, asked, Refusal::Missing).await);
            }
            (Some(hash), Some(secret)) => {
                if !self.verify(name, hash, secret).await? {
                    return Err(self.refuse(name, source, asked, Refusal::Wrong).await);
                }
                Standing::Owner
            }
        };
        if state.failures.is_some() && standing != Standing::Unclaimed {
            self.store.forget_failures(name).await?;
        }
        Ok(standing)
    }

    /// Whether `secret` is the one `hash` stands for: remembered, or Argon2.
    async fn verify(&self, name: &str, hash: &str, secret: &str) -> Result<bool, HashError> {
        let mac = self.mac(secret);
        let known = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .is_some_and(|v| v.hash == hash && constant_time_eq(&v.mac, &mac));
        if known {
            return Ok(true);
        }
        let right = self.hasher.verify(secret, hash).await?;
        if right {
            self.remember(name, hash, secret);
        }
        Ok(right)
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

    /// Stores a refusal (throttle and incident in one transaction) and
    /// returns the error to answer with: the refusal, or 503 if it could not
    /// be stored.
    async fn refuse(
        &self,
        name: &str,
        source: IpAddr,
        asked: Asked,
        why: Refusal,
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
        let stored = self
            .incidents
            .record_refusal(
                kind,
                name,
                source,
                Some(throttle::failure),
                |lock| match lock {
                    Some(d) => format!("{what}; the name is locked for {} s", d.as_secs()),
                    None => what,
                },
            )
            .await;
        match stored {
            Ok(_) => match why {
                Refusal::Wrong => OwnershipError::WrongSecret,
                Refusal::Missing => OwnershipError::SecretRequired,
                Refusal::Always => OwnershipError::SecretAlwaysRequired,
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
        let now = Instant::now();
        let due = {
            let mut reported = self
                .throttled_reported
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if reported.len() > 100_000 {
                reported.retain(|_, t| now.duration_since(*t) < THROTTLED_INCIDENT_EVERY);
            }
            let due = reported
                .get(name)
                .is_none_or(|t| now.duration_since(*t) >= THROTTLED_INCIDENT_EVERY);
            if due {
                reported.insert(name.to_owned(), now);
            }
            due
        };
        if due {
            let detail = format!(
                "a {} was refused: too many wrong or missing secrets, locked for {} more s \
                 (further refusals within {} s are not recorded separately)",
                asked.as_str(),
                wait.as_secs().max(1),
                THROTTLED_INCIDENT_EVERY.as_secs()
            );
            self.incidents
                .record_refusal(IncidentKind::Throttled, name, source, None, |_| detail)
                .await?;
        }
        Ok(())
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
