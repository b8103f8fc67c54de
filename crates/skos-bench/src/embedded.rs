//! Embedded mode: the hot-CPU scenario through `skos up` (coordinator and
//! agent in one process over the in-process bus, audit trail in a file),
//! with no NATS at all; and the footprint of that one process.

use std::time::Duration;

use serde_json::json;

use crate::error::Context;
use crate::hotcpu::{self, FakeMachine, StatusSource};
use crate::procfs;
use crate::procs::{self, Proc};
use crate::report::{Figure, SectionReport};
use crate::stats::Summary;
use crate::{say, Error, Opts, Result};

const S: &str = "embedded";
const NODE: &str = "bench-embedded";

pub async fn run(o: &Opts) -> Result<SectionReport> {
    let bin = procs::skos_binary(o.skos_bin.as_deref())?;
    let work = tempfile::Builder::new()
        .prefix("skos-bench-embedded-")
        .tempdir()
        .ctx("temp dir")?;
    let machine = FakeMachine::new()?;
    let data_dir = work.path().join("data");
    let cfg = work.path().join("config.yaml");
    let text = format!(
        "agent:\n  heartbeat_interval: 1\n  monitor_interval: {}\n\
coordinator:\n  verify_within: 30\n  command_deadline: 30\n\
thermal:\n  clear_for: 1\n  gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}\n",
        o.monitor_interval
    );
    std::fs::write(&cfg, text).map_err(|e| Error::io(&cfg, e))?;
    let mut c = procs::skos_command(&bin);
    c.arg("up")
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data_dir)
        .env("NODE_NAME", NODE)
        .env("SKOS_SYSFS_ROOT", machine.root())
        .env("MONITOR_INTERVAL", o.monitor_interval.to_string());
    let mut up = Proc::spawn(c, work.path(), "skos-up")?;
    let status = StatusSource::File(data_dir.join("status.json"));
    if let Err(e) = status
        .wait_node(NODE, "healthy", Duration::from_secs(30))
        .await
    {
        up.check_alive()?;
        return Err(e);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let window = o.window.min(Duration::from_secs(5));
    let a = procfs::sample(up.pid())?;
    tokio::time::sleep(window).await;
    let b = procfs::sample(up.pid())?;
    let idle = procfs::usage(&a, &b);
    say(
        S,
        format!("skos up healthy; {} hot-CPU cycles", o.embedded_repeats),
    );
    let cycles = {
        let mut check = || up.check_alive();
        hotcpu::cycles(S, &machine, &status, NODE, o.embedded_repeats, &mut check).await?
    };
    let after = procfs::sample(up.pid())?;
    let clean = up.sigterm(Duration::from_secs(10)).await;
    let audit_lines = std::fs::read_to_string(data_dir.join("audit.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0);
    let detect: Vec<f64> = cycles.iter().map(|c| c.detect_seconds).collect();
    let d = Summary::of(&detect);
    let mi = o.monitor_interval;
    let figures = vec![
        Figure::new(
            S,
            "sensor → command executed p50",
            d.as_ref().map(|s| s.p50).unwrap_or(f64::NAN),
            "s",
        )
        .beside("MONITOR_INTERVAL", mi),
        Figure::new(
            S,
            "sensor → command executed max",
            d.as_ref().map(|s| s.max).unwrap_or(f64::NAN),
            "s",
        )
        .beside("MONITOR_INTERVAL", mi)
        .derived_at_most(mi + 0.5),
        Figure::new(S, "skos up VmRSS (monitor 1 s)", idle.rss_mb, "MB"),
        Figure::new(S, "skos up CPU idle (monitor 1 s)", idle.cpu_share, "core"),
    ];
    let data = json!({
        "node": NODE,
        "monitor_interval": mi,
        "cycles": cycles,
        "sensor_to_command_s": d,
        "idle": idle,
        "hwm_mb_after_cycles": after.hwm_kb as f64 * 1024.0 / 1e6,
        "stopped_cleanly": clean,
        "audit_records": audit_lines,
    });
    Ok(SectionReport { data, figures })
}
