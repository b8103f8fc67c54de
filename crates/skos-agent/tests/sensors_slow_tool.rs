//! Field case 05: `nvidia-smi` on a multi-GPU host without the persistence
//! daemon answers after about 6 s; a fixed 5 s timeout killed it and gave
//! nothing. The recorded fake (`tests/fixtures/field/05-nvidia-smi-slow/`:
//! `bin/nvidia-smi` sleeps 6 s, then prints four V100 rows) is put first on
//! `PATH` for this whole test binary (every test here sets the same
//! value, so none disturbs another).

mod common;
use common::fixture;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use skos_agent::runtime::Agent;
use skos_agent::sensors::{ProblemKind, Scan, Sensors};
use skos_bus::{Bus, Feed, InProcBus};
use skos_core::config::{Config, GpuConfig};
use skos_core::counters::Counters;
use skos_core::protocol::Heartbeat;
use skos_testsupport::sysfs::FakeSysfs;
use tokio::sync::watch;

/// Puts the slow fake `nvidia-smi` first on `PATH` (once).
fn slow_nvidia_smi() {
    static PATH: OnceLock<()> = OnceLock::new();
    PATH.get_or_init(|| {
        let bin = fixture("05-nvidia-smi-slow/bin");
        let path = std::env::join_paths([bin, "/usr/bin".into(), "/bin".into()]).expect("PATH");
        std::env::set_var("PATH", path);
        std::env::remove_var("FAKE_SMI_DELAY");
    });
}

fn smi_only() -> GpuConfig {
    GpuConfig {
        nvml: false,
        nvidia_smi: true,
        lm_sensors: false,
    }
}

fn gpus(scan: &Scan) -> Vec<(String, String, f64)> {
    scan.readings
        .iter()
        .map(|r| (r.path.display().to_string(), r.label.clone(), r.celsius))
        .collect()
}

#[test]
fn field_05_nvidia_smi_answering_after_6_s_gives_its_4_gpus() {
    slow_nvidia_smi();
    let fake = FakeSysfs::new();
    // The default budgets: `thermal.sources.tool_timeout` 15 s.
    let sensors = Sensors::new(fake.root(), smi_only());
    let started = Instant::now();
    let scan = sensors.scan();
    let took = started.elapsed();
    let v100 = "Tesla V100-SXM2-16GB";
    assert_eq!(
        gpus(&scan),
        [
            ("nvidia-smi:0".to_string(), v100.to_string(), 41.0),
            ("nvidia-smi:1".to_string(), v100.to_string(), 37.0),
            ("nvidia-smi:2".to_string(), v100.to_string(), 44.0),
            ("nvidia-smi:3".to_string(), v100.to_string(), 39.0),
        ],
        "{scan:#?}"
    );
    assert!(scan.problems.is_empty(), "{:#?}", scan.problems);
    assert!(
        took >= Duration::from_millis(5500) && took < Duration::from_secs(12),
        "took {took:?}"
    );
}

#[test]
fn a_tool_past_its_timeout_is_killed_and_said_so() {
    slow_nvidia_smi();
    let fake = FakeSysfs::new();
    let sensors = Sensors::new(fake.root(), smi_only())
        .with_budgets(Duration::from_secs(2), Duration::from_secs(1));
    let started = Instant::now();
    let scan = sensors.scan();
    let took = started.elapsed();
    assert!(scan.readings.is_empty(), "{:#?}", scan.readings);
    assert_eq!(scan.problems.len(), 1, "{:#?}", scan.problems);
    let p = &scan.problems[0];
    assert_eq!(p.at, "nvidia-smi");
    assert!(
        matches!(&p.what, ProblemKind::ToolFailed { message, .. }
            if message.contains("still running after 1 s (thermal.sources.tool_timeout); killed")),
        "{p}"
    );
    // Killed with its `sleep`: the run ends at its timeout, not after 6 s.
    assert!(took < Duration::from_millis(3500), "took {took:?}");
}

/// Heartbeats keep their interval while every `nvidia-smi` run takes 6 s,
/// the GPUs appear once it answers (and stay while they are younger than
/// `thermal.sources.max_age`, set above the tool's 6 s here since the
/// monitor interval is short), and the agent stops at once while a run is
/// in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_time_while_nvidia_smi_takes_6_s() {
    slow_nvidia_smi();
    let fake = FakeSysfs::new();
    fake.coretemp(50.0, &[]);
    let mut cfg = Config::from_yaml(
        "agent: {heartbeat_interval: 0.5, monitor_interval: 0.5}\n\
thermal:\n  gpu: {nvml: false, nvidia_smi: true, lm_sensors: false}\n  sources: {max_age: 20}\n",
    )
    .unwrap();
    cfg.sysfs_root = fake.root().to_path_buf();
    let bus = Bus::InProc(InProcBus::new());
    let mut heartbeats = bus.subscribe(Feed::Heartbeats).await.unwrap();
    let agent = Agent::new(cfg, bus.clone(), Counters::default(), None).unwrap();
    let (stop, mut rx) = watch::channel(false);
    let started = tokio::time::Instant::now();
    let task = tokio::spawn(async move {
        agent
            .run(async move {
                let _ = rx.wait_for(|v| *v).await;
            })
            .await
            .unwrap();
    });

    let until = started + Duration::from_secs(10);
    let mut beats: Vec<(tokio::time::Instant, Heartbeat)> = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout_at(until, heartbeats.next()).await {
        let hb: Heartbeat = serde_json::from_slice(&m.payload).unwrap();
        beats.push((tokio::time::Instant::now(), hb));
    }
    let gaps: Vec<f64> = beats
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).as_secs_f64())
        .collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
    let max = gaps.iter().cloned().fold(0.0, f64::max);
    let first_gpu = beats
        .iter()
        .find(|(_, hb)| hb.gpu_temp.is_some())
        .map(|(at, hb)| (*at - started, hb.gpu_temp));
    eprintln!(
        "{} heartbeats, gaps mean {mean:.3} s, max {max:.3} s; first GPU reading {first_gpu:?}",
        beats.len()
    );
    assert!(beats.len() >= 17, "{} heartbeats in 10 s", beats.len());
    assert!((mean - 0.5).abs() <= 0.05, "mean gap {mean:.3} s: {gaps:?}");
    assert!(max <= 1.0, "a heartbeat waited for nvidia-smi: {gaps:?}");
    assert_eq!(beats[0].1.cpu_temp, Some(50.0), "the CPU from the start");
    assert_eq!(beats[0].1.gpu_temp, None, "no GPU reading invented");
    let (after, hottest) = first_gpu.expect("the GPUs never appeared");
    assert_eq!(hottest, Some(44.0));
    assert!(
        after >= Duration::from_millis(5500) && after < Duration::from_secs(8),
        "GPUs appeared after {after:?}"
    );
    let last = &beats.last().expect("heartbeats").1;
    assert_eq!(last.metadata["sensors"], 5, "1 CPU + 4 GPUs");
    assert!(
        last.metadata.get("sensor_errors").is_none(),
        "6 s is within the tool's budget: {:?}",
        last.metadata
    );

    let stopping = Instant::now();
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the agent did not stop")
        .unwrap();
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(1), "stopping took {took:?}");
}
