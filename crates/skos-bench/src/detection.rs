//! Detection, end to end through the real binary: `skos coordinator` and
//! `skos agent` as separate processes over a real nats-server, the agent on
//! a fake sysfs with `MONITOR_INTERVAL` 1 s.
//!
//! * sensor change → command executed on the node: 87 °C written to the
//!   package sensor → every `scaling_max_freq` at 50 %;
//! * offline detection: SIGKILL of the agent → the coordinator's
//!   `heartbeat_missing` critical alert on the bus, against
//!   `HEARTBEAT_TIMEOUT`.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use skos_bus::{subjects, Bus};

use crate::error::Context;
use crate::hotcpu::{self, FakeMachine, StatusSource};
use crate::natsutil::{self, Server};
use crate::procs::{self, Proc};
use crate::report::{Figure, SectionReport};
use crate::stats::Summary;
use crate::{say, Error, Opts, Result};

const S: &str = "detection";
const NODE: &str = "bench-hot";

/// The config both processes read.
pub fn write_config(dir: &Path, o: &Opts, trust: &str) -> Result<std::path::PathBuf> {
    let path = dir.join("config.yaml");
    let text = format!(
        "agent:\n  heartbeat_interval: 1\n  monitor_interval: {mi}\n  antibodies: [thermal_sentinel, loop_breaker]\n\
coordinator:\n  heartbeat_timeout: {ht}\n  verify_within: 30\n  command_deadline: 30\n  leader_lease_seconds: {ls}\n\
thermal:\n  clear_for: 1\n  gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}\n{trust}",
        mi = o.monitor_interval,
        ht = o.heartbeat_timeout,
        ls = o.lease_seconds,
    );
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

fn coordinator(bin: &Path, cfg: &Path, url: &str, o: &Opts, work: &Path) -> Result<Proc> {
    let mut c = procs::skos_command(bin);
    c.arg("coordinator")
        .arg("--config")
        .arg(cfg)
        .env("NATS_URL", url)
        .env("HEARTBEAT_TIMEOUT", o.heartbeat_timeout.to_string());
    Proc::spawn(c, work, "coordinator")
}

fn agent(
    bin: &Path,
    cfg: &Path,
    url: &str,
    o: &Opts,
    work: &Path,
    sys: &Path,
    n: usize,
) -> Result<Proc> {
    let mut c = procs::skos_command(bin);
    c.arg("agent")
        .arg("--config")
        .arg(cfg)
        .arg("--data-dir")
        .arg(work.join("agent-data"))
        .env("NATS_URL", url)
        .env("NODE_NAME", NODE)
        .env("SKOS_SYSFS_ROOT", sys)
        .env("MONITOR_INTERVAL", o.monitor_interval.to_string());
    Proc::spawn(c, work, &format!("agent-{n}"))
}

/// The loop breaker's allow/deny round trips, in ms: fresh one-step chains
/// (allowed), then steps of one chain whose circuit a too-deep step opened
/// (denied without a new alert). Requests are plain NATS requests with the
/// chain event as JSON, as any application would send them.
pub async fn loop_breaker_round_trips(
    client: &async_nats::Client,
    node: &skos_core::NodeName,
    n: usize,
) -> Result<(Vec<f64>, Vec<f64>, u64)> {
    let subject = subjects::chain(node);
    let run = crate::sim::run_id();
    let ask = |chain: String, step: String, depth: u32| {
        let subject = subject.clone();
        async move {
            let event = json!({
                "chain_id": chain, "step_id": step, "depth": depth, "iteration": 1,
                "signature": "call:bench", "node": node,
            });
            let body = serde_json::to_vec(&event).ctx("encode chain event")?;
            let t0 = Instant::now();
            let reply =
                tokio::time::timeout(Duration::from_secs(5), client.request(subject, body.into()))
                    .await
                    .map_err(|_| Error::timeout("a loop breaker answer", Duration::from_secs(5)))?
                    .ctx("chain request")?;
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            let v: Value = serde_json::from_slice(&reply.payload).unwrap_or(Value::Null);
            Ok::<_, Error>((ms, v["decision"].as_str().unwrap_or("").to_string()))
        }
    };
    let (mut allow, mut deny, mut unexpected) = (Vec::new(), Vec::new(), 0u64);
    for i in 0..n {
        let (ms, d) = ask(format!("bench-{run}-{i}"), "s1".into(), 1).await?;
        if d == "allow" {
            allow.push(ms);
        } else {
            unexpected += 1;
        }
    }
    let trip = format!("bench-{run}-trip");
    let (_, d) = ask(trip.clone(), "s0".into(), 1_000).await?;
    if d != "deny" {
        unexpected += 1;
    }
    for i in 0..n {
        let (ms, d) = ask(trip.clone(), format!("s{}", i + 1), 1).await?;
        if d == "deny" {
            deny.push(ms);
        } else {
            unexpected += 1;
        }
    }
    Ok((allow, deny, unexpected))
}

pub async fn run(o: &Opts) -> Result<SectionReport> {
    let bin = procs::skos_binary(o.skos_bin.as_deref())?;
    let server = Server::start(o.nats_url.as_deref())?;
    let url = server.url().to_string();
    let work = tempfile::Builder::new()
        .prefix("skos-bench-detection-")
        .tempdir()
        .ctx("temp dir")?;
    let machine = FakeMachine::new()?;
    let trust = procs::trust_section(&bin, work.path());
    let cfg = write_config(work.path(), o, &trust)?;
    let mut coord = coordinator(&bin, &cfg, &url, o, work.path())?;
    let bus = Bus::Nats(natsutil::bus(&url, "skos-bench-status").await?);
    if let Err(e) = natsutil::wait_status(&bus, natsutil::leader_wait(o)).await {
        coord.check_alive()?;
        return Err(e);
    }
    let mut ag = agent(&bin, &cfg, &url, o, work.path(), machine.root(), 0)?;
    let status = StatusSource::Bus(bus);
    let ready = status
        .wait_node(NODE, "healthy", Duration::from_secs(30))
        .await;
    if let Err(e) = ready {
        coord.check_alive()?;
        ag.check_alive()?;
        return Err(e);
    }
    say(
        S,
        format!(
            "agent {NODE} healthy; {} hot-CPU cycles",
            o.detection_repeats
        ),
    );
    let cycles = {
        let mut check = || -> Result<()> {
            coord.check_alive()?;
            ag.check_alive()
        };
        hotcpu::cycles(S, &machine, &status, NODE, o.detection_repeats, &mut check).await?
    };

    let observer = natsutil::client(&url, "skos-bench-observer").await?;
    let node = skos_core::NodeName::parse(NODE).ctx("node name")?;

    // The loop breaker's round trip, beside the bus's own.
    let chain_n = o.round_trips.min(500);
    say(
        S,
        format!("{chain_n} loop breaker allow and deny round trips"),
    );
    let (allow, deny, unexpected) = loop_breaker_round_trips(&observer, &node, chain_n).await?;
    let probe = bytes::Bytes::from_static(
        br#"{"chain_id":"bench","step_id":"s1","depth":1,"iteration":1,"signature":"call:bench"}"#,
    );
    let echo = natsutil::echo_round_trips(&url, &observer, probe, chain_n).await?;

    // Offline detection.
    let mut alerts = observer
        .subscribe(subjects::alert(&node))
        .await
        .ctx("subscribe alerts")?;
    observer.flush().await.ctx("flush")?;
    let mut offline = Vec::new();
    for r in 0..o.offline_repeats {
        if r > 0 {
            ag = agent(&bin, &cfg, &url, o, work.path(), machine.root(), r)?;
            // Back online; it may still be critical for the loop breaker's
            // tripped test chain.
            status.wait_online(NODE, Duration::from_secs(30)).await?;
        }
        // Kill at a different point of the heartbeat interval each time.
        tokio::time::sleep(Duration::from_millis(1500 + (r as u64 * 450) % 1000)).await;
        let killed = ag.sigkill();
        let limit = Duration::from_secs_f64(o.heartbeat_timeout + 15.0);
        let found = tokio::time::timeout(limit, async {
            while let Some(m) = alerts.next().await {
                let at = Instant::now();
                let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else {
                    continue;
                };
                if v["type"] == "heartbeat_missing" && v["severity"] == "critical" {
                    return Some((at, v["details"]["silent_seconds"].as_f64()));
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some((at, silent))) => {
                let delay = at.duration_since(killed).as_secs_f64();
                say(
                    S,
                    format!(
                        "offline {}: detected {delay:.2} s after SIGKILL (coordinator: silent {:.2} s; timeout {} s)",
                        r + 1,
                        silent.unwrap_or(f64::NAN),
                        o.heartbeat_timeout
                    ),
                );
                offline.push((delay, silent.unwrap_or(f64::NAN)));
            }
            _ => return Err(Error::timeout("the heartbeat_missing alert", limit)),
        }
    }
    coord.sigterm(Duration::from_secs(10)).await;

    let detect: Vec<f64> = cycles.iter().map(|c| c.detect_seconds).collect();
    let restore: Vec<f64> = cycles.iter().map(|c| c.restore_seconds).collect();
    let delays: Vec<f64> = offline.iter().map(|x| x.0).collect();
    let silent: Vec<f64> = offline.iter().map(|x| x.1).collect();
    let (d, rs, off, sil) = (
        Summary::of(&detect),
        Summary::of(&restore),
        Summary::of(&delays),
        Summary::of(&silent),
    );
    let mi = o.monitor_interval;
    let ht = o.heartbeat_timeout;
    let (al, de, ec) = (Summary::of(&allow), Summary::of(&deny), Summary::of(&echo));
    let q = |s: &Option<Summary>, f: fn(&Summary) -> f64| s.as_ref().map(f).unwrap_or(f64::NAN);
    let figures = vec![
        Figure::new(
            S,
            "loop breaker allow round trip p50",
            q(&al, |s| s.p50),
            "ms",
        )
        .beside("bus request/reply p50", q(&ec, |s| s.p50)),
        Figure::new(
            S,
            "loop breaker allow round trip p99",
            q(&al, |s| s.p99),
            "ms",
        )
        .beside("bus request/reply p99", q(&ec, |s| s.p99)),
        Figure::new(
            S,
            "loop breaker deny round trip p99",
            q(&de, |s| s.p99),
            "ms",
        )
        .beside("bus request/reply p99", q(&ec, |s| s.p99)),
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
        .derived_at_most(mi + 0.5)
        .note("one monitor interval plus 0.5 s for bus, coordinator and actuator"),
        Figure::new(
            S,
            "SIGKILL → offline alert max",
            off.as_ref().map(|s| s.max).unwrap_or(f64::NAN),
            "s",
        )
        .beside("HEARTBEAT_TIMEOUT", ht)
        .derived_at_most(ht + 0.5)
        .note("timeout plus the 0.25 s offline check tick and a margin"),
        Figure::new(
            S,
            "last heartbeat → offline (coordinator's silent_seconds) max",
            sil.as_ref().map(|s| s.max).unwrap_or(f64::NAN),
            "s",
        )
        .beside("HEARTBEAT_TIMEOUT", ht)
        .derived_at_most(ht + 0.5),
    ];
    let data = json!({
        "node": NODE,
        "monitor_interval": mi,
        "heartbeat_interval": 1.0,
        "heartbeat_timeout": ht,
        "commands_signed": !trust.is_empty(),
        "cycles": cycles,
        "sensor_to_command_s": d,
        "cool_to_restored_s": rs,
        "offline": offline.iter().map(|(d, s)| json!({"kill_to_alert_s": d, "silent_seconds": s})).collect::<Vec<_>>(),
        "kill_to_offline_alert_s": off,
        "loop_breaker": {
            "allow_ms": al,
            "deny_ms": de,
            "request_reply_ms": ec,
            "unexpected_decisions": unexpected,
        },
    });
    Ok(SectionReport { data, figures })
}
