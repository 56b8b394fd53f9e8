//! Secrets and passwords of waifu databases.
//!
//! - A waifu's secret is stored only as an Argon2id PHC string with OWASP's
//!   parameters (19 MiB, t=2, p=1), made and checked by [`super::hasher`].
//! - Its database password is *derived*, never stored: HMAC-SHA256 under a
//!   256-bit key kept in `DATA_DIR/db-password.key` (0600), over the waifu's
//!   name and secret. Nothing in PostgreSQL can be decrypted into a password,
//!   the key alone yields nothing without each waifu's secret, and a later call
//!   with the right secret recomputes the identical answer. PostgreSQL only
//!   ever receives a SCRAM-SHA-256 verifier of it.
//!
//! Why a keyed KDF rather than AES-GCM: there is no ciphertext to store,
//! rotate or lose in sync with the key, and no nonce to manage. If the key is
//! replaced, the next verified call notices (by its id) and sets the role's
//! verifier from the new derivation.

use std::path::Path;

use crate::private_file::{hex, random_secret};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why the password key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("could not read or create the database password key: {0}")]
    File(#[from] crate::private_file::FileError),
    #[error("could not read the database password key {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the database password key {0} is not 64 hex digits")]
    Malformed(std::path::PathBuf),
}

/// The key passwords are derived under.
#[derive(Clone)]
pub(crate) struct PasswordKey {
    key: [u8; 32],
    /// Short public fingerprint, stored beside each verifier.
    id: String,
}

impl std::fmt::Debug for PasswordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordKey").field("id", &self.id).finish()
    }
}

impl PasswordKey {
    /// Loads the key file, creating it (0600, 32 random bytes) if missing.
    pub(crate) fn load_or_create(path: &Path) -> Result<PasswordKey, KeyError> {
        let text = crate::private_file::read_or_create(path, random_secret)?;
        from_hex(&text)
            .map(PasswordKey::from_bytes)
            .ok_or_else(|| KeyError::Malformed(path.to_owned()))
    }

    /// The key at `path`, which must exist (a command that works beside
    /// a running orchestrator must never make another key).
    pub(crate) fn load(path: &Path) -> Result<PasswordKey, KeyError> {
        let text = crate::private_file::read(path)
            .and_then(|text| text.ok_or_else(|| std::io::ErrorKind::NotFound.into()))
            .map_err(|source| KeyError::Io {
                path: path.to_owned(),
                source,
            })?;
        from_hex(&text)
            .map(PasswordKey::from_bytes)
            .ok_or_else(|| KeyError::Malformed(path.to_owned()))
    }

    pub(crate) fn from_bytes(key: [u8; 32]) -> PasswordKey {
        let id = hex(&mac(&key, &[b"waifus/v1/key-id"]))[..16].to_owned();
        PasswordKey { key, id }
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The database password of `name` holding `secret`: 32 pseudo-random
    /// bytes, hex-encoded.
    pub(crate) fn password(&self, name: &str, secret: &str) -> String {
        hex(&mac(
            &self.key,
            &[b"waifus/v1/db-password", name.as_bytes(), secret.as_bytes()],
        ))
    }
}

/// HMAC over length-prefixed parts, so no two part lists collide.
fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        m.update(&(part.len() as u64).to_be_bytes());
        m.update(part);
    }
    m.finalize().into_bytes().into()
}

fn from_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_stable_and_separated() {
        let k = PasswordKey::from_bytes([7; 32]);
        let p = k.password("link", "s3cret");
        assert_eq!(p.len(), 64);
        assert_eq!(p, k.password("link", "s3cret"));
        assert_ne!(p, k.password("link", "s3creT"));
        assert_ne!(p, k.password("linK", "s3cret"));
        // Length prefixes: moving a byte between name and secret changes it.
        assert_ne!(k.password("ab", "c"), k.password("a", "bc"));
        assert_ne!(
            p,
            PasswordKey::from_bytes([8; 32]).password("link", "s3cret")
        );
        assert_eq!(k.id().len(), 16);
        assert!(!format!("{k:?}").contains(&hex(&[7; 32])));
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("waifus-key-{}", fastrand::u64(..)));
        let path = dir.join("db-password.key");
        let k1 = PasswordKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let k2 = PasswordKey::load_or_create(&path).unwrap();
        assert_eq!(k1.id(), k2.id());
        assert_eq!(k1.password("a", "b"), k2.password("a", "b"));
        std::fs::write(&path, "zz").unwrap();
        assert!(matches!(
            PasswordKey::load_or_create(&path),
            Err(KeyError::Malformed(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
