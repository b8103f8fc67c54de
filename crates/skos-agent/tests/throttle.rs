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

/// No cpufreq policy, no configured cgroup, GPU power limits off: nothing
/// to act on, which is said (and answered `unsupported`), not passed off as
/// a throttle that needed no change.
#[test]
fn no_cpufreq_policies_and_nothing_else_is_nothing_to_act_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Throttler::new(dir.path(), cfg(true, &[]), None);
    let err = t.apply(50).unwrap_err();
    assert!(matches!(err, Error::NothingToAct { .. }), "{err:?}");
    let text = err.to_string();
    let expected = format!(
        "no cpufreq policy under {}",
        dir.path().join("devices/system/cpu/cpufreq").display()
    );
    assert!(text.contains(&expected), "{text}");
    assert!(text.contains("no cgroup configured"), "{text}");
    assert!(text.contains("GPU power limits are off"), "{text}");
    assert_eq!(t.level(), 0);
    assert!(matches!(t.reset(), Err(Error::NothingToAct { .. })));
    assert!(t.actuators().is_empty());

    // A configured cgroup is something to act on: cpufreq's absence is a
    // note, not a failure.
    fake_cgroup_v2(dir.path(), "batch", "max 100000");
    let mut t = Throttler::new(dir.path(), cfg(true, &["batch"]), None);
    let out = t.apply(50).unwrap();
    assert_eq!(out.changes.len(), 1, "{out:?}");
    assert!(
        out.message.contains("no cpufreq policies found"),
        "{}",
        out.message
    );
    t.reset().unwrap();
    assert_eq!(
        read_trimmed(&dir.path().join("fs/cgroup/batch/cpu.max")),
        "max 100000"
    );
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

/// Where NVML is missing, a throttle says no GPU limit could be set and
/// still caps the CPUs. Where NVML is present (an NVIDIA machine), the real
/// GPUs' power limits are cut to the planned value and restored exactly:
/// the same test runs on both, never skipping.
#[test]
fn gpu_power_limit_is_set_and_restored_or_reported_missing() {
    let dir = tempfile::tempdir().unwrap();
    fake_cpufreq(dir.path(), 4, MIN, MAX);
    let config = ThrottleConfig {
        gpu_power_limit: true,
        ..cfg(true, &[])
    };
    let Ok(nvml) = nvml_wrapper::Nvml::init() else {
        let mut t = Throttler::new(dir.path(), config, None);
        let out = t.apply(50).unwrap();
        assert_eq!(out.changes.len(), 4, "{out:?}");
        assert!(
            out.message.contains("no GPU power limit could be set"),
            "{}",
            out.message
        );
        t.reset().unwrap();
        assert_eq!(all_khz(dir.path()), vec![MAX; 4]);
        return;
    };
    // (uuid, limit before, planned limit at throttle_50), in mW.
    let count = nvml.device_count().unwrap();
    let gpus: Vec<(String, u32, u32)> = (0..count)
        .map(|i| {
            let d = nvml.device_by_index(i).unwrap();
            let before = d.power_management_limit().unwrap();
            let default = d.power_management_limit_default().unwrap();
            let min = d.power_management_limit_constraints().unwrap().min_limit;
            let planned =
                skos_agent::throttle::gpu_power_limit(min, default, 50).min(before.max(min));
            (d.uuid().unwrap(), before, planned)
        })
        .collect();
    let limit = |uuid: &str| {
        nvml.device_by_uuid(uuid)
            .unwrap()
            .power_management_limit()
            .unwrap()
    };
    // Whatever happens below, a failed assertion included, the GPUs get
    // their limits back: a test must not leave a real machine throttled.
    struct RestoreGpus<'a>(&'a nvml_wrapper::Nvml, Vec<(String, u32)>);
    impl Drop for RestoreGpus<'_> {
        fn drop(&mut self) {
            for (uuid, mw) in &self.1 {
                if let Ok(mut d) = self.0.device_by_uuid(uuid.as_str()) {
                    if d.power_management_limit().ok() != Some(*mw) {
                        let _ = d.set_power_management_limit(*mw);
                    }
                }
            }
        }
    }
    let _restore = RestoreGpus(
        &nvml,
        gpus.iter()
            .map(|(u, before, _)| (u.clone(), *before))
            .collect(),
    );
    let mut t = Throttler::new(dir.path(), config, None);
    match t.apply(50) {
        Ok(out) => {
            for (uuid, before, planned) in &gpus {
                assert_eq!(
                    limit(uuid),
                    *planned,
                    "GPU {uuid} (was {before} mW): {out:?}"
                );
                if planned != before {
                    assert!(
                        out.changes
                            .iter()
                            .any(|c| c.target.contains(uuid.as_str())
                                && c.after == planned.to_string()),
                        "the change to GPU {uuid} is reported: {out:?}"
                    );
                }
            }
        }
        // Setting a power limit needs privileges a container may lack: the
        // refusal is an error that names the GPU, and the CPUs are capped.
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains("power limit")
                    && gpus.iter().any(|(u, _, _)| text.contains(u.as_str())),
                "{text}"
            );
            assert_eq!(all_khz(dir.path()), vec![MAX / 2; 4]);
        }
    }
    t.reset().unwrap();
    for (uuid, before, _) in &gpus {
        assert_eq!(limit(uuid), *before, "GPU {uuid} restored");
    }
    assert_eq!(all_khz(dir.path()), vec![MAX; 4]);
}

#[test]
fn real_cgroup_quota_is_cut_and_restored() {
    let name = format!("skos-test-{}", std::process::id());
    let cg = skos_testsupport::require!(
        "a real cgroup with a cpu controller",
        RealCgroup::create(&name)
    );
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

/// The throttler against a fake cpufreq *driver* (a FUSE filesystem that
/// rounds every write to its P-states and reads back what it accepted, as
/// `acpi-cpufreq` does), instead of plain files that keep whatever is
/// written.
mod driver {
    use super::*;
    use skos_agent::antibody::Antibody;
    use skos_agent::thermal::ThermalSentinel;
    use skos_core::config::Config;
    use skos_core::protocol::{Command, Heartbeat, ResultStatus};
    use skos_testsupport::cpufreq::CpufreqDriver;
    use skos_testsupport::require;

    /// An `acpi-cpufreq` table, in kHz (cpuinfo 800,000 to 3,600,000).
    const PSTATES: [u64; 8] = [
        800_000, 1_200_000, 1_600_000, 2_000_000, 2_400_000, 2_800_000, 3_200_000, 3_600_000,
    ];
    const FUSE: &str = "a FUSE mount for the fake cpufreq driver";

    /// `(target, requested, accepted)` of every policy in force.
    fn caps(caps: &[skos_agent::throttle::FreqCap]) -> Vec<(u64, u64, u64)> {
        caps.iter()
            .map(|c| (c.target_khz, c.requested_khz, c.accepted_khz))
            .collect()
    }

    #[test]
    fn each_level_lands_on_the_pstate_at_or_below_its_cap() {
        // (level, the level's cap, the highest P-state at or below it)
        for (level, target, pstate) in [
            (10, 3_240_000, 3_200_000),
            (50, 1_800_000, 1_600_000),
            (80, 800_000, 800_000),
            (100, 800_000, 800_000),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            let driver = require!(FUSE, CpufreqDriver::mount(root, 4, &PSTATES));
            let mut t = Throttler::new(root, cfg(true, &[]), None);

            let out = t.apply(level).unwrap();
            assert_eq!(all_khz(root), vec![pstate; 4], "throttle_{level}");
            assert_eq!(caps(&out.cpufreq), vec![(target, pstate, pstate); 4]);
            assert!(out.cpufreq.iter().all(|c| c.max_khz == MAX), "{out:?}");
            assert_eq!(caps(t.cpufreq_in_force()), caps(&out.cpufreq));
            let c = &out.changes[0];
            assert!(c.target.ends_with("policy0/scaling_max_freq"), "{c:?}");
            assert_eq!(
                (c.before.as_str(), c.after.as_str()),
                ("3600000", &*pstate.to_string())
            );
            // The driver was asked for the P-state itself.
            assert!(
                driver
                    .writes()
                    .iter()
                    .all(|w| w.text == pstate.to_string() && w.accepted_khz == Some(pstate)),
                "throttle_{level}: {:?}",
                driver.writes()
            );
            let effective = ((MAX - pstate) * 100 / MAX) as u8;
            assert_eq!(
                out.effective_throttle(),
                Some(effective),
                "throttle_{level}"
            );
            if pstate != target {
                let note = format!(
                    "cpufreq: {pstate} kHz in force on 4 policy(ies) for a cap of {target} kHz"
                );
                assert!(out.message.contains(&note), "{}", out.message);
            }

            let out = t.reset().unwrap();
            assert_eq!(all_khz(root), vec![MAX; 4], "throttle_{level} reset");
            assert!(out.changes.iter().all(|c| c.after == "3600000"), "{out:?}");
            assert!(out.cpufreq.is_empty() && t.cpufreq_in_force().is_empty());
        }
    }

    #[test]
    fn strongest_throttle_wins_and_reset_restores_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let driver = require!(FUSE, CpufreqDriver::mount(root, 4, &PSTATES));
        let state = dir.path().join("throttle.json");
        let mut t = Throttler::new(root, cfg(true, &[]), Some(state.clone()));

        // throttle_50: 1,800,000 asked of the level, 1,600,000 in force.
        let out = t.apply(50).unwrap();
        assert_eq!(all_khz(root), vec![1_600_000; 4]);
        assert_eq!(
            caps(&out.cpufreq),
            vec![(1_800_000, 1_600_000, 1_600_000); 4]
        );
        assert_eq!(out.effective_throttle(), Some(55));

        // throttle_10 is weaker: nothing written, the caps in force reported.
        let writes = driver.writes().len();
        let out = t.apply(10).unwrap();
        assert!(out.changes.is_empty(), "{out:?}");
        assert_eq!(
            caps(&out.cpufreq),
            vec![(1_800_000, 1_600_000, 1_600_000); 4]
        );
        // The same level again: nothing left to change.
        assert!(t.apply(50).unwrap().changes.is_empty());
        assert_eq!(driver.writes().len(), writes);

        // throttle_100: the lowest P-state.
        let out = t.apply(100).unwrap();
        assert_eq!(all_khz(root), vec![MIN; 4]);
        assert_eq!(out.changes[0].before, "1600000");
        assert_eq!(out.changes[0].after, "800000");
        assert_eq!(out.effective_throttle(), Some(77));

        // An agent restart in between: reset restores the true originals.
        drop(t);
        let mut t = Throttler::new(root, cfg(true, &[]), Some(state));
        let out = t.reset().unwrap();
        assert_eq!(out.level, 0);
        assert_eq!(out.changes.len(), 4, "{out:?}");
        assert!(out
            .changes
            .iter()
            .all(|c| c.before == "800000" && c.after == "3600000"));
        assert_eq!(all_khz(root), vec![MAX; 4]);
        assert_eq!(
            (0..4).map(|p| driver.max_khz(p)).collect::<Vec<_>>(),
            vec![MAX; 4]
        );
        assert_eq!(driver.writes().last().unwrap().text, "3600000");
    }

    #[test]
    fn a_driver_that_rounds_without_listing_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let driver = require!(FUSE, CpufreqDriver::mount_unlisted(root, 2, &PSTATES));
        let mut t = Throttler::new(root, cfg(true, &[]), None);

        // No P-state list: the level's cap is written, the driver's choice
        // is what the outcome reports.
        let out = t.apply(50).unwrap();
        assert_eq!(driver.writes()[0].text, "1800000");
        assert_eq!([read_khz(root, 0), read_khz(root, 1)], [1_600_000; 2]);
        assert_eq!(
            caps(&out.cpufreq),
            vec![(1_800_000, 1_800_000, 1_600_000); 2]
        );
        assert_eq!(out.changes[0].after, "1600000", "{out:?}");
        assert_eq!(out.effective_throttle(), Some(55));
        assert!(
            out.message.contains("1600000 kHz in force on 2 policy(ies) for a cap of 1800000 kHz (1800000 kHz written), effective throttle 55%"),
            "{}",
            out.message
        );

        // Asking again for what the driver already rounded changes nothing.
        let writes = driver.writes().len();
        let out = t.apply(50).unwrap();
        assert!(out.changes.is_empty(), "{out:?}");
        assert_eq!(driver.writes().len(), writes);
        assert_eq!(
            caps(&out.cpufreq),
            vec![(1_800_000, 1_800_000, 1_600_000); 2]
        );

        // Stronger: 1,440,000 written, 1,200,000 in force.
        let out = t.apply(60).unwrap();
        assert_eq!(
            caps(&out.cpufreq),
            vec![(1_440_000, 1_440_000, 1_200_000); 2]
        );
        assert_eq!(out.changes[0].before, "1600000");

        t.reset().unwrap();
        assert_eq!([read_khz(root, 0), read_khz(root, 1)], [MAX; 2]);
    }

    #[test]
    fn a_lower_operator_cap_is_kept_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let _driver = require!(FUSE, CpufreqDriver::mount(root, 1, &PSTATES));
        let file = root.join("devices/system/cpu/cpufreq/policy0/scaling_max_freq");
        fs::write(&file, "2100000").unwrap(); // the driver makes it 2,000,000
        assert_eq!(read_khz(root, 0), 2_000_000);
        let mut t = Throttler::new(root, cfg(true, &[]), None);

        // throttle_10 (3,200,000) would loosen the operator's cap.
        let out = t.apply(10).unwrap();
        assert!(out.changes.is_empty(), "{out:?}");
        assert_eq!(caps(&out.cpufreq), vec![(3_240_000, 2_000_000, 2_000_000)]);
        assert_eq!(out.effective_throttle(), Some(44));

        t.apply(50).unwrap();
        assert_eq!(read_khz(root, 0), 1_600_000);
        t.reset().unwrap();
        assert_eq!(read_khz(root, 0), 2_000_000);
    }

    #[test]
    fn results_and_heartbeats_report_the_cap_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let _driver = require!(FUSE, CpufreqDriver::mount(root, 4, &PSTATES));
        let mut config = Config {
            sysfs_root: root.to_path_buf(),
            ..Config::default()
        };
        config.thermal.gpu.nvml = false;
        config.thermal.gpu.nvidia_smi = false;
        config.thermal.gpu.lm_sensors = false;
        config.thermal.throttle = cfg(true, &[]);
        let mut sentinel = ThermalSentinel::new(&config, None);
        let command = |action: &str| Command {
            action_id: format!("test:{action}"),
            action_type: action.into(),
            parameters: Default::default(),
            timestamp: chrono::Utc::now(),
            node: None,
            deadline: None,
            cause: None,
            problem: None,
            term: None,
            level: None,
        };
        let heartbeat = |sentinel: &ThermalSentinel| {
            let mut hb = Heartbeat::bare(
                "a",
                "thermal_sentinel",
                skos_core::NodeName::parse("nova").unwrap(),
                chrono::Utc::now(),
            );
            sentinel.report(&mut hb);
            hb
        };

        let out = sentinel.execute(&command("throttle_50"));
        assert_eq!(out.status, ResultStatus::Succeeded, "{out:?}");
        let expected = serde_json::json!({
            "policies": 4,
            "min_cap_khz": 1_600_000,
            "max_cap_khz": 1_600_000,
            "effective_throttle": 55,
        });
        assert_eq!(out.details["cpufreq"], expected, "{out:?}");
        let hb = heartbeat(&sentinel);
        assert_eq!(hb.throttle_level, Some(50));
        assert_eq!(hb.metadata["cpufreq"], expected, "{hb:?}");

        let out = sentinel.execute(&command("reset_throttle"));
        assert_eq!(out.status, ResultStatus::Succeeded, "{out:?}");
        assert!(!out.details.contains_key("cpufreq"), "{out:?}");
        assert_eq!(all_khz(root), vec![MAX; 4]);
        let hb = heartbeat(&sentinel);
        assert_eq!(hb.throttle_level, Some(0));
        assert!(!hb.metadata.contains_key("cpufreq"), "{hb:?}");
    }
}
