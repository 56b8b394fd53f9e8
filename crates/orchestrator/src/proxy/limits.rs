//! The limits a request meets on its way to a waifu: its body (the
//! operator's `MAX_BODY_SIZE`, or less if the instance's hello asked), the
//! requests in flight to the instance (its hello's `maxInFlight`), and the
//! wait for the response head (`UPSTREAM_TIMEOUT`, or less).

use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};

use crate::routing::{Busy, Instance};

/// The largest body `instance` takes, under the operator's `ceiling`.
pub(super) fn max_body(instance: &Instance, ceiling: u64) -> u64 {
    instance
        .limits()
        .max_body_size
        .map_or(ceiling, |b| b.min(ceiling))
}

/// Whether a body says before it is read that it is larger than `max`
/// (its `Content-Length`, over HTTP/1.1 or HTTP/2).
pub(super) fn declared_over(body: Option<&Incoming>, max: u64) -> bool {
    body.and_then(|b| b.size_hint().exact())
        .is_some_and(|len| len > max)
}

/// How long `instance`'s response head may take, under the operator's
/// `ceiling`.
pub(super) fn response_timeout(instance: &Instance, ceiling: Duration) -> Duration {
    instance
        .limits()
        .timeout
        .map_or(ceiling, |t| t.min(ceiling))
}

/// The request counted in flight to `instance`, unless that many are
/// already as its hello allows: one atomic step, so no burst gets more in.
pub(super) fn enter(instance: Arc<Instance>) -> Option<Arc<Busy>> {
    match instance.limits().max_in_flight {
        Some(max) => Busy::within(instance, usize::try_from(max).unwrap_or(usize::MAX)),
        None => Some(Busy::new(instance)),
    }
}
