//! The SKOS node agent and its antibodies.
//!
//! * [`sensors`]: temperature discovery and reading (sysfs under an
//!   injectable root, NVML, `nvidia-smi`, `sensors -j`); pure parsers.
//! * [`throttle`]: the thermal actuator (cpufreq caps, cgroup CPU quotas).
//! * [`thermal`]: the thermal sentinel antibody (alerts with hysteresis,
//!   throttle commands).
//! * [`storage`]: the storage watcher antibody (statvfs, fill rate, cleanup,
//!   log rotation, verified archiving, notifications).
//! * [`notify`]: telling a person (webhook, SMTP, command).
//! * [`antibody`]: what every antibody offers the runtime, and the list.
//! * [`runtime`]: heartbeats, the monitor loop, command execution.

pub mod antibody;
pub mod error;
pub mod loops;
pub mod mesh;
pub mod notify;
pub mod outcome;
pub mod runtime;
pub mod sensors;
pub mod storage;
pub mod thermal;
pub mod throttle;

pub use error::{Error, Result};
pub use outcome::Outcome;
