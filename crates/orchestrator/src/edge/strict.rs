//! The client's socket, checked: every HTTP/1 request passes the strict
//! [`Checker`] before hyper or the fast path parses it.
//!
//! [`Strict`] hands its reader only bytes of messages that passed, holding
//! back an incomplete head until it is whole. On a violation its reader sees
//! the end of the stream after the last good message. A violation between
//! messages is a request of its own: once the messages before it are
//! answered and the connection is shut down, the checker's `400` is written
//! and the connection closed. A violation inside a body belongs to a request
//! already being served: its body ends in an error, the proxy gives it its
//! one answer (`400`, or a cut connection if its response had begun), and
//! nothing more is written.
//!
//! Two things end the checks for a connection: an HTTP/2 prior-knowledge
//! preface (hyper's h2 codec is strict on its own), and a `101` the proxy
//! actually relayed ([`crate::proxy::Via::switched`]), after which the bytes
//! are a WebSocket tunnel's. An upgrade request alone changes nothing: if the
//! waifu refuses it, the connection carries on as HTTP/1.1 and every later
//! request is checked.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use waifus_http1::check::{Checker, Violation};
use waifus_http1::limits::MAX_HEAD;

/// A client connection [`Strict`] can wrap.
pub(crate) trait Socket: AsyncRead + AsyncWrite + Unpin {
    /// Writes what it can of `buf` without waiting (used when dropped).
    fn write_now(&mut self, buf: &[u8]);
}

impl Socket for TcpStream {
    fn write_now(&mut self, buf: &[u8]) {
        let _ = self.try_write(buf);
    }
}

impl Socket for tokio_rustls::server::TlsStream<TcpStream> {
    fn write_now(&mut self, buf: &[u8]) {
        use std::io::Write;
        let (tcp, tls) = self.get_mut();
        if tls.writer().write_all(buf).is_err() {
            return;
        }
        struct Now<'a>(&'a TcpStream);
        impl Write for Now<'_> {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.try_write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        while tls.wants_write() {
            if !matches!(tls.write_tls(&mut Now(tcp)), Ok(n) if n > 0) {
                break;
            }
        }
    }
}

/// A client socket whose HTTP/1 requests are checked by a [`Checker`].
#[derive(Debug)]
pub(crate) struct Strict<S: Socket = TcpStream> {
    inner: S,
    checker: Checker,
    /// Raised by the proxy once it relayed a `101` on this connection.
    switched: Arc<AtomicBool>,
    /// Whether `switched` was seen raised (and the checks ended).
    tunnel: bool,
    /// Checked bytes that did not fit in hyper's buffer yet.
    approved: Vec<u8>,
    /// The violation found: reads end after `approved`, and the refusal
    /// goes out at shutdown.
    refused: bool,
    /// The refusal still to write, and how much of it is written.
    reply: Option<(Vec<u8>, usize)>,
    /// Where shutting down has got to (see [`LINGER_TIME`]).
    closing: Closing,
}

/// How long, and how much, a connection closed while its client was still
/// sending a request body is read (and the bytes dropped) after the answer,
/// as nginx's lingering close does. Closing a socket with unread bytes, or
/// receiving more after closing, makes the kernel send a reset, and a client
/// busy writing its body then loses the answer already sent to it (a `413`
/// for a body declared too large, say). One maximal body, for at most 5 s.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(5);
const LINGER_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug)]
enum Closing {
    Open,
    /// The write side is shut; what the client still sends is read and
    /// dropped until it closes, [`LINGER_BYTES`] or [`LINGER_TIME`].
    Linger(Linger),
    Closed,
}

#[derive(Debug)]
struct Linger {
    until: Pin<Box<tokio::time::Sleep>>,
    left: u64,
}

impl<S: Socket> Strict<S> {
    pub(crate) fn new(inner: S, switched: Arc<AtomicBool>) -> Self {
        Strict {
            inner,
            checker: Checker::default(),
            switched,
            tunnel: false,
            approved: Vec::new(),
            refused: false,
            reply: None,
            closing: Closing::Open,
        }
    }

    /// Puts bytes this socket delivered back in front of what it delivers
    /// next (the fast HTTP/1.1 loop handing a connection to hyper). They
    /// were checked on their way out, so they are not checked again.
    pub(crate) fn unread(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            let mut approved = Vec::with_capacity(bytes.len() + self.approved.len());
            approved.extend_from_slice(bytes);
            approved.extend_from_slice(&self.approved);
            self.approved = approved;
        }
    }

    fn refuse(&mut self, v: Violation) {
        tracing::debug!(violation = v.message(), "refusing a malformed request");
        self.refused = true;
        self.checker.hold(Vec::new());
        // Inside a body, the request is hyper's to answer (its body fails):
        // a reply of ours would be a second final response.
        if self.checker.between_messages() {
            self.reply = Some((v.response(), 0));
        }
    }

    /// Once the proxy relayed a `101`, the rest is the tunnel's: checks end,
    /// held bytes go through, and no HTTP refusal is ever written into it.
    fn follow_switch(&mut self) {
        if !self.tunnel && self.switched.load(Ordering::Acquire) {
            self.tunnel = true;
            self.reply = None;
            let held = self.checker.stop_checking();
            self.approved.extend_from_slice(&held);
        }
    }
}

impl<S: Socket> Drop for Strict<S> {
    /// hyper may drop a connection without shutting it down (when the last
    /// good message is followed by an incomplete one): the refusal is still
    /// sent, best effort, without blocking.
    fn drop(&mut self) {
        if let Some((reply, written)) = self.reply.take() {
            self.inner.write_now(&reply[written..]);
        }
    }
}

impl<S: Socket> AsyncRead for Strict<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.follow_switch();
        loop {
            if !this.approved.is_empty() {
                let n = this.approved.len().min(buf.remaining());
                buf.put_slice(&this.approved[..n]);
                this.approved.drain(..n);
                if this.approved.is_empty() {
                    this.approved = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.refused || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let start = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let end = buf.filled().len();
            if end == start {
                // End of stream; an unfinished head is dropped, as hyper
                // would drop it.
                return Poll::Ready(Ok(()));
            }
            if this.checker.held_len() == 0 {
                // The common case: judged in place, nothing copied.
                let verdict = this.checker.check(&buf.filled()[start..]);
                let passed = start + verdict.pass;
                match verdict.violation {
                    Some(v) => this.refuse(v),
                    None => this.checker.hold(buf.filled()[passed..end].to_vec()),
                }
                buf.set_filled(passed);
                if passed > start {
                    return Poll::Ready(Ok(()));
                }
            } else {
                let mut data = this.checker.take_held();
                data.extend_from_slice(&buf.filled()[start..]);
                buf.set_filled(start);
                let verdict = this.checker.check(&data);
                match verdict.violation {
                    Some(v) => this.refuse(v),
                    None => this.checker.hold(data.split_off(verdict.pass)),
                }
                data.truncate(verdict.pass);
                this.approved = data;
            }
            if this.checker.held_len() > MAX_HEAD {
                this.refuse(Violation::HeadTooLarge);
            }
            // Loop: deliver what was approved, or read more (which also
            // registers for a wake-up).
        }
    }
}

impl<S: Socket> AsyncWrite for Strict<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while let Some((reply, written)) = this.reply.as_mut() {
            if *written == reply.len() {
                this.reply = None;
                break;
            }
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &reply[*written..]))?;
            if n == 0 {
                this.reply = None;
                break;
            }
            *written += n;
        }
        if let Closing::Open = this.closing {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            // Inside a request body the client is still sending: linger.
            let sending = !this.tunnel && !this.refused && !this.checker.between_messages();
            this.closing = if sending {
                Closing::Linger(Linger {
                    until: Box::pin(tokio::time::sleep(LINGER_TIME)),
                    left: LINGER_BYTES,
                })
            } else {
                Closing::Closed
            };
        }
        if let Closing::Linger(linger) = &mut this.closing {
            let mut scratch = [0u8; 8 * 1024];
            loop {
                if linger.until.as_mut().poll(cx).is_ready() {
                    break;
                }
                let mut read = ReadBuf::new(&mut scratch);
                match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(_)) => break,
                    Poll::Ready(Ok(())) if read.filled().is_empty() => break,
                    Poll::Ready(Ok(())) => {
                        linger.left = linger.left.saturating_sub(read.filled().len() as u64);
                        if linger.left == 0 {
                            break;
                        }
                    }
                }
            }
            this.closing = Closing::Closed;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Socket for tokio::io::DuplexStream {
        fn write_now(&mut self, _buf: &[u8]) {}
    }

    /// Reads what `Strict` lets through until it ends the stream or
    /// nothing more comes for a moment.
    async fn drain(strict: &mut Strict<tokio::io::DuplexStream>) -> (Vec<u8>, bool) {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            let read =
                tokio::time::timeout(std::time::Duration::from_millis(100), strict.read(&mut buf));
            match read.await {
                Ok(Ok(0)) => return (out, true),
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => return (out, false),
            }
        }
    }

    /// Answered and closed while the client still sends a body (a `413`
    /// for a body declared too large): the client gets the answer, not a
    /// reset.
    #[tokio::test]
    async fn a_client_still_sending_its_body_gets_the_answer_not_a_reset() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut strict = Strict::new(tcp, Arc::new(AtomicBool::new(false)));
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = strict.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            strict
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            strict.shutdown().await.unwrap();
        });
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = 4 << 20;
        let head = format!("POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: {body}\r\n\r\n");
        client.write_all(head.as_bytes()).await.unwrap();
        // All of it, as a client does that reads the answer only then.
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..body / chunk.len() {
            client.write_all(&chunk).await.expect("sent, not reset");
        }
        let mut answer = Vec::new();
        client
            .read_to_end(&mut answer)
            .await
            .expect("the answer, not a reset");
        assert!(answer.starts_with(b"HTTP/1.1 413"), "{answer:?}");
        drop(client);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn the_checks_end_only_when_the_proxy_says_it_switched() {
        use tokio::io::AsyncWriteExt;
        let head = b"GET / HTTP/1.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n";
        let frames = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58\n\r\x00";
        for switch in [false, true] {
            let (mut client, server) = tokio::io::duplex(4096);
            let switched = Arc::new(AtomicBool::new(false));
            let mut strict = Strict::new(server, switched.clone());
            client.write_all(head).await.unwrap();
            assert_eq!(drain(&mut strict).await, (head.to_vec(), false));
            switched.store(switch, Ordering::Release);
            client.write_all(frames).await.unwrap();
            let (through, ended) = drain(&mut strict).await;
            if switch {
                assert_eq!((through, ended), (frames.to_vec(), false));
                // Nothing is ever written into the tunnel by the check.
                assert!(strict.reply.is_none());
            } else {
                assert_eq!(
                    (through, ended),
                    (Vec::new(), true),
                    "refused: the stream ends"
                );
                assert!(strict.reply.is_some(), "a 400 follows the last good answer");
            }
        }
    }

    #[tokio::test]
    async fn a_body_that_breaks_its_framing_gets_no_second_answer() {
        use tokio::io::AsyncWriteExt;
        let head = b"POST /echo HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
        for body in [&b"zz\r\n"[..], b"3\r\nabc\r\nzz\r\n", b"3\r\nabcX"] {
            let (mut client, server) = tokio::io::duplex(4096);
            let mut strict = Strict::new(server, Arc::new(AtomicBool::new(false)));
            client.write_all(head).await.unwrap();
            client.write_all(body).await.unwrap();
            let (through, ended) = drain(&mut strict).await;
            assert!(ended, "{body:?}: the body must end for hyper");
            assert!(through.starts_with(head));
            // The request is hyper's (and the proxy's) to answer, once.
            assert!(strict.reply.is_none(), "{body:?}");
        }
        // Between messages, the refusal is a request of its own.
        let (mut client, server) = tokio::io::duplex(4096);
        let mut strict = Strict::new(server, Arc::new(AtomicBool::new(false)));
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\nx: y\n\n")
            .await
            .unwrap();
        let (_, ended) = drain(&mut strict).await;
        assert!(ended);
        assert!(strict.reply.is_some());
    }
}
