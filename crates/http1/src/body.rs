//! How a message body is delimited (RFC 9112 §6.3), and one decoder that
//! walks it: a length, chunked coding ([`crate::chunked`]) or the end of
//! the connection.

use crate::chunked::{ChunkError, Chunked, Step};

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all (`HEAD`, 204, 304, 1xx).
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (a response without either).
    UntilClose,
}

/// Where a body being read is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes left.
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    /// The body is complete.
    Done,
}

impl From<Framing> for Decoder {
    /// Where reading a body framed so starts.
    fn from(framing: Framing) -> Decoder {
        match framing {
            Framing::None | Framing::Length(0) => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(Chunked::Size),
            Framing::UntilClose => Decoder::UntilClose,
        }
    }
}

/// The connection ended before the body did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the body was cut short")]
pub struct Truncated;

impl Decoder {
    /// Judges the front of `buf`, as [`Chunked::step`] does, for any
    /// framing.
    pub fn step(&mut self, buf: &[u8]) -> Result<Step, ChunkError> {
        match self {
            Decoder::Done => Ok(Step::Framing(0)),
            Decoder::Length(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= n as u64;
                if *left == 0 {
                    *self = Decoder::Done;
                }
                Ok(Step::Data(n))
            }
            Decoder::Chunked(chunked) => {
                let step = chunked.step(buf)?;
                if chunked.is_done() {
                    *self = Decoder::Done;
                }
                Ok(step)
            }
            Decoder::UntilClose if buf.is_empty() => Ok(Step::More),
            Decoder::UntilClose => Ok(Step::Data(buf.len())),
        }
    }

    /// The connection ended: fine for a body read until then, else it was
    /// cut short.
    pub fn at_end_of_stream(&mut self) -> Result<(), Truncated> {
        match self {
            Decoder::Done => Ok(()),
            Decoder::UntilClose => {
                *self = Decoder::Done;
                Ok(())
            }
            _ => Err(Truncated),
        }
    }

    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// Bytes still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_each_decoder_is() {
        let mut done = Decoder::from(Framing::None);
        assert!(done.is_done());
        assert_eq!(done.remaining(), Some(0));
        assert_eq!(done.at_end_of_stream(), Ok(()));
        for framing in [Framing::Length(2), Framing::Chunked, Framing::UntilClose] {
            assert!(!Decoder::from(framing).is_done(), "{framing:?}");
        }
        assert_eq!(Decoder::from(Framing::Chunked).remaining(), None);
        assert_eq!(Decoder::from(Framing::UntilClose).remaining(), None);
        assert_eq!(
            Decoder::from(Framing::Chunked).at_end_of_stream(),
            Err(Truncated)
        );
    }

    #[test]
    fn lengths_and_the_end_of_the_stream() {
        let mut d = Decoder::from(Framing::Length(5));
        assert_eq!(d.step(b"hel"), Ok(Step::Data(3)));
        assert_eq!(d.remaining(), Some(2));
        assert_eq!(d.step(b"lo, and more"), Ok(Step::Data(2)));
        assert!(d.is_done());
        assert_eq!(
            Decoder::from(Framing::Length(3)).at_end_of_stream(),
            Err(Truncated)
        );
        let mut d = Decoder::from(Framing::UntilClose);
        assert_eq!(d.step(b"abc"), Ok(Step::Data(3)));
        assert_eq!(d.step(b""), Ok(Step::More));
        assert_eq!(d.at_end_of_stream(), Ok(()));
        assert!(Decoder::from(Framing::None).is_done());
        assert!(Decoder::from(Framing::Length(0)).is_done());
        let mut d = Decoder::from(Framing::Chunked);
        assert_eq!(d.step(b"0\r\n\r\n"), Ok(Step::Framing(3)));
        assert_eq!(d.step(b"\r\n"), Ok(Step::Framing(2)));
        assert!(d.is_done());
    }
}
