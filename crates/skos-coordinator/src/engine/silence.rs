//! Silences and maintenance windows (`skos_core::silence`): kept per node
//! (in the node's saved state, so they survive a restart and a takeover),
//! consulted by `dispatch` before any other gate, ended on a tick.
//!
//! An action a silence covers is skipped as `silenced` and the problem
//! remembered in the silence (`held`); when the silence ends or is
//! expired, each held problem still open is decided again, so a node hot
//! all through a maintenance window is acted on once it closes.

use serde_json::json;
use skos_core::events::ProblemKey;
use skos_core::protocol::{AlertKind, AuditEntry, AuditEvent};
use skos_core::silence::{Silence, SilenceError, SilenceSpec, MAX_PER_NODE};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use super::{Effect, Engine};

/// Every silence, by node (nodes without one have no entry).
pub(super) type Silences = std::collections::BTreeMap<NodeName, Vec<Silence>>;

/// How a silence stopped holding: `data.event` of its audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Someone expired it.
    Expired,
    /// Its end came.
    Ended,
    /// One window of a recurring silence closed (the silence goes on).
    WindowClosed,
}

impl Stop {
    const fn as_str(self) -> &'static str {
        match self {
            Stop::Expired => "expired",
            Stop::Ended => "ended",
            Stop::WindowClosed => "window_closed",
        }
    }
}

impl Engine {
    /// Add the silence `spec` asks for, made at `now`: audited as `added`
    /// with who made it. Refused (nothing kept, nothing audited) when the
    /// spec is wrong or its node has [`MAX_PER_NODE`] silences.
    pub fn add_silence(
        &mut self,
        spec: &SilenceSpec,
        now: Timestamp,
    ) -> Result<(Silence, Vec<Effect>), SilenceError> {
        let s = spec.build(now)?;
        let kept = self.silences.entry(s.node.clone()).or_default();
        if kept.iter().any(|k| k.id == s.id) {
            return Err(SilenceError::Exists(s.id));
        }
        if kept.len() >= MAX_PER_NODE {
            return Err(SilenceError::TooMany { node: s.node });
        }
        kept.push(s.clone());
        let entry = AuditEntry::new(
            AuditEvent::Silence,
            now,
            Some(&s.node),
            &s.by,
            format!(
                "silence {} added by {}: {}, {}: {}",
                s.id,
                s.by,
                s.scope(),
                s.when(now),
                s.comment
            ),
            json!({"event": "added", "by": s.by, "silence": s}),
        );
        Ok((s, vec![Effect::Audit(entry)]))
    }

    /// Expire the silence `id` now, `by` someone: audited as `expired`, and
    /// the problems it held decided again.
    pub fn expire_silence(
        &mut self,
        id: &str,
        by: &str,
        now: Timestamp,
    ) -> Result<(Silence, Vec<Effect>), SilenceError> {
        if !skos_core::silence::valid_by(by) {
            return Err(SilenceError::By);
        }
        let node = self
            .silences
            .iter()
            .find(|(_, v)| v.iter().any(|s| s.id == id))
            .map(|(n, _)| n.clone())
            .ok_or_else(|| SilenceError::Unknown(id.to_string()))?;
        let s = self
            .take_silence(&node, |s| s.id == id)
            .pop()
            .ok_or_else(|| SilenceError::Unknown(id.to_string()))?;
        let mut out = Vec::new();
        self.silence_stopped(&s, Stop::Expired, by, now, &mut out);
        Ok((s, out))
    }

    /// Every silence kept, by node then start (those that have not started
    /// yet included).
    pub fn silences(&self) -> Vec<Silence> {
        let mut all: Vec<Silence> = self.silences.values().flatten().cloned().collect();
        all.sort_by(|a, b| (&a.node, a.start, &a.id).cmp(&(&b.node, b.start, &b.id)));
        all
    }

    /// The silence holding at `now` that covers `action` for `problem` on
    /// `node`, if any (the one ending last).
    pub(super) fn silenced(
        &self,
        node: &NodeName,
        kind: &AlertKind,
        problem: &ProblemKey,
        action: &str,
        now: Timestamp,
    ) -> Option<&Silence> {
        self.silences
            .get(node)?
            .iter()
            .filter(|s| s.holds_at(now) && s.covers(node, kind, problem, action))
            .max_by_key(|s| s.end)
    }

    /// Remember that the silence `id` on `node` held `problem`.
    pub(super) fn silence_held(&mut self, node: &NodeName, id: &str, problem: &ProblemKey) {
        if let Some(s) = self
            .silences
            .get_mut(node)
            .and_then(|v| v.iter_mut().find(|s| s.id == id))
        {
            s.held.insert(problem.clone());
        }
    }

    /// End the silences whose end has come, and close the windows of
    /// recurring ones that held something (a tick): what they held is
    /// decided again. Walks only the nodes that have silences.
    pub(super) fn silence_tick(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let closed = |s: &Silence| !s.held.is_empty() && !s.holds_at(now);
        let due: Vec<NodeName> = self
            .silences
            .iter()
            .filter(|(_, v)| v.iter().any(|s| s.ended_at(now) || closed(s)))
            .map(|(n, _)| n.clone())
            .collect();
        for node in due {
            for s in self.take_silence(&node, |s| s.ended_at(now)) {
                self.silence_stopped(&s, Stop::Ended, "coordinator", now, out);
            }
            let windows: Vec<Silence> = self
                .silences
                .get_mut(&node)
                .into_iter()
                .flatten()
                .filter(|s| closed(s))
                .map(|s| {
                    let shut = s.clone();
                    s.held.clear();
                    shut
                })
                .collect();
            for s in windows {
                self.silence_stopped(&s, Stop::WindowClosed, "coordinator", now, out);
            }
        }
    }

    /// The silences of `node` that `which` selects, taken out.
    fn take_silence(&mut self, node: &NodeName, which: impl Fn(&Silence) -> bool) -> Vec<Silence> {
        let Some(kept) = self.silences.get_mut(node) else {
            return Vec::new();
        };
        let (taken, left): (Vec<Silence>, Vec<Silence>) = kept.drain(..).partition(|s| which(s));
        if left.is_empty() {
            self.silences.remove(node);
        } else {
            *kept = left;
        }
        taken
    }

    /// Audit that `s` stopped holding and decide again what it held.
    fn silence_stopped(
        &mut self,
        s: &Silence,
        how: Stop,
        by: &str,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let how_str = how.as_str();
        let summary = match how {
            Stop::Expired => format!("silence {} expired by {by}: {}", s.id, s.scope()),
            Stop::Ended => format!("silence {} ended: {}", s.id, s.scope()),
            Stop::WindowClosed => format!(
                "silence {} window closed: {}; {} problem(s) decided again",
                s.id,
                s.scope(),
                s.held.len()
            ),
        };
        out.push(Effect::Audit(AuditEntry::new(
            AuditEvent::Silence,
            now,
            Some(&s.node),
            by,
            summary,
            json!({"event": how_str, "by": by, "silence": s}),
        )));
        for problem in &s.held {
            if let Some(alert) = self.open_alerts.get(&s.node, problem).cloned() {
                self.decide(&alert, alert.severity, now, out);
            }
        }
    }
}
