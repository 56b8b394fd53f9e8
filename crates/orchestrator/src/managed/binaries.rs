//! Finding PostgreSQL's server programs, and running them as its user.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

/// The directory holding `initdb`, `postgres` and `pg_ctl`: on `PATH`, via
/// `pg_config --bindir`, or the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> Option<PathBuf> {
    find_bindir_in(
        std::env::var_os("PATH"),
        "pg_config",
        Path::new("/usr/lib/postgresql"),
    )
}

pub(super) fn find_bindir_in(
    path: Option<std::ffi::OsString>,
    pg_config: &str,
    lib: &Path,
) -> Option<PathBuf> {
    let complete = |d: &Path| {
        ["initdb", "postgres", "pg_ctl"]
            .iter()
            .all(|p| d.join(p).is_file())
    };
    let on_path = path
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|d| complete(d));
    if on_path.is_some() {
        return on_path;
    }
    let from_pg_config = std::process::Command::new(pg_config)
        .arg("--bindir")
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|d| complete(d));
    if from_pg_config.is_some() {
        return from_pg_config;
    }
    newest_installed(lib, complete)
}

/// The `bin` directory of the newest major version under `lib`
/// (`/usr/lib/postgresql/{major}/bin`) that is `complete`.
pub(crate) fn newest_installed(lib: &Path, complete: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let major = e
                .file_name()
                .to_string_lossy()
                .split('.')
                .next()?
                .parse()
                .ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, d)| complete(d))
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d)
}

/// A command for one of PostgreSQL's programs, as its user (`user`).
pub(super) fn command(path: PathBuf, user: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(path);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::managed::error::ManagedError;

    fn fake_bindir(root: &Path) -> PathBuf {
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for p in ["initdb", "postgres", "pg_ctl"] {
            std::fs::write(bin.join(p), "").unwrap();
        }
        bin
    }

    #[test]
    fn binaries_are_found_in_order_or_explained() {
        let root = std::env::temp_dir().join(format!("waifus-bindir-{}", fastrand::u64(..)));
        let nowhere = root.join("nowhere");
        assert_eq!(
            find_bindir_in(None, "/nonexistent/pg_config", &nowhere),
            None
        );

        // /usr/lib/postgresql/*/bin: the newest major version wins.
        let lib = root.join("lib");
        fake_bindir(&lib.join("9.6"));
        let newest = fake_bindir(&lib.join("16"));
        fake_bindir(&lib.join("15"));
        assert_eq!(
            find_bindir_in(None, "/nonexistent/pg_config", &lib),
            Some(newest)
        );

        // PATH comes first; a directory missing pg_ctl does not count.
        let on_path = fake_bindir(&root.join("path"));
        let partial = root.join("partial");
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(partial.join("initdb"), "").unwrap();
        let path = std::env::join_paths([&partial, &on_path]).unwrap();
        assert_eq!(
            find_bindir_in(Some(path), "/nonexistent/pg_config", &lib),
            Some(on_path)
        );
        std::fs::remove_dir_all(&root).unwrap();

        let message = ManagedError::NoBinaries.to_string();
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("DATABASE_URL"), "{message}");
    }
}
