//! What the workspace's test crates share (a dev-dependency only).
//!
//! A test that needs something the machine may lack (a Debian tool, a
//! Docker engine) asks [`require`]. Under CI (`CI=true`) a missing one fails
//! the test with how to get it, so CI cannot pass by skipping. Elsewhere the
//! test is skipped: a `SKIPPED` line on stderr, and, when `WAIFUS_SKIP_LOG`
//! names a file, a line there, which `.ci/run` prints with the suite's
//! totals (libtest hides the stderr of a test that passes).
//!
//! Also the parts every test crate needs around real processes: free
//! loopback ports, the workspace's binaries, a child process that never
//! outlives its test, one HTTP request as a client sends it ([`http`]),
//! and a throwaway PostgreSQL cluster ([`pg`]).

pub mod http;
pub mod pg;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// A loopback address with a port nothing listens on now (another
/// program may take it before the test does; tests bind soon after).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// The port of [`free_addr`].
pub fn free_port() -> u16 {
    free_addr().port()
}

/// A binary of the workspace (`orchestrator`, `link`), built beside the
/// running test's binary by `cargo test --workspace`.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/debug/deps/test-hash → target/debug/name
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/{profile}/deps")
        .join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run the suite with `cargo test --workspace`, which builds it",
        bin.display()
    );
    bin
}

/// A child process that is stopped when dropped (SIGTERM, then SIGKILL
/// after a grace, 10 s unless told otherwise), so a test that fails
/// half-way leaves nothing running.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    grace: Duration,
}

impl Proc {
    /// Starts `cmd` with no standard input.
    pub fn spawn(cmd: &mut Command) -> Proc {
        Proc::from_child(
            cmd.stdin(Stdio::null())
                .spawn()
                .expect("the process starts"),
        )
    }

    /// A child started otherwise.
    pub fn from_child(child: Child) -> Proc {
        Proc {
            child,
            grace: Duration::from_secs(10),
        }
    }

    /// Stopped with SIGKILL at once when dropped (a process whose own
    /// shutdown the test does not wait for).
    pub fn killed_when_dropped(mut self) -> Proc {
        self.grace = Duration::ZERO;
        self
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` (`-TERM`, `-KILL`, `-USR2`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(ok.success(), "kill {sig} {}", self.child.id());
    }

    /// Its exit code once it has exited, if it has.
    pub fn exited(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().ok().flatten().map(|s| s.code())
    }

    /// Waits (polling) until it exits by itself within `within`; its exit
    /// code. Panics if it is still running then.
    pub fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(code) = self.exited() {
                return code;
            }
            assert!(Instant::now() < deadline, "still running after {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within its grace; its
    /// exit code.
    pub fn stop(&mut self) -> Option<i32> {
        if let Some(code) = self.exited() {
            return code;
        }
        if !self.grace.is_zero() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Some(code) = self.exited() {
                return code;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_stopped_when_dropped() {
        let mut sleeper = Proc::spawn(Command::new("sleep").arg("600"));
        assert_eq!(sleeper.exited(), None);
        let pid = sleeper.id();
        drop(sleeper);
        // Reaped by the drop: no such process is left.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        let mut quick = Proc::spawn(&mut Command::new("true"));
        assert_eq!(quick.exit_code(Duration::from_secs(10)), Some(0));
    }

    #[test]
    fn the_name_is_the_binary_and_the_test() {
        assert_eq!(
            test_name(),
            "waifus_testkit::tests::the_name_is_the_binary_and_the_test"
        );
    }
}
