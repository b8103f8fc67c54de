//! `skos demo`: the whole loop, embedded, on a sandbox it makes and removes.
//!
//! The sandbox is a private temp dir holding a fake sysfs tree (one CPU
//! package, four cpufreq policies: `skos_sandbox::sysfs`), a 16 MiB tmpfs
//! with a scratch dir to fill (`skos_sandbox::tmpfs`; it needs root, and
//! without it the disk steps are skipped, saying why), and the data dir.
//! The config points every sensor, actuator and cleaner there: the real
//! machine's sysfs, disks and data dir are never touched. The script heats
//! the CPU, waits for the alert, the throttle and its result, cools it,
//! waits for the verification and the throttle lifted; then fills the
//! disk with old temp files and waits for the alert, the cleanup and its
//! verification. Each step is printed as the audit trail records it; every
//! line starts with `[demo]`, every audit record's summary too, and the
//! status says `demo` mode. Then everything stops, the tmpfs is unmounted
//! and the sandbox removed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use skos_core::config::Config;
use skos_sandbox::sysfs;
use skos_sandbox::tmpfs::Tmpfs;

use crate::commands::{embedded, http_options, Embedded};

/// What every line and audit record of the demo starts with.
const LABEL: &str = "[demo]";

const DEMO: Embedded = Embedded {
    mode: "demo",
    say: LABEL,
    audit_label: Some(LABEL),
};

/// The fake CPU's cpufreq range (kHz) and policies.
const MIN_KHZ: u64 = 800_000;
const MAX_KHZ: u64 = 3_600_000;
const POLICIES: usize = 4;
/// The fake disk: 16 MiB, filled with 14 files of 1 MiB (about 88 %).
const DISK_BYTES: u64 = 16 << 20;
const FILES: usize = 14;
/// How long one step may take before the demo says it failed.
const STEP: Duration = Duration::from_secs(60);

/// One line on standard output; a reader gone is no reason to stop
/// before the sandbox is removed.
fn say(text: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{LABEL} {}", text.as_ref());
    let _ = out.flush();
}

/// The sandbox: removed (tmpfs first) when dropped.
struct Sandbox {
    // Dropped in order: the tmpfs is unmounted before the dir goes.
    disk: Option<Tmpfs>,
    dir: tempfile::TempDir,
    cpu: PathBuf,
}

impl Sandbox {
    fn create() -> Result<(Self, Option<String>)> {
        let dir = tempfile::Builder::new()
            .prefix("skos-demo-")
            .tempdir()
            .context("cannot make the sandbox dir")?;
        let sys = dir.path().join("sys");
        sysfs::skeleton(&sys)?;
        let cpu = sysfs::coretemp(&sys, 0, 0, 55.0, &[53.0, 52.0, 51.0, 50.0])?;
        sysfs::cpufreq(&sys, POLICIES, MIN_KHZ, MAX_KHZ)?;
        let mount = dir.path().join("disk");
        sysfs::mkdirs(&mount)?;
        let (disk, why) = match Tmpfs::mount(&mount, DISK_BYTES) {
            Ok(t) => {
                sysfs::mkdirs(&mount.join("scratch"))?;
                (Some(t), None)
            }
            Err(e) => (None, Some(e.to_string())),
        };
        Ok((Self { disk, dir, cpu }, why))
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn sys(&self) -> PathBuf {
        self.root().join("sys")
    }

    fn data(&self) -> PathBuf {
        self.root().join("data")
    }

    fn scratch(&self) -> PathBuf {
        self.root().join("disk/scratch")
    }

    /// The config of the demo: node `demo`, everything in the sandbox,
    /// short intervals so the loop closes within a minute.
    fn config(&self) -> Result<Config> {
        let text = self.root().to_str().ok_or_else(|| {
            anyhow!(
                "the sandbox's path {} is not UTF-8: set TMPDIR to a plain path",
                self.root().display()
            )
        })?;
        // A JSON string is a YAML string: quoted, escaped.
        let q = |rel: &str| serde_json::to_string(&format!("{text}{rel}"));
        let (root, data, sys, scratch) = (q("")?, q("/data")?, q("/sys")?, q("/disk/scratch")?);
        let storage = if self.disk.is_some() {
            format!(
                "storage:\n  allowed_roots: [{root}]\n  temp: {{dirs: [{scratch}], max_age: 60}}\n  \
                 actions: {{warning: [cleanup_temp], critical: [cleanup_temp], emergency: [cleanup_temp]}}\n  cooldown: 3600\n"
            )
        } else {
            String::new()
        };
        let antibodies = if self.disk.is_some() {
            "[thermal_sentinel, storage_watcher]"
        } else {
            "[thermal_sentinel]"
        };
        let yaml = format!(
            "node: {{name: demo}}\n\
             data_dir: {data}\n\
             sysfs_root: {sys}\n\
             log_level: ERROR\n\
             http: {{listen: \"off\"}}\n\
             agent: {{heartbeat_interval: 0.5, monitor_interval: 0.25, antibodies: {antibodies}}}\n\
             coordinator: {{heartbeat_timeout: 10, verify_within: 30, verify_hold_seconds: 1, command_deadline: 30}}\n\
             thermal:\n  clear_for: 1\n  cooldown: 3600\n  \
             gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}\n  \
             actions: {{warning: [throttle_10], critical: [throttle_50], emergency: [throttle_100]}}\n\
             {storage}"
        );
        let mut cfg = Config::from_yaml(&yaml).map_err(|issues| {
            anyhow!(
                "the demo's config is refused: {}",
                issues
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
        // LOG_LEVEL still chooses what the log shows; nothing else from the
        // environment reaches the sandbox.
        if let Ok(level) = std::env::var("LOG_LEVEL") {
            cfg.log_level = level;
        }
        let issues = cfg.check();
        if !issues.is_empty() {
            bail!(
                "the demo's config is refused: {}",
                issues
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        Ok(cfg)
    }

    /// Fill the scratch dir with `FILES` files of 1 MiB, two hours old.
    fn fill(&self) -> Result<()> {
        let old = SystemTime::now() - Duration::from_secs(7200);
        let block = vec![0x5au8; 1 << 20];
        for i in 0..FILES {
            let path = self.scratch().join(format!("demo-temp-{i:02}.bin"));
            let mut f = std::fs::File::create(&path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            f.write_all(&block)
                .and_then(|()| f.sync_all())
                .and_then(|()| f.set_modified(old))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }
}

/// Reads the trail as it is written and says each record worth saying.
struct Follower {
    path: PathBuf,
    seq: u64,
}

impl Follower {
    /// Wait until a record `done` accepts is written, saying every record
    /// of the steps on the way; fail after [`STEP`].
    async fn until(&mut self, what: &str, done: impl Fn(&Value) -> bool) -> Result<()> {
        let deadline = Instant::now() + STEP;
        loop {
            let (records, _) = skos_bus::audit_follow::read_file_after(&self.path, self.seq, 1000)?;
            for r in records {
                self.seq = r["seq"].as_u64().unwrap_or(self.seq);
                let entry = &r["entry"];
                let event = entry["event_type"].as_str().unwrap_or_default();
                if matches!(
                    event,
                    "alert" | "decision" | "command" | "result" | "verification" | "skipped"
                ) {
                    let summary = entry["summary"].as_str().unwrap_or_default();
                    let summary = summary.strip_prefix(LABEL).unwrap_or(summary).trim();
                    say(format!("  {event:<12} {summary}"));
                }
                if done(entry) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("no {what} within {} s", STEP.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn is_result(entry: &Value, action: &str, status: &str) -> bool {
    let r = &entry["data"]["result"];
    entry["event_type"] == "result" && r["action_type"] == action && r["status"] == status
}

fn is_verified(entry: &Value, action: &str) -> bool {
    entry["event_type"] == "verification"
        && entry["data"]["action"] == action
        && entry["data"]["outcome"] == "succeeded"
}

fn khz(sb: &Sandbox) -> String {
    let caps = sysfs::scaling_max(&sb.sys(), POLICIES);
    match caps.first().copied().flatten() {
        Some(k) => format!("{k} kHz"),
        None => "unreadable".into(),
    }
}

/// The steps, in order, `pace` apart.
async fn script(sb: &Sandbox, disk_skipped: Option<&str>, pace: Duration) -> Result<()> {
    let mut trail = Follower {
        path: sb.data().join("audit.jsonl"),
        seq: 0,
    };
    trail
        .until("first heartbeat", |e| {
            e["event_type"] == "node" && e["data"]["event"] == "joined"
        })
        .await?;
    tokio::time::sleep(pace).await;
    say(format!(
        "1. heat: the sandbox CPU goes from 55 °C to 88 °C (scaling_max_freq {})",
        khz(sb)
    ));
    sysfs::heat(&sb.cpu, 88.0)?;
    trail
        .until("throttle", |e| is_result(e, "throttle_50", "succeeded"))
        .await?;
    say(format!("  throttled: scaling_max_freq now {}", khz(sb)));
    tokio::time::sleep(pace).await;
    say("2. cool: the sandbox CPU goes back to 55 °C");
    sysfs::heat(&sb.cpu, 55.0)?;
    trail
        .until("verification", |e| is_verified(e, "throttle_50"))
        .await?;
    say("  verified: the temperature fell after the throttle and stayed down");
    trail
        .until("restore", |e| is_result(e, "reset_throttle", "succeeded"))
        .await?;
    say(format!("  restored: scaling_max_freq back to {}", khz(sb)));
    tokio::time::sleep(pace).await;
    match disk_skipped {
        Some(why) => say(format!("3. disk: skipped ({why})")),
        None => {
            say(format!(
                "3. fill: {FILES} MiB of two-hour-old temp files on the sandbox's 16 MiB disk"
            ));
            sb.fill()?;
            trail
                .until("cleanup", |e| is_result(e, "cleanup_temp", "succeeded"))
                .await?;
            trail
                .until("verification", |e| is_verified(e, "cleanup_temp"))
                .await?;
            say("  verified: the disk's use fell below the warning level after the cleanup");
        }
    }
    Ok(())
}

/// `skos demo [--http ADDR] [--pace SECS]`.
pub async fn demo(http: Option<&str>, pace: Option<f64>) -> Result<ExitCode> {
    let pace = pace.unwrap_or(if http.is_some() { 5.0 } else { 1.0 });
    if !(pace.is_finite() && (0.0..=60.0).contains(&pace)) {
        bail!("--pace {pace}: give seconds between 0 and 60");
    }
    let pace = Duration::from_secs_f64(pace);
    let started = Instant::now();
    let (sb, disk_skipped) = Sandbox::create()?;
    let cfg = sb.config()?;
    crate::commands::init_logging_labelled(&cfg.log_level, Some(LABEL))?;
    let http = match http {
        Some(addr) => http_options(&cfg, Some(addr))?,
        None => None,
    };
    say(format!(
        "a sandbox at {}: a fake sysfs (one CPU package, {POLICIES} cpufreq policies), {}, and the data dir; nothing outside it is touched",
        sb.root().display(),
        if sb.disk.is_some() {
            "a 16 MiB tmpfs"
        } else {
            "no disk (no tmpfs)"
        }
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut running = tokio::spawn(embedded(cfg, http, &DEMO, async {
        let _ = stop_rx.await;
    }));
    let outcome = tokio::select! {
        r = script(&sb, disk_skipped.as_deref(), pace) => r,
        _ = crate::commands::shutdown_signal() => Err(anyhow!("interrupted")),
        r = &mut running => {
            return Err(match r {
                Ok(Ok(())) => anyhow!("the demo's coordinator and agent stopped early"),
                Ok(Err(e)) => e,
                Err(e) => anyhow!(e),
            })
            .context(format!("{LABEL} failed"));
        }
    };
    let _ = stop_tx.send(());
    running
        .await
        .context("the demo's coordinator and agent")??;
    let where_ = sb.root().display().to_string();
    drop(sb);
    say(format!("sandbox {where_} removed"));
    match outcome {
        Ok(()) => {
            say(format!(
                "done in {} s: every step recorded and verified",
                started.elapsed().as_secs()
            ));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            say(format!("failed: {e:#}"));
            Ok(ExitCode::FAILURE)
        }
    }
}
