//! TLS 1.3 session tickets every replica can open: AES-256-GCM under keys
//! kept in the state database ([`crate::store::tickets`]), the newest for
//! new tickets, every kept one for returning clients. A client that
//! resumes skips the certificate signature and key exchange of a full
//! handshake, on whichever orchestrator it reaches.
//!
//! A ticket is `key id (4 bytes) ‖ nonce (12) ‖ sealed session (+16)`. Keys
//! rotate every [`ROTATE_AFTER`] and are kept [`KEEP`], longer than a
//! ticket lives ([`LIFETIME`]). Until the store has answered once, tickets
//! are sealed under a key of this process alone.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::store::Store;

/// A new key every 12 hours ...
pub(crate) const ROTATE_AFTER: Duration = Duration::from_secs(12 * 3600);
/// ... kept 36 hours: every ticket issued under it has expired by then.
pub(crate) const KEEP: Duration = Duration::from_secs(36 * 3600);
/// How long a client may use a ticket (seconds), as rustls's own ticketer.
const LIFETIME: u32 = 24 * 3600;
/// How often each orchestrator reads the keys (and rotates them when due).
const REFRESH_EVERY: Duration = Duration::from_secs(60);

/// The keys in use, newest first.
struct Keys(Vec<(u32, LessSafeKey)>);

/// Seals and opens tickets; shared by every TLS connection of this process.
pub(crate) struct SharedTickets {
    keys: ArcSwap<Keys>,
    random: SystemRandom,
}

impl std::fmt::Debug for SharedTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTickets")
            .field("keys", &self.keys.load().0.len())
            .finish()
    }
}

fn key_of(bytes: &[u8]) -> Option<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .ok()
        .map(LessSafeKey::new)
}

impl SharedTickets {
    /// Tickets under a key of this process until [`SharedTickets::set`].
    pub(crate) fn new() -> Arc<SharedTickets> {
        let random = SystemRandom::new();
        let mut own = [0u8; 32];
        let keys = match random.fill(&mut own).ok().and_then(|()| key_of(&own)) {
            // Id 0 is never a stored key's (they count from 1).
            Some(key) => vec![(0, key)],
            None => Vec::new(),
        };
        Arc::new(SharedTickets {
            keys: ArcSwap::from_pointee(Keys(keys)),
            random,
        })
    }

    /// Uses `keys` (newest first) from now on.
    fn set(&self, keys: &[crate::store::tickets::TicketKey]) {
        let keys = keys
            .iter()
            .filter_map(|k| Some((u32::try_from(k.id).ok()?, key_of(&k.key)?)))
            .collect();
        self.keys.store(Arc::new(Keys(keys)));
    }

    /// A fresh candidate key for the next rotation.
    fn candidate(&self) -> Option<[u8; 32]> {
        let mut key = [0u8; 32];
        self.random.fill(&mut key).ok()?;
        Some(key)
    }

    /// Keeps the keys current from the store until `shutdown`: at once,
    /// then every [`REFRESH_EVERY`].
    pub(crate) async fn follow(self: Arc<Self>, store: Store, shutdown: CancellationToken) {
        loop {
            if let Some(candidate) = self.candidate() {
                match store.ticket_keys(&candidate, ROTATE_AFTER, KEEP).await {
                    Ok(keys) if !keys.is_empty() => self.set(&keys),
                    Ok(_) => {}
                    Err(e) => debug!(error = %e, "TLS ticket keys cannot be read now"),
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(REFRESH_EVERY) => {}
            }
        }
    }
}

impl rustls::server::ProducesTickets for SharedTickets {
    fn enabled(&self) -> bool {
        !self.keys.load().0.is_empty()
    }

    fn lifetime(&self) -> u32 {
        LIFETIME
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.load();
        let (id, key) = keys.0.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(4 + NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(id.to_be_bytes()),
            &mut sealed,
        )
        .map_err(|_| warn!("a TLS ticket could not be sealed"))
        .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let (id, rest) = ticket.split_first_chunk::<4>()?;
        let (nonce, sealed) = rest.split_first_chunk::<NONCE_LEN>()?;
        let id = u32::from_be_bytes(*id);
        let keys = self.keys.load();
        let (_, key) = keys.0.iter().find(|(k, _)| *k == id)?;
        let mut opened = sealed.to_vec();
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(id.to_be_bytes()),
                &mut opened,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use rustls::server::ProducesTickets;

    use super::*;
    use crate::store::tickets::TicketKey;

    fn key(id: i32, fill: u8) -> TicketKey {
        TicketKey {
            id,
            key: vec![fill; 32],
        }
    }

    #[test]
    fn a_ticket_opens_wherever_its_key_is_kept_and_nowhere_else() {
        let a = SharedTickets::new();
        let b = SharedTickets::new();
        // Before the store answered: each process its own key.
        let own = a.encrypt(b"session").unwrap();
        assert_eq!(a.decrypt(&own).as_deref(), Some(&b"session"[..]));
        assert_eq!(b.decrypt(&own), None);
        // The same stored keys: one replica's ticket opens on the other.
        for t in [&a, &b] {
            t.set(&[key(2, 7), key(1, 3)]);
        }
        let ticket = a.encrypt(b"session").unwrap();
        assert_eq!(&ticket[..4], &2u32.to_be_bytes());
        assert_eq!(b.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
        // Rotated: the old key still opens, a dropped one does not.
        b.set(&[key(3, 9), key(2, 7)]);
        assert_eq!(b.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
        b.set(&[key(4, 1), key(3, 9)]);
        assert_eq!(b.decrypt(&ticket), None);
        // Tampered, truncated, or of an unknown key: nothing.
        a.set(&[key(2, 7)]);
        let mut bent = ticket.clone();
        *bent.last_mut().unwrap() ^= 1;
        assert_eq!(a.decrypt(&bent), None);
        assert_eq!(a.decrypt(&ticket[..10]), None);
        assert_eq!(a.decrypt(&[]), None);
        let mut other = ticket.clone();
        other[..4].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(a.decrypt(&other), None);
    }
}
