//! Replacing the orchestrator process without losing a connection.
//!
//! On `SIGUSR2` (or `orchestrator upgrade`) the running process starts the
//! binary at its own path again, with its own arguments and environment,
//! and hands it its listening sockets: over a socket pair that is the new
//! process's standard input, as `SCM_RIGHTS`, each with its name. The new
//! process loads its state and serves the same sockets (for a moment both
//! accept), then says `ready` on that socket. Only then does the old one
//! stop accepting and drain as on `SIGTERM`, leaving the managed PostgreSQL
//! running: the new one adopted it. A new process that exits, or is not
//! ready within [`READY_WITHIN`], is stopped; the old one goes on serving
//! and logs why.
//!
//! Under systemd (`NOTIFY_SOCKET`), a ready process says `READY=1` with its
//! `MAINPID`, so the unit follows the new process (`Type=notify`,
//! `NotifyAccess=all`); the sockets of a `.socket` unit (`LISTEN_FDS`,
//! `LISTEN_FDNAMES`) are taken at start, so a restart loses no connection
//! either.

use std::ffi::OsString;
use std::io::{IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::AsyncReadExt;

/// Set in a new process's environment: its standard input is the socket
/// its predecessor hands the listeners over.
pub const HANDOVER_ENV: &str = "WAIFUS_HANDOVER";

/// The names of the listeners, in a handover and in `LISTEN_FDNAMES`.
pub const PUBLIC: &str = "public";
pub const INTERNAL: &str = "internal";
pub const HTTPS: &str = "https";

/// The internal API's endpoint that asks for an upgrade, as `SIGUSR2` does.
pub const API_PATH: &str = "/__internal/admin/upgrade";

/// How long a new process may take to load its state and serve.
pub const READY_WITHIN: Duration = Duration::from_secs(90);

/// What a new process says once it serves.
const READY: &[u8] = b"ready\n";

/// Why an upgrade did not happen (the old process goes on serving).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("could not start {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not hand the listening sockets over: {0}")]
    Send(#[source] std::io::Error),
    #[error("the new orchestrator exited ({0}) before it was ready; its log says why")]
    Exited(ExitStatus),
    #[error(
        "the new orchestrator was not ready within {} s, so it was stopped",
        READY_WITHIN.as_secs()
    )]
    NotReady,
    #[error("an upgrade is under way already")]
    Busy,
    #[error("this orchestrator is not a process of its own that can start again")]
    NotAProcess,
    #[error("the orchestrator is stopping")]
    Stopping,
    #[error(
        "this orchestrator is process 1 (a container's): when it exits, the \
         container stops and the new process with it; start a new container instead"
    )]
    FirstProcess,
    #[error("the handover from the previous orchestrator failed: {0}")]
    Receive(#[source] std::io::Error),
    #[error("the previous orchestrator handed over {0}")]
    BadHandover(String),
}

/// How to start this program again: its path and arguments (the
/// environment is inherited).
#[derive(Debug, Clone)]
pub struct Relaunch {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

/// An upgrade asked for through the API: the successor's process id, or
/// why there is none.
pub(crate) type Ask = tokio::sync::oneshot::Sender<Result<u32, String>>;
/// Where upgrades are asked for.
pub(crate) type Asks = tokio::sync::mpsc::Sender<Ask>;

/// Everything an upgrade needs, owned by the task that makes them.
#[derive(Debug)]
pub(crate) struct Upgrader {
    pub relaunch: Relaunch,
    /// Copies of the listening sockets, by name.
    pub sockets: Vec<(&'static str, OwnedFd)>,
    /// Set once a successor serves: the managed PostgreSQL is its now.
    pub handed_over: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Upgrader {
    /// Upgrades on `SIGUSR2` and on each ask, one at a time, until one
    /// succeeds (then cancels `shutdown`: this process drains and stops)
    /// or `shutdown`.
    pub(crate) async fn run(
        self,
        mut asks: tokio::sync::mpsc::Receiver<Ask>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut usr2 = match signal(SignalKind::user_defined2()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "SIGUSR2 cannot start upgrades");
                None
            }
        };
        loop {
            let reply = tokio::select! {
                () = shutdown.cancelled() => return,
                Some(()) = async { usr2.as_mut()?.recv().await } => None,
                Some(ask) = asks.recv() => Some(ask),
            };
            tracing::info!(exe = %self.relaunch.exe.display(), "upgrade: starting a new orchestrator with the listening sockets");
            let sockets: Vec<(&'static str, BorrowedFd<'_>)> = self
                .sockets
                .iter()
                .map(|(name, fd)| (*name, fd.as_fd()))
                .collect();
            let outcome = start_successor(&self.relaunch, &sockets).await;
            match &outcome {
                Ok(pid) => {
                    tracing::info!(
                        successor = pid,
                        "upgrade: the new orchestrator serves; this one stops accepting and drains"
                    );
                    self.handed_over
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                Err(e) => {
                    tracing::error!(error = %e, "upgrade failed: this orchestrator goes on serving");
                }
            }
            let done = outcome.is_ok();
            if let Some(reply) = reply {
                let _ = reply.send(outcome.map_err(|e| e.to_string()));
            }
            if done {
                shutdown.cancel();
                return;
            }
        }
    }
}

/// Writes this process's id to `file` (`DATA_DIR/orchestrator.pid`), for
/// `kill -USR2 $(cat …)`; a failure is only logged (`DATA_DIR` may be
/// read-only).
pub(crate) fn write_pid_file(file: &std::path::Path) {
    let tmp = file.with_extension("pid.tmp");
    let written = std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .and_then(|()| std::fs::rename(&tmp, file));
    if let Err(e) = written {
        tracing::debug!(file = %file.display(), error = %e, "no pid file");
    }
}

/// Removes `file` if it still names this process (a successor's stays).
pub(crate) fn remove_pid_file(file: &std::path::Path) {
    let ours = std::fs::read_to_string(file)
        .is_ok_and(|text| text.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(file);
    }
}

/// Starts the successor with `sockets` (each with its name) and waits until
/// it serves; its process id. The successor is stopped if it is not ready
/// in time.
pub(crate) async fn start_successor(
    relaunch: &Relaunch,
    sockets: &[(&'static str, BorrowedFd<'_>)],
) -> Result<u32, UpgradeError> {
    if std::process::id() == 1 {
        return Err(UpgradeError::FirstProcess);
    }
    let (ours, theirs) = UnixStream::pair().map_err(UpgradeError::Send)?;
    let mut child = tokio::process::Command::new(&relaunch.exe)
        .args(&relaunch.args)
        .env(HANDOVER_ENV, "1")
        // Sockets systemd gave this process are handed over like the others.
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .spawn()
        .map_err(|source| UpgradeError::Spawn {
            exe: relaunch.exe.clone(),
            source,
        })?;
    let pid = child.id().unwrap_or(0);
    if let Err(e) = send(&ours, sockets) {
        // Most likely it exited already (it closed its end): say so.
        if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
            return Err(UpgradeError::Exited(status));
        }
        let _ = child.kill().await;
        return Err(UpgradeError::Send(e));
    }
    ours.set_nonblocking(true).map_err(UpgradeError::Send)?;
    let mut ours = tokio::net::UnixStream::from_std(ours).map_err(UpgradeError::Send)?;
    let mut said = [0u8; READY.len()];
    let waited = tokio::time::timeout(READY_WITHIN, async {
        tokio::select! {
            read = ours.read_exact(&mut said) => match read {
                Ok(_) if said == READY => Ok(()),
                // It closed the socket: it is exiting.
                _ => Err(UpgradeError::Exited(child.wait().await.map_err(UpgradeError::Send)?)),
            },
            status = child.wait() => Err(UpgradeError::Exited(status.map_err(UpgradeError::Send)?)),
        }
    })
    .await;
    match waited {
        Ok(Ok(())) => Ok(pid),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let _ = child.kill().await;
            Err(UpgradeError::NotReady)
        }
    }
}

/// Sends the sockets' names (comma-separated) and the sockets themselves.
fn send(to: &UnixStream, sockets: &[(&'static str, BorrowedFd<'_>)]) -> std::io::Result<()> {
    let names = sockets
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(",");
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| *fd).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("too many sockets"));
    }
    rustix::net::sendmsg(
        to,
        &[IoSlice::new(names.as_bytes())],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// In a new process: the predecessor that handed the listeners over,
/// waiting to hear that this one serves.
#[derive(Debug)]
pub struct Predecessor {
    channel: UnixStream,
}

impl Predecessor {
    /// Says this process serves: the predecessor stops accepting and drains.
    pub fn ready(mut self) {
        if let Err(e) = self.channel.write_all(READY) {
            tracing::warn!(error = %e, "could not tell the previous orchestrator that this one serves");
        }
    }
}

/// In a new process: the listeners on standard input, by name, and the
/// predecessor to tell once this process serves.
pub fn receive() -> Result<(Vec<(String, std::net::TcpListener)>, Predecessor), UpgradeError> {
    let channel = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(UpgradeError::Receive)?;
    let mut names = [0u8; 256];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        &channel,
        &mut [IoSliceMut::new(&mut names)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| UpgradeError::Receive(e.into()))?;
    let fds: Vec<OwnedFd> = control
        .drain()
        .filter_map(|message| match message {
            RecvAncillaryMessage::ScmRights(fds) => Some(fds.collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    let names = std::str::from_utf8(&names[..received.bytes])
        .map_err(|_| UpgradeError::BadHandover("names that are not text".into()))?;
    let names: Vec<&str> = names.split(',').filter(|n| !n.is_empty()).collect();
    if names.is_empty() || names.len() != fds.len() {
        return Err(UpgradeError::BadHandover(format!(
            "{} socket(s) for the names {names:?}",
            fds.len()
        )));
    }
    let listeners = names
        .into_iter()
        .zip(fds)
        .map(|(name, fd)| (name.to_owned(), std::net::TcpListener::from(fd)))
        .collect();
    Ok((
        listeners,
        Predecessor {
            channel: UnixStream::from(channel),
        },
    ))
}

/// Tells systemd (`NOTIFY_SOCKET`, a path or an `@` abstract name) that
/// this process is ready and is the unit's main process. Nothing without
/// one.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<OsString>,
}

impl Notifier {
    pub fn new(socket: Option<OsString>) -> Notifier {
        Notifier {
            socket: socket.filter(|s| !s.is_empty()),
        }
    }

    /// `READY=1` and `MAINPID`.
    pub(crate) fn ready(&self) {
        self.say(&format!("MAINPID={}\nREADY=1\n", std::process::id()));
    }

    /// `STOPPING=1`.
    pub(crate) fn stopping(&self) {
        self.say("STOPPING=1\n");
    }

    fn say(&self, message: &str) {
        let Some(socket) = &self.socket else { return };
        let sent = UnixDatagram::unbound().and_then(|d| {
            let bytes = socket.as_encoded_bytes();
            match bytes.strip_prefix(b"@") {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                    d.send_to_addr(message.as_bytes(), &addr)
                }
                None => d.send_to(message.as_bytes(), socket),
            }
        });
        if let Err(e) = sent {
            tracing::warn!(error = %e, "could not notify systemd");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_and_their_names_cross_a_socket_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let public = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let internal = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        send(
            &a,
            &[(PUBLIC, public.as_fd()), (INTERNAL, internal.as_fd())],
        )
        .unwrap();
        let mut names = [0u8; 64];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &b,
            &mut [IoSliceMut::new(&mut names)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .unwrap();
        assert_eq!(&names[..got.bytes], b"public,internal");
        let fds: Vec<OwnedFd> = control
            .drain()
            .filter_map(|m| match m {
                RecvAncillaryMessage::ScmRights(fds) => Some(fds.collect::<Vec<_>>()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(fds.len(), 2);
        // The same sockets: the received one accepts what the first listens to.
        let received = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(received.local_addr().unwrap(), public.local_addr().unwrap());
        let _client = std::net::TcpStream::connect(public.local_addr().unwrap()).unwrap();
        assert!(received.accept().is_ok());
    }

    #[test]
    fn systemd_hears_ready_with_the_main_pid() {
        let dir = std::env::temp_dir().join(format!("waifus-notify-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        Notifier::new(Some(path.clone().into_os_string())).ready();
        let mut buf = [0u8; 128];
        let n = listener.recv(&mut buf).unwrap();
        let said = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(said.contains("READY=1"), "{said}");
        assert!(
            said.contains(&format!("MAINPID={}", std::process::id())),
            "{said}"
        );
        // Without a socket: nothing, and no error.
        Notifier::new(None).ready();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
