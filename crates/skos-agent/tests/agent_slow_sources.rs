//! The agent never waits for a sensor source. Field case 09's machine (a
//! CPU beside 23 DS18B20 1-Wire probes, rebuilt in
//! `tests/fixtures/field/09-w1-ds18b20-slow-reads/`) with every probe's
//! `temp1_input` made a FIFO no one writes: each read blocks in the
//! kernel, as on a w1 bus that stopped answering. Through the real agent
//! runtime on the in-process bus, heartbeats keep their interval, the CPU
//! alert comes on time, the heartbeat names the slow sources, and the
//! agent stops at once. Measured over real time: that is the acceptance
//! criterion (with slack for a loaded machine, far below what a wait for
//! the probes would cost).

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use skos_agent::runtime::Agent;
use skos_bus::{Bus, Feed, InProcBus};
use skos_core::config::Config;
use skos_core::counters::Counters;
use skos_core::protocol::{Alert, Heartbeat, Severity};
use skos_testsupport::sysfs::FakeSysfs;
use tokio::sync::watch;
use tokio::time::Instant;

const HEARTBEAT: f64 = 0.5;
const MONITOR: f64 = 0.5;

/// The field case's tree, every probe's input a FIFO without a writer.
fn hung_probes() -> FakeSysfs {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/field/09-w1-ds18b20-slow-reads/sys");
    let fake = FakeSysfs::from_fixture(&fixture);
    let w1 = fake.root().join("devices/w1_bus_master1");
    let mut probes = 0;
    for dev in std::fs::read_dir(&w1).unwrap_or_else(|e| panic!("{}: {e}", w1.display())) {
        let hwmon = dev.unwrap().path().join("hwmon");
        for h in std::fs::read_dir(&hwmon).unwrap() {
            let input = h.unwrap().path().join("temp1_input");
            std::fs::remove_file(&input).unwrap();
            let made = std::process::Command::new("mkfifo")
                .arg(&input)
                .status()
                .unwrap();
            assert!(made.success(), "mkfifo {}", input.display());
            probes += 1;
        }
    }
    assert_eq!(probes, 23);
    fake
}

fn config(fake: &FakeSysfs) -> Config {
    let mut cfg = Config::from_yaml(&format!(
        "agent: {{heartbeat_interval: {HEARTBEAT}, monitor_interval: {MONITOR}}}\n\
thermal:\n  gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}\n"
    ))
    .unwrap();
    cfg.sysfs_root = fake.root().to_path_buf();
    cfg.node.name = skos_core::NodeName::parse("pi").unwrap();
    cfg
}

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start(cfg: Config, bus: &Bus) -> Running {
    let agent = Agent::new(cfg, bus.clone(), Counters::default(), None).unwrap();
    let (stop, mut rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        agent
            .run(async move {
                let _ = rx.wait_for(|v| *v).await;
            })
            .await
            .unwrap();
    });
    Running { stop, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_and_the_cpu_alert_keep_time_while_probes_hang() {
    let fake = hung_probes();
    let bus = Bus::InProc(InProcBus::new());
    let mut heartbeats = bus.subscribe(Feed::Heartbeats).await.unwrap();
    let mut alerts = bus.subscribe(Feed::Alerts).await.unwrap();
    let started = Instant::now();
    let agent = start(config(&fake), &bus);

    // 97 °C at 5 s; heartbeats watched for 12 s in all.
    let heat_at = started + Duration::from_secs(5);
    let watch_until = started + Duration::from_secs(12);
    let mut heated: Option<Instant> = None;
    let mut alerted: Option<(Instant, Alert)> = None;
    let mut beats: Vec<(Instant, Heartbeat)> = Vec::new();
    loop {
        let now = Instant::now();
        if now >= watch_until {
            break;
        }
        if heated.is_none() && now >= heat_at {
            fake.write_file(
                "devices/platform/coretemp.0/hwmon/hwmon0/temp1_input",
                "97000\n",
            );
            heated = Some(Instant::now());
        }
        let next_stop = if heated.is_none() {
            heat_at
        } else {
            watch_until
        };
        tokio::select! {
            m = heartbeats.next() => {
                let m = m.expect("heartbeat feed closed");
                let hb: Heartbeat = serde_json::from_slice(&m.payload).unwrap();
                beats.push((Instant::now(), hb));
            }
            m = alerts.next() => {
                let m = m.expect("alert feed closed");
                let a: Alert = serde_json::from_slice(&m.payload).unwrap();
                if alerted.is_none() && a.details["sensor"] == "cpu" && a.severity == Severity::Emergency {
                    alerted = Some((Instant::now(), a));
                }
            }
            _ = tokio::time::sleep_until(next_stop) => {}
        }
    }

    // The first heartbeat came at once, not after the probes.
    let first = beats.first().map(|(at, _)| *at - started);
    assert!(
        first.is_some_and(|f| f < Duration::from_millis(2500)),
        "first heartbeat after {first:?}"
    );
    // Then every interval, within 10 % on average and never twice late.
    let gaps: Vec<f64> = beats
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).as_secs_f64())
        .collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
    let max = gaps.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "{} heartbeats, gaps mean {mean:.3} s, max {max:.3} s, first after {first:?}",
        beats.len()
    );
    assert!(gaps.len() >= 18, "{} heartbeats in 12 s", beats.len());
    assert!(
        (mean - HEARTBEAT).abs() <= HEARTBEAT * 0.1,
        "mean heartbeat gap {mean:.3} s, interval {HEARTBEAT} s: {gaps:?}"
    );
    assert!(max <= 2.0 * HEARTBEAT, "a heartbeat waited: {gaps:?}");

    // The CPU alert within a monitor interval (plus slack) of the heat.
    let heated = heated.expect("the CPU was heated");
    let (at, alert) = alerted.expect("no emergency CPU alert while the probes hang");
    let late = at - heated;
    eprintln!("emergency alert {late:?} after 97 °C");
    assert!(
        late <= Duration::from_secs_f64(MONITOR + 1.0),
        "alert {late:?} after the heat"
    );
    assert_eq!(alert.details["temperature"], 97.0);
    assert_eq!(alert.details["label"], "Package id 0");

    // The last heartbeat: the CPU, and the probes named slow.
    let (_, last) = beats.last().expect("heartbeats");
    assert_eq!(last.cpu_temp, Some(97.0));
    assert_eq!(last.metadata["sensors"], 1, "only the CPU answers");
    let errors = last.metadata["sensor_errors"]
        .as_object()
        .unwrap_or_else(|| panic!("no sensor_errors in {:?}", last.metadata));
    assert_eq!(errors.len(), 16, "{errors:#?}");
    assert_eq!(last.metadata["sensor_errors_omitted"], 7);
    for (source, e) in errors {
        assert!(source.starts_with("hwmon"), "{source}");
        assert_eq!(e["problem"], "slow", "{source}: {e}");
        assert_eq!(e["chip"], "w1_slave_temp", "{source}: {e}");
        assert_eq!(e["count"], 1, "asked once, still hanging: {source}: {e}");
        assert!(
            e["reading_for_seconds"].as_f64().is_some_and(|s| s > 5.0),
            "{e}"
        );
        assert!(e["last_good_seconds"].is_null(), "{e}");
        assert!(e["since"].as_str().is_some(), "{e}");
    }

    // Stopping does not wait for the hung reads.
    let stopping = Instant::now();
    let _ = agent.stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), agent.task)
        .await
        .expect("the agent did not stop")
        .unwrap();
    let took = stopping.elapsed();
    eprintln!("stopped in {took:?}");
    assert!(took < Duration::from_secs(1), "stopping took {took:?}");
}
