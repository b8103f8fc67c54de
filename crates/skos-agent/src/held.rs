//! Commands held behind a running action for the same problem.
//!
//! A row of the healing tables may answer one problem with several actions
//! at once (storage critical: `cleanup_logs` and `archive_old`). Run side by
//! side, the second is judged before the first has freed anything, runs
//! although the first was enough, and counts as a false remediation. So a
//! command that is checked before acting ([`Command::level`]) and whose
//! problem has a background job running waits here, unacknowledged (kept
//! from redelivery by in-progress acks), until that job ends; it is then
//! handled as if just delivered: its deadline, and whether its problem is
//! still there, are judged at that moment. A command whose deadline passes
//! while it waits (a job that hangs) is let go then, to be answered
//! `expired`, rather than held for as long as the job runs.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};

use skos_bus::Incoming;
use skos_core::protocol::Command;

/// A held command's deadline (none: it never expires), its action id and
/// the message.
type Waiting = (Option<DateTime<Utc>>, String, Incoming);

/// The problems with background jobs running, and the commands waiting
/// for them, in arrival order.
#[derive(Default)]
pub struct Held {
    /// Background jobs running, by problem.
    running: HashMap<String, usize>,
    /// Commands waiting, by problem, in arrival order.
    waiting: HashMap<String, VecDeque<Waiting>>,
}

impl Held {
    /// The problem `cmd` must wait on: its own, when the command is checked
    /// before acting and a job for that problem is running.
    pub fn must_wait(&self, cmd: &Command) -> Option<String> {
        let problem = cmd.problem.as_ref()?;
        (cmd.level.is_some() && self.running.get(problem).is_some_and(|n| *n > 0))
            .then(|| problem.clone())
    }

    /// Keep `m`, the command `cmd`, until `problem`'s jobs have ended or
    /// its deadline has passed.
    pub fn hold(&mut self, problem: String, cmd: &Command, m: Incoming) {
        self.waiting.entry(problem).or_default().push_back((
            cmd.deadline,
            cmd.action_id.clone(),
            m,
        ));
    }

    /// `m`, a copy of the held command `action_id` delivered again, takes
    /// the place of the one held (`None`), so the command is held once and
    /// stays unacknowledged until judged: JetStream delivers a message
    /// again when an in-progress ack did not reach it, and acknowledging
    /// the copy would lose the command with an agent stopped meanwhile.
    /// `Some(m)` when no such command is held.
    pub fn hold_again(&mut self, action_id: &str, m: Incoming) -> Option<Incoming> {
        match self
            .waiting
            .values_mut()
            .flatten()
            .find(|(_, id, _)| id == action_id)
        {
            Some((_, _, held)) => {
                *held = m;
                None
            }
            None => Some(m),
        }
    }

    /// The waiting commands whose deadline is before `now`, in arrival
    /// order per problem, no longer kept: judged again, they are answered
    /// `expired`.
    pub fn past_deadline(&mut self, now: DateTime<Utc>) -> Vec<Incoming> {
        let mut out = Vec::new();
        for queue in self.waiting.values_mut() {
            let (late, keep): (VecDeque<_>, VecDeque<_>) = std::mem::take(queue)
                .into_iter()
                .partition(|(deadline, _, _)| deadline.is_some_and(|d| d < now));
            *queue = keep;
            out.extend(late.into_iter().map(|(_, _, m)| m));
        }
        self.waiting.retain(|_, q| !q.is_empty());
        out
    }

    /// A background job for `problem` started.
    pub fn started(&mut self, problem: &str) {
        *self.running.entry(problem.to_string()).or_default() += 1;
    }

    /// A background job for `problem` ended: the commands that waited for
    /// it, once no other job of that problem runs.
    pub fn ended(&mut self, problem: &str) -> Vec<Incoming> {
        let left = match self.running.get_mut(problem) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left > 0 {
            return Vec::new();
        }
        self.running.remove(problem);
        self.waiting
            .remove(problem)
            .map(|q| q.into_iter().map(|(_, _, m)| m).collect())
            .unwrap_or_default()
    }

    /// How many commands wait.
    pub fn len(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }

    /// Whether no command waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tell the bus each waiting command is still being worked on, so it is
    /// not delivered again meanwhile.
    pub async fn keep_alive(&self) {
        for (_, _, m) in self.waiting.values().flatten() {
            if let Err(e) = m.in_progress().await {
                tracing::warn!(subject = %m.subject, error = %e, "in-progress ack of a held command failed; it may be delivered again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn cmd(problem: Option<&str>, level: Option<f64>) -> Command {
        let mut c: Command = serde_json::from_value(serde_json::json!({
            "action_id": "a1",
            "action_type": "archive_old",
            "parameters": {},
            "timestamp": "2026-12-01T00:00:00Z",
        }))
        .unwrap();
        c.problem = problem.map(str::to_string);
        c.level = level;
        c
    }

    fn incoming(subject: &str) -> Incoming {
        Incoming::plain(subject.to_string(), Bytes::new())
    }

    #[test]
    fn a_checked_command_waits_only_while_a_job_of_its_problem_runs() {
        let mut h = Held::default();
        let c = cmd(Some("storage:/data"), Some(90.0));
        assert_eq!(h.must_wait(&c), None, "nothing runs");
        h.started("storage:/data");
        assert_eq!(h.must_wait(&c).as_deref(), Some("storage:/data"));
        assert_eq!(h.must_wait(&cmd(Some("storage:/logs"), Some(90.0))), None);
        assert_eq!(
            h.must_wait(&cmd(Some("storage:/data"), None)),
            None,
            "a command not checked before acting does not wait"
        );
        assert_eq!(h.must_wait(&cmd(None, Some(90.0))), None);
    }

    #[test]
    fn waiting_commands_come_back_in_order_once_every_job_of_the_problem_ended() {
        let mut h = Held::default();
        h.started("p");
        h.started("p");
        let c = cmd(Some("p"), Some(1.0));
        let back = h.hold_again("a1", incoming("not held"));
        assert_eq!(back.map(|m| m.subject).as_deref(), Some("not held"));
        h.hold("p".into(), &c, incoming("one"));
        assert!(h.hold_again("a1", incoming("one again")).is_none());
        assert_eq!(h.len(), 1, "held once");
        let mut other = c.clone();
        other.action_id = "a2".into();
        h.hold("p".into(), &other, incoming("two"));
        assert_eq!(h.len(), 2);
        assert!(h.ended("p").is_empty(), "another job of p still runs");
        let back: Vec<String> = h.ended("p").into_iter().map(|m| m.subject).collect();
        assert_eq!(
            back,
            ["one again", "two"],
            "the copy took the first's place"
        );
        assert!(h.is_empty());
        assert!(h.ended("p").is_empty(), "an extra end is harmless");
        assert_eq!(h.must_wait(&cmd(Some("p"), Some(1.0))), None);
    }

    #[test]
    fn a_held_command_past_its_deadline_is_let_go_while_the_job_still_runs() {
        let now: DateTime<Utc> = "2026-12-01T00:10:00Z".parse().unwrap();
        let mut h = Held::default();
        h.started("p");
        h.started("q");
        let mut early = cmd(Some("p"), Some(1.0));
        early.deadline = Some(now - chrono::Duration::seconds(1));
        let mut later = cmd(Some("p"), Some(1.0));
        later.deadline = Some(now + chrono::Duration::seconds(60));
        let mut other = cmd(Some("q"), Some(1.0));
        other.deadline = Some(now - chrono::Duration::seconds(5));
        h.hold("p".into(), &early, incoming("early"));
        h.hold("p".into(), &later, incoming("later"));
        h.hold("q".into(), &other, incoming("other"));
        let mut late: Vec<String> = h
            .past_deadline(now)
            .into_iter()
            .map(|m| m.subject)
            .collect();
        late.sort();
        assert_eq!(late, ["early", "other"]);
        assert_eq!(h.len(), 1, "the one still in time waits on");
        assert!(h.past_deadline(now).is_empty(), "let go once");
        assert!(
            h.ended("q").is_empty(),
            "q's queue is gone with its last command"
        );
        let back: Vec<String> = h.ended("p").into_iter().map(|m| m.subject).collect();
        assert_eq!(back, ["later"]);
    }
}
