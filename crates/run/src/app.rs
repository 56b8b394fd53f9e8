//! The app: started in a process group of its own (a Ctrl-C at a terminal
//! reaches `waifu-run` only, which drains before passing it on), reaped
//! (with every orphan when `waifu-run` is a container's first process),
//! signalled, and its end turned into an exit status.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};
use tokio::signal::unix::{Signal as Stream, SignalKind, signal};
use tracing::warn;

/// How the app ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It exited with this code.
    Exited(i32),
    /// A signal ended it.
    Killed(i32),
}

impl Ended {
    fn from_status(status: WaitStatus) -> Ended {
        match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => Ended::Exited(code),
            (None, Some(signal)) => Ended::Killed(signal),
            // Stopped or continued: not reported without WUNTRACED.
            (None, None) => Ended::Exited(1),
        }
    }

    /// The status `waifu-run` exits with: the app's code, or 128 + the
    /// signal as shells report it, except that an app ended by the SIGTERM
    /// `waifu-run` passed on after draining stopped as asked: 0.
    pub(crate) fn exit_code(self, asked_to_stop: bool) -> i32 {
        match self {
            Ended::Exited(code) => code,
            Ended::Killed(s) if asked_to_stop && s == Signal::TERM.as_raw() => 0,
            Ended::Killed(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(code) => write!(f, "exit status {code}"),
            Ended::Killed(signal) => write!(f, "signal {signal}"),
        }
    }
}

/// The running app.
#[derive(Debug)]
pub(crate) struct App {
    pid: Pid,
    /// SIGCHLD: some child changed state.
    children: Stream,
    ended: Option<Ended>,
}

/// Why the app could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpawnError {
    #[error("could not watch for the app's end: {0}")]
    Watch(std::io::Error),
    #[error("could not start {command:?}: {source}")]
    Start {
        command: OsString,
        #[source]
        source: std::io::Error,
    },
}

impl SpawnError {
    /// The status a shell gives for the same failure: 127 not found, 126
    /// found but not runnable.
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            SpawnError::Start { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                127
            }
            SpawnError::Start { .. } => 126,
            SpawnError::Watch(_) => 1,
        }
    }
}

impl App {
    /// Starts `command` with `env` changes (`None` removes a variable).
    pub(crate) fn spawn(
        command: &[OsString],
        env: &[(String, Option<String>)],
    ) -> Result<App, SpawnError> {
        // Listen before starting, so its end cannot be missed.
        let children = signal(SignalKind::child()).map_err(SpawnError::Watch)?;
        let mut cmd = std::process::Command::new(&command[0]);
        cmd.args(&command[1..]).process_group(0);
        for (key, value) in env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        let child = cmd.spawn().map_err(|source| SpawnError::Start {
            command: command[0].clone(),
            source,
        })?;
        Ok(App {
            pid: Pid::from_child(&child),
            children,
            ended: None,
        })
    }

    /// Waits until the app has ended, reaping every child that ends
    /// meanwhile.
    pub(crate) async fn ended(&mut self) -> Ended {
        loop {
            if let Some(ended) = self.reap() {
                return ended;
            }
            if self.children.recv().await.is_none() {
                // No more signals can come: poll instead.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Reaps the app if it has ended, and as the first process of a
    /// container (where orphans become ours) every other child that has;
    /// the app's end once it has.
    fn reap(&mut self) -> Option<Ended> {
        let orphans_are_ours = std::process::id() == 1;
        while self.ended.is_none() {
            // `waitpid(None)` would be only our own process group, which the
            // app is not in: any child is `wait`.
            let reaped = if orphans_are_ours {
                rustix::process::wait(WaitOptions::NOHANG)
            } else {
                rustix::process::waitpid(Some(self.pid), WaitOptions::NOHANG)
            };
            match reaped {
                Ok(Some((pid, status))) if pid == self.pid => {
                    self.ended = Some(Ended::from_status(status));
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    // ECHILD: nothing left to wait for, so the app is gone.
                    warn!(error = %e, "waiting for the app failed");
                    self.ended = Some(Ended::Exited(1));
                }
            }
        }
        self.ended
    }

    /// Sends `signal` to the app (not to its own children: it passes it on
    /// as it does when run by hand).
    pub(crate) fn signal(&self, signal: Signal) {
        if self.ended.is_none()
            && let Err(e) = rustix::process::kill_process(self.pid, signal)
        {
            warn!(error = %e, "could not signal the app");
        }
    }

    /// Asks the app to stop (SIGTERM) and waits; after `kill_after` it is
    /// killed (SIGKILL).
    pub(crate) async fn stop(&mut self, kill_after: Duration) -> Ended {
        self.signal(Signal::TERM);
        match tokio::time::timeout(kill_after, self.ended()).await {
            Ok(ended) => ended,
            Err(_) => {
                warn!(within = ?kill_after, "the app did not stop after SIGTERM: killing it");
                self.signal(Signal::KILL);
                self.ended().await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(script: &str) -> App {
        App::spawn(&["sh".into(), "-c".into(), script.into()], &[]).unwrap()
    }

    #[tokio::test]
    async fn its_end_is_its_status() {
        assert_eq!(run("exit 3").ended().await, Ended::Exited(3));
        let mut app = run("exec sleep 30");
        app.signal(Signal::KILL);
        let ended = app.ended().await;
        assert_eq!(ended, Ended::Killed(9));
        assert_eq!(ended.exit_code(true), 137);
    }

    #[tokio::test]
    async fn a_sigterm_passed_on_is_a_clean_stop_only_when_asked() {
        let mut app = run("exec sleep 30");
        let ended = app.stop(Duration::from_secs(10)).await;
        assert_eq!(ended, Ended::Killed(15));
        assert_eq!(ended.exit_code(true), 0);
        assert_eq!(ended.exit_code(false), 143);
    }

    #[tokio::test]
    async fn an_app_that_ignores_sigterm_is_killed() {
        let ready = std::env::temp_dir().join(format!("waifu-run-trap-{}", std::process::id()));
        let _ = std::fs::remove_file(&ready);
        let mut app = run(&format!(
            "trap '' TERM; touch {}; sleep 30 & wait; wait",
            ready.display()
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the script never started"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = std::fs::remove_file(&ready);
        let ended = app.stop(Duration::from_millis(300)).await;
        assert_eq!(ended, Ended::Killed(9));
    }

    #[test]
    fn a_missing_program_is_127_as_in_a_shell() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let e = App::spawn(&["/nonexistent/app".into()], &[]).unwrap_err();
        assert_eq!(e.exit_code(), 127, "{e}");
        let e = App::spawn(&["/".into()], &[]).unwrap_err();
        assert_eq!(e.exit_code(), 126, "{e}");
    }
}
