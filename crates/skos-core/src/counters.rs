//! Named event counters (`rejected.alert.malformed`, `alerts.handled`…),
//! shared between tasks and reported by `skos status`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use std::borrow::Cow;

/// Every counter SKOS keeps. [`Counter::name`] is the one place each name
/// (as `skos status` shows it) is spelt; the parts in parentheses are
/// another type's wire string (a result status, a skip reason...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter<'a> {
    // Coordinator.
    HeartbeatsReceived,
    AlertsHandled,
    AlertsDuplicate,
    /// Alerts over their node's quota, coalesced.
    AlertsCoalesced,
    /// `<feed>s.dropped_unread`: messages of a durable feed (`alert`,
    /// `result`) the bus dropped before the coordinator read them.
    DroppedUnread(&'a str),
    CommandsSent,
    /// `results.<status>`: results by status.
    Results(&'a str),
    ResultsUnmatched,
    /// A result from another node than the one its command was sent to.
    ResultsForeign,
    /// An agent's refusal of an action id it already executed (a replay).
    ResultsReplay,
    /// `results.refused.<reason>`: an agent's refusal of a command it
    /// could not trust (`untrusted`) or read (`malformed`): someone else's
    /// copy, closing nothing.
    ResultsRefused(&'a str),
    /// A command closed without a result by its deadline plus the grace
    /// period.
    ResultsMissing,
    VerificationsSucceeded,
    VerificationsFailed,
    /// A fix whose metric is down, but did not provably fall after the fix
    /// took effect and stay down for the hold (it fell before, or its
    /// problem flapped): neither a success nor a breaker failure.
    VerificationsUncredited,
    /// A decision where the effectiveness ledger changed the table's
    /// order or skipped a failing action.
    LearningApplied,
    /// A plan tried on a tick that came to the same nothing as its last
    /// try (not audited again).
    PlacementRepeatsQuiet,
    /// `flapping.<started|stopped>`: problems that started flapping, or
    /// became stable again.
    Flapping(&'a str),
    /// Alerts of a flapping problem recorded but not decided.
    AlertsHeldFlapping,
    BreakerFailures,
    /// `breaker.<state>`: breaker transitions.
    Breaker(&'a str),
    /// `actions.skipped.<reason>`.
    ActionsSkipped(&'a str),
    ActionsFreedNothing,
    /// A command its agent answered `not_needed` (the problem was gone when
    /// it was to run): a false remediation avoided.
    RemediationsAvoided,
    NodesOffline,
    EscalationsMesh,
    MeshNodeProblems,
    StateUnreadable,
    /// Nodes whose saved state, at start, was older than the audit trail
    /// says (rolled back, emptied or replaced on the bus).
    StateRolledBack,
    StateSaveFailed,
    /// An audit append failed: new actions wait until the trail is
    /// writable again.
    AuditWriteFailed,
    /// `leader.<event>`: leadership won (`elected`) or lost (`lost`).
    Leader(&'a str),
    /// Effects that could not be published (bus down) and wait in the
    /// outbox to be published when it is back.
    EffectsQueued,
    /// `batches.<feed>`: batches of a durable feed (`alert`, `result`)
    /// carried through to their acks.
    Batches(&'a str),
    /// `batches.<feed>.overlapped`: batches decided while another batch
    /// of the feed was still being carried out (written, published,
    /// audited, acknowledged) on its own task; counted when decided,
    /// whether or not they are carried out.
    BatchesOverlapped(&'a str),
    /// `batches.<feed>.state_ahead`: of those, batches whose node states
    /// were written while the batch before them was still being carried
    /// out (they touched none of the nodes in flight); counted when
    /// handed to their task, whether or not they are carried out.
    BatchesStateAhead(&'a str),
    /// `batches.<feed>.published_ahead`: batches carried through to their
    /// acks whose effects were published before the batch before them had
    /// appended its audit records.
    BatchesPublishedAhead(&'a str),
    /// `batches.<feed>.<phase>_us`: microseconds those batches spent in
    /// one phase of their handling ([`BatchPhase`]), summed; with
    /// `batches.<feed>` and the messages handled, where a batch's time
    /// goes.
    BatchMicros(&'a str, BatchPhase),
    /// `rejected.<feed>.<reason>`: a message refused on a feed.
    Rejected {
        feed: &'a str,
        reason: &'a str,
    },
    // Agent.
    HeartbeatsSent,
    HeartbeatsSendFailed,
    AlertsSent,
    AlertsSendFailed,
    /// Alerts kept after the bus refused them, sent again later in order.
    AlertsQueued,
    /// Alerts dropped, oldest first, from a queue of unsent ones that was
    /// full.
    AlertsDropped,
    CommandsRejectedSignature,
    CommandsRejectedMalformed,
    /// Refused or replayed commands not logged one by one: past their
    /// kind's ten log lines of the minute.
    CommandsNotLogged,
    /// `commands.<status>`: commands answered, by status.
    Commands(&'a str),
    // Loop breaker.
    LoopOutboxDropped,
    LoopReplyFailed,
    LoopAlertsSuppressed,
    LoopControlSent,
    LoopControlSendFailed,
    LoopStepsAllowed,
    /// `loop.steps.denied.<reason>`.
    LoopStepsDenied(&'a str),
    /// `loop.trips.<condition>`.
    LoopTrips(&'a str),
    /// `loop.commands.<action>`.
    LoopCommands(&'a str),
    /// `loop.signals.<signal, lower case>`.
    LoopSignals(&'a str),
    LoopSignalsFailed,
    /// Idle chains forgotten by the chain table.
    LoopChainsEvicted,
}

/// The phases of handling one batch of a durable feed, in their order:
/// deciding, writing the touched nodes' states, publishing the effects
/// (commands, alerts), appending the audit records, acknowledging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchPhase {
    Decide,
    State,
    Publish,
    Audit,
    Ack,
}

impl BatchPhase {
    /// Every phase, in order.
    pub const ALL: [BatchPhase; 5] = [
        BatchPhase::Decide,
        BatchPhase::State,
        BatchPhase::Publish,
        BatchPhase::Audit,
        BatchPhase::Ack,
    ];

    /// The phase's name in its counter (`batches.<feed>.<name>_us`).
    pub const fn as_str(self) -> &'static str {
        match self {
            BatchPhase::Decide => "decide",
            BatchPhase::State => "state",
            BatchPhase::Publish => "publish",
            BatchPhase::Audit => "audit",
            BatchPhase::Ack => "ack",
        }
    }
}

impl Counter<'_> {
    /// The counter's name.
    pub fn name(&self) -> Cow<'static, str> {
        use Counter::*;
        Cow::Borrowed(match *self {
            HeartbeatsReceived => "heartbeats.received",
            AlertsHandled => "alerts.handled",
            AlertsDuplicate => "alerts.duplicate",
            AlertsCoalesced => "alerts.coalesced",
            DroppedUnread(feed) => return format!("{feed}s.dropped_unread").into(),
            CommandsSent => "commands.sent",
            Results(s) => return format!("results.{s}").into(),
            ResultsUnmatched => "results.unmatched",
            ResultsForeign => "results.foreign",
            ResultsReplay => "results.replay",
            ResultsRefused(r) => return format!("results.refused.{r}").into(),
            ResultsMissing => "results.no_result",
            VerificationsSucceeded => "verifications.succeeded",
            VerificationsFailed => "verifications.failed",
            VerificationsUncredited => "verifications.uncredited",
            LearningApplied => "learning.applied",
            PlacementRepeatsQuiet => "placement.repeats_quiet",
            Flapping(s) => return format!("flapping.{s}").into(),
            AlertsHeldFlapping => "alerts.held_flapping",
            BreakerFailures => "breaker.failures",
            Breaker(s) => return format!("breaker.{s}").into(),
            ActionsSkipped(r) => return format!("actions.skipped.{r}").into(),
            ActionsFreedNothing => "actions.freed_nothing",
            RemediationsAvoided => "remediations.avoided",
            NodesOffline => "nodes.offline",
            EscalationsMesh => "escalations.mesh",
            MeshNodeProblems => "mesh.node_problems",
            StateUnreadable => "state.unreadable",
            StateRolledBack => "state.rolled_back",
            StateSaveFailed => "state.save_failed",
            AuditWriteFailed => "audit.write_failed",
            Leader(e) => return format!("leader.{e}").into(),
            EffectsQueued => "effects.queued",
            Batches(feed) => return format!("batches.{feed}").into(),
            BatchesOverlapped(feed) => return format!("batches.{feed}.overlapped").into(),
            BatchesStateAhead(feed) => return format!("batches.{feed}.state_ahead").into(),
            BatchesPublishedAhead(feed) => return format!("batches.{feed}.published_ahead").into(),
            BatchMicros(feed, phase) => {
                return format!("batches.{feed}.{}_us", phase.as_str()).into()
            }
            Rejected { feed, reason } => return format!("rejected.{feed}.{reason}").into(),
            HeartbeatsSent => "heartbeats.sent",
            HeartbeatsSendFailed => "heartbeats.send_failed",
            AlertsSent => "alerts.sent",
            AlertsSendFailed => "alerts.send_failed",
            AlertsQueued => "alerts.queued",
            AlertsDropped => "alerts.dropped",
            CommandsRejectedSignature => "commands.rejected.signature",
            CommandsNotLogged => "commands.not_logged",
            CommandsRejectedMalformed => "commands.rejected.malformed",
            Commands(s) => return format!("commands.{s}").into(),
            LoopOutboxDropped => "loop.outbox.dropped",
            LoopReplyFailed => "loop.reply_failed",
            LoopAlertsSuppressed => "loop.alerts.suppressed",
            LoopControlSent => "loop.control.sent",
            LoopControlSendFailed => "loop.control.send_failed",
            LoopStepsAllowed => "loop.steps.allowed",
            LoopStepsDenied(r) => return format!("loop.steps.denied.{r}").into(),
            LoopTrips(c) => return format!("loop.trips.{c}").into(),
            LoopCommands(a) => return format!("loop.commands.{a}").into(),
            LoopSignals(s) => return format!("loop.signals.{}", s.to_lowercase()).into(),
            LoopSignalsFailed => "loop.signals.failed",
            LoopChainsEvicted => "loop.chains.evicted",
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Counters(Arc<Mutex<BTreeMap<String, u64>>>);

impl Counters {
    pub fn inc(&self, counter: Counter<'_>) {
        self.add(counter, 1);
    }

    pub fn add(&self, counter: Counter<'_>, n: u64) {
        self.add_named(&counter.name(), n);
    }

    /// The value of `counter`.
    pub fn of(&self, counter: Counter<'_>) -> u64 {
        self.get(&counter.name())
    }

    fn add_named(&self, name: &str, n: u64) {
        // A poisoned lock only means another thread panicked mid-increment;
        // the map itself is still usable.
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(name.to_string()).or_insert(0) += n;
    }

    /// The value of the counter named `name` (as `skos status` shows it).
    pub fn get(&self, name: &str) -> u64 {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(name).copied().unwrap_or(0)
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_holds_every_counter_by_name() {
        let c = Counters::default();
        c.inc(Counter::NodesOffline);
        c.add(Counter::LoopChainsEvicted, 3);
        let snap = c.snapshot();
        assert_eq!(snap.get("nodes.offline"), Some(&1));
        assert_eq!(snap.get("loop.chains.evicted"), Some(&3));
        assert_eq!(snap.len(), 2);
    }

    #[test]
    fn batch_counters_are_named_by_feed_and_phase() {
        let c = Counters::default();
        c.inc(Counter::Batches("alert"));
        c.add(Counter::BatchMicros("alert", BatchPhase::State), 120);
        c.add(Counter::BatchMicros("result", BatchPhase::Ack), 7);
        c.inc(Counter::BatchesOverlapped("alert"));
        c.inc(Counter::BatchesStateAhead("alert"));
        c.inc(Counter::BatchesPublishedAhead("alert"));
        let snap = c.snapshot();
        assert_eq!(snap.get("batches.alert.published_ahead"), Some(&1));
        assert_eq!(snap.get("batches.alert.overlapped"), Some(&1));
        assert_eq!(snap.get("batches.alert.state_ahead"), Some(&1));
        assert_eq!(snap.get("batches.alert"), Some(&1));
        assert_eq!(snap.get("batches.alert.state_us"), Some(&120));
        assert_eq!(snap.get("batches.result.ack_us"), Some(&7));
        let names: Vec<&str> = BatchPhase::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(names, ["decide", "state", "publish", "audit", "ack"]);
    }

    #[test]
    fn counts() {
        let c = Counters::default();
        let c2 = c.clone();
        c.inc(Counter::AlertsHandled);
        c2.inc(Counter::AlertsHandled);
        c2.inc(Counter::Rejected {
            feed: "alert",
            reason: "malformed",
        });
        assert_eq!(c.get("alerts.handled"), 2);
        assert_eq!(c.of(Counter::AlertsHandled), 2);
        assert_eq!(c.get("rejected.alert.malformed"), 1);
        assert_eq!(c.get("b"), 0);
        assert_eq!(c.snapshot().len(), 2);
        assert_eq!(Counter::LoopSignals("STOP").name(), "loop.signals.stop");
        assert_eq!(
            Counter::ActionsSkipped("dry_run").name(),
            "actions.skipped.dry_run"
        );
    }
}
