//! The SKOS coordinator: the immune system's brain.
//!
//! * [`engine`]: a synchronous state machine. It takes heartbeats, alerts,
//!   results and clock ticks (time passed in) and returns [`engine::Effect`]s:
//!   commands to send, alerts to raise, audit entries to write. All healing
//!   decisions, breakers, rate limits, verification and offline detection
//!   live here, testable without a bus.
//! * [`service`]: the async shell that feeds the engine from the bus and
//!   carries out its effects, in order, before acknowledging a message.
//! * [`status`]: the status report (`skos status`).
//! * [`control`]: operators' requests (silences, forgetting a node).
//! * `consumers`: each agent's command consumer, made by the leader for
//!   every node it knows, so agents need no right to create one.
//! * [`failpoint`]: kill points for crash-safety tests (`SKOS_FAILPOINT`),
//!   inert when unset.

mod consumers;
pub mod control;
pub mod engine;
/// Kill points live beside the audit trail (its rotation has some too).
pub use skos_bus::failpoint;
pub mod gaps;
pub mod service;
pub mod status;

use skos_core::escape::ShowPath;

pub use engine::{Effect, Engine};
pub use service::{run, ServiceOptions};
pub use status::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bus(#[from] skos_bus::Error),
    /// The leader's lease was not renewed in time: it writes nothing more.
    #[error("no longer the leader: the lease was not renewed in time")]
    NotLeader,
    #[error("{}: {source}", .path.escaped())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
