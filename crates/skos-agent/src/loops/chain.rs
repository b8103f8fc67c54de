//! The chain service: answers applications' steps on `skos.chain.<node>`.
//!
//! One task, beside the agent loop: decode (size and depth limits),
//! validate, judge with the shared [`ChainTable`], reply, then hand
//! announcements and alerts to a publisher that runs alongside, so a slow
//! JetStream acknowledgement never delays an answer. A request that cannot
//! be read is answered `deny` with reason `invalid` (fail-closed) and
//! counted as `rejected.chain.<reason>`. A message without a reply subject
//! is a fire-and-forget report: judged the same, its outcome announced on
//! `skos.chainctl.<node>` when it breaks or resets the chain.
//!
//! [`ChainTable`]: skos_core::chain::ChainTable

use skos_core::counters::Counter;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use skos_bus::{subjects, Bus, Feed, Incoming};
use skos_core::chain::{ChainDecision, ChainEvent, ControlEvent, Reason, Transition, Verdict};
use skos_core::counters::Counters;
use skos_core::protocol::{decode, DecodeError};
use tokio::sync::mpsc;

use super::{lock, Ctx, Outgoing, Shared, Target};

/// How often circuits are checked for the end of their cool-off and idle
/// chains forgotten.
const TICK: Duration = Duration::from_secs(1);

pub(crate) struct ChainService {
    pub ctx: Ctx,
    pub shared: Arc<Mutex<Shared>>,
    pub outbox: mpsc::Sender<Outgoing>,
    pub bus: Bus,
    pub counters: Counters,
    pub max_message_bytes: usize,
}

fn reject_reason(e: &DecodeError) -> &'static str {
    match e {
        DecodeError::TooLarge { .. } => "too_large",
        DecodeError::TooDeep => "too_deep",
        DecodeError::Malformed(_) => "malformed",
        DecodeError::Invalid(_) => "invalid",
        DecodeError::Untrusted(_) => "untrusted",
    }
}

impl ChainService {
    pub async fn run(self, outbox_rx: mpsc::Receiver<Outgoing>) {
        futures::future::join(self.serve(), publish(&self.bus, &self.counters, outbox_rx)).await;
    }

    async fn serve(&self) {
        let subject = subjects::chain(&self.ctx.node);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut feed = loop {
                match self
                    .bus
                    .subscribe(Feed::ChainEvents(self.ctx.node.clone()))
                    .await
                {
                    Ok(f) => break f,
                    Err(e) => {
                        tracing::warn!(subject = %subject, error = %e, "cannot subscribe to chain steps; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            tracing::info!(subject = %subject, "loop breaker answering chain steps");
            loop {
                tokio::select! {
                    m = feed.next() => match m {
                        Some(m) => self.handle(m).await,
                        None => {
                            tracing::warn!(subject = %subject, "chain step feed ended; subscribing again");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            break;
                        }
                    },
                    _ = tick.tick() => self.tick(),
                }
            }
        }
    }

    fn queue(&self, o: Outgoing) {
        if self.outbox.try_send(o).is_err() {
            self.counters.inc(Counter::LoopOutboxDropped);
            tracing::warn!("loop breaker outbox full; an announcement or alert was dropped");
        }
    }

    fn reject(&self, m: &Incoming, reason: &str, message: String) -> ChainDecision {
        self.counters.inc(Counter::Rejected {
            feed: "chain",
            reason,
        });
        tracing::warn!(subject = %m.subject, reason, error = %message, "rejected chain step");
        // Echo the ids when they can be read, so the caller can match it.
        let raw = decode::<Value>(&m.payload, self.max_message_bytes).ok();
        let field = |k: &str| {
            raw.as_ref()
                .and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        ChainDecision::invalid(&field("chain_id"), &field("step_id"), message)
    }

    async fn handle(&self, m: Incoming) {
        let now = chrono::Utc::now();
        let decision = match decode::<ChainEvent>(&m.payload, self.max_message_bytes)
            .and_then(|e| e.validate().map(|()| e))
        {
            Err(e) => self.reject(&m, reject_reason(&e), e.to_string()),
            Ok(_) if m.subject_node().as_ref() != Some(&self.ctx.node) => self.reject(
                &m,
                "wrong_node",
                format!("subject {} is not this node's", m.subject),
            ),
            Ok(ev) if ev.node.as_ref().is_some_and(|n| n != &self.ctx.node) => self.reject(
                &m,
                "wrong_node",
                format!(
                    "step addressed to {} arrived at {}",
                    ev.node.as_ref().map(|n| n.as_str()).unwrap_or(""),
                    self.ctx.node
                ),
            ),
            Ok(ev) => self.judge(&ev, now),
        };
        let payload = match serde_json::to_vec(&decision) {
            Ok(p) => Bytes::from(p),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a chain decision");
                return;
            }
        };
        if let Err(e) = m.reply(payload).await {
            self.counters.inc(Counter::LoopReplyFailed);
            tracing::warn!(error = %e, "chain decision not sent");
        }
    }

    fn judge(&self, ev: &ChainEvent, now: chrono::DateTime<chrono::Utc>) -> ChainDecision {
        let mut shared = lock(&self.shared);
        let outcome = shared.table.step(ev, now);
        let mut alerts = Vec::new();
        let mut controls = Vec::new();
        for t in &outcome.transitions {
            match t {
                Transition::Tripped(trip) => {
                    self.counters
                        .inc(Counter::LoopTrips(trip.condition.as_str()));
                    tracing::warn!(chain_id = %trip.chain_id, condition = trip.condition.as_str(), value = trip.value, limit = trip.limit, "chain broke a limit; step denied, circuit open");
                    let view = shared.table.view(&trip.chain_id);
                    controls.push(self.ctx.control(
                        ControlEvent::CircuitOpen,
                        &trip.chain_id,
                        Some(trip.condition.into()),
                        trip.message.clone(),
                        view.as_ref(),
                        None,
                        now,
                    ));
                    if shared.alert_budget(now) {
                        let alert = self.ctx.trip_alert(trip, now);
                        shared.index.insert(
                            &alert.alert_id,
                            Target::Chain(trip.chain_id.clone()),
                            Some(trip.condition.into()),
                        );
                        alerts.push(alert);
                    } else {
                        self.counters.inc(Counter::LoopAlertsSuppressed);
                    }
                }
                Transition::HalfOpened {
                    chain_id,
                    generation: _,
                } => {
                    let view = shared.table.view(chain_id);
                    controls.push(self.ctx.control(
                        ControlEvent::HalfOpen,
                        chain_id,
                        None,
                        "cool-off over: the next step is a trial".into(),
                        view.as_ref(),
                        None,
                        now,
                    ));
                }
                Transition::Closed {
                    chain_id,
                    generation: _,
                } => {
                    let view = shared.table.view(chain_id);
                    controls.push(self.ctx.control(
                        ControlEvent::Closed,
                        chain_id,
                        None,
                        "trial step passed: circuit closed".into(),
                        view.as_ref(),
                        None,
                        now,
                    ));
                    if shared.alert_budget(now) {
                        alerts.push(self.ctx.recovery_alert(
                            &Target::Chain(chain_id.clone()),
                            format!("chain {chain_id}: circuit closed after a good trial step"),
                            now,
                        ));
                    }
                }
            }
        }
        drop(shared);
        for c in controls {
            self.queue(Outgoing::Control(c));
        }
        for a in alerts {
            self.queue(Outgoing::Alert(a));
        }
        let mut d = outcome.decision;
        match (d.decision, d.reason) {
            (Verdict::Allow, _) => self.counters.inc(Counter::LoopStepsAllowed),
            (Verdict::Deny, r) => {
                let r = r.unwrap_or(Reason::Invalid);
                self.counters.inc(Counter::LoopStepsDenied(r.as_str()));
                if self.ctx.dry_run && r != Reason::Invalid && r != Reason::Capacity {
                    d.decision = Verdict::Allow;
                    d.dry_run = true;
                }
            }
        }
        d
    }

    fn tick(&self) {
        let now = chrono::Utc::now();
        let mut shared = lock(&self.shared);
        let report = shared.table.tick(now);
        let controls: Vec<_> = report
            .transitions
            .iter()
            .filter_map(|t| match t {
                Transition::HalfOpened { chain_id, .. } => {
                    let view = shared.table.view(chain_id);
                    Some(self.ctx.control(
                        ControlEvent::HalfOpen,
                        chain_id,
                        None,
                        "cool-off over: the next step is a trial".into(),
                        view.as_ref(),
                        None,
                        now,
                    ))
                }
                _ => None,
            })
            .collect();
        let recoveries: Vec<_> = report
            .forgotten_unclosed
            .iter()
            .filter(|_| shared.alert_budget(now))
            .map(|id| {
                self.ctx.recovery_alert(
                    &Target::Chain(id.clone()),
                    format!("chain {id} forgotten: no step for loop.idle_seconds"),
                    now,
                )
            })
            .collect();
        drop(shared);
        if report.evicted > 0 {
            self.counters
                .add(Counter::LoopChainsEvicted, report.evicted as u64);
        }
        for a in recoveries {
            self.queue(Outgoing::Alert(a));
        }
        for c in controls {
            tracing::info!(chain_id = %c.chain_id, "chain circuit half-open");
            self.queue(Outgoing::Control(c));
        }
    }
}

/// Publish announcements and alerts in order. Alerts are durable: a failed
/// publish is retried a few times, then counted and logged.
async fn publish(bus: &Bus, counters: &Counters, mut rx: mpsc::Receiver<Outgoing>) {
    while let Some(o) = rx.recv().await {
        match o {
            Outgoing::Control(c) => {
                if let Err(e) = bus.publish_chain_control(&c).await {
                    counters.inc(Counter::LoopControlSendFailed);
                    tracing::warn!(chain_id = %c.chain_id, event = c.event.as_str(), error = %e, "chain announcement not sent");
                } else {
                    counters.inc(Counter::LoopControlSent);
                }
            }
            Outgoing::Alert(a) => {
                let mut delay = Duration::from_millis(200);
                let mut sent = false;
                for _ in 0..5 {
                    match bus.publish_alert(&a).await {
                        Ok(()) => {
                            sent = true;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(alert_id = %a.alert_id, error = %e, "loop alert not sent; retrying");
                            tokio::time::sleep(delay).await;
                            delay *= 2;
                        }
                    }
                }
                if sent {
                    counters.inc(Counter::AlertsSent);
                    tracing::info!(alert_id = %a.alert_id, severity = a.severity.as_str(), message = %a.message, "loop alert");
                } else {
                    counters.inc(Counter::AlertsSendFailed);
                    tracing::error!(alert_id = %a.alert_id, "loop alert dropped after retries");
                }
            }
        }
    }
}
