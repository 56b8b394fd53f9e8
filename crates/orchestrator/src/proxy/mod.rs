//! The public reverse proxy: one request, from its head to the waifu's
//! answer. It knows no listener, registry or health checker: it reads the
//! current routes, and is handed each request with what its connection knew
//! ([`Via`]). [`handle`] holds the request's whole path.
//!
//! One request: check the target's length, find the host, run the
//! [`guard`], resolve a route in the current table (no lock), pick a healthy
//! instance, rewrite headers, stream the body to the waifu and its answer
//! back. Bodies are never collected. The only upgrade relayed is a
//! WebSocket handshake ([`websocket`]), and only once the waifu has
//! completed it with its `101 Switching Protocols`.

mod access;
mod answered;
mod body;
pub(crate) mod compress;
mod error;
pub(crate) mod fields;
pub(crate) mod guard;
mod handle;
mod headers;
mod host;
mod limits;
mod trace;
pub(crate) mod trusted;
mod via;
mod websocket;

pub(crate) use answered::Answered;
pub(crate) use body::ClientBody;
pub(crate) use fields::{ClientRequest, Fields};
pub(crate) use handle::{HttpsInfo, Proxy, UpstreamConfig};
pub(crate) use via::Via;
