//! The agent runtime: heartbeats every `heartbeat_interval`, sensing every
//! `monitor_interval`, and the node's command feed.
//!
//! A command is executed only if it is well-formed, addressed to this node,
//! inside its deadline, not executed before (by `action_id`), and names an
//! action an enabled antibody knows; otherwise the answer says why
//! (`rejected`, `expired`, `unsupported`). Every command gets a result.

use std::collections::HashSet;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Map, Value};
use skos_bus::{Bus, Feed, Incoming};
use skos_core::config::Config;
use skos_core::counters::Counters;
use skos_core::protocol::{decode, Command, CommandResult, Heartbeat, ResultStatus};
use skos_core::NodeName;

use crate::storage::{self, StorageWatcher};
use crate::thermal::{self, ThermalSentinel};
use crate::{Outcome, Result};

pub struct Agent {
    cfg: Config,
    bus: Bus,
    counters: Counters,
    thermal: Option<ThermalSentinel>,
    storage: Option<StorageWatcher>,
    /// Finished background jobs: (action, outcome).
    done_tx: tokio::sync::mpsc::UnboundedSender<(String, Outcome)>,
    done_rx: Option<tokio::sync::mpsc::UnboundedReceiver<(String, Outcome)>>,
    executed: HashSet<String>,
    executed_file: Option<PathBuf>,
}

impl Agent {
    /// `state_dir`: where the agent keeps what must survive a restart
    /// (throttle originals, executed action ids); `None` keeps it in memory.
    pub fn new(
        cfg: Config,
        bus: Bus,
        counters: Counters,
        state_dir: Option<PathBuf>,
    ) -> Result<Self> {
        if let Some(dir) = &state_dir {
            std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
        }
        let enabled = |name: &str| cfg.agent.antibodies.iter().any(|a| a == name);
        for a in &cfg.agent.antibodies {
            if a != thermal::AGENT_TYPE && a != storage::AGENT_TYPE {
                tracing::warn!(antibody = %a, "antibody not available in this build; its commands are answered unsupported");
            }
        }
        let thermal =
            enabled(thermal::AGENT_TYPE).then(|| ThermalSentinel::new(&cfg, state_dir.as_deref()));
        let storage = enabled(storage::AGENT_TYPE).then(|| StorageWatcher::new(&cfg));
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
        let executed_file = state_dir.map(|d| d.join(format!("executed-{}.log", cfg.node.name)));
        let executed = executed_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(Self {
            cfg,
            bus,
            counters,
            thermal,
            storage,
            done_tx,
            done_rx: Some(done_rx),
            executed,
            executed_file,
        })
    }

    fn node(&self) -> &NodeName {
        &self.cfg.node.name
    }

    fn agent_id(&self) -> String {
        match (&self.thermal, &self.storage) {
            (Some(t), None) => t.agent_id().to_string(),
            _ => format!("skos-agent-{}", self.node()),
        }
    }

    /// Run until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let mut commands = self
            .bus
            .subscribe(Feed::Commands(self.node().clone()))
            .await?;
        let mut heartbeat =
            tokio::time::interval(Duration::from_secs_f64(self.cfg.agent.heartbeat_interval));
        let mut monitor =
            tokio::time::interval(Duration::from_secs_f64(self.cfg.agent.monitor_interval));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        monitor.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(node = %self.node(), antibodies = ?self.cfg.agent.antibodies, "agent started");
        // Sense once before the first heartbeat so it carries real readings.
        self.sense().await;
        let mut done = match self.done_rx.take() {
            Some(rx) => rx,
            None => tokio::sync::mpsc::unbounded_channel().1,
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = monitor.tick() => self.sense().await,
                _ = heartbeat.tick() => self.heartbeat().await,
                Some(m) = commands.next() => self.command(m).await,
                Some((action, outcome)) = done.recv() => {
                    if let Some(s) = self.storage.as_mut() {
                        s.record(&action, &outcome);
                    }
                    // Report the new usage at once.
                    self.sense().await;
                    self.heartbeat().await;
                }
            }
        }
        tracing::info!(node = %self.node(), "agent stopped");
        Ok(())
    }

    async fn sense(&mut self) {
        let now = chrono::Utc::now();
        let mut alerts = Vec::new();
        if let Some(t) = self.thermal.as_mut() {
            alerts.extend(tokio::task::block_in_place(|| t.sense(now)));
        }
        if let Some(s) = self.storage.as_mut() {
            alerts.extend(tokio::task::block_in_place(|| s.sense(now)));
        }
        for a in alerts {
            tracing::info!(node = %a.node, severity = a.severity.as_str(), message = %a.message, "thermal alert");
            self.counters.inc("alerts.sent");
            if let Err(e) = self.bus.publish_alert(&a).await {
                self.counters.inc("alerts.send_failed");
                tracing::error!(error = %e, "alert not sent");
            }
        }
    }

    pub fn heartbeat_message(&self) -> Heartbeat {
        let mut metadata = Map::new();
        metadata.insert("antibodies".into(), json!(self.cfg.agent.antibodies));
        let (cpu, gpu, throttle) = match &self.thermal {
            Some(t) => {
                metadata.insert("sensors".into(), json!(t.sensor_count()));
                (t.cpu_temp(), t.gpu_temp(), Some(t.throttle_level()))
            }
            None => (None, None, None),
        };
        let storage_percent = self.storage.as_ref().and_then(|s| s.storage_percent());
        if let Some(s) = &self.storage {
            metadata.insert("storage".into(), json!(s.usage()));
        }
        let agent_type = match (&self.thermal, &self.storage) {
            (Some(_), None) => thermal::AGENT_TYPE,
            (None, Some(_)) => storage::AGENT_TYPE,
            _ => "skos_agent",
        };
        Heartbeat {
            agent_id: self.agent_id(),
            agent_type: agent_type.to_string(),
            node: self.node().clone(),
            timestamp: chrono::Utc::now(),
            cpu_temp: cpu,
            gpu_temp: gpu,
            storage_percent,
            interval_seconds: Some(self.cfg.agent.heartbeat_interval),
            throttle_level: throttle,
            metadata,
        }
    }

    async fn heartbeat(&mut self) {
        let hb = self.heartbeat_message();
        if let Err(e) = self.bus.publish_heartbeat(&hb).await {
            self.counters.inc("heartbeats.send_failed");
            tracing::warn!(error = %e, "heartbeat not sent");
        } else {
            self.counters.inc("heartbeats.sent");
        }
    }

    async fn command(&mut self, m: Incoming) {
        let now = chrono::Utc::now();
        let limit = self.cfg.nats.max_message_bytes;
        let cmd = match decode::<Command>(&m.payload, limit).and_then(|c| c.validate().map(|()| c))
        {
            Ok(c) => c,
            Err(e) => {
                self.counters.inc("commands.rejected.malformed");
                tracing::warn!(subject = %m.subject, error = %e, "rejected command");
                // Answer when the id can still be read, so it is audited.
                let id = serde_json::from_slice::<Value>(&m.payload)
                    .ok()
                    .and_then(|v| {
                        v.get("action_id")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                    .filter(|id| id.len() <= 256 && !id.chars().any(char::is_control));
                if let Some(id) = id {
                    self.answer(
                        &id,
                        "unknown",
                        ResultStatus::Rejected,
                        format!("malformed command: {e}"),
                        vec![],
                    )
                    .await;
                }
                return ack(m).await;
            }
        };
        let (status, message, changes) = if cmd.node.as_ref().is_some_and(|n| n != self.node()) {
            (
                ResultStatus::Rejected,
                "command is addressed to another node".to_string(),
                vec![],
            )
        } else if cmd.deadline.is_some_and(|d| now > d) {
            (
                ResultStatus::Expired,
                "deadline passed before execution".to_string(),
                vec![],
            )
        } else if self.executed.contains(&cmd.action_id) {
            (
                ResultStatus::Rejected,
                "action_id already executed (replay)".to_string(),
                vec![],
            )
        } else if storage::handles(&cmd.action_type) && self.storage.is_some() {
            self.remember(&cmd.action_id);
            return self.spawn_storage_job(cmd, m);
        } else if thermal::handles(&cmd.action_type) && self.thermal.is_some() {
            self.remember(&cmd.action_id);
            let t = self
                .thermal
                .as_mut()
                .map(|t| tokio::task::block_in_place(|| t.execute(&cmd)));
            match t {
                Some(o) => (o.status, o.message, o.changes),
                None => (
                    ResultStatus::Unsupported,
                    "no thermal sentinel".into(),
                    vec![],
                ),
            }
        } else {
            (
                ResultStatus::Unsupported,
                format!(
                    "no enabled antibody on {} implements {}",
                    self.node(),
                    cmd.action_type
                ),
                vec![],
            )
        };
        self.counters.inc(&format!("commands.{}", status.as_str()));
        tracing::info!(action_id = %cmd.action_id, action = %cmd.action_type, status = status.as_str(), %message, "command handled");
        self.answer(&cmd.action_id, &cmd.action_type, status, message, changes)
            .await;
        // Heartbeat right away so the coordinator sees the new state.
        self.heartbeat().await;
        ack(m).await;
    }

    /// Storage actions can take minutes: they run on a blocking thread
    /// while heartbeats go on; the result is published when they finish.
    fn spawn_storage_job(&mut self, cmd: Command, m: Incoming) {
        let Some(job) = self.storage.as_ref().map(|s| s.job(&cmd)) else {
            return;
        };
        let bus = self.bus.clone();
        let node = self.node().clone();
        let agent_id = self.agent_id();
        let counters = self.counters.clone();
        let done = self.done_tx.clone();
        tracing::info!(action_id = %cmd.action_id, action = %cmd.action_type, "storage action started");
        tokio::spawn(async move {
            let action = job.action().to_string();
            let outcome = tokio::task::spawn_blocking(move || job.run())
                .await
                .unwrap_or_else(|e| {
                    Outcome::new(ResultStatus::Failed, format!("storage action crashed: {e}"))
                });
            counters.inc(&format!("commands.{}", outcome.status.as_str()));
            tracing::info!(action_id = %cmd.action_id, action = %action, status = outcome.status.as_str(), message = %outcome.message, "storage action finished");
            let result = CommandResult {
                action_id: cmd.action_id.clone(),
                action_type: cmd.action_type.clone(),
                node,
                agent_id,
                status: outcome.status,
                message: outcome.message.clone(),
                changes: outcome.changes.clone(),
                details: outcome.details.clone(),
                timestamp: chrono::Utc::now(),
            };
            if let Err(e) = bus.publish_result(&result).await {
                tracing::error!(action_id = %cmd.action_id, error = %e, "result not sent");
            }
            let _ = done.send((action, outcome));
            ack(m).await;
        });
    }

    fn remember(&mut self, action_id: &str) {
        self.executed.insert(action_id.to_string());
        if let Some(p) = &self.executed_file {
            let r = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .and_then(|mut f| writeln!(f, "{action_id}").and_then(|()| f.sync_data()));
            if let Err(e) = r {
                tracing::warn!(path = %p.display(), error = %e, "cannot record executed action id");
            }
        }
    }

    async fn answer(
        &self,
        action_id: &str,
        action_type: &str,
        status: ResultStatus,
        message: String,
        changes: Vec<skos_core::protocol::Change>,
    ) {
        let result = CommandResult {
            action_id: action_id.to_string(),
            action_type: action_type.to_string(),
            node: self.node().clone(),
            agent_id: self.agent_id(),
            status,
            message,
            changes,
            details: Map::new(),
            timestamp: chrono::Utc::now(),
        };
        if let Err(e) = self.bus.publish_result(&result).await {
            tracing::error!(action_id, error = %e, "result not sent");
        }
    }
}

async fn ack(m: Incoming) {
    if let Err(e) = m.ack().await {
        tracing::warn!(error = %e, "command ack failed; it may be delivered again");
    }
}
