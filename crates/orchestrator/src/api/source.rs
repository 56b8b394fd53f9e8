//! Who made an internal API call: the connection's peer, or, behind a
//! load balancer listed in `TRUSTED_PROXIES`, the address it names in
//! `X-Forwarded-For`. The throttle counts per this address, and incidents
//! and audit rows name it, so a load balancer in front of the internal API
//! must be listed (by its own address, not the network the waifus are on:
//! a listed address may name any client it likes).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;

use super::state::AppState;

/// The client address of a call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source(pub IpAddr);

impl<S> FromRequestParts<S> for Source
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        Ok(Source(source_of(parts, &state)))
    }
}

/// The client address of a call whose head is `parts`.
pub(crate) fn source_of(parts: &Parts, state: &AppState) -> IpAddr {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let chain = parts
        .headers
        .get_all("x-forwarded-for")
        .into_iter()
        .map(|v| v.as_bytes());
    state.trusted.client(peer, chain).to_canonical()
}
