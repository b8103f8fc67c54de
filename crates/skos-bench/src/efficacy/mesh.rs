//! The mesh rows: `skos up` inside network namespace `a`, watching a real
//! WireGuard tunnel (wireguard-go) to namespace `b` with a backup path, as
//! the mesh tests set it up ([`WgPair`]).
//!
//! * `tunnel_down`: a's wireguard-go killed;
//! * `peer_unreachable`: b's end of the primary path taken down; undone
//!   after the trial (link up, the route back after `hold_seconds`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;
use skos_testsupport::netns::{self, WgPair, BACKUP_GW, ENDPOINT_B, PRIMARY_GW};

use super::trail::{Expect, TrialFigures};
use super::{follow, write, Row, MONITOR_INTERVAL};
use crate::error::{guarded, Context};
use crate::hotcpu::StatusSource;
use crate::procs::{self, Proc};
use crate::{Error, Opts, Result};

pub const NODE: &str = "bench-mesh";
/// The failover's `hold_seconds`: short, so a trial is undone in seconds.
const HOLD: f64 = 2.0;
/// Probes: windows back to back, so a cut peer is found within two
/// windows of `(count − 1) × interval + timeout` (0.3 s) whatever the
/// monitor interval, three (0.45 s) when `ping_peer`, sent on the
/// `degraded` alert of the window in progress at the cut, discards the
/// next. 0.1 s is a thousand times a round trip between the namespaces.
const PROBE: &str = "{count: 2, interval: 0.05, timeout: 0.1, back_to_back: true}";

/// What a mesh row breaks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MeshFault {
    KillTunnel,
    CutPrimary,
}

/// `Ok` when the mesh rows can run here; `Missing` saying why not (not
/// root, no `ip netns`, no wireguard-go or wg-quick).
pub fn prerequisites() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        return Err(Error::Missing(
            "not running as root: the mesh rows build network namespaces and WireGuard tunnels"
                .into(),
        ));
    }
    match netns::unavailable() {
        Some(why) => Err(Error::Missing(why)),
        None => Ok(()),
    }
}

/// Dropped in field order: `skos up`, then the pair (wireguard-go, the
/// namespaces), then the work dir.
pub struct MeshStack {
    up: Proc,
    pair: WgPair,
    bin: PathBuf,
    data: PathBuf,
    status: StatusSource,
    pub work: tempfile::TempDir,
}

impl MeshStack {
    pub async fn start(o: &Opts) -> Result<MeshStack> {
        let bin = procs::skos_binary(o.skos_bin.as_deref())?;
        let pair = guarded("build the WireGuard pair", || {
            let p = WgPair::new(true);
            p.up();
            p
        })?;
        let work = tempfile::Builder::new()
            .prefix("skos-bench-efficacy-mesh-")
            .tempdir()
            .ctx("temp dir")?;
        let failover = format!(
            "      failover:\n        networks: [{ENDPOINT_B}/32]\n        primary: {{gateway: {PRIMARY_GW}, dev: pa}}\n        backup: {{gateway: {BACKUP_GW}, dev: ba}}\n        hold_seconds: {HOLD}\n"
        );
        let cfg = work.path().join("config.yaml");
        write(
            &cfg,
            &format!(
                "agent:\n  heartbeat_interval: 0.5\n  monitor_interval: {MONITOR_INTERVAL}\n  antibodies: [mesh_healer]\n\
coordinator:\n  heartbeat_timeout: 10\n  verify_within: 20\n  verify_hold_seconds: 1\n  flap_start_changes: 1000\n  command_deadline: 30\n  max_actions_per_node_per_minute: 1000\n\
{}",
                pair.mesh_section_probing(PROBE, &failover)
            ),
        )?;
        let data = work.path().join("data");
        let mut c = pair.a.command(&bin);
        procs::scrub_env(&mut c);
        c.arg("up")
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(&data)
            .arg("--http")
            .arg("off")
            .env("NODE_NAME", NODE);
        let mut up = Proc::spawn(c, work.path(), "skos-up-mesh")?;
        let status = StatusSource::File(data.join("status.json"));
        if let Err(e) = status
            .wait_node(NODE, "healthy", Duration::from_secs(30))
            .await
        {
            up.check_alive()?;
            return Err(e);
        }
        Ok(MeshStack {
            up,
            pair,
            bin,
            data,
            status,
            work,
        })
    }

    fn audit(&self) -> Result<Vec<Value>> {
        let mut c = super::audit_tail(&self.bin);
        c.arg("--data-dir").arg(&self.data);
        super::audit_records(c)
    }

    /// Before a trial: the node healthy, the route on the primary path.
    async fn calm(&mut self) -> Result<()> {
        self.up.check_alive()?;
        let limit = Duration::from_secs(60);
        let deadline = Instant::now() + limit;
        while self.pair.endpoint_route().0 != PRIMARY_GW {
            if Instant::now() > deadline {
                return Err(Error::timeout("the route back on the primary path", limit));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.status.wait_node(NODE, "healthy", limit).await
    }

    pub async fn stop(&mut self) {
        self.up.sigterm(Duration::from_secs(10)).await;
    }

    /// One trial of `row`.
    pub async fn trial(&mut self, row: &Row, fault: MeshFault, k: usize) -> Result<TrialFigures> {
        self.calm().await?;
        tokio::time::sleep(Duration::from_millis(100 + (k as u64 * 137) % 500)).await;
        let since = Utc::now();
        match fault {
            MeshFault::KillTunnel => {
                if netns::kill_wireguard(&self.pair.if_a) == 0 {
                    return Err(Error::failed("kill wireguard-go", "none running"));
                }
            }
            MeshFault::CutPrimary => {
                guarded("take the primary path down", || {
                    self.pair.b.ip(&["link", "set", "pb", "down"])
                })?;
            }
        }
        let fault_at = Utc::now();
        let x = Expect {
            kind: row.kind,
            severity: row.severity,
            condition: row.condition,
            sensor: None,
            actions: row.actions,
            raised_by_coordinator: false,
        };
        let figures = follow(|| self.audit(), NODE, since, fault_at, &x, || Ok(())).await;
        if fault == MeshFault::CutPrimary {
            guarded("bring the primary path up", || {
                self.pair.b.ip(&["link", "set", "pb", "up"])
            })?;
        }
        self.up.check_alive()?;
        figures
    }
}
