//! `CERT_DIR`: `{host}.crt` (chain, PEM) and `{host}.key` (PEM) pairs.
//!
//! The directory is polled every [`POLL`]; any change of a name, size or
//! modification time re-reads it. A pair that cannot be used (unreadable,
//! half-written, key not matching) is logged and the host keeps the
//! certificate it had, so replacing files in place never drops a working
//! certificate.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{CertMap, Certs, certified_key};

/// How often the directory is looked at.
pub(crate) const POLL: Duration = Duration::from_secs(2);

/// What the directory looked like: file names with size and mtime.
type Snapshot = Vec<(String, u64, Option<SystemTime>)>;

/// Reads the directory once; fails only when it cannot be listed.
pub(crate) fn check_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::read_dir(dir).map(drop)
}

/// Loads the directory into `certs` now, then returns the task that keeps
/// them in step with it until `shutdown`.
pub(crate) fn watch(
    dir: std::path::PathBuf,
    certs: Arc<Certs>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let mut seen = snapshot(&dir).ok();
    let mut current = load(&dir, &CertMap::new());
    certs.set_files(current.clone());
    async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(POLL) => {}
            }
            match snapshot(&dir) {
                Ok(now) if seen.as_ref() != Some(&now) => {
                    current = load(&dir, &current);
                    certs.set_files(current.clone());
                    seen = Some(now);
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "cannot read CERT_DIR; keeping the certificates loaded");
                }
            }
        }
    }
}

fn snapshot(dir: &Path) -> std::io::Result<Snapshot> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.ends_with(".crt") || name.ends_with(".key")) {
            continue;
        }
        // Follows symlinks, as Kubernetes secret mounts use them.
        let meta = std::fs::metadata(entry.path());
        let (len, modified) = meta.map_or((0, None), |m| (m.len(), m.modified().ok()));
        files.push((name, len, modified));
    }
    files.sort();
    Ok(files)
}

/// Loads every usable pair; a host whose new pair is unusable keeps its
/// entry from `previous`. Hosts whose files are gone are dropped.
fn load(dir: &Path, previous: &CertMap) -> CertMap {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return previous.clone();
    };
    let mut loaded = HashMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(host) = name.strip_suffix(".crt") else {
            continue;
        };
        let host = host.to_ascii_lowercase();
        if !is_host_pattern(&host) {
            warn!(file = %name, "CERT_DIR: ignoring a file not named {{host}}.crt");
            continue;
        }
        let key_path = dir.join(format!("{}.key", &name[..name.len() - 4]));
        let pair = std::fs::read(entry.path())
            .and_then(|crt| Ok((crt, std::fs::read(&key_path)?)))
            .map_err(|e| e.to_string())
            .and_then(|(crt, key)| certified_key(&crt, &key));
        match pair {
            Ok(key) => {
                if !previous
                    .get(&host)
                    .is_some_and(|p| p.cert.first() == key.cert.first())
                {
                    info!(%host, "certificate loaded from CERT_DIR");
                }
                loaded.insert(host, key);
            }
            Err(e) => {
                warn!(%host, file = %name, error = %e, "CERT_DIR: cannot use this certificate");
                if let Some(old) = previous.get(&host) {
                    loaded.insert(host, old.clone());
                }
            }
        }
    }
    loaded
}

/// `example.com` or `*.example.com`, lowercase.
fn is_host_pattern(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(host: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn pairs_are_loaded_and_bad_ones_keep_the_old() {
        let dir = std::env::temp_dir().join(format!("waifus-certdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (crt, key) = pair("a.example.com");
        std::fs::write(dir.join("A.example.com.crt"), &crt).unwrap();
        std::fs::write(dir.join("A.example.com.key"), &key).unwrap();
        let (wcrt, wkey) = pair("*.example.org");
        std::fs::write(dir.join("*.example.org.crt"), &wcrt).unwrap();
        std::fs::write(dir.join("*.example.org.key"), &wkey).unwrap();
        std::fs::write(dir.join("lonely.example.net.crt"), &crt).unwrap();
        std::fs::write(dir.join("bad name!.crt"), &crt).unwrap();
        std::fs::write(dir.join("notes.txt"), "x").unwrap();

        let first = load(&dir, &CertMap::new());
        let mut hosts: Vec<&str> = first.keys().map(String::as_str).collect();
        hosts.sort_unstable();
        assert_eq!(hosts, ["*.example.org", "a.example.com"]);

        // A half-replaced pair (new key, old certificate) keeps the old one.
        let (_, other_key) = pair("a.example.com");
        std::fs::write(dir.join("A.example.com.key"), &other_key).unwrap();
        let second = load(&dir, &first);
        assert!(Arc::ptr_eq(
            &second["a.example.com"],
            &first["a.example.com"]
        ));

        // Removed files drop the host.
        std::fs::remove_file(dir.join("*.example.org.crt")).unwrap();
        let third = load(&dir, &second);
        assert!(!third.contains_key("*.example.org"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn host_patterns() {
        for ok in ["example.com", "*.example.com", "localhost", "a-b.c"] {
            assert!(is_host_pattern(ok), "{ok}");
        }
        for bad in [
            "",
            "*.",
            "a..b",
            "bad name",
            "a.*.b",
            "../x",
            "ex_ample.com",
        ] {
            assert!(!is_host_pattern(bad), "{bad}");
        }
    }
}
