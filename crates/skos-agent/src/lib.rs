//! The SKOS node agent and its antibodies.
//!
//! * [`sensors`]: temperature discovery and reading (sysfs under an
//!   injectable root, NVML, `nvidia-smi`, `sensors -j`); pure parsers.
//! * [`throttle`]: the thermal actuator (cpufreq caps, cgroup CPU quotas).
//! * [`thermal`]: the thermal sentinel antibody (alerts with hysteresis,
//!   throttle commands).
//! * [`runtime`]: heartbeats, the monitor loop, command execution.

pub mod error;
pub mod runtime;
pub mod sensors;
pub mod thermal;
pub mod throttle;

pub use error::{Error, Result};
