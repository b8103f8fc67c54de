//! The rows with workloads, on the failover section's fleet
//! ([`crate::failover`]): nova, lyra and athena, each a network namespace
//! with its own `skos agent` on a fake sysfs (coretemp and cpufreq), the
//! coordinator and a nats-server on the host, synthesis-core (essential)
//! and docker-swarm (not essential) at home on nova as busybox HTTP
//! servers, lyra and athena its hot spares. The config names the seed's
//! whole thermal table (warning `throttle_10`; critical `throttle_50`,
//! `redistribute`; emergency `shutdown_non_essential`, `failover`):
//!
//! * thermal critical + workloads: nova's package written to 88 °C; nova
//!   cools (its calm temperature written) once the throttle shows in its
//!   `scaling_max_freq`, as the single-node thermal rows' CPU does;
//! * thermal emergency + workloads: 97 °C; nothing cools nova until the
//!   trial is judged (the bench writes its calm temperature then);
//! * dead node: nova's agent SIGKILLed: offline after `heartbeat_timeout`,
//!   its workloads failed over `failover_delay_seconds` later; the agent
//!   started again once the trial is judged.
//!
//! Each trial starts with the fleet at rest (every node healthy, nova
//! unthrottled, every workload placed at home and answering there only:
//! failback after `failback_hold_seconds`, a stale copy fenced) and is
//! judged again from the trail once the fleet is back at rest, so a step
//! sent after the trial settled still counts.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use skos_bus::Bus;

use super::trail::{Expect, TrialFigures};
use super::{follow, Row};
use crate::error::guarded;
use crate::failover::{self, Fleet, Tables, HOME};
use crate::hotcpu::{self, MAX_KHZ};
use crate::natsutil;
use crate::procs;
use crate::{Error, Opts, Result};

/// The node the faults are made on.
pub const NODE: &str = HOME;
/// nova's package temperature for the critical row, °C (critical: 85).
const CRITICAL_C: f64 = 88.0;
/// For the emergency row, °C (emergency: 95).
const EMERGENCY_C: f64 = 97.0;

/// What a workload row does to nova.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FleetFault {
    /// Its package at [`CRITICAL_C`].
    Critical,
    /// Its package at [`EMERGENCY_C`].
    Emergency,
    /// Its agent SIGKILLed.
    Dead,
}

/// `Ok` when the workload rows can run here; `Missing` saying why not
/// (the failover section's prerequisites: root, `ip netns`, a static
/// busybox, nats-server).
pub fn prerequisites() -> Result<()> {
    failover::prerequisites()
}

/// The fleet's config for these rows: the seed's thermal table, and the
/// single-node rows' settings that let trials repeat (verification held
/// 1 s, flap detection at 1000 changes a minute, the alert quota raised).
fn tables(o: &Opts) -> Tables {
    Tables {
        heartbeat_timeout: o.heartbeat_timeout,
        failover_delay: o.failover_delay,
        thermal: [
            "[throttle_10]",
            "[throttle_50, redistribute]",
            "[shutdown_non_essential, failover]",
        ],
        coordinator: "  verify_hold_seconds: 1\n  flap_start_changes: 1000\n  max_alerts_per_node_per_minute: 10000\n",
    }
}

/// The bound on a row's time to detect, seconds, and what it is: the
/// agent's monitor interval, or for a dead node `heartbeat_timeout` plus
/// one heartbeat interval (the coordinator's offline check runs on its
/// tick).
pub fn detect_bound(fault: FleetFault, o: &Opts) -> (f64, String) {
    match fault {
        FleetFault::Dead => (
            o.heartbeat_timeout + failover::HEARTBEAT_INTERVAL,
            format!(
                "heartbeat_timeout {} s + heartbeat_interval {} s",
                o.heartbeat_timeout,
                failover::HEARTBEAT_INTERVAL
            ),
        ),
        _ => (
            failover::MONITOR_INTERVAL,
            "monitor_interval (workload rows)".into(),
        ),
    }
}

/// What the section's report says of these rows' fleet.
pub fn settings(o: &Opts) -> Value {
    let t = tables(o);
    json!({
        "nodes": ["nova", "lyra", "athena"],
        "node": NODE,
        "workloads": {"synthesis-core": "essential", "docker-swarm": "not essential"},
        "thermal_actions": t.thermal,
        "heartbeat_timeout": t.heartbeat_timeout,
        "failover_delay_seconds": t.failover_delay,
        "heartbeat_interval": failover::HEARTBEAT_INTERVAL,
        "monitor_interval": failover::MONITOR_INTERVAL,
        "critical_c": CRITICAL_C,
        "emergency_c": EMERGENCY_C,
    })
}

/// The fleet and a client of its server. Dropped in field order: the bus
/// client, then the fleet (coordinator, agents, namespaces, server).
pub struct FleetStack {
    bus: Bus,
    f: Fleet,
}

impl FleetStack {
    /// The fleet started and at rest. Errors: as
    /// [`failover::Fleet::build`] and [`failover::wait_at_rest`].
    pub async fn start(o: &Opts) -> Result<FleetStack> {
        let bin = procs::skos_binary(o.skos_bin.as_deref())?;
        let mut f = Fleet::build(bin, &tables(o))?;
        let bus = Bus::Nats(natsutil::bus(&f.nats.url(), "skos-bench-efficacy-fleet").await?);
        if let Err(e) = natsutil::wait_status(&bus, natsutil::leader_wait(o)).await {
            f.check_alive()?;
            return Err(e);
        }
        let mut st = FleetStack { bus, f };
        st.calm().await?;
        Ok(st)
    }

    /// Keep the work dir (every process's log) after a failure.
    pub fn keep_logs(&mut self) -> String {
        self.f.work.disable_cleanup(true);
        self.f.work.path().display().to_string()
    }

    fn audit(&self) -> Result<Vec<Value>> {
        let mut c = super::audit_tail(&self.f.bin);
        c.env("NATS_URL", self.f.nats.url());
        super::audit_records(c)
    }

    fn nova(&self) -> usize {
        self.f.index(HOME)
    }

    /// Until the fleet is at rest and nova unthrottled.
    async fn calm(&mut self) -> Result<()> {
        failover::wait_at_rest(&mut self.f, &self.bus, "the fleet at rest before a trial").await?;
        let limit = Duration::from_secs(60);
        let deadline = Instant::now() + limit;
        let root = self.f.nodes[self.nova()].sys.root().to_path_buf();
        while !hotcpu::all_at(&root, MAX_KHZ) {
            self.f.check_alive()?;
            if Instant::now() > deadline {
                return Err(Error::timeout("nova's throttle lifted", limit));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    pub async fn stop(&mut self) {
        self.f.coord.sigterm(Duration::from_secs(10)).await;
    }

    /// One trial of `row` (the `k`th): inject, follow the trail until the
    /// trial settles, undo, wait for rest, judge again.
    pub async fn trial(&mut self, row: &Row, fault: FleetFault, k: usize) -> Result<TrialFigures> {
        self.calm().await?;
        // A different point of the monitor and heartbeat intervals each time.
        tokio::time::sleep(Duration::from_millis(100 + (k as u64 * 137) % 500)).await;
        let nova = self.nova();
        let since = Utc::now();
        let fault_at = match fault {
            FleetFault::Critical | FleetFault::Emergency => {
                let c = if fault == FleetFault::Critical {
                    CRITICAL_C
                } else {
                    EMERGENCY_C
                };
                let cpu = self.f.nodes[nova].cpu.clone();
                guarded("heat nova", || cpu.heat(c))?;
                Utc::now()
            }
            FleetFault::Dead => {
                let Some(mut agent) = self.f.nodes[nova].agent.take() else {
                    return Err(Error::failed("dead node", format!("{HOME} has no agent")));
                };
                let at = Utc::now();
                agent.sigkill();
                at
            }
        };
        let x = Expect {
            kind: row.kind,
            severity: row.severity,
            condition: row.condition,
            sensor: None,
            actions: row.actions,
            raised_by_coordinator: fault == FleetFault::Dead,
        };
        let node = &self.f.nodes[nova];
        let root = node.sys.root().to_path_buf();
        let (cpu, calm_c) = (node.cpu.clone(), node.calm_c);
        let mut cooled = false;
        let figures = follow(
            || self.audit(),
            NODE,
            since,
            fault_at,
            &x,
            || {
                // The plant: a throttled CPU cools.
                if fault == FleetFault::Critical && !cooled && !hotcpu::all_at(&root, MAX_KHZ) {
                    guarded("cool nova", || cpu.heat(calm_c))?;
                    cooled = true;
                }
                Ok(())
            },
        )
        .await;
        // Undo the fault whatever the trail said.
        match fault {
            FleetFault::Critical | FleetFault::Emergency => {
                guarded("cool nova", || cpu.heat(calm_c))?;
            }
            FleetFault::Dead => self.f.start_agent(nova)?,
        }
        self.f.check_alive()?;
        let figures = figures?;
        // Steps sent after the trial settled (a second workload moved, a
        // plan going on) belong to it too.
        failover::wait_at_rest(&mut self.f, &self.bus, "the fleet at rest after a trial").await?;
        let again = super::trail::judge(&self.audit()?, NODE, since, fault_at, &x);
        Ok(if again.settled || !figures.settled {
            again
        } else {
            figures
        })
    }
}
