//! The chunked transfer coding (RFC 9112 §7.1), read one strict way for
//! requests and responses alike.
//!
//! RFC 9112 lets a reader be lenient, and `httparse` is: it takes any byte
//! in a chunk extension (a bare LF, a NUL) and reads a chunk-size line with
//! no digits (`;x`, or nothing) as size 0. Two readers that disagree on
//! where a chunk ends are how request smuggling starts, so here:
//!
//! - a chunk-size line starts with its hex size and holds no control
//!   character but HTAB before its CRLF, and is at most [`MAX_LINE`] long;
//! - what follows the size is exactly RFC 9112's `chunk-ext` grammar:
//!   `; name` or `; name=value` (a token or a quoted string), with optional
//!   whitespace only around `;` and `=`: `5 ` (whitespace and nothing after
//!   it) or `0;` (a `;` without a name) is an error, as in nginx;
//! - chunk data is followed by exactly CRLF;
//! - every trailer line is a `name: value` field line ending in CRLF.
//!
//! [`Chunked`] tells what the front of a buffer is; it never copies.

use crate::limits::MAX_LINE;
use crate::token::{has_ctl, is_field_line, is_tchar};

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    /// The body is complete.
    Done,
}

/// What the front of the buffer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// This many bytes of chunk data.
    Data(usize),
    /// This many bytes of framing (a size line, a CRLF, a trailer line, the
    /// final empty line).
    Framing(usize),
    /// Nothing can be judged before more bytes arrive.
    More,
}

/// How a chunked body broke its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("a chunk-size line without a size")]
    NoSize,
    #[error("an invalid chunk size")]
    BadSize,
    #[error("a control character in a chunk-size line")]
    Control,
    #[error("a chunk-size line too long")]
    LongLine,
    #[error("chunk data not followed by CRLF")]
    NoCrlf,
    #[error("a malformed trailer line")]
    BadTrailer,
    #[error("a trailer line too long")]
    LongTrailer,
    #[error("a chunk extension that is not `; name[=value]`")]
    BadExtension,
}

impl Chunked {
    /// Judges the front of `buf`. The caller consumes the bytes a
    /// [`Step::Data`] or [`Step::Framing`] names and calls again; on
    /// [`Step::More`] it keeps what it has and adds what comes next.
    pub fn step(&mut self, buf: &[u8]) -> Result<Step, ChunkError> {
        match *self {
            Chunked::Done => Ok(Step::Framing(0)),
            Chunked::Size => {
                let (line, complete) = line_of(buf);
                // Judged in the same order whether the line is whole or
                // not, so that how bytes arrive never changes the verdict.
                if line.first().is_some_and(|b| !b.is_ascii_hexdigit())
                    || (complete && line.is_empty())
                {
                    return Err(ChunkError::NoSize);
                }
                if has_ctl(line) {
                    return Err(ChunkError::Control);
                }
                if line.len() > MAX_LINE {
                    return Err(ChunkError::LongLine);
                }
                if !complete {
                    return Ok(Step::More);
                }
                let size = match httparse::parse_chunk_size(&buf[..line.len() + 2]) {
                    Ok(httparse::Status::Complete((_, size))) => size,
                    _ => return Err(ChunkError::BadSize),
                };
                let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                if !is_chunk_ext(&line[digits..]) {
                    return Err(ChunkError::BadExtension);
                }
                *self = if size == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(size)
                };
                Ok(Step::Framing(line.len() + 2))
            }
            Chunked::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let left = left - n as u64;
                *self = if left == 0 {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(left)
                };
                Ok(Step::Data(n))
            }
            Chunked::DataEnd => match buf {
                [] | [b'\r'] => Ok(Step::More),
                [b'\r', b'\n', ..] => {
                    *self = Chunked::Size;
                    Ok(Step::Framing(2))
                }
                _ => Err(ChunkError::NoCrlf),
            },
            Chunked::Trailers => {
                let (line, complete) = line_of(buf);
                if has_ctl(line) {
                    return Err(ChunkError::BadTrailer);
                }
                if line.len() > MAX_LINE {
                    return Err(ChunkError::LongTrailer);
                }
                if !complete {
                    return Ok(Step::More);
                }
                if line.is_empty() {
                    *self = Chunked::Done;
                } else if !is_field_line(line) {
                    return Err(ChunkError::BadTrailer);
                }
                Ok(Step::Framing(line.len() + 2))
            }
        }
    }

    /// Whether the final empty line was read.
    pub fn is_done(&self) -> bool {
        *self == Chunked::Done
    }
}

/// Whether `ext` is `*( BWS ";" BWS chunk-ext-name [ BWS "=" BWS
/// chunk-ext-val ] )` (RFC 9112 §7.1.1), `chunk-ext-val` a token or a
/// quoted string (RFC 9110 §5.6.4).
fn is_chunk_ext(mut ext: &[u8]) -> bool {
    fn ws(s: &[u8]) -> &[u8] {
        let n = s.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
        &s[n..]
    }
    fn token(s: &[u8]) -> Option<&[u8]> {
        let n = s.iter().take_while(|b| is_tchar(**b)).count();
        (n > 0).then(|| &s[n..])
    }
    fn quoted(s: &[u8]) -> Option<&[u8]> {
        let mut i = 1;
        while i < s.len() {
            match s[i] {
                b'"' => return Some(&s[i + 1..]),
                b'\\' => {
                    let next = *s.get(i + 1)?;
                    if next != b'\t'
                        && next != b' '
                        && !(0x21..=0x7e).contains(&next)
                        && next < 0x80
                    {
                        return None;
                    }
                    i += 2;
                }
                b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => i += 1,
                _ => return None,
            }
        }
        None
    }
    while !ext.is_empty() {
        let Some(rest) = ws(ext).strip_prefix(b";") else {
            return false;
        };
        let Some(rest) = token(ws(rest)) else {
            return false;
        };
        ext = rest;
        let after = ws(ext);
        if let Some(value) = after.strip_prefix(b"=") {
            let value = ws(value);
            let rest = match value.first() {
                Some(b'"') => quoted(value),
                _ => token(value),
            };
            let Some(rest) = rest else {
                return false;
            };
            ext = rest;
        }
    }
    true
}

/// The line at the front of `buf` without its CRLF, and whether it is
/// whole; an unfinished line without a CR that may be the start of its CRLF.
fn line_of(buf: &[u8]) -> (&[u8], bool) {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) => (&buf[..end], true),
        None => (buf.strip_suffix(b"\r").unwrap_or(buf), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `pieces` arriving one after another: the data, and whether
    /// the body ended, or the error.
    fn decode(pieces: &[&[u8]]) -> Result<(Vec<u8>, bool), ChunkError> {
        let mut c = Chunked::default();
        let mut data = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                if c.is_done() {
                    return Ok((data, true));
                }
                match c.step(&buf)? {
                    Step::More => break,
                    Step::Data(n) => {
                        data.extend_from_slice(&buf[..n]);
                        buf.drain(..n);
                    }
                    Step::Framing(n) => {
                        buf.drain(..n);
                    }
                }
            }
        }
        Ok((data, c.is_done()))
    }

    #[test]
    fn bodies() {
        let ok: &[(&[u8], &[u8])] = &[
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5;x=1\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5 ; x=\"a\tb\"\r\nhello\r\n0\r\n\r\n", b"hello"),
            (
                b"A\r\n0123456789\r\n0\r\nt: 1\r\nu:2\r\n\r\n",
                b"0123456789",
            ),
            (b"0\r\n\r\n", b""),
            (b"000\r\n\r\n", b""),
            (b"5;a;b=c ; d = \"e\\\"f\"\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5\t;x\r\nhello\r\n0;y=1\r\n\r\n", b"hello"),
            (
                b"5;a=\"x\\\ty\\ z\\\x80\\q\xff\"\r\nhello\r\n0\r\n\r\n",
                b"hello",
            ),
        ];
        for (wire, want) in ok {
            assert_eq!(decode(&[wire]), Ok((want.to_vec(), true)), "{wire:?}");
            // Byte by byte, the same.
            let pieces: Vec<&[u8]> = wire.chunks(1).collect();
            assert_eq!(decode(&pieces), Ok((want.to_vec(), true)), "{wire:?} split");
        }
        use ChunkError::*;
        let bad: &[(&[u8], ChunkError)] = &[
            (b"zz\r\n", NoSize),
            (b";x=1\r\n", NoSize),
            (b"\r\n", NoSize),
            (b" 5\r\nhello", NoSize),
            (b"5;\0\r\nhello", Control),
            (b"5;a\nb\r\nhello", Control),
            (b"5;a\rb\r\nhello", Control),
            (b"5\r\nhelloX", NoCrlf),
            (b"5\r\nhello\n0\r\n", NoCrlf),
            (b"0\r\nhello\r\n\r\n", BadTrailer),
            (b"0\r\nt: \0\r\n\r\n", BadTrailer),
            (b"0\r\nt: 1\n\r\n", BadTrailer),
            (b"ffffffffffffffffffff\r\n", BadSize),
            // RFC 9112's grammar, nothing more.
            (b"5 \r\nhello", BadExtension),
            (b"5\t\r\nhello", BadExtension),
            (b"0;\r\n\r\n", BadExtension),
            (b"5;=1\r\nhello", BadExtension),
            (b"5;a=\r\nhello", BadExtension),
            (b"5;a b\r\nhello", BadExtension),
            (b"5;a=\"open\r\nhello", BadExtension),
            (b"5;a=\"x\"y\r\nhello", BadExtension),
            (b"5x\r\nhello", BadSize),
            (b"5;a=b=c\r\nhello", BadExtension),
            (b"5,6\r\nhello", BadSize),
            // A control character is refused before any quoting counts,
            // escaped or not; an escape must be followed by something.
            (b"5;a=\"x\\\x01\"\r\nhello", Control),
            (b"5;a=\"x\\\x7f\"\r\nhello", Control),
            (b"5;a=\"x\\\r\nhello", BadExtension),
        ];
        for (wire, want) in bad {
            assert_eq!(decode(&[wire]), Err(*want), "{wire:?}");
            let pieces: Vec<&[u8]> = wire.chunks(1).collect();
            assert_eq!(decode(&pieces), Err(*want), "{wire:?} split");
        }
        let long = [b"5;".as_slice(), &[b'x'; MAX_LINE]].concat();
        assert_eq!(decode(&[&long]), Err(LongLine));
        // MAX_LINE bytes is a line still; one more is not.
        for (extra, want) in [(0, Ok((b"hello".to_vec(), true))), (1, Err(LongLine))] {
            let size = [b"5;".as_slice(), &vec![b'x'; MAX_LINE - 2 + extra]].concat();
            let wire = [size.as_slice(), b"\r\nhello\r\n0\r\n\r\n"].concat();
            assert_eq!(decode(&[&wire]), want, "size line of {} bytes", size.len());
            let trailer = [b"t: ".as_slice(), &vec![b'v'; MAX_LINE - 3 + extra]].concat();
            let wire = [b"5\r\nhello\r\n0\r\n".as_slice(), &trailer, b"\r\n\r\n"].concat();
            let want = if extra == 0 {
                Ok((b"hello".to_vec(), true))
            } else {
                Err(LongTrailer)
            };
            assert_eq!(decode(&[&wire]), want, "trailer of {} bytes", trailer.len());
        }
    }

    proptest! {
        /// Whatever the bytes, a decoder never takes more than it was given,
        /// and agrees with itself however the bytes are split.
        #[test]
        fn splitting_never_changes_the_verdict(
            wire in prop::collection::vec(prop::sample::select(b"0123456789abcdefxyz;= \t\r\n:\0".to_vec()), 0..80),
            cut in any::<prop::sample::Index>(),
        ) {
            let whole = decode(&[&wire]);
            let k = cut.index(wire.len() + 1);
            let split = decode(&[&wire[..k], &wire[k..]]);
            prop_assert_eq!(whole, split);
        }
    }
}
