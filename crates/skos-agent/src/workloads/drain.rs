//! `node_drain` and `node_undrain`: a node that belongs to an orchestrator
//! (Docker Swarm, Kubernetes, Nomad) has its work moved by the
//! orchestrator, not by SKOS. The coordinator sends one of these to the
//! node itself, or to a hot spare while the node is offline; the agent
//! runs the command `nodes.<node>.orchestrator.drain` (or `undrain`)
//! names for the node in the `node` parameter, with `{node}` replaced by
//! its name, never through a shell, killed with its process group after
//! `timeout_seconds`. Exit status 0 is `succeeded`; anything else is
//! `failed` with the exit status and the tail of its output. Results carry
//! `details: {node, command, exit_status, timed_out, output}`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};
use skos_core::catalogue::{NODE_DRAIN, NODE_UNDRAIN};
use skos_core::config::{Config, DrainCommand, OrchestratorSpec};
use skos_core::protocol::{Command, ResultStatus};
use skos_core::NodeName;

use crate::Outcome;

/// Most bytes of the command's output quoted in a result.
pub const MAX_OUTPUT: usize = 600;

/// The command `action` runs, if it is a drain action.
pub fn command_of(action: &str) -> Option<DrainCommand> {
    match action {
        NODE_DRAIN => Some(DrainCommand::Drain),
        NODE_UNDRAIN => Some(DrainCommand::Undrain),
        _ => None,
    }
}

/// The orchestrator commands of every node of `nodes:` that has them, and
/// the nodes a drain or undrain runs for now (one at a time per node).
#[derive(Debug, Clone, Default)]
pub struct Orchestrators {
    specs: BTreeMap<NodeName, OrchestratorSpec>,
    running: Arc<Mutex<BTreeSet<NodeName>>>,
}

impl Orchestrators {
    pub fn new(cfg: &Config) -> Self {
        Orchestrators {
            specs: cfg
                .nodes
                .0
                .iter()
                .filter_map(|(n, s)| Some((n.clone(), s.orchestrator.clone()?)))
                .collect(),
            running: Arc::default(),
        }
    }

    /// How many nodes have orchestrator commands.
    pub fn configured(&self) -> usize {
        self.specs.len()
    }

    /// The job `cmd` asks for, or why it is refused (no `node` parameter,
    /// a node without `orchestrator`, one already running for the node).
    pub fn job(&self, which: DrainCommand, cmd: &Command) -> Result<DrainJob, Outcome> {
        let refuse = |why: String| Outcome::new(ResultStatus::Rejected, why);
        let Some(param) = cmd.parameters.get("node").and_then(Value::as_str) else {
            return Err(refuse(format!(
                "{} names no node (parameter node)",
                cmd.action_type
            )));
        };
        let Ok(node) = NodeName::parse(param) else {
            return Err(refuse(format!("{param:?} is not a node name")));
        };
        let Some(spec) = self.specs.get(&node) else {
            return Err(refuse(format!(
                "{node} has no orchestrator configured (nodes.{node}.orchestrator)"
            )));
        };
        let argv = spec.argv(which, &node);
        if argv.is_empty() {
            return Err(refuse(format!(
                "nodes.{node}.orchestrator.{} names no command",
                which.key()
            )));
        }
        if !self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.clone())
        {
            return Err(refuse(format!(
                "a drain or undrain of {node} is in progress"
            )));
        }
        Ok(DrainJob {
            node,
            which,
            argv,
            timeout: Duration::from_secs_f64(spec.timeout_seconds),
            running: self.running.clone(),
        })
    }
}

/// One drain or undrain, run as a background job. Dropping it frees the
/// node for the next one.
#[derive(Debug)]
pub struct DrainJob {
    node: NodeName,
    which: DrainCommand,
    argv: Vec<String>,
    timeout: Duration,
    running: Arc<Mutex<BTreeSet<NodeName>>>,
}

impl Drop for DrainJob {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.node);
    }
}

impl DrainJob {
    /// Run the command to its end or its timeout.
    pub fn run(self) -> Outcome {
        let what = self.which.key();
        let node = &self.node;
        let mut details = Map::new();
        details.insert("node".into(), json!(node));
        details.insert("command".into(), json!(what));
        let out = match crate::mesh::exec::run(&self.argv, self.timeout) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(node = %node, command = what, error = %e, "orchestrator command not started");
                let mut o = Outcome::new(ResultStatus::Failed, format!("{what} of {node}: {e}"));
                o.details = details;
                return o;
            }
        };
        let code = out.status.and_then(|s| s.code());
        let output = tail(
            &format!("{}\n{}", out.stdout.trim(), out.stderr.trim()),
            MAX_OUTPUT,
        );
        details.insert("exit_status".into(), json!(code));
        details.insert("timed_out".into(), json!(out.timed_out));
        details.insert("output".into(), json!(output));
        let (status, message) = if out.success() {
            (
                ResultStatus::Succeeded,
                format!("{what} of {node} done ({})", out.program),
            )
        } else {
            let how = if out.timed_out {
                format!(
                    "killed after timeout_seconds ({} s)",
                    self.timeout.as_secs_f64()
                )
            } else {
                match code {
                    Some(c) => format!("exit status {c}"),
                    None => "killed by a signal".into(),
                }
            };
            tracing::warn!(node = %node, command = what, outcome = %how, "orchestrator command failed");
            let mut m = format!("{what} of {node} failed: {}: {how}", out.program);
            if !output.is_empty() {
                m.push_str("; output: ");
                m.push_str(&output);
            }
            (ResultStatus::Failed, m)
        };
        let mut o = Outcome::new(status, message);
        o.details = details;
        o
    }
}

/// The last `max` bytes of `text`, trimmed, cut at a character (with `…`).
fn tail(text: &str, max: usize) -> String {
    let t = text.trim();
    if t.len() <= max {
        return t.to_string();
    }
    let mut start = t.len() - max;
    while !t.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &t[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_cut_at_a_character() {
        assert_eq!(tail("  short \n", 10), "short");
        let t = tail(&"é".repeat(400), MAX_OUTPUT);
        assert!(t.starts_with('…') && t.len() <= MAX_OUTPUT + '…'.len_utf8());
    }
}
