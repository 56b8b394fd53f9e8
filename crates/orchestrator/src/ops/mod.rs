//! What operators read: metrics, the status page, incidents.
//!
//! Readers of routing state (a [`crate::routing::Routes`] handle) and of the
//! store; none of them changes routing.

pub(crate) mod availability;
pub mod graphs;
pub(crate) mod incidents;
pub(crate) mod metrics;
pub(crate) mod outages;
pub mod status;
