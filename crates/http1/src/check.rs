//! The strict check every public HTTP/1 request passes before a parser
//! sees it (RFC 9112).
//!
//! hyper follows RFC 9112's leniencies: it accepts a bare LF as a line end
//! and `Transfer-Encoding` values such as `chunked<TAB>` or `identity,
//! chunked`. A proxy that is lenient where a server behind it (or in front
//! of it) is strict is how request smuggling starts, so a [`Checker`]
//! refuses any request head that:
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
//!   did, CVE-2023-45539);
//!
//! and any chunked body that breaks the rules of [`crate::chunked`], the
//! same rules a waifu's answers are read by.
//!
//! It follows message boundaries (heads, `Content-Length` and chunked
//! bodies) across reads, so every pipelined request is checked, and says
//! how many bytes may go on: only messages that passed, and never the end
//! of a head before the whole head was judged.

use crate::chunked::{ChunkError, Chunked, Step};
use crate::limits::MAX_HEAD;
use crate::token::TCHAR;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Why a request head was refused; the `400`'s message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
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
    BadChunk(ChunkError),
    Fragment,
    HeadTooLarge,
}

impl Violation {
    /// What is wrong, in a few words.
    pub fn message(self) -> &'static str {
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
            Violation::BadChunk(_) => "invalid chunked framing",
            Violation::Fragment => "a request target with a fragment (#)",
            Violation::HeadTooLarge => "the request head is too large",
        }
    }

    /// The complete response sent before closing: `400`, or `431` for an
    /// oversized head (as hyper answers below this limit).
    pub fn response(self) -> Vec<u8> {
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
    /// Inside a chunked body.
    Chunked(Chunked),
    /// No more checks (HTTP/2, a relayed switch) for this connection.
    Opaque,
}

/// The checking state of one connection, independent of I/O.
#[derive(Debug)]
pub struct Checker {
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
pub struct Verdict {
    /// How many bytes (of held + new) may go on to the parser, from the
    /// start.
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
    /// Bytes of an unfinished line or head, not yet judged: the caller
    /// offers them again, followed by what arrives next.
    pub fn take_held(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }

    /// Keeps `bytes` (what followed the last verdict's `pass`) to be
    /// offered again.
    pub fn hold(&mut self, bytes: Vec<u8>) {
        self.held = bytes;
    }

    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Ends the checks (a protocol switch was relayed); returns the bytes
    /// held back, which are the new protocol's.
    pub fn stop_checking(&mut self) -> Vec<u8> {
        self.framing = Framing::Opaque;
        self.head = Vec::new();
        std::mem::take(&mut self.held)
    }

    /// Whether the stream is between messages (or past checking), rather
    /// than inside a request's body.
    pub fn between_messages(&self) -> bool {
        matches!(self.framing, Framing::Head | Framing::Opaque)
    }

    /// Judges `data` (previously held bytes, then new ones, as one run).
    /// Bytes after `pass` that are not a violation are an unfinished head
    /// or line: the caller holds them back and offers them again with more.
    pub fn check(&mut self, data: &[u8]) -> Verdict {
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
                        find_head_end(rest).map(|e| e + 4)
                    } else {
                        let from = known.saturating_sub(3);
                        let mut joined = self.head[from..].to_vec();
                        joined.extend_from_slice(&rest[..rest.len().min(4)]);
                        find_head_end(&joined)
                            .and_then(|e| (from + e + 4).checked_sub(known))
                            .or_else(|| find_head_end(rest).map(|e| e + 4))
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
                Framing::Chunked(mut chunked) => match chunked.step(rest) {
                    Err(e) => return stop(at, Violation::BadChunk(e)),
                    Ok(Step::More) => {
                        return Verdict {
                            pass: at,
                            violation: None,
                        };
                    }
                    Ok(Step::Data(n) | Step::Framing(n)) => {
                        at += n;
                        self.framing = if chunked.is_done() {
                            Framing::Head
                        } else {
                            Framing::Chunked(chunked)
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

/// Where the first CRLF CRLF in `bytes` starts. The searcher is built
/// once: building it costs more than searching a short head.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    static END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    END.find(bytes)
}

/// A bare LF, or a CR followed by anything but LF; `prev` is the byte
/// before `bytes` (0 if none). A CR at the very end is not judged.
///
/// Jumps from one CR or LF to the next (`memchr`), rather than looking at
/// every byte: a head is mostly other bytes.
fn line_ending_violation(prev: u8, bytes: &[u8]) -> Option<Violation> {
    // The index of the LF that completes the last CRLF seen.
    let mut crlf_lf = None;
    if prev == b'\r' {
        match bytes.first() {
            Some(b'\n') => crlf_lf = Some(0),
            Some(_) => return Some(Violation::BareCr),
            None => {}
        }
    }
    for i in memchr::memchr2_iter(b'\r', b'\n', bytes) {
        if bytes[i] == b'\n' {
            if crlf_lf == Some(i) {
                continue;
            }
            return Some(Violation::BareLf);
        }
        match bytes.get(i + 1) {
            Some(b'\n') => crlf_lf = Some(i + 1),
            Some(_) => return Some(Violation::BareCr),
            None => {}
        }
    }
    None
}

/// Checks one complete request head (ending in CRLF CRLF) and says what
/// follows it.
fn judge_head(head: &[u8]) -> Result<Framing, Violation> {
    if let Some(v) = line_ending_violation(0, head) {
        return Err(v);
    }
    // Every line ends in CRLF now. Skip leading empty lines, then the
    // request line.
    let mut lines = head[..head.len() - 4]
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .skip_while(|l| l.is_empty());
    // The target is the request line's second word; a `#` there is
    // refused wherever it is (fragments are for clients, never sent).
    if let Some(line) = lines.next()
        && memchr::memchr(b'#', line).is_some()
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
        let colon = memchr::memchr(b':', line).ok_or(Violation::BadFieldName)?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.last().is_some_and(|&b| b == b' ' || b == b'\t') {
            return Err(Violation::SpaceBeforeColon);
        }
        if name.is_empty() || !TCHAR.holds_all(name) {
            return Err(Violation::BadFieldName);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.replace(value.trim_ascii()).is_some() {
                return Err(Violation::TwoLengths);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            && encoding.replace(value).is_some()
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
            Framing::Chunked(Chunked::Size)
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

#[cfg(test)]
mod tests;
