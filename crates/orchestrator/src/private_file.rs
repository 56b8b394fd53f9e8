//! Small files only this user may read (0600): the database password key,
//! the managed cluster's superuser password and port.
//!
//! One meaning everywhere: a file is created once, whole (written beside
//! it, synced, then linked into place, so no reader ever sees it empty or
//! half written, and of two processes creating it at once the first wins
//! and both read its contents); from then on it is only read. A file that
//! exists but cannot be read, or is empty, is an error: it is never
//! replaced, since what it held may already be in use. What goes in them
//! is made by [`random_secret`].

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a private file could not be read or created.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct FileError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The trimmed contents of `path`; when it does not exist, `make()`'s,
/// written there first (0600), or the contents of whoever created it at
/// the same moment.
pub(crate) fn read_or_create(
    path: &Path,
    make: impl FnOnce() -> std::io::Result<String>,
) -> Result<String, FileError> {
    let error = |what| {
        let path = path.to_owned();
        move |source| FileError { what, path, source }
    };
    match read(path) {
        Ok(Some(text)) => return Ok(text),
        Ok(None) => {}
        Err(e) => return Err(error("read")(e)),
    }
    let contents = make().map_err(error("make the contents of"))?;
    match create_new(path, &contents) {
        Ok(()) => Ok(contents.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(path)
            .and_then(|text| text.ok_or_else(|| std::io::ErrorKind::NotFound.into()))
            .map_err(error("read")),
        Err(e) => Err(error("create")(e)),
    }
}

/// The trimmed contents of `path`, `None` if there is no such file; an
/// empty file is an error.
pub(crate) fn read(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is empty; it is never replaced by itself: remove it if nothing uses it",
        )),
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates `path` (0600) holding `contents`, whole or not at all; fails
/// with `AlreadyExists` if it is there.
pub(crate) fn create_new(path: &Path, contents: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = path.with_file_name(format!(".{name}.{}.partial", fastrand::u64(..)));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        // A link never replaces an existing file: the first creator wins.
        std::fs::hard_link(&partial, path)
    })();
    let _ = std::fs::remove_file(&partial);
    written?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Bytes from the operating system's CSPRNG.
fn random_bytes<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out)?;
    Ok(out)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| {
            [
                HEX[usize::from(b >> 4)] as char,
                HEX[usize::from(b & 15)] as char,
            ]
        })
        .collect()
}

/// 32 random bytes in hex: a new secret, key or password.
pub(crate) fn random_secret() -> std::io::Result<String> {
    random_bytes::<32>()
        .map(|bytes| hex(&bytes))
        .map_err(|e| std::io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("waifus-private-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn created_once_private_then_only_read() {
        let dir = dir();
        let path = dir.join("sub/secret");
        let made = read_or_create(&path, || Ok("first\n".to_owned())).unwrap();
        assert_eq!(made, "first");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = read_or_create(&path, || panic!("never made again")).unwrap();
        assert_eq!(again, "first");
        // No partial file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.join("sub")).unwrap().collect();
        assert_eq!(names.len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn empty_or_unreadable_files_are_errors_and_kept() {
        let dir = dir();
        let empty = dir.join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let e = read_or_create(&empty, || Ok("new".to_owned())).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        assert_eq!(std::fs::read_to_string(&empty).unwrap(), " \n");
        // A directory where the file should be cannot be read as one.
        let unreadable = dir.join("unreadable");
        std::fs::create_dir(&unreadable).unwrap();
        assert!(read_or_create(&unreadable, || Ok("new".to_owned())).is_err());
        assert!(unreadable.is_dir());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn of_many_creating_at_once_the_first_wins_for_all() {
        let dir = dir();
        let path = dir.join("raced");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(16));
        let got: Vec<String> = (0..16)
            .map(|i| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    read_or_create(&path, || Ok(format!("made by {i}"))).unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let stored = std::fs::read_to_string(&path).unwrap();
        assert!(got.iter().all(|g| *g == stored), "{got:?} vs {stored}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
