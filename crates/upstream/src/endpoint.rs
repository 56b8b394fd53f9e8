//! Where requests go, and who owns it.

use super::pool::ConnPool;

/// Where requests go: an address and its idle connections.
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port`, what a connection is made to.
    pub authority: http::uri::Authority,
    /// Idle keep-alive connections to it.
    pub pool: ConnPool,
}

impl Endpoint {
    pub fn new(authority: http::uri::Authority) -> Endpoint {
        Endpoint {
            authority,
            pool: ConnPool::default(),
        }
    }
}

/// What owns an [`Endpoint`]: a response body keeps its owner alive to give
/// the connection back to the pool when it ends.
pub trait HasEndpoint: std::fmt::Debug + Send + Sync + 'static {
    fn endpoint(&self) -> &Endpoint;
}

impl HasEndpoint for Endpoint {
    fn endpoint(&self) -> &Endpoint {
        self
    }
}
