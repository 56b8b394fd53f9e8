//! Whose the cluster is: PostgreSQL refuses to run as root, so as root it
//! runs as the `postgres` user, in a place that user can reach.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::error::{ManagedError, io};

/// Where the cluster lives: `DATA_DIR/postgres`, unless PostgreSQL's user
/// cannot reach it (as root, with DATA_DIR under a private directory such as
/// `/root`): then `/var/lib/waifus/postgres-{hash of DATA_DIR}`, said in a
/// WARN line. Everything else stays in DATA_DIR.
pub(super) fn cluster_dir(
    data_dir: &Path,
    user: Option<(u32, u32)>,
) -> Result<PathBuf, ManagedError> {
    let preferred = data_dir.join("postgres");
    let Some((uid, gid)) = user else {
        return Ok(preferred);
    };
    let outside = data_dir
        .ancestors()
        .skip(1)
        .any(|dir| !searchable(dir, uid, gid));
    if !outside || preferred.join("PG_VERSION").exists() {
        return Ok(preferred);
    }
    let digest = <sha2::Sha256 as sha2::Digest>::digest(data_dir.as_os_str().as_encoded_bytes());
    let home = Path::new("/var/lib/waifus");
    create_dir(home, 0o711)?;
    let cluster = home.join(format!(
        "postgres-{}",
        &crate::private_file::hex(&digest)[..16]
    ));
    warn!(
        data_dir = %data_dir.display(),
        cluster = %cluster.display(),
        "the user postgres cannot reach DATA_DIR (a parent directory is private); \
         keeping the managed cluster outside it"
    );
    Ok(cluster)
}

/// Whether `uid`/`gid` may pass through `dir` (execute permission).
pub(super) fn searchable(dir: &Path, uid: u32, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return false;
    };
    let mode = meta.mode();
    if meta.uid() == uid {
        mode & 0o100 != 0
    } else if meta.gid() == gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// `None` to run PostgreSQL as ourselves; the `postgres` user's ids as root.
pub fn run_as() -> Result<Option<(u32, u32)>, ManagedError> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
    if uid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"postgres"))
        .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
        .map(Some)
        .ok_or(ManagedError::NoPostgresUser)
}

/// Creates `dir` (and its parents) with `mode`.
pub(super) fn create_dir(dir: &Path, mode: u32) -> Result<(), ManagedError> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(io("set permissions on", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_parents_are_detected() {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!("waifus-search-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&root).unwrap();
        let other = (54_321, 54_321);
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!searchable(&root, other.0, other.1));
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert!(searchable(&root, other.0, other.1));
        // Not root-specific: without another user, the preferred place is kept.
        assert_eq!(cluster_dir(&root, None).unwrap(), root.join("postgres"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
