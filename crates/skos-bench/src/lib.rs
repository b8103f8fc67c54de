//! The SKOS benchmark harness.
//!
//! Every figure is measured beside its ceiling in the same run, because the
//! machines it runs on are shared and noisy: an absolute time alone means
//! little, a ratio measured side by side means more.
//!
//! * [`ingest`]: heartbeats and alerts from many simulated nodes through a
//!   real nats-server into the coordinator, beside a plain subscriber and a
//!   plain JetStream pull consumer counting the same burst.
//! * [`latency`]: alert → command and alert → audit entry, beside the bus's
//!   own request/reply round trip and JetStream publish → ack.
//! * [`fairness`]: another node's alert → command while one node floods
//!   alerts, beside the same without the flood.
//! * [`detection`]: sensor change → command executed on the node, through
//!   the real `skos coordinator` and `skos agent` processes; offline
//!   detection after SIGKILL.
//! * [`footprint`]: memory and CPU of an idle agent, an idle coordinator and
//!   a coordinator tracking many simulated nodes.
//! * [`embedded`]: the hot-CPU scenario through `skos up`.
//! * [`failover`]: emergency temperature or a dead agent → the essential
//!   workload healthy on a hot spare, across three network namespaces.
//! * [`efficacy`]: each healing-table row's fault injected on real
//!   components several times; detected, healed, escalated, recovery
//!   times and false remediations, from the audit trail.
//!
//! Supporting modules: [`report`] (figures, targets, the table), [`stats`],
//! [`procfs`] (VmRSS, VmHWM, CPU time), [`procs`] (child processes killed on
//! drop), [`natsutil`] (the server and clients), [`sim`] (simulated
//! messages), [`coord`] (an in-process coordinator), [`progress`].

pub mod coord;
pub mod detection;
pub mod efficacy;
pub mod embedded;
pub mod error;
pub mod failover;
pub mod fairness;
pub mod footprint;
pub mod hotcpu;
pub mod ingest;
pub mod latency;
pub mod logged;
pub mod machine;
pub mod natsutil;
pub mod opts;
pub mod procfs;
pub mod procs;
pub mod progress;
pub mod report;
pub mod sim;
pub mod stats;

pub use error::{Error, Result};
pub use opts::Opts;
pub use report::{Figure, SectionReport};

/// Print a progress line on stderr, prefixed with the section.
pub fn say(section: &str, msg: impl AsRef<str>) {
    eprintln!("[{section}] {}", msg.as_ref());
}
