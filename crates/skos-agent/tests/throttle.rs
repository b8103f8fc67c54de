//! The thermal actuator against fake sysfs trees, and against a real cgroup.

use std::fs;
use std::path::{Path, PathBuf};

use skos_agent::throttle::{cgroup_quota, parse_cpu_list, Throttler};
use skos_agent::Error;
use skos_core::config::ThrottleConfig;
use skos_testsupport::cpufreq::{
    fake_cgroup_v1, fake_cgroup_v2, fake_cpufreq, read_khz, read_trimmed, CgroupVersion, RealCgroup,
};

const MIN: u64 = 800_000;
const MAX: u64 = 3_600_000;

fn cfg(cpufreq: bool, cgroups: &[&str]) -> ThrottleConfig {
    ThrottleConfig {
        cpufreq,
        cgroups: cgroups.iter().map(PathBuf::from).collect(),
        ..ThrottleConfig::default()
    }
}

fn all_khz(root: &Path) -> Vec<u64> {
    (0..4).map(|n| read_khz(root, n)).collect()
}

#[test]
fn cpufreq_strongest_throttle_wins_and_reset_restores() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fake_cpufreq(root, 4, MIN, MAX);
    let mut t = Throttler::new(root, cfg(true, &[]), None);
    assert_eq!(t.level(), 0);

    let out = t.apply(50).unwrap();
    assert_eq!(out.level, 50);
    assert_eq!(all_khz(root), vec![1_800_000; 4]);
    assert_eq!(out.changes.len(), 4, "{out:?}");
    let c = &out.changes[0];
    assert!(c.target.ends_with("policy0/scaling_max_freq"), "{c:?}");
    assert_eq!(
        (c.before.as_str(), c.after.as_str()),
        ("3600000", "1800000")
    );
    assert_eq!(t.level(), 50);

    // A weaker throttle while a stronger one is active changes nothing.
    let out = t.apply(10).unwrap();
    assert_eq!(out.level, 50);
    assert!(out.changes.is_empty());
    assert!(out.message.contains("weaker"), "{}", out.message);
    assert_eq!(all_khz(root), vec![1_800_000; 4]);
    assert_eq!(t.level(), 50);

    // The same level again: nothing left to change.
    let out = t.apply(50).unwrap();
    assert!(out.changes.is_empty(), "{out:?}");

    // Stronger: down to cpuinfo_min_freq, never below.
    let out = t.apply(100).unwrap();
    assert_eq!(out.level, 100);
    assert_eq!(all_khz(root), vec![MIN; 4]);
    assert_eq!(out.changes[0].before, "1800000");

    // Reset restores the true originals, not the 50% values.
    let out = t.reset().unwrap();
    assert_eq!(out.level, 0);
    assert_eq!(out.changes.len(), 4);
    assert_eq!(all_khz(root), vec![MAX; 4]);
    assert_eq!(t.level(), 0);

    // Nothing left to restore.
    let out = t.reset().unwrap();
    assert!(out.changes.is_empty());
    assert_eq!(all_khz(root), vec![MAX; 4]);
}

#[test]
fn throttle_never_raises_a_lower_operator_cap() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fake_cpufreq(root, 1, MIN, MAX);
    let file = root.join("devices/system/cpu/cpufreq/policy0/scaling_max_freq");
    fs::write(&file, "2000000\n").unwrap();
    let mut t = Throttler::new(root, cfg(true, &[]), None);
    t.apply(10).unwrap(); // 3,240,000 would be higher than the operator's cap
    assert_eq!(read_khz(root, 0), 2_000_000);
    t.apply(50).unwrap();
    assert_eq!(read_khz(root, 0), 1_800_000);
    t.reset().unwrap();
    assert_eq!(read_khz(root, 0), 2_000_000);
}

#[test]
fn broken_policy_is_skipped_others_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fake_cpufreq(root, 4, MIN, MAX);
    let broken = root.join("devices/system/cpu/cpufreq/policy2");
    fs::write(broken.join("cpuinfo_max_freq"), "garbage\n").unwrap();
    fs::remove_file(root.join("devices/system/cpu/cpufreq/policy3/cpuinfo_min_freq")).unwrap();
    let mut t = Throttler::new(root, cfg(true, &[]), None);
    let out = t.apply(50).unwrap();
    assert_eq!(out.changes.len(), 2, "{out:?}");
    assert_eq!(all_khz(root), vec![1_800_000, 1_800_000, MAX, MAX]);
    t.reset().unwrap();
    assert_eq!(all_khz(root), vec![MAX; 4]);
}

#[test]
fn no_cpufreq_policies_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Throttler::new(dir.path(), cfg(true, &[]), None);
    let out = t.apply(50).unwrap();
    assert!(out.changes.is_empty());
    let expected = format!(
        "no cpufreq policies found under {}",
        dir.path().join("devices/system/cpu/cpufreq").display()
    );
    assert!(out.message.contains(&expected), "{}", out.message);
    assert_eq!(t.level(), 50);
    t.reset().unwrap();
    assert_eq!(t.level(), 0);
}

#[test]
fn levels_outside_1_to_100_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    fake_cpufreq(dir.path(), 1, MIN, MAX);
    let mut t = Throttler::new(dir.path(), cfg(true, &[]), None);
    assert!(t.apply(0).is_err());
    assert!(t.apply(101).is_err());
    assert_eq!(read_khz(dir.path(), 0), MAX);
    assert_eq!(t.level(), 0);
}

#[test]
fn cgroup_v2_and_v1_quotas_are_cut_and_restored() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fake_cpufreq(root, 4, MIN, MAX); // online = "0-3": 4 CPUs
    let v2 = fake_cgroup_v2(root, "workload/batch", "max 100000");
    let v1 = fake_cgroup_v1(root, "legacy", -1, 100_000);
    let mut t = Throttler::new(root, cfg(false, &["workload/batch", "legacy"]), None);

    let out = t.apply(50).unwrap();
    // 100000 µs * 4 CPUs * 50%
    assert_eq!(read_trimmed(&v2.join("cpu.max")), "200000 100000");
    assert_eq!(read_trimmed(&v1.join("cpu.cfs_quota_us")), "200000");
    assert_eq!(read_trimmed(&v1.join("cpu.cfs_period_us")), "100000");
    assert_eq!(out.changes.len(), 2, "{out:?}");
    assert!(out
        .changes
        .iter()
        .any(|c| c.before == "max 100000" && c.after == "200000 100000"));
    assert!(out
        .changes
        .iter()
        .any(|c| c.before == "-1" && c.after == "200000"));
    // cpufreq is off: untouched.
    assert_eq!(all_khz(root), vec![MAX; 4]);

    let _ = t.apply(100).unwrap();
    assert_eq!(read_trimmed(&v2.join("cpu.max")), "1000 100000");
    assert_eq!(read_trimmed(&v1.join("cpu.cfs_quota_us")), "1000");

    let out = t.reset().unwrap();
    assert_eq!(out.changes.len(), 2);
    assert_eq!(read_trimmed(&v2.join("cpu.max")), "max 100000");
    assert_eq!(read_trimmed(&v1.join("cpu.cfs_quota_us")), "-1");
}

#[test]
fn cgroup_v1_under_cpu_cpuacct_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fake_cpufreq(root, 2, MIN, MAX);
    let cg = root.join("fs/cgroup/cpu,cpuacct/jobs");
    fs::create_dir_all(&cg).unwrap();
    fs::write(cg.join("cpu.cfs_quota_us"), "-1\n").unwrap();
    fs::write(cg.join("cpu.cfs_period_us"), "50000\n").unwrap();
    let mut t = Throttler::new(root, cfg(false, &["jobs"]), None);
    t.apply(50).unwrap();
    assert_eq!(read_trimmed(&cg.join("cpu.cfs_quota_us")), "50000");
    t.reset().unwrap();
    assert_eq!(read_trimmed(&cg.join("cpu.cfs_quota_us")), "-1");
}

#[test]
fn tighter_existing_quota_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fake_cpufreq(root, 4, MIN, MAX);
    let v2 = fake_cgroup_v2(root, "capped", "150000 100000");
    let mut t = Throttler::new(root, cfg(false, &["capped"]), None);
    // 10% of 4 CPUs = 360000 µs: looser than 150000, so nothing changes.
    let out = t.apply(10).unwrap();
    assert!(out.changes.is_empty(), "{out:?}");
    assert_eq!(read_trimmed(&v2.join("cpu.max")), "150000 100000");
    t.apply(100).unwrap();
    assert_eq!(read_trimmed(&v2.join("cpu.max")), "1000 100000");
    t.reset().unwrap();
    assert_eq!(read_trimmed(&v2.join("cpu.max")), "150000 100000");
}

#[test]
fn missing_cgroup_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fake_cpufreq(root, 4, MIN, MAX);
    fs::create_dir_all(root.join("fs/cgroup")).unwrap();
    let mut t = Throttler::new(root, cfg(true, &["nonexistent"]), None);
    let err = t.apply(50).unwrap_err();
    assert!(err.to_string().contains("nonexistent"), "{err}");
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    // Nothing was written, cpufreq included.
    assert_eq!(all_khz(root), vec![MAX; 4]);
    assert_eq!(t.level(), 0);
}

#[test]
fn cgroup_paths_escaping_the_root_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys");
    fake_cpufreq(&root, 4, MIN, MAX);
    fake_cgroup_v2(&root, "ok", "max 100000");
    // A cgroup-looking directory outside the root, and a symlink to it.
    let outside = dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("cpu.max"), "max 100000\n").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("fs/cgroup/evil")).unwrap();
    // `..` reaching the same directory.
    let dotdot = "../../../outside";
    assert!(root.join("fs/cgroup").join(dotdot).join("cpu.max").exists());

    for bad in [dotdot, "ok/../../../outside", "evil"] {
        let mut t = Throttler::new(&root, cfg(true, &["ok", bad]), None);
        let err = t.apply(50).unwrap_err();
        assert!(matches!(err, Error::OutsideRoot { .. }), "{bad}: {err:?}");
        assert_eq!(t.level(), 0);
    }
    let abs = outside.display().to_string();
    let mut t = Throttler::new(&root, cfg(true, &[abs.as_str()]), None);
    assert!(matches!(t.apply(50), Err(Error::OutsideRoot { .. })));

    // A cpu.max that is itself a symlink out of the root.
    let sneaky = root.join("fs/cgroup/sneaky");
    fs::create_dir_all(&sneaky).unwrap();
    std::os::unix::fs::symlink(outside.join("cpu.max"), sneaky.join("cpu.max")).unwrap();
    let mut t = Throttler::new(&root, cfg(true, &["sneaky"]), None);
    assert!(matches!(t.apply(50), Err(Error::OutsideRoot { .. })));

    // Nothing was written anywhere.
    assert_eq!(read_trimmed(&outside.join("cpu.max")), "max 100000");
    assert_eq!(
        read_trimmed(&root.join("fs/cgroup/ok/cpu.max")),
        "max 100000"
    );
    assert_eq!(all_khz(&root), vec![MAX; 4]);
}

#[test]
fn restart_restores_the_true_originals_from_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys");
    fake_cpufreq(&root, 4, MIN, MAX);
    let v2 = fake_cgroup_v2(&root, "batch", "max 100000");
    let state = dir.path().join("data/throttle.json");
    let config = cfg(true, &["batch"]);

    {
        let mut t = Throttler::new(&root, config.clone(), Some(state.clone()));
        t.apply(50).unwrap();
        assert!(state.is_file());
        assert_eq!(all_khz(&root), vec![1_800_000; 4]);
    } // the agent stops

    // Restarted: still throttled, and a stronger throttle keeps the originals.
    let mut t = Throttler::new(&root, config.clone(), Some(state.clone()));
    assert_eq!(t.level(), 50);
    assert!(t.apply(10).unwrap().changes.is_empty());
    t.apply(100).unwrap();
    assert_eq!(all_khz(&root), vec![MIN; 4]);
    drop(t);

    let mut t = Throttler::new(&root, config.clone(), Some(state.clone()));
    assert_eq!(t.level(), 100);
    let out = t.reset().unwrap();
    assert_eq!(out.changes.len(), 5, "{out:?}");
    assert_eq!(all_khz(&root), vec![MAX; 4]);
    assert_eq!(read_trimmed(&v2.join("cpu.max")), "max 100000");
    assert!(!state.exists(), "state file removed on reset");
    // No temp files left behind.
    let leftovers: Vec<_> = fs::read_dir(dir.path().join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let t = Throttler::new(&root, config, Some(state));
    assert_eq!(t.level(), 0);
}

#[test]
fn gpu_power_limit_without_nvml_is_reported() {
    if nvml_wrapper::Nvml::init().is_ok() {
        // Never change a real GPU's power limit from a test.
        eprintln!("SKIP no-NVML test: NVML is present on this machine");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    fake_cpufreq(dir.path(), 2, MIN, MAX);
    let config = ThrottleConfig {
        gpu_power_limit: true,
        ..cfg(true, &[])
    };
    let mut t = Throttler::new(dir.path(), config, None);
    let out = t.apply(50).unwrap();
    assert_eq!(out.changes.len(), 2);
    assert!(
        out.message.contains("no GPU power limit could be set"),
        "{}",
        out.message
    );
    t.reset().unwrap();
}

#[test]
fn real_cgroup_quota_is_cut_and_restored() {
    let name = format!("skos-test-{}", std::process::id());
    let cg = match RealCgroup::create(&name) {
        Ok(cg) => cg,
        Err(reason) => {
            eprintln!("SKIP real cgroup test: {reason}");
            return;
        }
    };
    let rel = cg.rel().display().to_string();
    let original = cg.read_quota();
    let ncpus = fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|t| parse_cpu_list(&t))
        .unwrap_or_else(|| std::thread::available_parallelism().unwrap().get());

    let mut t = Throttler::new("/sys", cfg(false, &[rel.as_str()]), None);
    let out = t.apply(50).unwrap();
    let after = cg.read_quota();
    eprintln!(
        "real cgroup {} ({:?}): {original:?} -> {after:?}",
        cg.path().display(),
        cg.version()
    );
    match cg.version() {
        CgroupVersion::V2 => {
            let period = original.split_whitespace().nth(1).unwrap();
            let period: u64 = period.parse().unwrap();
            assert_eq!(
                after,
                format!("{} {period}", cgroup_quota(period, ncpus, 50))
            );
        }
        CgroupVersion::V1 => {
            let period: u64 = read_trimmed(&cg.path().join("cpu.cfs_period_us"))
                .parse()
                .unwrap();
            assert_eq!(after, cgroup_quota(period, ncpus, 50).to_string());
        }
    }
    assert_ne!(after, original);
    assert_eq!(out.changes.len(), 1, "{out:?}");

    t.reset().unwrap();
    assert_eq!(cg.read_quota(), original);
}
