//! The SKOS node agent and its antibodies.
//!
//! * [`thermal`]: the thermal sentinel antibody (alerts with hysteresis,
//!   throttle commands), with its [`sensors`] (temperature discovery and
//!   reading; pure parsers) and [`throttle`] (the actuator: cpufreq caps,
//!   cgroup CPU quotas, GPU power limits).
//! * [`storage`]: the storage watcher antibody (statvfs, fill rate, cleanup,
//!   log rotation, verified archiving), with [`notify`] (telling a person:
//!   webhook, SMTP, command; `alert_human`).
//! * [`loops`]: the loop breaker antibody (cooperative chains, process
//!   groups).
//! * [`mesh`]: the mesh healer antibody (WireGuard tunnels, peers,
//!   failover routes).
//! * [`workloads`]: the workloads antibody (processes, containers and
//!   systemd units started, stopped and health-checked; their state in
//!   heartbeats).
//! * [`antibody`]: what every antibody offers the runtime.
//! * [`registry`]: the antibodies this build has, and which are enabled.
//! * [`runtime`]: heartbeats, the monitor loop, command execution.

pub mod antibody;
pub mod error;
pub mod held;
pub mod loops;
pub mod mesh;
pub mod netlink;
pub mod offloop;
pub mod outcome;
pub mod registry;
pub mod runtime;
pub mod storage;
pub mod thermal;
pub mod workloads;

pub use error::{Error, Result};
pub use outcome::Outcome;
/// Modules of the antibodies, at their former paths.
pub use storage::notify;
pub use thermal::{sensors, throttle};
