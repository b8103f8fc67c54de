//! The hot-CPU scenario on a fake sysfs (coretemp + cpufreq), shared by the
//! distributed and embedded runs: set the package to 87 °C, time until
//! every policy's `scaling_max_freq` reads 50 % of `cpuinfo_max_freq`; cool
//! to 50 °C and wait for the throttle to be lifted; repeat.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use skos_bus::Bus;
use skos_testsupport::cpufreq::{fake_cpufreq, policy_dir};
use skos_testsupport::sysfs::{FakeSysfs, HwmonHandle};

use crate::error::guarded;
use crate::natsutil::node_status;
use crate::{say, Error, Result};

pub const MAX_KHZ: u64 = 3_600_000;
pub const MIN_KHZ: u64 = 800_000;
pub const POLICIES: usize = 2;
pub const HOT_C: f64 = 87.0;
pub const COOL_C: f64 = 50.0;

/// A fake machine: coretemp (package and one core) and two cpufreq
/// policies, in a temp dir removed on drop.
pub struct FakeMachine {
    pub sys: FakeSysfs,
    cpu: HwmonHandle,
}

impl FakeMachine {
    pub fn new() -> Result<Self> {
        guarded("build a fake sysfs", || {
            let sys = FakeSysfs::new();
            let cpu = sys.coretemp(COOL_C, &[COOL_C - 2.0]);
            fake_cpufreq(sys.root(), POLICIES, MIN_KHZ, MAX_KHZ);
            FakeMachine { sys, cpu }
        })
    }

    pub fn root(&self) -> &Path {
        self.sys.root()
    }

    /// Write the package temperature (`temp1_input`, millidegrees).
    pub fn set_package(&self, c: f64) -> Result<()> {
        let path = self.cpu.dir().join("temp1_input");
        std::fs::write(&path, format!("{}\n", (c * 1000.0).round() as i64))
            .map_err(|e| Error::io(path, e))
    }

    /// Whether every policy's `scaling_max_freq` reads `khz`.
    pub fn all_at(&self, khz: u64) -> bool {
        all_at(self.root(), khz)
    }
}

/// Whether every one of the [`POLICIES`] cpufreq policies under the fake
/// sysfs `root` has its `scaling_max_freq` at `khz` (an unreadable one
/// does not).
pub fn all_at(root: &Path, khz: u64) -> bool {
    (0..POLICIES).all(|p| {
        let path: PathBuf = policy_dir(root, p).join("scaling_max_freq");
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            == Some(khz)
    })
}

/// Where a run's status is read: the coordinator over the bus, or the
/// snapshot `skos up` writes in its data dir.
pub enum StatusSource {
    Bus(Bus),
    File(PathBuf),
}

impl StatusSource {
    pub async fn get(&self) -> Option<Value> {
        match self {
            StatusSource::Bus(b) => {
                let body = b.request_status(Duration::from_secs(2)).await.ok()?;
                serde_json::from_slice(&body).ok()
            }
            StatusSource::File(p) => {
                let body = std::fs::read(p).ok()?;
                serde_json::from_slice(&body).ok()
            }
        }
    }

    /// Wait until `node` shows `want`.
    pub async fn wait_node(&self, node: &str, want: &str, timeout: Duration) -> Result<()> {
        self.wait_node_where(node, want, timeout, |s| s == want)
            .await
    }

    /// Wait until `node` is reported and not offline (whatever its alerts).
    pub async fn wait_online(&self, node: &str, timeout: Duration) -> Result<()> {
        self.wait_node_where(node, "online", timeout, |s| s != "offline")
            .await
    }

    async fn wait_node_where(
        &self,
        node: &str,
        want: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = "no status answer".to_string();
        loop {
            if let Some(s) = self.get().await {
                match node_status(&s, node) {
                    Some(now) if ok(&now) => return Ok(()),
                    Some(now) => last = format!("the node is {now}"),
                    None => last = "the node is not in the status".into(),
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::timeout(
                    format!("node {node} {want} ({last})"),
                    timeout,
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn poll(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            return Err(Error::timeout(what, timeout));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cycle {
    /// 87 °C written → every `scaling_max_freq` at 50 %.
    pub detect_seconds: f64,
    /// 50 °C written → throttle lifted (includes `clear_for`).
    pub restore_seconds: f64,
}

/// Run the scenario `repeats` times on a node that is already healthy.
pub async fn cycles(
    section: &str,
    m: &FakeMachine,
    status: &StatusSource,
    node: &str,
    repeats: usize,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<Vec<Cycle>> {
    let mut out = Vec::new();
    for k in 0..repeats {
        // Land at a different point of the monitor interval each time.
        tokio::time::sleep(Duration::from_millis(200 + (k as u64 * 337) % 1000)).await;
        alive()?;
        m.set_package(HOT_C)?;
        let t0 = Instant::now();
        let done = poll("scaling_max_freq at 50 %", Duration::from_secs(30), || {
            m.all_at(MAX_KHZ / 2)
        })
        .await?;
        let detect = done.duration_since(t0).as_secs_f64();
        m.set_package(COOL_C)?;
        let t1 = Instant::now();
        let restored = poll("scaling_max_freq restored", Duration::from_secs(60), || {
            m.all_at(MAX_KHZ)
        })
        .await?;
        let restore = restored.duration_since(t1).as_secs_f64();
        say(
            section,
            format!(
                "cycle {}: throttled after {detect:.3} s, restored after {restore:.2} s",
                k + 1
            ),
        );
        out.push(Cycle {
            detect_seconds: detect,
            restore_seconds: restore,
        });
        status
            .wait_node(node, "healthy", Duration::from_secs(30))
            .await?;
    }
    Ok(out)
}
