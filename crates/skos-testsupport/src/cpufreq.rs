//! Fake cpufreq policy trees and cgroups (v1 and v2) under a test root, and
//! a helper that makes a REAL cgroup under `/sys/fs/cgroup` for tests that
//! must see the kernel accept a quota.
//!
//! The fake trees have the shape of the kernel's:
//!
//! * `<root>/devices/system/cpu/cpufreq/policyN/{cpuinfo_min_freq,
//!   cpuinfo_max_freq,scaling_max_freq,scaling_min_freq}` (kHz, one value and
//!   a newline, as sysfs shows them) and `<root>/devices/system/cpu/online`;
//! * cgroup v2: `<root>/fs/cgroup/<rel>/cpu.max` (`"max 100000"`);
//! * cgroup v1: `<root>/fs/cgroup/cpu/<rel>/{cpu.cfs_quota_us,cpu.cfs_period_us}`.
//!
//! [`fake_cpufreq`] makes plain files, which keep any value written to them.
//! A real driver only runs at its P-states; [`CpufreqDriver`] (a FUSE
//! filesystem, see [`driver`]) rounds every write the way one does.

pub mod driver;

pub use driver::{CpufreqDriver, DriverWrite};

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, text).unwrap();
}

/// `<root>/devices/system/cpu/cpufreq/policy<policy>`.
pub use skos_sandbox::sysfs::policy_dir;

/// Builds `policies` cpufreq policies (`policy0`..) whose frequencies range
/// from `min_khz` to `max_khz`, with `scaling_max_freq` at `max_khz` and
/// `scaling_min_freq` at `min_khz`, and `devices/system/cpu/online` listing
/// one CPU per policy (`"0-3"` for four).
pub fn fake_cpufreq(root: &Path, policies: usize, min_khz: u64, max_khz: u64) {
    skos_sandbox::sysfs::cpufreq(root, policies, min_khz, max_khz)
        .unwrap_or_else(|e| panic!("fake cpufreq: {e}"));
}

/// The `scaling_max_freq` of `policy<policy>`, in kHz.
///
/// On a plain-file tree an agent's write (truncate, then write, as on
/// sysfs) can be seen half done: an empty read is retried for up to a
/// second before it is an error.
pub fn read_khz(root: &Path, policy: usize) -> u64 {
    let path = policy_dir(root, policy).join("scaling_max_freq");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let text = fs::read_to_string(&path).unwrap();
        if text.trim().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
            continue;
        }
        return text
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", path.display()));
    }
}

/// Creates the cgroup v2 directory `<root>/fs/cgroup/<rel>` with `cpu.max`
/// holding `cpu_max` (e.g. `"max 100000"`); returns the directory.
pub fn fake_cgroup_v2(root: &Path, rel: &str, cpu_max: &str) -> PathBuf {
    let dir = root.join("fs/cgroup").join(rel);
    write(&dir.join("cpu.max"), &format!("{}\n", cpu_max.trim_end()));
    dir
}

/// Creates the cgroup v1 directory `<root>/fs/cgroup/cpu/<rel>` with
/// `cpu.cfs_quota_us` (`-1` = unlimited) and `cpu.cfs_period_us`; returns the
/// directory.
pub fn fake_cgroup_v1(root: &Path, rel: &str, quota: i64, period: u64) -> PathBuf {
    let dir = root.join("fs/cgroup/cpu").join(rel);
    write(&dir.join("cpu.cfs_quota_us"), &format!("{quota}\n"));
    write(&dir.join("cpu.cfs_period_us"), &format!("{period}\n"));
    dir
}

/// A file's content without its trailing newline.
pub fn read_trimmed(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim_end()
        .to_string()
}

/// Which cgroup hierarchy a [`RealCgroup`] lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Unified hierarchy: `/sys/fs/cgroup/<rel>/cpu.max`.
    V2,
    /// Legacy `cpu` hierarchy: `/sys/fs/cgroup/cpu/<rel>/cpu.cfs_quota_us`.
    V1,
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A real cgroup with the CPU controller, made for one test and removed
/// (`rmdir`) on drop.
///
/// On a cgroup v2 machine (`/sys/fs/cgroup/cgroup.controllers` lists `cpu`)
/// it is `/sys/fs/cgroup/<name>`, with `+cpu` enabled in the root's
/// `cgroup.subtree_control` when needed. On a cgroup v1 (or hybrid) machine
/// whose `cpu` controller is mounted at `/sys/fs/cgroup/cpu` (or
/// `cpu,cpuacct`) it is `/sys/fs/cgroup/cpu/<name>`. Either way
/// [`RealCgroup::rel`] is the path to configure in `ThrottleConfig::cgroups`
/// with a sysfs root of `/sys`.
#[derive(Debug)]
pub struct RealCgroup {
    path: PathBuf,
    rel: PathBuf,
    version: CgroupVersion,
}

impl RealCgroup {
    /// Makes the cgroup `name` (a single path component), or says why it
    /// cannot be made here (not root, no cgroup with a `cpu` controller…).
    pub fn create(name: &str) -> Result<RealCgroup, String> {
        let single = Path::new(name).components().count() == 1
            && !name.is_empty()
            && !name.contains('/')
            && name != "."
            && name != "..";
        if !single {
            return Err(format!("{name:?} is not a single path component"));
        }
        let root = Path::new(CGROUP_ROOT);
        let mut reasons = Vec::new();

        // cgroup v2 (unified hierarchy mounted at /sys/fs/cgroup).
        let controllers = root.join("cgroup.controllers");
        match fs::read_to_string(&controllers) {
            Ok(text) if has_word(&text, "cpu") => {
                return Self::create_v2(root, name);
            }
            Ok(text) => reasons.push(format!(
                "{}: no cpu controller (has {:?})",
                controllers.display(),
                text.trim()
            )),
            Err(e) => reasons.push(format!("{}: {e} (no cgroup2 here)", controllers.display())),
        }

        // cgroup v1: the cpu controller's own hierarchy.
        for hier in ["cpu", "cpu,cpuacct"] {
            let base = root.join(hier);
            if base.join("cpu.cfs_quota_us").is_file() {
                return Self::create_v1(&base, name);
            }
            reasons.push(format!("{}: no cpu.cfs_quota_us", base.display()));
        }
        Err(reasons.join("; "))
    }

    fn create_v2(root: &Path, name: &str) -> Result<RealCgroup, String> {
        let subtree = root.join("cgroup.subtree_control");
        let enabled =
            fs::read_to_string(&subtree).map_err(|e| format!("{}: {e}", subtree.display()))?;
        if !has_word(&enabled, "cpu") {
            fs::write(&subtree, "+cpu").map_err(|e| {
                format!(
                    "cannot enable the cpu controller in {}: {e}{}",
                    subtree.display(),
                    hint(&e)
                )
            })?;
        }
        let path = root.join(name);
        make_dir(&path)?;
        let cg = RealCgroup {
            path,
            rel: PathBuf::from(name),
            version: CgroupVersion::V2,
        };
        if !cg.quota_file().is_file() {
            return Err(format!(
                "{}: no cpu.max although the cpu controller is enabled",
                cg.path.display()
            ));
        }
        Ok(cg)
    }

    fn create_v1(base: &Path, name: &str) -> Result<RealCgroup, String> {
        let path = base.join(name);
        make_dir(&path)?;
        let cg = RealCgroup {
            path,
            rel: PathBuf::from(name),
            version: CgroupVersion::V1,
        };
        if !cg.quota_file().is_file() {
            return Err(format!("{}: no cpu.cfs_quota_us", cg.path.display()));
        }
        Ok(cg)
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path to put in `ThrottleConfig::cgroups` (relative to
    /// `/sys/fs/cgroup`, or to the v1 `cpu` hierarchy).
    pub fn rel(&self) -> &Path {
        &self.rel
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// `cpu.max` (v2) or `cpu.cfs_quota_us` (v1).
    pub fn quota_file(&self) -> PathBuf {
        match self.version {
            CgroupVersion::V2 => self.path.join("cpu.max"),
            CgroupVersion::V1 => self.path.join("cpu.cfs_quota_us"),
        }
    }

    /// The quota file's content, trimmed (`"max 100000"`, `"-1"`…).
    pub fn read_quota(&self) -> String {
        read_trimmed(&self.quota_file())
    }
}

impl Drop for RealCgroup {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir(&self.path) {
            eprintln!("cannot remove cgroup {}: {e}", self.path.display());
        }
    }
}

fn make_dir(path: &Path) -> Result<(), String> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create {}: {e}{}", path.display(), hint(&e))),
    }
}

fn hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        ErrorKind::PermissionDenied => " (not root, or a read-only cgroup mount)",
        ErrorKind::ResourceBusy => " (processes live in this cgroup: no internal processes rule)",
        _ => "",
    }
}

fn has_word(text: &str, word: &str) -> bool {
    text.split_whitespace().any(|w| w == word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_tree_has_the_kernel_shape() {
        let dir = tempfile::tempdir().unwrap();
        fake_cpufreq(dir.path(), 4, 800_000, 3_600_000);
        assert_eq!(read_khz(dir.path(), 3), 3_600_000);
        assert_eq!(
            read_trimmed(&dir.path().join("devices/system/cpu/online")),
            "0-3"
        );
        let v2 = fake_cgroup_v2(dir.path(), "work/batch", "max 100000");
        assert_eq!(read_trimmed(&v2.join("cpu.max")), "max 100000");
        let v1 = fake_cgroup_v1(dir.path(), "batch", -1, 100_000);
        assert_eq!(read_trimmed(&v1.join("cpu.cfs_quota_us")), "-1");
    }

    #[test]
    fn real_cgroup_rejects_nested_names() {
        assert!(RealCgroup::create("a/b").is_err());
        assert!(RealCgroup::create("..").is_err());
    }
}
