//! The HTTP/1.1 client towards waifus, run inside the request's own task.
//!
//! A request is written to a pooled keep-alive connection ([`pool`]), the
//! response head is read ([`response`]), and the body is streamed back by
//! [`UpstreamBody`] ([`body`]), which reads the waifu's socket directly and
//! hands the connection back to its endpoint's pool once the message is
//! complete. No second task, channel or pool lock sits between the client's
//! connection and the waifu's, which is where hyper's general-purpose client
//! spends most of its time (bench/README.md).
//!
//! Framing is read strictly, by the rules of `waifus_http1` that public
//! requests are checked by too: a malformed head or `Content-Length`, a
//! broken chunk, a head over 64 KiB or more than 100 fields end the exchange,
//! and a connection is reused only after a complete, well-framed HTTP/1.1
//! message with nothing left over.
//!
//! This module knows endpoints, not routes: whoever owns an [`Endpoint`]
//! (a routed instance) lends it through [`HasEndpoint`].

mod body;
mod client;
mod endpoint;
mod error;
mod pool;
mod request;
mod response;
#[cfg(test)]
mod tests;

pub use body::UpstreamBody;
pub use client::{Unanswered, send, try_send};
pub use endpoint::{Endpoint, HasEndpoint};
pub use error::SendError;
pub use pool::IDLE_FOR;
pub use request::Outgoing;
pub use response::{Answer, Reply};
