//! Test support for SKOS.
//!
//! * [`nats`]: a real `nats-server` per test: random port, JetStream store
//!   in a temp dir, killed on drop, restartable on the same port.
//! * [`sysfs`]: fake sysfs trees shaped like real machines (hwmon, thermal
//!   zones, links into `devices/`).
//! * [`cpufreq`]: fake cpufreq policy trees and real cgroup helpers.
//! * [`netns`]: network namespaces, veth pairs and real WireGuard tunnels
//!   (wireguard-go), cleaned up on drop.
//! * [`procgroup`]: scripts in a process group of their own, killed whole
//!   on drop (loop-breaker tests).

pub mod cpufreq;
pub mod nats;
pub mod netns;
pub mod procgroup;
pub mod sinks;
pub mod sysfs;
pub mod tmpfs;
