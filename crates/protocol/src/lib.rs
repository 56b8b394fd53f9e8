//! Wire types and validation of the waifu protocol, shared by the
//! orchestrator and the SDK.
//!
//! Shared by the orchestrator, which must refuse anything malformed before it
//! touches state, and by the SDK, which should refuse it before it is sent.
//! Everything here is pure: no I/O, no allocation beyond the values returned.

mod bind;
mod health;
mod host;
mod limits;
mod name;
mod path;
mod version;
mod wire;

pub use bind::{BindError, BindKey, BindTarget, parse_bind_key, parse_bind_target};
pub use health::{DEFAULT_HEALTH_PATH, HealthPathError, MAX_HEALTH_PATH, validate_health_path};
pub use host::{HostError, Scheme, Upstream, parse_host};
pub use limits::{Limits, LimitsError, MAX_IN_FLIGHT, MAX_TIMEOUT, RequestLimits, parse_duration};
pub use name::{NameError, validate_name};
pub use path::{is_internal_segment, path_has_internal_segment};
pub use version::{
    MAX_ROLLOUT_STEPS, MAX_VERSION, VersionError, validate_rollout_steps, validate_version,
};
pub use wire::{
    AuditEntry, Availability, BindInfo, BindOutcome, DatabaseCredentials, DatabaseRequest,
    ErrorBody, Goodbye, GoodbyeResponse, Hello, HelloResponse, History, IncidentInfo, InstanceInfo,
    RefusalReason, RotateRequest, Transition, WaifuInfo,
};
