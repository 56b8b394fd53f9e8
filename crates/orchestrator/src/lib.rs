//! The waifus orchestrator: registration, reverse proxy, health checks and
//! persistence.
//!
//! Where a request goes (docs/architecture.md draws it):
//! - public listener → [`edge`] (accept, strict HTTP/1, fast path) →
//!   [`proxy`] (guard, route lookup, headers) → [`upstream`] (the HTTP/1.1
//!   client to waifus);
//! - internal listener → [`api`] → [`registry`] (the only writer of routing
//!   state, stored in [`store`]) → a new [`routing::RouteTable`], which the
//!   proxy, [`tls`], [`health`] and [`ops`] read through a
//!   [`routing::Routes`] handle without locks;
//! - [`app`] builds and wires all of it; HTTP/1 rules live once, in the
//!   `waifus-http1` crate.
//!
//! Dependencies run one way: `edge → proxy → routing → upstream → http1`,
//! and nothing below imports what is above it.

pub mod admin;
mod api;
mod app;
mod config;
mod data;
mod edge;
mod managed;
mod ops;
mod ownership;
mod private_file;
mod provision;
mod proxy;
mod registry;
#[doc(hidden)]
pub mod testing;
mod tls;
pub mod upgrade;

// The lower rooms are crates of their own, so none of them can import
// anything above it.
use waifus_routing as routing;
use waifus_store as store;
use waifus_upstream as upstream;

pub use app::{Listeners, Process, RunError, run, run_process};
pub use config::commands::{
    AuditArgs, CheckArgs, ClaimAction, ClaimArgs, Cli, ClientArgs, Command, DbAction, DbArgs,
    HistoryArgs, IncidentsArgs, MaintenanceArgs, PauseArgs, ResumeArgs, RolloutArgs, StateArgs,
    VersionArgs,
};
pub use config::{Config, ConfigError, HelloSecret, LogFormat, Settings};
pub use managed::ManagedError;
pub use ops::status;
pub use store::StoreError;
