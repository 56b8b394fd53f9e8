//! What the internal API's handlers share.

use std::sync::Arc;

use super::tokens::Tokens;
use crate::ops::graphs::Graphs;
use crate::ops::incidents::Incidents;
use crate::ops::metrics::Metrics;
use crate::ownership::Ownership;
use crate::provision::Provisioner;
use crate::registry::Registry;
use crate::routing::Routes;
use crate::store::Store;

/// What the handlers share.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub registry: Arc<Registry>,
    pub routes: Routes,
    pub ownership: Arc<Ownership>,
    pub provisioner: Arc<Provisioner>,
    pub incidents: Incidents,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// The status page's traffic graphs.
    pub graphs: Arc<Graphs>,
    /// What a rollout does unless told otherwise.
    pub rollouts: RolloutDefaults,
    /// The bearer tokens calls must carry.
    pub tokens: Arc<Tokens>,
    /// Where each call runs, so it can be answered at the deadline.
    pub calls: Calls,
    /// Load balancers whose `X-Forwarded-For` names the caller.
    pub trusted: crate::proxy::trusted::TrustedProxies,
    /// Where an upgrade is asked for; `None` when this orchestrator is not
    /// a process of its own (embedded, as in tests).
    pub upgrades: Option<crate::upgrade::Asks>,
}

/// `ROLLOUT_STEPS` and `ROLLOUT_INTERVAL`.
#[derive(Debug, Clone)]
pub(crate) struct RolloutDefaults {
    pub steps: Vec<i32>,
    pub interval: std::time::Duration,
}

/// Where calls run: tracked, and cut once shutdown's drain is over.
#[derive(Debug, Clone)]
pub(crate) struct Calls {
    pub tasks: tokio_util::task::TaskTracker,
    /// Cancelled when draining is over.
    pub stop: tokio_util::sync::CancellationToken,
}
