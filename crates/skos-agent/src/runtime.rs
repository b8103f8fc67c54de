//! The agent runtime: heartbeats every `heartbeat_interval`, each antibody
//! sensing at its own interval (`agents.<name>.monitor_interval_seconds`,
//! default `agent.monitor_interval`), and the node's command feed. Nothing here waits for
//! a sensor: an antibody whose sources are slow (the thermal sentinel) reads
//! them on threads of its own, and what they read is judged as soon as it
//! arrives (`Antibody::arrivals`, `Antibody::judge`).
//!
//! A command is executed only if it is well-formed, addressed to this node,
//! not executed before (by `action_id`), of the current coordinator term
//! (`term`), inside its deadline, and names an action an enabled antibody
//! knows; otherwise the answer says why (`rejected`, `expired`,
//! `unsupported`). Just before a command runs, its problem is checked to
//! be still there when the command says at what `level` (the antibody's
//! current reading against it, [`Antibody::precondition`]); where the
//! reading has cleared it, the command is answered `not_needed` and nothing
//! is done (never for restoring actions or workload steps). Every command
//! gets a result. A command delivered again
//! after it was carried out is answered with the outcome it really had
//! (kept in `executed`); one delivered again while it still runs is only
//! acknowledged, its job answers when it finishes.
//!
//! A background job tells JetStream every third of the ack wait that its
//! command is still being worked on, so a long action is not delivered
//! again; its command is acknowledged once its result is published.

mod executed;
mod quiet;
mod term;

use skos_core::counters::Counter;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Map, Value};
use skos_bus::trust::{self, Verifier};
use skos_bus::{Bus, Feed, Incoming};
use skos_core::config::Config;
use skos_core::counters::Counters;
use skos_core::protocol::{decode, Command, CommandResult, Heartbeat, ResultStatus};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;
use tokio::sync::mpsc;

use self::executed::{Executed, State};
use self::quiet::Refusal;
use self::term::Fence;

use crate::antibody::{Antibody, Execution, Precondition};
use crate::registry;
use crate::{Outcome, Result};

/// Resolves when the earliest of `due` comes; never when there is none.
async fn next_due(due: &[tokio::time::Instant]) {
    match due.iter().min() {
        Some(at) => tokio::time::sleep_until(*at).await,
        None => std::future::pending().await,
    }
}

/// A finished background job: (antibody index, action, outcome, the
/// problem its command answered).
type Done = (usize, String, Outcome, Option<String>);

/// The most alerts an agent keeps while the bus refuses them.
pub const UNSENT_MAX: usize = 256;

pub struct Agent {
    cfg: Config,
    bus: Bus,
    counters: Counters,
    antibodies: Vec<Box<dyn Antibody>>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: Option<mpsc::UnboundedReceiver<Done>>,
    /// Executed action ids, until when they could still be replayed, and
    /// their outcomes; shared with the background jobs, which record theirs.
    executed: Arc<Mutex<Executed>>,
    /// The highest coordinator term seen.
    fence: Fence,
    /// Refused and replayed commands' log lines this minute, by kind.
    refusals_logged: quiet::RefusalLog,
    /// Commands waiting for a running job of their problem to end.
    held: crate::held::Held,
    verifier: Verifier,
    /// The antibodies (by index) whose last look held the loop up.
    slow_looks: std::collections::BTreeSet<usize>,
    /// Alerts the bus refused (away, or their stream gone), oldest first:
    /// sent again, in order, before any later one, at the next look and
    /// every monitor interval. At most [`UNSENT_MAX`].
    unsent: std::collections::VecDeque<skos_core::protocol::Alert>,
    /// Print at start, plainly on standard output, what this machine lets
    /// it sense and act on (`skos up`: a first run shows it), each line
    /// after this label (`None`: say nothing).
    announce: Option<String>,
}

impl Agent {
    /// `state_dir`: where the agent keeps what must survive a restart
    /// (throttle originals, executed action ids and their outcomes, the
    /// highest coordinator term seen); `None` keeps it in memory.
    ///
    /// Fails when the state dir cannot be created, the trust keys are
    /// invalid, or the recorded term cannot be read.
    pub fn new(
        cfg: Config,
        bus: Bus,
        counters: Counters,
        state_dir: Option<PathBuf>,
    ) -> Result<Self> {
        if let Some(dir) = &state_dir {
            // Created 0700; refused when another user owns it or others
            // may write it (they could plant links to root's files).
            skos_fs::Dir::private(dir)?;
        }
        let antibodies = registry::enabled(&cfg, state_dir.as_deref());
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let verifier = Verifier::new(&cfg.trust.coordinator_keys, cfg.trust.require_signatures)?;
        if verifier.required() && verifier.key_count() == 0 {
            tracing::warn!("trust.require_signatures is on but trust.coordinator_keys is empty: every command will be refused");
        }
        let executed_file = state_dir
            .as_ref()
            .map(|d| d.join(format!("executed-{}.log", cfg.node.name)));
        let executed = Executed::load(executed_file, chrono::Utc::now().timestamp());
        let fence = Fence::load(
            state_dir
                .as_ref()
                .map(|d| d.join(format!("term-{}", cfg.node.name))),
        )?;
        Ok(Self {
            cfg,
            bus,
            counters,
            antibodies,
            done_tx,
            done_rx: Some(done_rx),
            held: crate::held::Held::default(),
            executed: Arc::new(Mutex::new(executed)),
            fence,
            refusals_logged: quiet::RefusalLog::default(),
            verifier,
            slow_looks: Default::default(),
            unsent: Default::default(),
            announce: None,
        })
    }

    /// Print at start, plainly on standard output, what this machine lets
    /// the agent sense and act on (as `skos up` does for a first run).
    pub fn announce_at_start(self) -> Self {
        self.announce_labelled("")
    }

    /// [`Agent::announce_at_start`], every line starting with `label`
    /// (`skos demo`: `[demo]`).
    pub fn announce_labelled(mut self, label: &str) -> Self {
        self.announce = Some(if label.is_empty() {
            String::new()
        } else {
            format!("{label} ")
        });
        self
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
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Executed ids past their window are forgotten at the agent's
        // interval, whatever its antibodies (even none).
        let mut prune =
            tokio::time::interval(Duration::from_secs_f64(self.cfg.agent.monitor_interval));
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Each antibody looks at its own interval: when each is next due.
        let every: Vec<Duration> = self
            .antibodies
            .iter()
            .map(|a| Duration::from_secs_f64(self.cfg.monitor_interval_of(a.name())))
            .collect();
        let mut due: Vec<tokio::time::Instant> = Vec::new();
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
        let all: Vec<usize> = (0..self.antibodies.len()).collect();
        self.sense(&all).await;
        let started = tokio::time::Instant::now();
        due.extend(every.iter().map(|d| started + *d));
        let mut said = Vec::new();
        for a in &self.antibodies {
            match a.inventory() {
                Some(inv) => {
                    tracing::info!(node = %self.node(), antibody = a.name(), sensors = %inv.sensors, actuators = %inv.actuators, "what this machine has");
                    let blind = if inv.sensors == "none" {
                        " (it sees no heat here: nothing will be throttled; `skos sensors` says what was looked at)"
                    } else {
                        ""
                    };
                    said.push(format!(
                        "  {}: senses {}{blind}\n  {}: acts with {}",
                        a.name(),
                        inv.sensors,
                        a.name(),
                        inv.actuators
                    ));
                }
                None => said.push(format!("  {}: on", a.name())),
            }
        }
        if let Some(label) = &self.announce {
            // A reader gone (a closed pipe) is no reason to stop.
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{label}SKOS on node {}: what this machine lets it sense and act on",
                self.node()
            );
            for line in said.iter().flat_map(|s| s.lines()) {
                let _ = writeln!(out, "{label}{line}");
            }
            let _ = out.flush();
        }
        let mut done = self
            .done_rx
            .take()
            .unwrap_or_else(|| mpsc::unbounded_channel().1);
        // Antibodies that read off the loop say when readings arrived.
        let arrivals: Vec<(usize, Arc<tokio::sync::Notify>)> = self
            .antibodies
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.arrivals().map(|n| (i, n)))
            .collect();
        // Held commands are kept from redelivery as long as they wait.
        let mut hold_tick = tokio::time::interval(skos_bus::nats::ACK_WAIT / 3);
        hold_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = prune.tick() => {
                    self.prune();
                    if !self.unsent.is_empty() {
                        self.send_unsent().await;
                    }
                }
                _ = next_due(&due) => {
                    // Every antibody due now; each next due one interval
                    // after this look (a late look delays the next).
                    let now = tokio::time::Instant::now();
                    let which: Vec<usize> = (0..due.len()).filter(|i| due[*i] <= now).collect();
                    for i in &which {
                        due[*i] = now + every[*i];
                    }
                    self.sense(&which).await;
                }
                _ = heartbeat.tick() => self.heartbeat().await,
                i = arrived(&arrivals) => self.judge(i).await,
                Some(m) = commands.next() => self.command(m).await,
                _ = hold_tick.tick(), if !self.held.is_empty() => {
                    // Past its deadline a held command is answered now
                    // (`expired`), not when a hung job ends.
                    for m in self.held.past_deadline(chrono::Utc::now()) {
                        self.command(m).await;
                    }
                    self.held.keep_alive().await;
                }
                Some((i, action, outcome, problem)) = done.recv() => {
                    // Report the state the job left at once: read now
                    // (within a second), judged, then a heartbeat.
                    let now = chrono::Utc::now();
                    let alerts = match self.antibodies.get_mut(i) {
                        Some(a) => {
                            a.finished(&action, &outcome);
                            tokio::task::block_in_place(|| a.refresh(now))
                        }
                        None => Vec::new(),
                    };
                    self.raise(alerts).await;
                    self.heartbeat().await;
                    // What waited for this job is judged now, in order.
                    if let Some(p) = problem {
                        for m in self.held.ended(&p) {
                            self.command(m).await;
                        }
                    }
                }
            }
        }
        for task in &served {
            task.abort();
        }
        tracing::info!(node = %self.node(), "agent stopped");
        Ok(())
    }

    /// Forget executed ids past their window (and compact their file).
    fn prune(&self) {
        lock(&self.executed).prune(chrono::Utc::now().timestamp());
    }

    /// Let the antibodies `which` (indices) look.
    async fn sense(&mut self, which: &[usize]) {
        let now = chrono::Utc::now();
        let mut alerts = Vec::new();
        for (i, a) in self.antibodies.iter_mut().enumerate() {
            if !which.contains(&i) {
                continue;
            }
            let began = std::time::Instant::now();
            alerts.extend(tokio::task::block_in_place(|| a.sense(now)));
            // Sensing reads off the loop: one that holds it up delays
            // heartbeats and commands. Said once per run of slow looks.
            let took = began.elapsed().as_secs_f64();
            let slow = took > self.cfg.monitor_interval_of(a.name()).min(1.0);
            if slow && self.slow_looks.insert(i) {
                tracing::warn!(
                    antibody = a.name(),
                    seconds = took,
                    "sensing held the agent loop up"
                );
            } else if !slow {
                self.slow_looks.remove(&i);
            }
        }
        self.raise(alerts).await;
    }

    /// Judge what arrived for antibody `i` (it reads nothing).
    async fn judge(&mut self, i: usize) {
        let now = chrono::Utc::now();
        let alerts = match self.antibodies.get_mut(i) {
            Some(a) => a.judge(now),
            None => Vec::new(),
        };
        self.raise(alerts).await;
    }

    async fn raise(&mut self, alerts: Vec<skos_core::protocol::Alert>) {
        for a in alerts {
            tracing::info!(node = %a.node, kind = a.kind.as_str(), severity = a.severity.as_str(), message = %a.message, "alert");
            self.counters.inc(Counter::AlertsSent);
            if self.unsent.len() == UNSENT_MAX {
                if let Some(old) = self.unsent.pop_front() {
                    self.counters.inc(Counter::AlertsDropped);
                    tracing::error!(alert = %old.alert_id, kind = old.kind.as_str(), "unsent alerts past the most kept: the oldest dropped");
                }
            }
            self.unsent.push_back(a);
        }
        self.send_unsent().await;
    }

    /// Send the alerts not sent yet, oldest first, until the bus refuses
    /// one: it and those after it are kept for the next try (each under
    /// its id: one the bus stored before its answer was lost is stored
    /// once).
    async fn send_unsent(&mut self) {
        while let Some(a) = self.unsent.front() {
            match self.bus.publish_alert(a).await {
                Ok(()) => {
                    self.unsent.pop_front();
                }
                Err(e) => {
                    self.counters.inc(Counter::AlertsSendFailed);
                    self.counters.inc(Counter::AlertsQueued);
                    tracing::error!(error = %e, waiting = self.unsent.len(), "alert not sent; kept and sent again in order");
                    return;
                }
            }
        }
    }

    pub fn heartbeat_message(&self) -> Heartbeat {
        let mut metadata = Map::new();
        metadata.insert("antibodies".into(), json!(self.cfg.agent.antibodies));
        let mut hb = Heartbeat {
            interval_seconds: Some(self.cfg.agent.heartbeat_interval),
            metadata,
            ..Heartbeat::bare(
                self.agent_id(),
                self.agent_type(),
                self.node().clone(),
                chrono::Utc::now(),
            )
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
        let headers = trust::CommandHeaders {
            signer: m.header(trust::HEADER_SIGNER),
            signature: m.header(trust::HEADER_SIGNATURE),
            context: m.header(trust::HEADER_CONTEXT),
        };
        if let Err(e) =
            self.verifier
                .check_command(&m.subject, self.node().as_str(), &m.payload, &headers)
        {
            self.counters.inc(Counter::CommandsRejectedSignature);
            if let Some(not_logged) = self.logged(Refusal::Signature) {
                tracing::warn!(subject = %m.subject, error = %e, not_logged, "refused command");
            }
            if let Some(id) = loose_action_id(&m.payload) {
                let mut o = Outcome::new(ResultStatus::Rejected, format!("refused: {e}"));
                o.details.insert(
                    "reason".into(),
                    Value::from(skos_core::protocol::REASON_UNTRUSTED),
                );
                self.answer(&id, &loose_action_type(&m.payload), &o).await;
            }
            return ack(m).await;
        }
        let cmd = match decode::<Command>(&m.payload, limit).and_then(|c| c.validate().map(|()| c))
        {
            Ok(c) => c,
            Err(e) => {
                self.counters.inc(Counter::CommandsRejectedMalformed);
                if let Some(not_logged) = self.logged(Refusal::Malformed) {
                    tracing::warn!(subject = %m.subject, error = %e, not_logged, "rejected command");
                }
                // Answer when the id can still be read, so it is audited.
                if let Some(id) = loose_action_id(&m.payload) {
                    let mut o =
                        Outcome::new(ResultStatus::Rejected, format!("malformed command: {e}"));
                    o.details.insert(
                        "reason".into(),
                        Value::from(skos_core::protocol::REASON_MALFORMED),
                    );
                    self.answer(&id, &loose_action_type(&m.payload), &o).await;
                }
                return ack(m).await;
            }
        };
        let known = lock(&self.executed).get(&cmd.action_id).cloned();
        let max_ahead = chrono::Duration::milliseconds(
            (self.cfg.trust.max_deadline_seconds * 1000.0).min(i64::MAX as f64) as i64,
        );
        let (gate, new_term) = gate(
            &cmd,
            self.node(),
            now,
            known.as_ref(),
            self.fence.highest(),
            max_ahead,
        );
        if let Some(t) = new_term {
            self.fence.raise(t);
        }
        match gate {
            Gate::Run => {}
            // Nothing was done, so no heartbeat follows: a flood of signed
            // commands replayed past their deadline costs one answer each.
            Gate::Refuse(o) => return self.refuse(&cmd, &o, m).await,
            Gate::Running => {
                self.counters.inc(Counter::Commands("redelivered_running"));
                if let Some(not_logged) = self.logged(Refusal::Replay) {
                    tracing::warn!(action_id = %cmd.action_id, action = %cmd.action_type, not_logged, "command delivered again while it still runs: not executed twice, its job answers when it finishes");
                }
                return ack(m).await;
            }
            Gate::Replay(o) => {
                self.counters.inc(Counter::Commands("replayed"));
                if let Some(not_logged) = self.logged(Refusal::Replay) {
                    tracing::warn!(action_id = %cmd.action_id, action = %cmd.action_type, status = o.status.as_str(), message = %o.message, not_logged, "command delivered again after it was executed: not executed twice, answered with its recorded outcome");
                }
                self.answer(&cmd.action_id, &cmd.action_type, &o).await;
                return ack(m).await;
            }
        };
        let index = self
            .antibodies
            .iter()
            .position(|a| a.handles(&cmd.action_type));
        let outcome = match index {
            None => {
                // Remembered with its answer, so a copy delivered again is
                // a replay (answered, logged within its budget), and no
                // heartbeat follows: nothing was done.
                let o = Outcome::new(
                    ResultStatus::Unsupported,
                    format!(
                        "no enabled antibody on {} implements {}",
                        self.node(),
                        cmd.action_type
                    ),
                );
                self.remember(&cmd);
                lock(&self.executed).finish(&cmd.action_id, &o);
                return self.refuse(&cmd, &o, m).await;
            }
            Some(i) => {
                if let Some(problem) = self.held.must_wait(&cmd) {
                    // A copy of a command already waiting takes its place:
                    // held once, judged when the job ends.
                    let Some(m) = self.held.hold_again(&cmd.action_id, m) else {
                        self.counters.inc(Counter::Commands("redelivered_held"));
                        if let Some(not_logged) = self.logged(Refusal::Replay) {
                            tracing::warn!(action_id = %cmd.action_id, action = %cmd.action_type, not_logged, "command delivered again while it waits for the running action on its problem: held once");
                        }
                        return;
                    };
                    self.counters.inc(Counter::Commands("held"));
                    tracing::info!(action_id = %cmd.action_id, action = %cmd.action_type, problem = %problem, "command waits for the running action on its problem; judged when that ends");
                    self.held.hold(problem, &cmd, m);
                    return;
                }
                self.remember(&cmd);
                if let Some(o) = not_needed(self.antibodies[i].as_ref(), &cmd) {
                    lock(&self.executed).finish(&cmd.action_id, &o);
                    o
                } else {
                    let execution =
                        tokio::task::block_in_place(|| self.antibodies[i].execute(&cmd));
                    match execution {
                        Execution::Done(o) => {
                            lock(&self.executed).finish(&cmd.action_id, &o);
                            o
                        }
                        Execution::Background(job) => return self.spawn_job(i, cmd, m, job),
                    }
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

    /// Answer `cmd` with `o` without carrying it out (refused by the gate,
    /// or implemented by no antibody here): counted by status, logged
    /// within the gate's budget, acknowledged, and no heartbeat after it:
    /// nothing was done.
    async fn refuse(&mut self, cmd: &Command, o: &Outcome, m: Incoming) {
        self.counters.inc(Counter::Commands(o.status.as_str()));
        if let Some(not_logged) = self.logged(Refusal::Gate) {
            tracing::warn!(action_id = %cmd.action_id, action = %cmd.action_type, status = o.status.as_str(), message = %o.message, not_logged, "command refused");
        }
        self.answer(&cmd.action_id, &cmd.action_type, o).await;
        ack(m).await;
    }

    /// Whether a refused command of `kind` is logged now: `Some(n)`, `n`
    /// the ones of its kind not logged before it; `None` (counted as
    /// `commands.not_logged`) past its kind's ten this minute.
    fn logged(&mut self, kind: Refusal) -> Option<u64> {
        let logged = self.refusals_logged.take(kind, std::time::Instant::now());
        if logged.is_none() {
            self.counters.inc(Counter::CommandsNotLogged);
        }
        logged
    }

    /// Long actions run on a blocking thread while heartbeats go on. Every
    /// third of the ack wait the command is marked in progress, so JetStream
    /// does not deliver it again while it runs; when the job finishes its
    /// outcome is recorded, the result published, then the command acked.
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
        let executed = self.executed.clone();
        let every = skos_bus::nats::ACK_WAIT / 3;
        tracing::info!(action_id = %cmd.action_id, action = %cmd.action_type, "action started in the background");
        if let Some(p) = &cmd.problem {
            self.held.started(p);
        }
        tokio::spawn(async move {
            let mut handle = tokio::task::spawn_blocking(job);
            let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let joined = loop {
                tokio::select! {
                    r = &mut handle => break r,
                    _ = progress.tick() => {
                        if let Err(e) = m.in_progress().await {
                            tracing::warn!(action_id = %cmd.action_id, error = %e, "in-progress ack failed; the command may be delivered again");
                        } else {
                            tracing::debug!(action_id = %cmd.action_id, "command still in progress");
                        }
                    }
                }
            };
            let outcome = joined.unwrap_or_else(|e| {
                Outcome::new(ResultStatus::Failed, format!("action crashed: {e}"))
            });
            counters.inc(Counter::Commands(outcome.status.as_str()));
            tracing::info!(action_id = %cmd.action_id, action = %cmd.action_type, status = outcome.status.as_str(), message = %outcome.message, "action finished");
            // Recorded before the result goes out: a command delivered again
            // from now on is answered with this outcome.
            let record = (executed, cmd.action_id.clone(), outcome.clone());
            let recorded = tokio::task::spawn_blocking(move || {
                let (executed, id, outcome) = record;
                lock(&executed).finish(&id, &outcome);
            })
            .await;
            if let Err(e) = recorded {
                tracing::error!(action_id = %cmd.action_id, error = %e, "outcome not recorded");
            }
            let result = fill(result, &outcome);
            if let Err(e) = bus.publish_result(&result).await {
                tracing::error!(action_id = %cmd.action_id, error = %e, "result not sent");
            }
            let _ = done.send((index, cmd.action_type.clone(), outcome, cmd.problem.clone()));
            ack(m).await;
        });
    }

    /// Remember an executed action id, on disk too, for as long as its
    /// command could still be valid (its deadline, or the replay window).
    fn remember(&mut self, cmd: &Command) {
        let until = cmd.deadline.map(|d| d.timestamp()).unwrap_or_else(|| {
            (chrono::Utc::now() + skos_core::level::secs(self.cfg.trust.replay_window)).timestamp()
        });
        lock(&self.executed).begin(&cmd.action_id, until);
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

/// The index of the first antibody whose readings arrived; never, when none
/// reads off the loop.
async fn arrived(arrivals: &[(usize, Arc<tokio::sync::Notify>)]) -> usize {
    if arrivals.is_empty() {
        return std::future::pending().await;
    }
    let waits = arrivals.iter().map(|(i, n)| {
        Box::pin(async move {
            n.notified().await;
            *i
        })
    });
    futures::future::select_all(waits).await.0
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

/// The action type a refused command names, when it can be read and is a
/// plain name (at most 64 lowercase letters, digits and `_`), so its
/// result says what was refused; `unreadable` otherwise.
fn loose_action_type(payload: &[u8]) -> String {
    serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v.get("action_type")?.as_str().map(str::to_owned))
        .filter(|t| {
            !t.is_empty()
                && t.len() <= 64
                && t.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .unwrap_or_else(|| "unreadable".into())
}

/// What the command gate decides for a trusted, well-formed command.
#[derive(Debug, Clone, PartialEq)]
enum Gate {
    /// Carry it out (if an enabled antibody knows it).
    Run,
    /// Refuse it with this answer.
    Refuse(Outcome),
    /// Executed before and finished: answer again with its real outcome.
    Replay(Outcome),
    /// Executed before and still running: its job answers.
    Running,
}

/// The answer to `cmd` when its problem is gone: `not_needed`, saying the
/// reading and the level, when the command carries a `problem` and a
/// `level`, its action is one rechecked before acting
/// ([`skos_core::catalogue::rechecked_before_acting`]) and `antibody`'s
/// current reading has cleared the level. `None`: run it.
fn not_needed(antibody: &dyn Antibody, cmd: &Command) -> Option<Outcome> {
    let (Some(problem), Some(level)) = (cmd.problem.as_deref(), cmd.level) else {
        return None;
    };
    if !skos_core::catalogue::rechecked_before_acting(&cmd.action_type) {
        return None;
    }
    match antibody.precondition(problem, level) {
        Precondition::Holds | Precondition::Unknown => None,
        Precondition::Gone { reading, source } => {
            tracing::info!(action_id = %cmd.action_id, action = %cmd.action_type, problem, level, reading, source = %source, "problem gone before the action ran: not acted on");
            let mut o = Outcome::new(
                ResultStatus::NotNeeded,
                format!(
                    "{problem} is gone: {source} reads {reading:.1}, cleared from {level}; {} not carried out",
                    cmd.action_type
                ),
            );
            o.details.insert("problem".into(), json!(problem));
            o.details.insert("level".into(), json!(level));
            o.details.insert("reading".into(), json!(reading));
            o.details.insert("source".into(), json!(source));
            Some(o)
        }
    }
}

/// The command gate, in order: addressed to this node; not executed before
/// (`executed`: what is known of its `action_id`); of a term not older than
/// the `highest` seen; inside its deadline; parameters fit the action. Also
/// returns the command's term when it is a new highest one, to record
/// before anything is carried out.
fn gate(
    cmd: &Command,
    node: &NodeName,
    now: Timestamp,
    executed: Option<&State>,
    highest: Option<u64>,
    max_ahead: chrono::Duration,
) -> (Gate, Option<u64>) {
    let refuse = |status, message: String| (Gate::Refuse(Outcome::new(status, message)), None);
    match &cmd.node {
        Some(n) if n != node => {
            return refuse(
                ResultStatus::Rejected,
                "command is addressed to another node".into(),
            )
        }
        Some(_) => {}
        // A command valid on every node could be replayed on each.
        None => {
            return refuse(
                ResultStatus::Rejected,
                "command names no node (a command must name the node it is for)".into(),
            )
        }
    }
    // Without a deadline a signed command would be valid for good (and
    // run again once its id is forgotten).
    let Some(deadline) = cmd.deadline else {
        return refuse(
            ResultStatus::Rejected,
            "command has no deadline (a command must say until when it may run)".into(),
        );
    };
    if let Some(d) = Some(deadline).filter(|d| *d - now > max_ahead) {
        return refuse(
            ResultStatus::Rejected,
            format!(
                "deadline {} is more than trust.max_deadline_seconds ({} s) away",
                skos_core::timefmt::format(&d),
                max_ahead.num_seconds()
            ),
        );
    }
    match executed {
        None => {}
        Some(State::Running) => return (Gate::Running, None),
        Some(State::Done { status, message }) => {
            let mut o = Outcome::new(*status, message.clone());
            o.details.insert("replayed".into(), Value::Bool(true));
            return (Gate::Replay(o), None);
        }
        Some(State::Unknown) => {
            let mut o = Outcome::new(ResultStatus::Rejected, skos_core::protocol::REPLAY_MESSAGE);
            o.details.insert(
                "reason".into(),
                Value::from(skos_core::protocol::REASON_REPLAY),
            );
            return (Gate::Refuse(o), None);
        }
    }
    let new_term = match term::judge(highest, cmd.term) {
        term::Verdict::Accept(t) => t,
        term::Verdict::Refuse(why) => {
            // The coordinator learns the term it must pass.
            let mut o = Outcome::new(ResultStatus::Rejected, why);
            o.details.insert(
                "reason".into(),
                Value::from(skos_core::protocol::REASON_STALE_TERM),
            );
            if let Some(h) = highest {
                o.details.insert(
                    skos_core::protocol::DETAIL_HIGHEST_TERM.into(),
                    Value::from(h),
                );
            }
            return (Gate::Refuse(o), None);
        }
    };
    let gate = if cmd.deadline.is_some_and(|d| now > d) {
        Gate::Refuse(Outcome::new(
            ResultStatus::Expired,
            "deadline passed before execution",
        ))
    } else if let Err(e) =
        skos_core::catalogue::validate_parameters(&cmd.action_type, &cmd.parameters).or_else(|e| {
            match e {
                // Not a bad command: an action this build does not know is
                // answered `unsupported` by the caller, which is no breaker
                // failure.
                skos_core::catalogue::ParamError::UnknownAction { .. } => Ok(()),
                e => Err(e),
            }
        })
    {
        Gate::Refuse(Outcome::new(
            ResultStatus::Rejected,
            format!("invalid parameters: {e}"),
        ))
    } else {
        Gate::Run
    };
    (gate, new_term)
}

/// The executed ids, even if a job panicked while holding them.
fn lock(executed: &Mutex<Executed>) -> MutexGuard<'_, Executed> {
    executed.lock().unwrap_or_else(|e| e.into_inner())
}

/// Replace `path` with `bytes` atomically, through its private
/// directory's handle: a temp file beside it created exclusively (mode
/// 0600), written and fsynced, renamed over it, and the directory fsynced
/// ([`skos_fs::write_private`]).
fn write_atomic(path: &Path, bytes: &[u8]) -> skos_fs::Result<()> {
    skos_fs::write_private(path, bytes)
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
mod tests;
