//! Strict HTTP/1 request framing, checked before hyper parses anything.
//!
//! hyper follows RFC 9112's leniencies: it accepts a bare LF as a line end
//! and `Transfer-Encoding` values such as `chunked<TAB>` or `identity,
//! chunked`. A proxy that is lenient where a server behind it (or in front
//! of it) is strict is how request smuggling starts, so the public listener
//! refuses, with `400` and a closed connection, any request head that:
//!
//! - ends a line with anything but CRLF, or has a CR elsewhere;
//! - folds a header line (obs-fold), or puts whitespace before a colon;
//! - has a field name that is not a token;
//! - has more than one `Content-Length` or `Transfer-Encoding` field, or both;
//! - has a `Content-Length` that is not plain digits (`+5`, empty, a list);
//! - has a `Transfer-Encoding` other than exactly `chunked`;
//! - has a `#` in its request target. A fragment is not part of any
//!   request-target form (RFC 9112 §3.2); `http::Uri` would drop it
//!   silently, where other servers keep it in the path (HAProxy before 2.8.2
//!   did, CVE-2023-45539).
//!
//! [`Strict`] wraps the client's socket. It follows message boundaries
//! (request heads, `Content-Length` and chunked bodies) so that every
//! pipelined request is checked too, and hands hyper only bytes of messages
//! that passed. Bytes of an incomplete head are held back until it is
//! complete. On a violation hyper sees the end of the stream after the last
//! good message. A violation between messages is a request of its own: once
//! hyper has answered the ones before it and shuts the connection down, the
//! `400` is written and the connection closed. A violation inside a body
//! belongs to a request hyper is already serving: that request's body ends
//! in an error, the proxy gives it its one answer (`400`, or a cut
//! connection if its response had begun), and nothing more is written.
//!
//! Two things end the checks for a connection: an HTTP/2 prior-knowledge
//! preface (hyper's h2 codec is strict on its own), and a `101` the proxy
//! actually relayed, after which the bytes are a WebSocket tunnel's. An
//! upgrade request alone changes nothing: if the waifu refuses it, the
//! connection carries on as HTTP/1.1 and every later request is checked.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Largest request head; hyper's own limit answers 431 beyond it, so this
/// only bounds what is held back.
const MAX_HEAD: usize = 64 * 1024;
/// Largest chunk-size line (with extensions) or trailer block.
const MAX_LINE: usize = 4 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Why a request head was refused; the `400`'s message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    BareLf,
    BareCr,
    ObsFold,
    SpaceBeforeColon,
    BadFieldName,
    TwoLengths,
    BadLength,
    TwoEncodings,
    BadEncoding,
    LengthAndEncoding,
    BadChunk,
    Fragment,
    HeadTooLarge,
}

impl Violation {
    fn message(self) -> &'static str {
        match self {
            Violation::BareLf => "a line ends in a bare LF",
            Violation::BareCr => "a CR is not followed by LF",
            Violation::ObsFold => "folded header lines are not accepted",
            Violation::SpaceBeforeColon => "whitespace between a field name and its colon",
            Violation::BadFieldName => "a field name is not a token",
            Violation::TwoLengths => "more than one Content-Length",
            Violation::BadLength => "Content-Length is not a plain number",
            Violation::TwoEncodings => "more than one Transfer-Encoding",
            Violation::BadEncoding => "Transfer-Encoding other than chunked",
            Violation::LengthAndEncoding => "both Content-Length and Transfer-Encoding",
            Violation::BadChunk => "invalid chunked framing",
            Violation::Fragment => "a request target with a fragment (#)",
            Violation::HeadTooLarge => "the request head is too large",
        }
    }

    /// The complete response sent before closing: `400`, or `431` for an
    /// oversized head (as hyper answers below this limit).
    fn response(self) -> Vec<u8> {
        let (status, code) = match self {
            Violation::HeadTooLarge => ("431 Request Header Fields Too Large", "headers_too_large"),
            _ => ("400 Bad Request", "bad_request"),
        };
        let body = format!(
            r#"{{"error":"{code}","message":"malformed request: {}"}}"#,
            self.message()
        );
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Where the byte stream is, message-wise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// At or inside a request head.
    Head,
    /// Inside a body of known length: bytes left.
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Inside chunk data: bytes left.
    ChunkData(u64),
    /// Expecting the CRLF after chunk data.
    ChunkEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    /// No more checks (HTTP/2, a relayed switch) for this connection.
    Opaque,
}

/// The checking state of one connection, independent of I/O.
#[derive(Debug)]
pub(crate) struct Checker {
    framing: Framing,
    /// Bytes of an unfinished line (chunk size, trailer, a CR awaiting its
    /// LF), not yet judged: offered again with what follows.
    held: Vec<u8>,
    /// The start of an unfinished head, already passed on (without its
    /// final line end), kept to judge the head once it is complete.
    head: Vec<u8>,
    /// Whether no byte was seen yet (for the HTTP/2 preface).
    fresh: bool,
}

/// What to do with a run of new bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// How many bytes (of held + new) may go to hyper, from the start.
    pub pass: usize,
    /// Set when the stream must end after `pass` bytes.
    pub violation: Option<Violation>,
}

impl Default for Checker {
    fn default() -> Self {
        Checker {
            framing: Framing::Head,
            held: Vec::new(),
            head: Vec::new(),
            fresh: true,
        }
    }
}

impl Checker {
    /// Ends the checks (a protocol switch was relayed); returns the bytes
    /// held back, which are the new protocol's.
    pub(crate) fn stop_checking(&mut self) -> Vec<u8> {
        self.framing = Framing::Opaque;
        self.head = Vec::new();
        std::mem::take(&mut self.held)
    }

    /// Whether the stream is between messages (or past checking), rather
    /// than inside a request's body.
    pub(crate) fn between_messages(&self) -> bool {
        matches!(self.framing, Framing::Head | Framing::Opaque)
    }

    /// Judges `data` (previously held bytes, then new ones, as one run).
    /// Bytes after `pass` that are not a violation are an unfinished head
    /// or line: the caller holds them back and offers them again with more.
    pub(crate) fn check(&mut self, data: &[u8]) -> Verdict {
        if self.fresh && !data.is_empty() {
            let n = data.len().min(H2_PREFACE.len());
            if data[..n] == H2_PREFACE[..n] {
                if n < H2_PREFACE.len() {
                    return Verdict {
                        pass: 0,
                        violation: None,
                    };
                }
                self.framing = Framing::Opaque;
            }
            self.fresh = false;
        }
        let mut at = 0;
        loop {
            let rest = &data[at..];
            match self.framing {
                Framing::Opaque => {
                    return Verdict {
                        pass: data.len(),
                        violation: None,
                    };
                }
                Framing::Head => {
                    // The head so far: what was passed already, then `rest`.
                    let known = self.head.len();
                    let found = if known == 0 {
                        find(rest, b"\r\n\r\n").map(|e| e + 4)
                    } else {
                        let from = known.saturating_sub(3);
                        let mut joined = self.head[from..].to_vec();
                        joined.extend_from_slice(&rest[..rest.len().min(4)]);
                        find(&joined, b"\r\n\r\n")
                            .and_then(|e| (from + e + 4).checked_sub(known))
                            .or_else(|| find(rest, b"\r\n\r\n").map(|e| e + 4))
                    };
                    let Some(end) = found else {
                        // Incomplete: pass what is known to be well formed,
                        // never the end of the head, so hyper cannot act on
                        // the head before it is judged whole. A trailing CR
                        // waits for its LF.
                        let prev = self.head.last().copied().unwrap_or(0);
                        if let Some(v) = line_ending_violation(prev, rest) {
                            return stop(at, v);
                        }
                        let keep = usize::from(rest.last() == Some(&b'\r'));
                        let pass = rest.len() - keep;
                        if self.head.len() + pass > MAX_HEAD {
                            // hyper refuses it (431) on its own.
                            self.head = Vec::new();
                            self.framing = Framing::Opaque;
                            return pass_all(data);
                        }
                        self.head.extend_from_slice(&rest[..pass]);
                        return Verdict {
                            pass: at + pass,
                            violation: None,
                        };
                    };
                    let judged = if known == 0 {
                        judge_head(&rest[..end])
                    } else {
                        let mut whole = std::mem::take(&mut self.head);
                        whole.extend_from_slice(&rest[..end]);
                        judge_head(&whole)
                    };
                    match judged {
                        Err(v) => return stop(at, v),
                        Ok(next) => {
                            self.framing = next;
                            at += end;
                        }
                    }
                }
                Framing::Length(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    at += n;
                    let left = left - n as u64;
                    self.framing = if left == 0 {
                        Framing::Head
                    } else {
                        Framing::Length(left)
                    };
                    if left > 0 {
                        return pass_all(data);
                    }
                }
                Framing::ChunkSize => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((len, size))) => {
                        at += len;
                        self.framing = if size == 0 {
                            Framing::Trailers
                        } else {
                            Framing::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if rest.len() > MAX_LINE => {
                        return stop(at, Violation::BadChunk);
                    }
                    Ok(httparse::Status::Partial) => {
                        return Verdict {
                            pass: at,
                            violation: None,
                        };
                    }
                    Err(_) => return stop(at, Violation::BadChunk),
                },
                Framing::ChunkData(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    at += n;
                    let left = left - n as u64;
                    if left > 0 {
                        self.framing = Framing::ChunkData(left);
                        return pass_all(data);
                    }
                    self.framing = Framing::ChunkEnd;
                }
                Framing::ChunkEnd => {
                    if rest.len() < 2 {
                        if !b"\r".starts_with(rest) {
                            return stop(at, Violation::BadChunk);
                        }
                        return Verdict {
                            pass: at,
                            violation: None,
                        };
                    }
                    if &rest[..2] != b"\r\n" {
                        return stop(at, Violation::BadChunk);
                    }
                    at += 2;
                    self.framing = Framing::ChunkSize;
                }
                Framing::Trailers => match find(rest, b"\r\n") {
                    Some(0) => {
                        at += 2;
                        self.framing = Framing::Head;
                    }
                    Some(end) => {
                        if rest[..end].contains(&b'\n') || rest[..end].contains(&b'\r') {
                            return stop(at, Violation::BadChunk);
                        }
                        at += end + 2;
                    }
                    None if rest.len() > MAX_LINE => return stop(at, Violation::BadChunk),
                    None => {
                        return Verdict {
                            pass: at,
                            violation: None,
                        };
                    }
                },
            }
            if at == data.len() {
                return Verdict {
                    pass: at,
                    violation: None,
                };
            }
        }
    }
}

fn stop(pass: usize, v: Violation) -> Verdict {
    Verdict {
        pass,
        violation: Some(v),
    }
}

fn pass_all(data: &[u8]) -> Verdict {
    Verdict {
        pass: data.len(),
        violation: None,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A bare LF, or a CR followed by anything but LF; `prev` is the byte
/// before `bytes` (0 if none). A CR at the very end is not judged.
fn line_ending_violation(mut prev: u8, bytes: &[u8]) -> Option<Violation> {
    for &b in bytes {
        if b == b'\n' && prev != b'\r' {
            return Some(Violation::BareLf);
        }
        if prev == b'\r' && b != b'\n' {
            return Some(Violation::BareCr);
        }
        prev = b;
    }
    None
}

/// Checks one complete request head (ending in CRLF CRLF) and says what
/// follows it.
fn judge_head(head: &[u8]) -> Result<Framing, Violation> {
    if let Some(v) = line_ending_violation(0, head) {
        return Err(v);
    }
    // Skip leading empty lines, then the request line.
    let mut lines = head[..head.len() - 4]
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .skip_while(|l| l.is_empty());
    // The target is the request line's second word; a `#` there is
    // refused wherever it is (fragments are for clients, never sent).
    if let Some(line) = lines.next()
        && line
            .split(|&b| b == b' ')
            .nth(1)
            .is_some_and(|t| t.contains(&b'#'))
    {
        return Err(Violation::Fragment);
    }
    let (mut length, mut encoding) = (None::<&[u8]>, None::<&[u8]>);
    for line in lines {
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            return Err(Violation::ObsFold);
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(Violation::BadFieldName)?;
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.last().is_some_and(|&b| b == b' ' || b == b'\t') {
            return Err(Violation::SpaceBeforeColon);
        }
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(Violation::BadFieldName);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.replace(value).is_some() {
                return Err(Violation::TwoLengths);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            && encoding.replace(&line[colon + 1..]).is_some()
        {
            return Err(Violation::TwoEncodings);
        }
    }
    Ok(match (length, encoding) {
        (Some(_), Some(_)) => return Err(Violation::LengthAndEncoding),
        (Some(value), None) => {
            let ok = !value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit);
            let n = std::str::from_utf8(value)
                .ok()
                .filter(|_| ok)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(Violation::BadLength)?;
            if n == 0 {
                Framing::Head
            } else {
                Framing::Length(n)
            }
        }
        (None, Some(raw)) => {
            // Exactly `chunked`, with at most spaces around it: no tabs,
            // no lists, no other codings.
            let value = trim_spaces(raw);
            if !value.eq_ignore_ascii_case(b"chunked") {
                return Err(Violation::BadEncoding);
            }
            Framing::ChunkSize
        }
        (None, None) => Framing::Head,
    })
}

fn trim_spaces(mut v: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' '] = v {
        v = rest;
    }
    v
}

/// RFC 9110 §5.6.2 token characters.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

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
        self.checker.held = Vec::new();
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
            if this.checker.held.is_empty() {
                // The common case: judged in place, nothing copied.
                let verdict = this.checker.check(&buf.filled()[start..]);
                let passed = start + verdict.pass;
                match verdict.violation {
                    Some(v) => this.refuse(v),
                    None => this.checker.held = buf.filled()[passed..end].to_vec(),
                }
                buf.set_filled(passed);
                if passed > start {
                    return Poll::Ready(Ok(()));
                }
            } else {
                let mut data = std::mem::take(&mut this.checker.held);
                data.extend_from_slice(&buf.filled()[start..]);
                buf.set_filled(start);
                let verdict = this.checker.check(&data);
                match verdict.violation {
                    Some(v) => this.refuse(v),
                    None => this.checker.held = data.split_off(verdict.pass),
                }
                data.truncate(verdict.pass);
                this.approved = data;
            }
            if this.checker.held.len() > MAX_HEAD {
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
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `pieces` as successive reads, as [`Strict`] does: returns what
    /// hyper would get and the violation, if any.
    fn run(pieces: &[&[u8]]) -> (Vec<u8>, Option<Violation>) {
        let mut checker = Checker::default();
        let mut out = Vec::new();
        for piece in pieces {
            let mut data = std::mem::take(&mut checker.held);
            data.extend_from_slice(piece);
            let verdict = checker.check(&data);
            out.extend_from_slice(&data[..verdict.pass]);
            if verdict.violation.is_some() {
                return (out, verdict.violation);
            }
            checker.held = data[verdict.pass..].to_vec();
        }
        (out, None)
    }

    const GET: &str = "GET / HTTP/1.1\r\nhost: a\r\n\r\n";

    #[test]
    fn refused_heads() {
        use Violation::*;
        let cases: &[(&str, &str, Violation)] = &[
            (
                "CL and TE",
                "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
                LengthAndEncoding,
            ),
            (
                "two CLs",
                "POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc",
                TwoLengths,
            ),
            (
                "CL list",
                "POST / HTTP/1.1\r\ncontent-length: 3, 3\r\n\r\nabc",
                BadLength,
            ),
            (
                "plus CL",
                "POST / HTTP/1.1\r\ncontent-length: +3\r\n\r\nabc",
                BadLength,
            ),
            (
                "empty CL",
                "POST / HTTP/1.1\r\ncontent-length: \r\n\r\n",
                BadLength,
            ),
            (
                "negative CL",
                "POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
                BadLength,
            ),
            (
                "huge CL",
                "POST / HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\n",
                BadLength,
            ),
            (
                "xchunked",
                "POST / HTTP/1.1\r\ntransfer-encoding: xchunked\r\n\r\n",
                BadEncoding,
            ),
            (
                "chunked tab",
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked\t\r\n\r\n",
                BadEncoding,
            ),
            (
                "tab chunked",
                "POST / HTTP/1.1\r\ntransfer-encoding:\tchunked\r\n\r\n",
                BadEncoding,
            ),
            (
                "identity, chunked",
                "POST / HTTP/1.1\r\ntransfer-encoding: identity, chunked\r\n\r\n",
                BadEncoding,
            ),
            (
                "chunked, chunked",
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked, chunked\r\n\r\n",
                BadEncoding,
            ),
            (
                "second TE",
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
                TwoEncodings,
            ),
            (
                "obs-fold",
                "GET / HTTP/1.1\r\nhost: a\r\nx-a: b\r\n c\r\n\r\n",
                ObsFold,
            ),
            (
                "obs-fold tab",
                "GET / HTTP/1.1\r\nhost: a\r\n\tc\r\n\r\n",
                ObsFold,
            ),
            (
                "space before colon",
                "GET / HTTP/1.1\r\nhost : a\r\n\r\n",
                SpaceBeforeColon,
            ),
            (
                "TE space before colon",
                "POST / HTTP/1.1\r\ntransfer-encoding : chunked\r\n\r\n",
                SpaceBeforeColon,
            ),
            ("bare LF in head", "GET / HTTP/1.1\nhost: a\r\n\r\n", BareLf),
            ("bare LF ending", "GET / HTTP/1.1\r\nhost: a\n\n", BareLf),
            ("bare CR", "GET / HTTP/1.1\r\nhost: a\rx: y\r\n\r\n", BareCr),
            ("no colon", "GET / HTTP/1.1\r\nhost a\r\n\r\n", BadFieldName),
            ("fragment", "GET /w#a HTTP/1.1\r\nhost: a\r\n\r\n", Fragment),
            (
                "fragment before a query",
                "GET /w#a?b=1 HTTP/1.1\r\nhost: a\r\n\r\n",
                Fragment,
            ),
            (
                "fragment hiding a path",
                "GET /app/x#/../__internal/y HTTP/1.1\r\nhost: a\r\n\r\n",
                Fragment,
            ),
            (
                "bad name",
                "GET / HTTP/1.1\r\nho\"st: a\r\n\r\n",
                BadFieldName,
            ),
            (
                "bad chunk size",
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                BadChunk,
            ),
            (
                "no CRLF after chunk",
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n1\r\naXX",
                BadChunk,
            ),
        ];
        for (what, raw, want) in cases {
            let (passed, violation) = run(&[raw.as_bytes()]);
            assert_eq!(violation, Some(*want), "{what}");
            // Nothing of a refused head reaches hyper.
            let refused_at = if *want == BadChunk { passed.len() } else { 0 };
            assert_eq!(passed.len(), refused_at, "{what}");
            // Split anywhere, the head is still refused, and hyper never
            // gets all of it (it would need the final empty line).
            if *want != BadChunk {
                for k in 1..raw.len() {
                    let (passed, violation) = run(&[&raw.as_bytes()[..k], &raw.as_bytes()[k..]]);
                    assert!(violation.is_some(), "{what} split at {k}");
                    assert!(find(&passed, b"\r\n\r\n").is_none(), "{what} split at {k}");
                    assert!(
                        !passed.windows(2).any(|w| w == b"\n\n"),
                        "{what} split at {k}"
                    );
                }
            }
            // The same, after a good request: that one passes whole.
            let (passed, violation) = run(&[GET.as_bytes(), raw.as_bytes()]);
            assert_eq!(violation, Some(*want), "{what} (pipelined)");
            assert!(passed.starts_with(GET.as_bytes()), "{what} (pipelined)");
        }
    }

    #[test]
    fn accepted_streams() {
        let cases: &[(&str, &str)] = &[
            ("get", GET),
            (
                "length",
                "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello",
            ),
            (
                "chunked",
                "POST / HTTP/1.1\r\ntransfer-encoding:  Chunked \r\n\r\n5;x=1\r\nhello\r\n0\r\nt: 1\r\n\r\n",
            ),
            (
                "a body that looks like a bad head",
                "POST / HTTP/1.1\r\ncontent-length: 20\r\n\r\nGET / HTTP/1.1\nx\n\n\n\n",
            ),
            (
                "h2 preface",
                "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\n\n",
            ),
            (
                "leading empty line",
                "\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n",
            ),
        ];
        for (what, raw) in cases {
            let stream = [raw.as_bytes(), GET.as_bytes()].concat();
            assert_eq!(run(&[&stream]), (stream.clone(), None), "{what}");
        }
    }

    /// An upgrade request is a request like any other: what follows it is
    /// checked until a switch is actually relayed.
    #[test]
    fn an_upgrade_request_leaves_the_checks_on() {
        let upgrade = "GET / HTTP/1.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n";
        let h2c = "GET / HTTP/1.1\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n\
                   http2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
        let smuggle =
            "POST / HTTP/1.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        for first in [upgrade, h2c] {
            let stream = format!("{first}{smuggle}");
            assert_eq!(
                run(&[stream.as_bytes()]),
                (
                    first.as_bytes().to_vec(),
                    Some(Violation::LengthAndEncoding)
                ),
                "{first}"
            );
            // Binary after the head, as a tunnel would carry: not HTTP/1.
            let stream = format!("{first}\x01\n\n");
            assert_eq!(run(&[stream.as_bytes()]).1, Some(Violation::BareLf));
        }
    }

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

    #[test]
    fn a_bad_line_ending_is_refused_before_the_head_ends() {
        let (passed, violation) = run(&[b"GET / HTTP/1.1\nhost: a"]);
        assert_eq!((passed.len(), violation), (0, Some(Violation::BareLf)));
    }

    proptest! {
        /// However a valid pipelined stream is split into reads, all of it
        /// passes, in order.
        #[test]
        fn any_split_of_valid_requests_passes(
            bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..4),
            chunked in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut stream = Vec::new();
            for body in &bodies {
                if chunked {
                    stream.extend_from_slice(b"POST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n");
                    for part in body.chunks(7) {
                        stream.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                        stream.extend_from_slice(part);
                        stream.extend_from_slice(b"\r\n");
                    }
                    stream.extend_from_slice(b"0\r\n\r\n");
                } else {
                    stream.extend_from_slice(format!("POST /l HTTP/1.1\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes());
                    stream.extend_from_slice(body);
                }
            }
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(stream.len())).collect();
            at.push(stream.len());
            at.sort_unstable();
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut from = 0;
            for to in at {
                pieces.push(&stream[from..to]);
                from = to;
            }
            prop_assert_eq!(run(&pieces), (stream.clone(), None));
        }
    }
}
