//! Test support for SKOS.
//!
//! * [`nats`]: a real `nats-server` per test: random port, JetStream store
//!   in a temp dir, killed on drop, restartable on the same port.
//! * [`sysfs`]: fake sysfs trees shaped like real machines (hwmon, thermal
//!   zones, links into `devices/`).
//! * [`cpufreq`]: fake cpufreq policy trees, a fake cpufreq driver that
//!   only takes its P-states (FUSE, [`cpufreq::CpufreqDriver`]), and real
//!   cgroup helpers.
//! * [`netns`]: network namespaces, veth pairs and real WireGuard tunnels
//!   (wireguard-go), cleaned up on drop.
//! * [`mod@require`]: what a test needs from the machine (root, tmpfs, tools);
//!   a missing prerequisite skips the test, or fails it under
//!   `SKOS_TEST_REQUIRE_ALL=1` (set by `.ci/run`).
//! * [`hungfs`]: a FUSE mount whose `statfs` never answers (a network
//!   mount whose server is gone).
//! * [`podman`]: a real container engine (`podman system service`, the
//!   Docker Engine API) on a socket in a temp dir, images built `FROM
//!   scratch` with the static busybox; all removed on drop.
//! * [`rootfs`]: a throwaway Debian root (debootstrap minbase, cached as
//!   a tar) standing in for another machine: packages and `skos install`
//!   go into it, commands run in it with `chroot`.
//! * [`procgroup`]: scripts in a process group of their own, killed whole
//!   on drop (loop-breaker tests).

pub mod cpufreq;
pub mod hungfs;
pub mod nats;
pub mod netns;
pub mod podman;
pub mod procgroup;
pub mod require;
pub mod rootfs;
pub mod sinks;
pub mod sysfs;
pub mod tmpfs;
