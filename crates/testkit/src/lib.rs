//! What the workspace's test crates share (a dev-dependency only).
//!
//! A test that needs something the machine may lack (a Debian tool, a
//! Docker engine) asks [`require`]. Under CI (`CI=true`) a missing one fails
//! the test with how to get it, so CI cannot pass by skipping. Elsewhere the
//! test is skipped: a `SKIPPED` line on stderr, and, when `WAIFUS_SKIP_LOG`
//! names a file, a line there, which `.ci/run` prints with the suite's
//! totals (libtest hides the stderr of a test that passes).

use std::io::Write as _;

/// The variable naming the file skips are recorded in.
pub const SKIP_LOG: &str = "WAIFUS_SKIP_LOG";

/// Whether this run is CI (`CI=true` or `CI=1`).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether `what` is here (`present`). If not: under CI a panic saying
/// `how` to get it; elsewhere the skip is reported and `false` returned,
/// for the test to return early.
pub fn require(present: bool, what: &str, how: &str) -> bool {
    if !present {
        assert!(!ci(), "{what} is missing, and CI=true: {how}");
        skipped(&format!("{what} is missing ({how})"));
    }
    present
}

/// Reports that the calling test (or a part of it) did not run, and why.
pub fn skipped(why: &str) {
    let line = format!("{}: {why}", test_name());
    eprintln!("SKIPPED: {line}");
    let Some(path) = std::env::var_os(SKIP_LOG) else {
        return;
    };
    // One short write in append mode: lines of parallel tests stay whole.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        eprintln!(
            "could not record the skip in {}: {e}",
            path.to_string_lossy()
        );
    }
}

/// The running test as `binary::module::test`: libtest names each test's
/// thread after it; the binary's name is its file's, less cargo's hash.
fn test_name() -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|stem| match stem.rsplit_once('-') {
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
            _ => stem,
        })
        .unwrap_or_default();
    let thread = std::thread::current();
    format!("{binary}::{}", thread.name().unwrap_or("?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_the_binary_and_the_test() {
        assert_eq!(
            test_name(),
            "waifus_testkit::tests::the_name_is_the_binary_and_the_test"
        );
    }
}
