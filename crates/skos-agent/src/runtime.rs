//! The agent runtime: heartbeats every `heartbeat_interval`, sensing every
//! `monitor_interval`, and the node's command feed.
//!
//! A command is executed only if it is well-formed, addressed to this node,
//! inside its deadline, not executed before (by `action_id`), and names an
//! action an enabled antibody knows; otherwise the answer says why
//! (`rejected`, `expired`, `unsupported`). Every command gets a result.

use skos_core::counters::Counter;
use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Map, Value};
use skos_bus::trust::{self, Verifier};
use skos_bus::{Bus, Feed, Incoming};
use skos_core::config::Config;
use skos_core::counters::Counters;
use skos_core::protocol::{decode, Command, CommandResult, Heartbeat, ResultStatus};
use skos_core::NodeName;
use tokio::sync::mpsc;

use crate::antibody::{Antibody, Execution};
use crate::registry;
use crate::{Outcome, Result};

/// A finished background job: (antibody index, action, outcome).
type Done = (usize, String, Outcome);

pub struct Agent {
    cfg: Config,
    bus: Bus,
    counters: Counters,
    antibodies: Vec<Box<dyn Antibody>>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: Option<mpsc::UnboundedReceiver<Done>>,
    /// Executed action ids, until when they could still be replayed.
    executed: HashMap<String, i64>,
    executed_file: Option<PathBuf>,
    verifier: Verifier,
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
        let antibodies = registry::enabled(&cfg, state_dir.as_deref());
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let verifier = Verifier::new(&cfg.trust.coordinator_keys, cfg.trust.require_signatures)?;
        if verifier.required() && verifier.key_count() == 0 {
            tracing::warn!("trust.require_signatures is on but trust.coordinator_keys is empty: every command will be refused");
        }
        let executed_file = state_dir.map(|d| d.join(format!("executed-{}.log", cfg.node.name)));
        let executed = executed_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| load_executed(&t, chrono::Utc::now().timestamp()))
            .unwrap_or_default();
        Ok(Self {
            cfg,
            bus,
            counters,
            antibodies,
            done_tx,
            done_rx: Some(done_rx),
            executed,
            executed_file,
            verifier,
        })
    }

    fn node(&self) -> &NodeName {
        &self.cfg.node.name
    }

    /// One antibody: named after it, as the seed's agents are
    /// (`thermal-sentinel-nova`); several: `skos-agent-<node>`.
    fn agent_id(&self) -> String {
        match self.antibodies.as_slice() {
            [one] => format!("{}-{}", one.name().replace('_', "-"), self.node()),
            _ => format!("skos-agent-{}", self.node()),
        }
    }

    fn agent_type(&self) -> &'static str {
        match self.antibodies.as_slice() {
            [one] => one.name(),
            _ => "skos_agent",
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
        // Antibodies' own tasks (the loop breaker's chain feed), stopped with the agent.
        let served: Vec<_> = self
            .antibodies
            .iter_mut()
            .filter_map(|a| a.serve(&self.bus, &self.counters))
            .map(tokio::spawn)
            .collect();
        let names: Vec<&str> = self.antibodies.iter().map(|a| a.name()).collect();
        tracing::info!(node = %self.node(), antibodies = ?names, "agent started");
        // Sense once before the first heartbeat so it carries real readings.
        self.sense().await;
        let mut done = self
            .done_rx
            .take()
            .unwrap_or_else(|| mpsc::unbounded_channel().1);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = monitor.tick() => self.sense().await,
                _ = heartbeat.tick() => self.heartbeat().await,
                Some(m) = commands.next() => self.command(m).await,
                Some((i, action, outcome)) = done.recv() => {
                    if let Some(a) = self.antibodies.get_mut(i) {
                        a.finished(&action, &outcome);
                    }
                    // Report the new state at once.
                    self.sense().await;
                    self.heartbeat().await;
                }
            }
        }
        for task in &served {
            task.abort();
        }
        tracing::info!(node = %self.node(), "agent stopped");
        Ok(())
    }

    async fn sense(&mut self) {
        let now = chrono::Utc::now();
        let mut alerts = Vec::new();
        for a in self.antibodies.iter_mut() {
            alerts.extend(tokio::task::block_in_place(|| a.sense(now)));
        }
        for a in alerts {
            tracing::info!(node = %a.node, kind = a.kind.as_str(), severity = a.severity.as_str(), message = %a.message, "alert");
            self.counters.inc(Counter::AlertsSent);
            if let Err(e) = self.bus.publish_alert(&a).await {
                self.counters.inc(Counter::AlertsSendFailed);
                tracing::error!(error = %e, "alert not sent");
            }
        }
    }

    pub fn heartbeat_message(&self) -> Heartbeat {
        let mut metadata = Map::new();
        metadata.insert("antibodies".into(), json!(self.cfg.agent.antibodies));
        let mut hb = Heartbeat {
            agent_id: self.agent_id(),
            agent_type: self.agent_type().to_string(),
            node: self.node().clone(),
            timestamp: chrono::Utc::now(),
            cpu_temp: None,
            gpu_temp: None,
            storage_percent: None,
            interval_seconds: Some(self.cfg.agent.heartbeat_interval),
            throttle_level: None,
            metadata,
        };
        for a in &self.antibodies {
            a.report(&mut hb);
        }
        hb
    }

    async fn heartbeat(&mut self) {
        let hb = self.heartbeat_message();
        if let Err(e) = self.bus.publish_heartbeat(&hb).await {
            self.counters.inc(Counter::HeartbeatsSendFailed);
            tracing::warn!(error = %e, "heartbeat not sent");
        } else {
            self.counters.inc(Counter::HeartbeatsSent);
        }
    }

    async fn command(&mut self, m: Incoming) {
        let now = chrono::Utc::now();
        let limit = self.cfg.nats.max_message_bytes;
        if let Err(e) = self.verifier.check(
            &m.payload,
            m.header(trust::HEADER_SIGNER),
            m.header(trust::HEADER_SIGNATURE),
        ) {
            self.counters.inc(Counter::CommandsRejectedSignature);
            tracing::warn!(subject = %m.subject, error = %e, "refused command");
            if let Some(id) = loose_action_id(&m.payload) {
                let o = Outcome::new(ResultStatus::Rejected, format!("refused: {e}"));
                self.answer(&id, "unknown", &o).await;
            }
            return ack(m).await;
        }
        let cmd = match decode::<Command>(&m.payload, limit).and_then(|c| c.validate().map(|()| c))
        {
            Ok(c) => c,
            Err(e) => {
                self.counters.inc(Counter::CommandsRejectedMalformed);
                tracing::warn!(subject = %m.subject, error = %e, "rejected command");
                // Answer when the id can still be read, so it is audited.
                if let Some(id) = loose_action_id(&m.payload) {
                    let o = Outcome::new(ResultStatus::Rejected, format!("malformed command: {e}"));
                    self.answer(&id, "unknown", &o).await;
                }
                return ack(m).await;
            }
        };
        let refusal = if cmd.node.as_ref().is_some_and(|n| n != self.node()) {
            Some(Outcome::new(
                ResultStatus::Rejected,
                "command is addressed to another node",
            ))
        } else if cmd.deadline.is_some_and(|d| now > d) {
            Some(Outcome::new(
                ResultStatus::Expired,
                "deadline passed before execution",
            ))
        } else if let Err(e) =
            skos_core::catalogue::validate_parameters(&cmd.action_type, &cmd.parameters).or_else(
                |e| match e {
                    // Not a bad command: an action this build does not
                    // know is answered `unsupported` below, which is no
                    // breaker failure.
                    skos_core::catalogue::ParamError::UnknownAction { .. } => Ok(()),
                    e => Err(e),
                },
            )
        {
            Some(Outcome::new(
                ResultStatus::Rejected,
                format!("invalid parameters: {e}"),
            ))
        } else if self.executed.contains_key(&cmd.action_id) {
            Some(Outcome::new(
                ResultStatus::Rejected,
                "action_id already executed (replay)",
            ))
        } else {
            None
        };
        let index = self
            .antibodies
            .iter()
            .position(|a| a.handles(&cmd.action_type));
        let outcome = match (refusal, index) {
            (Some(o), _) => o,
            (None, None) => Outcome::new(
                ResultStatus::Unsupported,
                format!(
                    "no enabled antibody on {} implements {}",
                    self.node(),
                    cmd.action_type
                ),
            ),
            (None, Some(i)) => {
                self.remember(&cmd);
                let execution = tokio::task::block_in_place(|| self.antibodies[i].execute(&cmd));
                match execution {
                    Execution::Done(o) => o,
                    Execution::Background(job) => return self.spawn_job(i, cmd, m, job),
                }
            }
        };
        self.counters
            .inc(Counter::Commands(outcome.status.as_str()));
        tracing::info!(action_id = %cmd.action_id, action = %cmd.action_type, status = outcome.status.as_str(), message = %outcome.message, "command handled");
        self.answer(&cmd.action_id, &cmd.action_type, &outcome)
            .await;
        // Heartbeat right away so the coordinator sees the new state.
        self.heartbeat().await;
        ack(m).await;
    }

    /// Long actions run on a blocking thread while heartbeats go on; the
    /// result is published when they finish, then the command is acked.
    fn spawn_job(
        &mut self,
        index: usize,
        cmd: Command,
        m: Incoming,
        job: Box<dyn FnOnce() -> Outcome + Send>,
    ) {
        let result = self.result_template(&cmd.action_id, &cmd.action_type);
        let bus = self.bus.clone();
        let counters = self.counters.clone();
        let done = self.done_tx.clone();
        tracing::info!(action_id = %cmd.action_id, action = %cmd.action_type, "action started in the background");
        tokio::spawn(async move {
            let outcome = tokio::task::spawn_blocking(job).await.unwrap_or_else(|e| {
                Outcome::new(ResultStatus::Failed, format!("action crashed: {e}"))
            });
            counters.inc(Counter::Commands(outcome.status.as_str()));
            tracing::info!(action_id = %cmd.action_id, action = %cmd.action_type, status = outcome.status.as_str(), message = %outcome.message, "action finished");
            let result = fill(result, &outcome);
            if let Err(e) = bus.publish_result(&result).await {
                tracing::error!(action_id = %cmd.action_id, error = %e, "result not sent");
            }
            let _ = done.send((index, cmd.action_type.clone(), outcome));
            ack(m).await;
        });
    }

    /// Remember an executed action id, on disk too, for as long as its
    /// command could still be valid (its deadline, or the replay window).
    fn remember(&mut self, cmd: &Command) {
        let until = cmd.deadline.map(|d| d.timestamp()).unwrap_or_else(|| {
            (chrono::Utc::now() + skos_core::level::secs(self.cfg.trust.replay_window)).timestamp()
        });
        self.executed.insert(cmd.action_id.clone(), until);
        if let Some(p) = &self.executed_file {
            let r = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .and_then(|mut f| {
                    writeln!(f, "{}\t{until}", cmd.action_id).and_then(|()| f.sync_data())
                });
            if let Err(e) = r {
                tracing::warn!(path = %p.display(), error = %e, "cannot record executed action id");
            }
        }
    }

    fn result_template(&self, action_id: &str, action_type: &str) -> CommandResult {
        CommandResult {
            action_id: action_id.to_string(),
            action_type: action_type.to_string(),
            node: self.node().clone(),
            agent_id: self.agent_id(),
            status: ResultStatus::Failed,
            message: String::new(),
            changes: Vec::new(),
            details: Map::new(),
            timestamp: chrono::Utc::now(),
        }
    }

    async fn answer(&self, action_id: &str, action_type: &str, outcome: &Outcome) {
        let result = fill(self.result_template(action_id, action_type), outcome);
        if let Err(e) = self.bus.publish_result(&result).await {
            tracing::error!(action_id, error = %e, "result not sent");
        }
    }
}

/// The action id of a command that could not be decoded or trusted, when it
/// can still be read, so the refusal is answered and audited.
fn loose_action_id(payload: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(payload)
        .ok()?
        .get("action_id")?
        .as_str()
        .filter(|id| id.len() <= 256 && !id.chars().any(char::is_control))
        .map(str::to_owned)
}

/// Parse the executed-ids log (`action_id<TAB>until`), dropping entries
/// whose command can no longer be valid. Older logs without a time are kept.
fn load_executed(text: &str, now: i64) -> HashMap<String, i64> {
    text.lines()
        .filter_map(|l| {
            let (id, until) = match l.split_once('\t') {
                Some((id, t)) => (id, t.trim().parse().unwrap_or(i64::MAX)),
                None => (l, i64::MAX),
            };
            (!id.is_empty() && until >= now).then(|| (id.to_string(), until))
        })
        .collect()
}

fn fill(mut r: CommandResult, o: &Outcome) -> CommandResult {
    r.status = o.status;
    r.message = o.message.clone();
    r.changes = o.changes.clone();
    r.details = o.details.clone();
    r.timestamp = chrono::Utc::now();
    r
}

async fn ack(m: Incoming) {
    if let Err(e) = m.ack().await {
        tracing::warn!(error = %e, "command ack failed; it may be delivered again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executed_log_keeps_only_what_could_still_be_replayed() {
        let m = load_executed("a\t100\nb\t50\nlegacy\n\n", 60);
        assert!(m.contains_key("a"));
        assert!(!m.contains_key("b"));
        assert!(m.contains_key("legacy"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn loose_ids() {
        assert_eq!(
            loose_action_id(br#"{"action_id":"x","junk":1}"#).as_deref(),
            Some("x")
        );
        assert_eq!(loose_action_id(b"garbage"), None);
        assert_eq!(loose_action_id(br#"{"action_id":"a\u0000b"}"#), None);
    }
}
