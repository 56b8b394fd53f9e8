//! What the proxy knows of the connection a request came on.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// What the proxy knows of the connection a request came on.
#[derive(Debug, Clone, Default)]
pub(crate) struct Via {
    /// The TLS listener.
    pub tls: bool,
    /// The listener's port: the only one a canonical `Host` keeps.
    pub port: u16,
    /// The name the client asked for in its TLS handshake.
    pub sni: Option<Arc<str>>,
    /// Raised when a `101` is relayed on this HTTP/1 connection: its bytes
    /// are a tunnel's from then on, no longer requests to check. Until
    /// then, an upgrade request is just a request.
    pub switched: Option<Arc<AtomicBool>>,
}
