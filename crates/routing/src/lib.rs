//! The read side of routing: the current route table and what is in it.
//!
//! The registry is the only writer ([`RouteWriter`]); the proxy, TLS, the
//! health checker and the metrics hold a [`Routes`] handle and read the
//! current [`RouteTable`] without a lock. What a route holds is data: its
//! instances' health flags ([`Instance`]), its endpoints' idle connections,
//! its request counters ([`stats`]); no task or service lives here.

mod instance;
pub mod rollout;
mod shards;
pub mod stats;
pub mod switch;
mod table;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use instance::{Busy, Instance, Outcome, now_ms_i64};
pub use table::{BindRoute, Lasting, RouteTable, WaifuRoute};

/// The table and the signal of its changes, shared by the writer and the
/// readers.
#[derive(Debug, Default)]
struct Shared {
    table: ArcSwap<RouteTable>,
    /// Signalled on every published change.
    changed: tokio::sync::Notify,
}

/// A read handle on the current route table.
#[derive(Debug, Clone)]
pub struct Routes(Arc<Shared>);

/// The one handle that publishes new tables.
#[derive(Debug)]
pub struct RouteWriter(Arc<Shared>);

/// A writer and a reader of one table, which starts empty.
pub fn routes() -> (RouteWriter, Routes) {
    let shared = Arc::new(Shared::default());
    (RouteWriter(shared.clone()), Routes(shared))
}

impl Routes {
    /// The current table; cheap, lock-free (the proxy's hot path).
    pub fn load(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.0.table.load()
    }

    /// The current table, to hold across an await.
    pub fn load_full(&self) -> Arc<RouteTable> {
        self.0.table.load_full()
    }

    /// Resolves once a table was published since the last call. One
    /// listener only (the certificate manager): a second would take turns
    /// with it.
    pub async fn changed(&self) {
        self.0.changed.notified().await;
    }
}

impl RouteWriter {
    /// The current table, to derive the next one from.
    pub fn current(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.0.table.load()
    }

    /// Makes `table` the one every reader sees.
    pub fn publish(&self, table: RouteTable) {
        self.0.table.store(Arc::new(table));
        self.0.changed.notify_one();
    }
}
