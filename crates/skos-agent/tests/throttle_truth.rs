//! A throttle SKOS applied can always be lifted, and the agent says what
//! is really in force: a cap left behind by a lost state file is reported
//! (and counted in the heartbeat's throttle level) and lifted with the
//! coordinator's copy of the originals; a throttle whose originals cannot
//! be saved is refused; a machine with nothing to throttle says so.
//! On fake cpufreq and cgroup trees, a fake cpufreq driver (FUSE) that
//! rounds to its P-states, and a read-only tmpfs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Cmd;

use serde_json::{json, Value};
use skos_agent::antibody::Antibody;
use skos_agent::thermal::ThermalSentinel;
use skos_agent::throttle::Throttler;
use skos_agent::Error;
use skos_core::catalogue::ThrottleOriginal;
use skos_core::config::{Config, ThrottleConfig};
use skos_core::protocol::{Command, Heartbeat, ResultStatus};
use skos_testsupport::cpufreq::{
    fake_cgroup_v1, fake_cgroup_v2, fake_cpufreq, policy_dir, read_khz, read_trimmed, CpufreqDriver,
};
use skos_testsupport::require;
use skos_testsupport::tmpfs::Mount;

const MIN: u64 = 800_000;
const MAX: u64 = 3_600_000;

fn cfg(cpufreq: bool, cgroups: &[&str]) -> ThrottleConfig {
    ThrottleConfig {
        cpufreq,
        cgroups: cgroups.iter().map(PathBuf::from).collect(),
        ..ThrottleConfig::default()
    }
}

fn all_khz(root: &Path, n: usize) -> Vec<u64> {
    (0..n).map(|p| read_khz(root, p)).collect()
}

fn config(root: &Path, throttle: ThrottleConfig) -> Config {
    let mut config = Config {
        sysfs_root: root.to_path_buf(),
        ..Config::default()
    };
    config.thermal.gpu.nvml = false;
    config.thermal.gpu.nvidia_smi = false;
    config.thermal.gpu.lm_sensors = false;
    config.thermal.throttle = throttle;
    config
}

fn command(action: &str, parameters: Value) -> Command {
    Command {
        action_id: format!("test:{action}"),
        action_type: action.into(),
        parameters: parameters.as_object().cloned().unwrap_or_default(),
        timestamp: chrono::Utc::now(),
        node: None,
        deadline: None,
        cause: None,
        problem: None,
        term: None,
        level: None,
    }
}

fn heartbeat(sentinel: &ThermalSentinel) -> Heartbeat {
    let mut hb = Heartbeat::bare(
        "a",
        "thermal_sentinel",
        skos_core::NodeName::parse("nova").unwrap(),
        chrono::Utc::now(),
    );
    sentinel.report(&mut hb);
    hb
}

/// What the coordinator keeps: the originals of the heartbeat's
/// `metadata.throttle`, read as the coordinator reads them.
fn coordinator_copy(hb: &Heartbeat) -> Vec<ThrottleOriginal> {
    ThrottleOriginal::parse_list(&hb.metadata["throttle"]["originals"]).unwrap()
}

fn policy_target(n: usize) -> String {
    format!("cpufreq:policy{n}")
}

/// The agent is throttled, stops, loses its data dir and starts again: the
/// cap is found, reported as unexplained and counted in the heartbeat's
/// throttle level (not 0); a reset without the coordinator's copy leaves
/// it and fails saying so; with the copy (which the agent had put in its
/// heartbeats before) it is lifted.
#[test]
fn a_cap_left_by_a_lost_data_dir_is_reported_then_lifted_with_the_coordinators_copy() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys");
    fake_cpufreq(&root, 4, MIN, MAX);
    let data = dir.path().join("data");
    let config = config(&root, cfg(true, &[]));

    let mut sentinel = ThermalSentinel::new(&config, Some(&data));
    assert!(heartbeat(&sentinel).metadata.get("throttle").is_none());
    let out = sentinel.execute(&command("throttle_50", json!({})));
    assert_eq!(out.status, ResultStatus::Succeeded, "{out:?}");
    assert_eq!(all_khz(&root, 4), vec![MAX / 2; 4]);
    let hb = heartbeat(&sentinel);
    assert_eq!(hb.throttle_level, Some(50));
    let copy = coordinator_copy(&hb);
    // Four policies with the same original: one entry.
    assert_eq!(
        copy,
        [ThrottleOriginal {
            target: "cpufreq:policy0-3".into(),
            value: MAX.to_string()
        }]
    );
    assert_eq!(out.details["throttle"]["originals"], json!(copy));

    // Killed; its data dir is gone.
    drop(sentinel);
    fs::remove_dir_all(&data).unwrap();
    let mut sentinel = ThermalSentinel::new(&config, Some(&data));
    let hb = heartbeat(&sentinel);
    assert_eq!(hb.throttle_level, Some(50), "the real cap, not 0: {hb:?}");
    let unexplained = hb.metadata["throttle"]["unexplained"].as_array().unwrap();
    assert_eq!(hb.metadata["throttle"]["unexplained_count"], 4, "{hb:?}");
    assert_eq!(unexplained.len(), 1, "four policies, one cap: {hb:?}");
    assert_eq!(unexplained[0]["target"], "cpufreq:policy0-3");
    assert_eq!(
        unexplained[0]["path"],
        policy_dir(&root, 0)
            .join("scaling_max_freq")
            .display()
            .to_string()
    );
    assert_eq!(unexplained[0]["value"], "1800000");
    assert_eq!(unexplained[0]["full"], "3600000");
    assert_eq!(unexplained[0]["percent"], 50);
    assert_eq!(hb.metadata["throttle"]["originals"], json!([]));

    // Without the coordinator's copy: nothing to restore them to.
    let out = sentinel.execute(&command("reset_throttle", json!({})));
    assert_eq!(out.status, ResultStatus::Failed, "{out:?}");
    assert!(
        out.message
            .contains("4 cap(s) not lifted, no original known here or at the coordinator"),
        "{}",
        out.message
    );
    assert_eq!(all_khz(&root, 4), vec![MAX / 2; 4]);
    assert_eq!(heartbeat(&sentinel).throttle_level, Some(50));

    // With it, as the coordinator sends it in reset_throttle.
    let out = sentinel.execute(&command(
        "reset_throttle",
        json!({ "originals": copy.clone() }),
    ));
    assert_eq!(out.status, ResultStatus::Succeeded, "{out:?}");
    assert_eq!(out.changes.len(), 4, "{out:?}");
    assert!(
        out.message
            .contains("4 from the coordinator's copy of the originals"),
        "{}",
        out.message
    );
    assert_eq!(all_khz(&root, 4), vec![MAX; 4]);
    let hb = heartbeat(&sentinel);
    assert_eq!(hb.throttle_level, Some(0));
    assert!(hb.metadata.get("throttle").is_none(), "{hb:?}");
}

/// A throttle after the data dir was lost takes the coordinator's
/// originals for the capped targets, so the reset goes back to full speed
/// even after another restart; without them the cap would be taken for the
/// original, and after the reset it is reported again, not forgotten.
#[test]
fn a_throttle_after_a_lost_data_dir_keeps_the_true_originals() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys");
    fake_cpufreq(&root, 2, MIN, MAX);
    let v2 = fake_cgroup_v2(&root, "batch", "max 100000");
    let state = dir.path().join("data/throttle.json");
    let config = cfg(true, &["batch"]);

    let mut t = Throttler::new(&root, config.clone(), Some(state.clone()));
    t.apply(50).unwrap();
    let copy = t.report().originals;
    assert_eq!(copy.len(), 2, "{copy:?}");
    assert!(copy
        .iter()
        .any(|o| o.target == "file:fs/cgroup/batch/cpu.max" && o.value == "max 100000"));
    drop(t);
    fs::remove_file(&state).unwrap();

    let mut t = Throttler::new(&root, config.clone(), Some(state.clone()));
    let unexplained = t.unexplained_caps();
    assert_eq!(unexplained.len(), 3, "{unexplained:?}");
    let quota = unexplained
        .iter()
        .find(|u| u.target == "file:fs/cgroup/batch/cpu.max")
        .unwrap();
    // 2 CPUs at 50 %: 100000 of 200000 µs.
    assert_eq!(
        (quota.value.as_str(), quota.full.as_str(), quota.percent),
        ("100000 100000", "max 100000", 50)
    );
    assert_eq!(t.report().effective_level, 50);

    let out = t.apply_with(100, &copy).unwrap();
    assert!(
        out.message
            .contains("3 original(s) taken from the coordinator's copy"),
        "{}",
        out.message
    );
    assert_eq!(all_khz(&root, 2), vec![MIN; 2]);
    assert!(out.unexplained.is_empty(), "{out:?}");
    assert_eq!(
        t.report().originals,
        copy,
        "the true originals are recorded"
    );
    drop(t);

    // Restarted with its (new) state file: a plain reset is enough.
    let mut t = Throttler::new(&root, config.clone(), Some(state.clone()));
    assert!(t.unexplained_caps().is_empty());
    let out = t.reset().unwrap();
    assert_eq!(out.changes.len(), 3, "{out:?}");
    assert_eq!(all_khz(&root, 2), vec![MAX; 2]);
    assert_eq!(read_trimmed(&v2.join("cpu.max")), "max 100000");

    // Without the coordinator's copy the cap is taken for the original:
    // the reset goes back to it, and it is reported, never left silently.
    t.apply(50).unwrap();
    drop(t);
    fs::remove_file(&state).unwrap();
    let mut t = Throttler::new(&root, config, Some(state));
    t.apply(100).unwrap();
    let out = t.reset().unwrap();
    assert_eq!(all_khz(&root, 2), vec![MAX / 2; 2]);
    assert_eq!(out.unexplained.len(), 3, "{out:?}");
    assert_eq!(t.report().effective_level, 50);
}

/// The coordinator's copy only gives values to targets the agent found
/// itself, and only values they can hold: a target it does not have, a
/// frequency outside the policy's range and a malformed quota are not
/// used, and no other file is touched.
#[test]
fn the_coordinators_copy_only_fills_in_targets_found_here() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys");
    fake_cpufreq(&root, 2, MIN, MAX);
    let v2 = fake_cgroup_v2(&root, "batch", "100000 100000");
    fs::write(policy_dir(&root, 0).join("scaling_max_freq"), "1800000\n").unwrap();
    fs::write(policy_dir(&root, 1).join("scaling_max_freq"), "1800000\n").unwrap();
    let bystander = root.join("devices/system/cpu/cpufreq/policy0/scaling_min_freq");
    let mut t = Throttler::new(&root, cfg(true, &["batch"]), None);
    assert_eq!(t.unexplained_caps().len(), 3);

    let given = vec![
        // Out of the policy's range.
        ThrottleOriginal {
            target: policy_target(0),
            value: "9000000".into(),
        },
        // Fine.
        ThrottleOriginal {
            target: policy_target(1),
            value: "3600000".into(),
        },
        // Not a cpu.max.
        ThrottleOriginal {
            target: "file:fs/cgroup/batch/cpu.max".into(),
            value: "-1".into(),
        },
        // Not a target of this throttler.
        ThrottleOriginal {
            target: "file:devices/system/cpu/cpufreq/policy0/scaling_min_freq".into(),
            value: "3600000".into(),
        },
        ThrottleOriginal {
            target: policy_target(7),
            value: "3600000".into(),
        },
    ];
    let out = t.reset_with(&given).unwrap();
    assert_eq!(out.changes.len(), 1, "{out:?}");
    assert_eq!(all_khz(&root, 2), vec![1_800_000, MAX]);
    assert_eq!(read_trimmed(&v2.join("cpu.max")), "100000 100000");
    assert_eq!(read_trimmed(&bystander), MIN.to_string());
    let left: Vec<String> = out.unexplained.iter().map(|u| u.target.clone()).collect();
    assert_eq!(
        left,
        [policy_target(0), "file:fs/cgroup/batch/cpu.max".to_string()]
    );
}

/// Caps SKOS did not set are reported at start, with the share they take
/// away; a policy held at its base frequency while turbo is off, an
/// unlimited quota and a quota above the CPUs are not caps.
#[test]
fn caps_with_no_record_are_reported_and_counted_in_the_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fake_cpufreq(root, 4, MIN, MAX); // 4 CPUs
    fake_cgroup_v2(root, "free", "max 100000");
    fake_cgroup_v2(root, "wide", "800000 100000");
    fake_cgroup_v2(root, "narrow", "100000 100000");
    fake_cgroup_v1(root, "legacy", 200_000, 100_000);
    // Turbo off, policy 3 at its base frequency: not a cap.
    fs::create_dir_all(root.join("devices/system/cpu/intel_pstate")).unwrap();
    fs::write(root.join("devices/system/cpu/intel_pstate/no_turbo"), "1\n").unwrap();
    fs::write(policy_dir(root, 3).join("base_frequency"), "3000000\n").unwrap();
    fs::write(policy_dir(root, 3).join("scaling_max_freq"), "3000000\n").unwrap();
    // Policy 1 capped at 2.7 GHz by someone else: 25 %.
    fs::write(policy_dir(root, 1).join("scaling_max_freq"), "2700000\n").unwrap();

    let config = config(root, cfg(true, &["free", "wide", "narrow", "legacy"]));
    let sentinel = ThermalSentinel::new(&config, None);
    let hb = heartbeat(&sentinel);
    let caps: Vec<(String, String, u64)> = hb.metadata["throttle"]["unexplained"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["target"].as_str().unwrap().to_string(),
                u["value"].as_str().unwrap().to_string(),
                u["percent"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        caps,
        [
            (policy_target(1), "2700000".to_string(), 25),
            (
                "file:fs/cgroup/narrow/cpu.max".to_string(),
                "100000 100000".to_string(),
                75
            ),
            (
                "file:fs/cgroup/cpu/legacy/cpu.cfs_quota_us".to_string(),
                "200000".to_string(),
                50
            ),
        ]
    );
    // The heartbeat's throttle level is the largest share taken away.
    assert_eq!(hb.throttle_level, Some(75));
    assert_eq!(hb.metadata["throttle"]["level"], 0);
}

/// The data dir cannot be written (its parent is a file, as when it is not
/// a directory at all): the throttle is refused with the reason and the
/// path, nothing is written, and the answer is `failed`.
#[test]
fn an_unwritable_data_dir_refuses_the_throttle_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys");
    fake_cpufreq(&root, 4, MIN, MAX);
    let v2 = fake_cgroup_v2(&root, "batch", "max 100000");
    let blocker = dir.path().join("data");
    fs::write(&blocker, "not a directory").unwrap();
    let state = blocker.join("throttle.json");

    let mut t = Throttler::new(&root, cfg(true, &["batch"]), Some(state));
    let err = t.apply(50).unwrap_err();
    match &err {
        Error::OriginalsNotSaved { path, .. } => assert!(path.starts_with(&blocker), "{err}"),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().starts_with("throttle not applied"), "{err}");
    assert_eq!(all_khz(&root, 4), vec![MAX; 4], "nothing written");
    assert_eq!(read_trimmed(&v2.join("cpu.max")), "max 100000");
    assert_eq!(t.level(), 0);
    assert!(t.report().originals.is_empty());

    // Through the antibody: failed, with the reason.
    let config = config(&root, cfg(true, &["batch"]));
    let mut sentinel = ThermalSentinel::new(&config, Some(&blocker));
    let out = sentinel.execute(&command("throttle_100", json!({})));
    assert_eq!(out.status, ResultStatus::Failed, "{out:?}");
    assert!(
        out.message.contains("its originals cannot be saved to")
            && out.message.contains(&blocker.display().to_string()),
        "{}",
        out.message
    );
    assert_eq!(all_khz(&root, 4), vec![MAX; 4]);
    assert_eq!(heartbeat(&sentinel).throttle_level, Some(0));
}

/// A tmpfs mounted, then remounted read-only.
fn read_only_tmpfs(path: &Path) -> Result<Mount, String> {
    let mount = Mount::tmpfs_at(path, "1M", None)?;
    // A data dir others may write is refused before any write: private,
    // as SKOS wants it, so that the write itself fails.
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    let out = Cmd::new("mount")
        .args(["-o", "remount,ro"])
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mount -o remount,ro {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(mount)
}

/// The same on a real read-only filesystem (`EROFS`, which even root
/// cannot write).
#[test]
fn a_read_only_data_dir_refuses_the_throttle() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys");
    fake_cpufreq(&root, 2, MIN, MAX);
    let data = dir.path().join("data");
    let _ro = require!("a read-only tmpfs", read_only_tmpfs(&data));
    let config = config(&root, cfg(true, &[]));
    let mut sentinel = ThermalSentinel::new(&config, Some(&data));
    let out = sentinel.execute(&command("throttle_50", json!({})));
    assert_eq!(out.status, ResultStatus::Failed, "{out:?}");
    assert!(
        out.message.contains("throttle not applied")
            && out.message.contains("Read-only file system"),
        "{}",
        out.message
    );
    assert_eq!(all_khz(&root, 2), vec![MAX; 2]);
}

/// Nothing to act on (no cpufreq, no cgroup, no GPU): `unsupported`, with
/// the reason, for a throttle and for a reset; the actuators say so.
#[test]
fn nothing_to_act_on_answers_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), cfg(true, &[]));
    let mut sentinel = ThermalSentinel::new(&config, None);
    for action in ["throttle_50", "reset_throttle"] {
        let out = sentinel.execute(&command(action, json!({})));
        assert_eq!(out.status, ResultStatus::Unsupported, "{action}: {out:?}");
        assert!(
            out.message.contains("nothing to act on")
                && out.message.contains("no cpufreq policy under")
                && out.message.contains("no cgroup configured"),
            "{action}: {}",
            out.message
        );
    }
    let inventory = sentinel.inventory();
    assert!(
        inventory
            .actuators
            .starts_with("none (not available: no cpufreq policy"),
        "{inventory:?}"
    );
    assert_eq!(heartbeat(&sentinel).throttle_level, Some(0));

    let t = Throttler::new(
        dir.path(),
        ThrottleConfig {
            cpufreq: false,
            ..cfg(false, &[])
        },
        None,
    );
    assert!(t.actuators().to_string().contains("cpufreq caps are off"));
}

/// The actuators found are listed (the agent logs them at start).
#[test]
fn actuators_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    fake_cpufreq(dir.path(), 4, MIN, MAX);
    fake_cgroup_v2(dir.path(), "batch", "max 100000");
    let t = Throttler::new(dir.path(), cfg(true, &["batch", "gone"]), None);
    let a = t.actuators();
    assert_eq!(a.cpufreq_policies, 4);
    assert_eq!(a.cgroups, ["batch"]);
    let text = a.to_string();
    assert!(
        text.starts_with("cpufreq caps on 4 policy(ies), CPU quotas of cgroup batch (not available: cgroup gone:"),
        "{text}"
    );
    assert!(text.contains("GPU power limits are off"), "{text}");
}

/// On a driver that rounds to its P-states (throttle_50 lands on
/// 1,600,000 kHz, 55 %): after the data dir is lost the cap read back is
/// reported as 55 %, and the coordinator's copy lifts it to full speed.
#[test]
fn a_lost_data_dir_on_a_pstate_driver_is_lifted_with_the_coordinators_copy() {
    const PSTATES: [u64; 8] = [
        800_000, 1_200_000, 1_600_000, 2_000_000, 2_400_000, 2_800_000, 3_200_000, 3_600_000,
    ];
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys");
    fs::create_dir_all(&root).unwrap();
    let driver = require!(
        "a FUSE mount for the fake cpufreq driver",
        CpufreqDriver::mount(&root, 4, &PSTATES)
    );
    let data = dir.path().join("data");
    let config = config(&root, cfg(true, &[]));

    let mut sentinel = ThermalSentinel::new(&config, Some(&data));
    let out = sentinel.execute(&command("throttle_50", json!({})));
    assert_eq!(out.status, ResultStatus::Succeeded, "{out:?}");
    assert_eq!(all_khz(&root, 4), vec![1_600_000; 4]);
    let copy = coordinator_copy(&heartbeat(&sentinel));
    drop(sentinel);

    // Restarted with its data dir: the caps in force are read back.
    let sentinel = ThermalSentinel::new(&config, Some(&data));
    let hb = heartbeat(&sentinel);
    assert_eq!(hb.throttle_level, Some(50));
    assert_eq!(hb.metadata["cpufreq"]["effective_throttle"], 55, "{hb:?}");
    assert_eq!(hb.metadata["cpufreq"]["min_cap_khz"], 1_600_000);
    drop(sentinel);

    fs::remove_dir_all(&data).unwrap();
    let mut sentinel = ThermalSentinel::new(&config, Some(&data));
    let hb = heartbeat(&sentinel);
    assert_eq!(hb.throttle_level, Some(55), "{hb:?}");
    let out = sentinel.execute(&command("reset_throttle", json!({ "originals": copy })));
    assert_eq!(out.status, ResultStatus::Succeeded, "{out:?}");
    assert_eq!(
        (0..4).map(|p| driver.max_khz(p)).collect::<Vec<_>>(),
        vec![MAX; 4]
    );
    assert_eq!(heartbeat(&sentinel).throttle_level, Some(0));
}

/// A machine with a policy per CPU (512 here) still fits its throttle
/// state in a heartbeat under the default message limit: originals that
/// follow one another are one entry, unexplained caps are grouped and
/// bounded (their full count beside them), even when every other policy
/// differs.
#[test]
fn hundreds_of_policies_fit_in_a_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys");
    fake_cpufreq(&root, 512, MIN, MAX);
    // Every other policy already capped by an operator at 3.2 GHz.
    for n in (1..512).step_by(2) {
        fs::write(policy_dir(&root, n).join("scaling_max_freq"), "3200000\n").unwrap();
    }
    let data = dir.path().join("data");
    let config = config(&root, cfg(true, &[]));
    let size = |hb: &Heartbeat| serde_json::to_vec(hb).unwrap().len();
    let limit = skos_core::protocol::DEFAULT_MAX_MESSAGE_BYTES;

    let sentinel = ThermalSentinel::new(&config, Some(&data));
    let hb = heartbeat(&sentinel);
    assert_eq!(hb.metadata["throttle"]["unexplained_count"], 256);
    assert_eq!(
        hb.metadata["throttle"]["unexplained"]
            .as_array()
            .unwrap()
            .len(),
        skos_agent::throttle::MAX_REPORTED_CAPS
    );
    assert!(size(&hb) < limit / 4, "{} bytes", size(&hb));
    drop(sentinel);
    // The operator's caps lifted, SKOS throttles all 512 alike.
    for n in (1..512).step_by(2) {
        fs::write(policy_dir(&root, n).join("scaling_max_freq"), "3600000\n").unwrap();
    }
    let mut sentinel = ThermalSentinel::new(&config, Some(&data));
    let out = sentinel.execute(&command("throttle_50", json!({})));
    assert_eq!(out.status, ResultStatus::Succeeded, "{out:?}");
    let hb = heartbeat(&sentinel);
    assert_eq!(
        coordinator_copy(&hb),
        [ThrottleOriginal {
            target: "cpufreq:policy0-511".into(),
            value: MAX.to_string()
        }]
    );
    drop(sentinel);

    // Worst case: originals that alternate (the operator's caps were back
    // before the throttle) take one entry each, and still fit.
    fs::remove_dir_all(&data).unwrap();
    for n in 0..512 {
        fs::write(policy_dir(&root, n).join("scaling_max_freq"), "3600000\n").unwrap();
    }
    for n in (1..512).step_by(2) {
        fs::write(policy_dir(&root, n).join("scaling_max_freq"), "3200000\n").unwrap();
    }
    let mut sentinel = ThermalSentinel::new(&config, Some(&data));
    let out = sentinel.execute(&command("throttle_50", json!({})));
    assert_eq!(out.status, ResultStatus::Succeeded, "{out:?}");
    let hb = heartbeat(&sentinel);
    assert_eq!(coordinator_copy(&hb).len(), 512);
    assert!(size(&hb) < limit / 2, "{} bytes", size(&hb));
    let decoded: Heartbeat =
        skos_core::protocol::decode(&serde_json::to_vec(&hb).unwrap(), limit).unwrap();
    assert_eq!(decoded.throttle_level, Some(50));
}

/// The coordinator's copy is taken only for a target that holds a cap
/// this agent reports as unexplained: an uncapped policy keeps what it
/// holds as its original, so a stale copy (here `cpuinfo_min_freq`) never
/// becomes one and the reset leaves no cap behind.
#[test]
fn a_stale_copy_is_not_adopted_for_an_uncapped_target() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys");
    fake_cpufreq(&root, 2, MIN, MAX);
    fs::write(policy_dir(&root, 1).join("scaling_max_freq"), "1800000\n").unwrap();
    let mut t = Throttler::new(&root, cfg(true, &[]), None);
    assert_eq!(t.unexplained_caps().len(), 1);
    let stale = vec![
        ThrottleOriginal {
            target: policy_target(0),
            value: MIN.to_string(),
        },
        ThrottleOriginal {
            target: policy_target(1),
            value: MAX.to_string(),
        },
    ];
    let out = t.apply_with(50, &stale).unwrap();
    assert!(
        out.message
            .contains("1 original(s) taken from the coordinator's copy"),
        "{}",
        out.message
    );
    let out = t.reset_with(&stale).unwrap();
    assert!(out.unexplained.is_empty(), "{out:?}");
    assert_eq!(all_khz(&root, 2), vec![MAX; 2]);
    assert!(t.unexplained_caps().is_empty());
}
