//! Every sensor source has a time budget, through the real binary: a hwmon
//! device whose `temp1_input` is a FIFO no one writes blocks its read in
//! the kernel (a 1-Wire probe on a bus that stopped answering), and a fake
//! `nvidia-smi` on `PATH` answers after 6 s (no persistence daemon).
//! `skos sensors` gives the fast sources at once and names the slow one;
//! `skos up` stops within a second of SIGTERM while the read hangs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use skos_testsupport::sysfs::{FakeSysfs, HwmonHandle};

/// A CPU at 55 °C and a 1-Wire probe whose read never returns.
fn hung_probe() -> (FakeSysfs, HwmonHandle) {
    let fake = FakeSysfs::new();
    fake.coretemp(55.0, &[]);
    let probe = fake.w1_probe("0316a2795bff", 21.5);
    let input = probe.dir().join("temp1_input");
    std::fs::remove_file(&input).unwrap();
    let made = Command::new("mkfifo").arg(&input).status().unwrap();
    assert!(made.success(), "mkfifo {}", input.display());
    (fake, probe)
}

/// Runs `cmd` to its end; kills it and fails after `limit` (a command that
/// waits for a hung read would otherwise hang the test).
fn run_within(mut cmd: Command, limit: Duration) -> std::process::Output {
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("{cmd:?} still running after {limit:?}");
        }
    }
}

fn sensors_json(
    cfg: &Path,
    sys: &Path,
    path: Option<&std::ffi::OsStr>,
) -> (Duration, Vec<Value>, String) {
    let mut c = skos();
    c.args(["sensors", "--json", "--config"])
        .arg(cfg)
        .env("SKOS_SYSFS_ROOT", sys);
    if let Some(path) = path {
        c.env("PATH", path);
    }
    let started = Instant::now();
    let out = run_within(c, Duration::from_secs(30));
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let readings: Vec<Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (
        took,
        readings,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn skos_sensors_gives_the_fast_sources_promptly_and_names_the_slow_one() {
    let work = tempfile::tempdir().unwrap();
    let (fake, probe) = hung_probe();
    let cfg = fast_config(work.path(), "");
    let (took, readings, stderr) = sensors_json(&cfg, fake.root(), None);
    // The budget of one hwmon device is 2 s (thermal.sources.read_timeout).
    assert!(took < Duration::from_secs(4), "skos sensors took {took:?}");
    assert_eq!(readings.len(), 1, "{readings:#?}");
    assert_eq!(readings[0]["label"], "Package id 0");
    assert_eq!(readings[0]["celsius"], 55.0);
    assert_eq!(readings[0]["kind"], "cpu");
    let slow_line = stderr
        .lines()
        .find(|l| l.contains("slow source"))
        .unwrap_or_else(|| panic!("no slow source named: {stderr}"));
    assert!(
        slow_line.contains(&probe.class_path().display().to_string())
            && slow_line.contains("w1_slave_temp")
            && slow_line.contains("its budget: 2 s"),
        "{slow_line}"
    );

    // The text form says it too, and the budget follows the config.
    let cfg = fast_config(work.path(), "  sources: {read_timeout: 0.5}\n");
    let mut c = skos();
    c.args(["sensors", "--config"])
        .arg(&cfg)
        .env("SKOS_SYSFS_ROOT", fake.root());
    let started = Instant::now();
    let out = run_within(c, Duration::from_secs(30));
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert!(text.contains("Package id 0"), "{text}");
    let slow = text
        .lines()
        .find(|l| l.starts_with("slow sources"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        slow.contains(&format!("{} (w1_slave_temp)", probe.class_path().display())),
        "{slow}"
    );
}

/// Field case 05 through `skos sensors`: the default tool budget (15 s)
/// lets `nvidia-smi` answer after its 6 s.
#[test]
fn skos_sensors_waits_for_a_slow_nvidia_smi_within_its_budget() {
    let work = tempfile::tempdir().unwrap();
    let bin = work.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    write_exec(
        &bin.join("nvidia-smi"),
        "#!/bin/sh\n# no persistence daemon: ~6 s per run\nsleep 6\n\
printf '0, Tesla V100-SXM2-16GB, 41\\n1, Tesla V100-SXM2-16GB, 37\\n2, Tesla V100-SXM2-16GB, 44\\n3, Tesla V100-SXM2-16GB, 39\\n'\n",
    );
    let fake = FakeSysfs::new();
    let cfg = work.path().join("config.yaml");
    std::fs::write(
        &cfg,
        "thermal:\n  gpu: {nvml: false, nvidia_smi: true, lm_sensors: false}\n",
    )
    .unwrap();
    let path =
        std::env::join_paths([bin, PathBuf::from("/usr/bin"), PathBuf::from("/bin")]).unwrap();
    let (took, readings, stderr) = sensors_json(&cfg, fake.root(), Some(&path));
    let gpus: Vec<(String, f64)> = readings
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap_or_default().to_string(),
                r["celsius"].as_f64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        gpus,
        [
            ("nvidia-smi:0".to_string(), 41.0),
            ("nvidia-smi:1".to_string(), 37.0),
            ("nvidia-smi:2".to_string(), 44.0),
            ("nvidia-smi:3".to_string(), 39.0),
        ],
        "{stderr}"
    );
    assert!(readings.iter().all(|r| r["kind"] == "gpu"));
    assert!(took >= Duration::from_millis(5500), "took {took:?}");
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Sends SIGTERM to `p` and returns how long it took to exit (successfully).
fn stop_timed(p: &mut Proc) -> Duration {
    let stopping = Instant::now();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(p.child.id().to_string())
        .status();
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "{} did not stop on SIGTERM",
            p.name
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = stopping.elapsed();
    eprintln!("{} stopped {took:?} after SIGTERM", p.name);
    assert!(status.success(), "{status:?}");
    took
}

#[test]
fn skos_agent_stops_within_a_second_of_sigterm_while_a_read_hangs() {
    let work = tempfile::tempdir().unwrap();
    let (fake, _probe) = hung_probe();
    let cfg = fast_config(work.path(), "");
    let nats = skos_testsupport::nats::NatsServer::start();
    let mut a = agent(&nats, &cfg, work.path(), fake.root(), "pi");
    wait_for(Duration::from_secs(30), "the probe named slow", || {
        a.log_text()
            .contains("sensor source in trouble")
            .then_some(())
    });
    let took = stop_timed(&mut a);
    assert!(took < Duration::from_millis(1500), "stopping took {took:?}");
}

#[test]
fn skos_up_stops_within_a_second_of_sigterm_while_a_read_hangs() {
    let work = tempfile::tempdir().unwrap();
    let (fake, _probe) = hung_probe();
    let cfg = fast_config(work.path(), "");
    let data = work.path().join("data");
    let mut c = skos();
    c.arg("up")
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data)
        .env("SKOS_SYSFS_ROOT", fake.root())
        .env("NODE_NAME", "pi");
    let mut up = Proc::spawn(c, work.path(), "skos-up");
    // Heartbeats with the CPU arrive while the probe hangs, and say so.
    let node = wait_for(Duration::from_secs(30), "the node's heartbeat", || {
        let out = run({
            let mut c = skos();
            c.args(["status", "--json", "--data-dir"]).arg(&data);
            c
        });
        let s: Value = serde_json::from_slice(&out.stdout).ok()?;
        let n = node(&s, "pi")?.clone();
        (n["cpu_temp"] == 55.0).then_some(n)
    });
    assert_eq!(node["status"], "healthy", "{node:#}");
    // Logged once the probe's budget runs out, which may be after the
    // heartbeat above arrived.
    wait_for(Duration::from_secs(30), "the slow probe logged", || {
        up.log_text()
            .contains("sensor source in trouble")
            .then_some(())
    });

    let took = stop_timed(&mut up);
    assert!(took < Duration::from_millis(1500), "stopping took {took:?}");
}
