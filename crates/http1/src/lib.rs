//! HTTP/1.1 rules (RFC 9110, RFC 9112), written once for both roles the
//! orchestrator plays: a server to public clients and a client to waifus.
//!
//! Pure code over bytes: no sockets, no tasks, and nothing of the
//! orchestrator. What it holds:
//!
//! - [`limits`]: the size limits every reader of a head or a chunk line
//!   applies;
//! - [`token`]: which bytes make a token, a field line, a control character;
//! - [`chunked`] and [`body`]: one decoder for message bodies, read the same
//!   strict way whoever sent them;
//! - [`check`]: the strict checker public requests pass before any parser
//!   sees them;
//! - [`response`]: reading a waifu's response head and how its body is
//!   framed;
//! - [`encode`]: writing a response head.

pub mod body;
pub mod check;
pub mod chunked;
pub mod encode;
pub mod limits;
pub mod response;
pub mod token;
