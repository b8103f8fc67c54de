//! The pure core of SKOS.
//!
//! Everything here is plain data and pure functions: protocol messages, node
//! names, configuration, the healing tables, threshold tracking with
//! hysteresis, trends (least squares over a window), circuit breakers and the
//! audit hash chain. Nothing in this
//! crate reads a file, opens a socket or looks at the clock: time is always
//! passed in, and text is always handed over already read.

pub mod audit;
pub mod breaker;
pub mod catalogue;
pub mod chain;
pub mod config;
pub mod counters;
pub mod escape;
pub mod events;
pub mod level;
pub mod node;
pub mod policy;
pub mod protocol;
pub mod recent;
pub mod redact;
pub mod timefmt;
pub mod trend;
pub mod workload;

pub use node::{NodeName, NodeNameError};
pub use protocol::{
    Alert, AlertKind, AuditEntry, AuditEvent, Command, CommandResult, Heartbeat, ResultStatus,
    Severity,
};
pub use workload::{WorkloadName, WorkloadReport, WorkloadState};
