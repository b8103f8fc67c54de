//! Agents' command consumers, made by the coordinator: each node's
//! `skos-agent-<node>` on `SKOS_COMMANDS`, filtering only that node's
//! commands, so agents need (and, with the credentials `skos fleet
//! nats-config` writes, have) no right to create or change a consumer.
//!
//! The leader asks for the consumers of every node it knows at start and
//! of each node it hears a heartbeat from, once per leadership (and once
//! more after the bus made `SKOS_COMMANDS` again: the consumers went with
//! the stream); a task of
//! its own creates them (or replaces one that filters anything else) and
//! retries what failed, so the heartbeat path never waits on it.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use skos_bus::Bus;
use skos_core::NodeName;
use tokio::sync::mpsc;

/// Longest wait between two tries for a consumer that could not be made.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The leader's side: which nodes were asked for, and the task that makes
/// their consumers (stopped when this is dropped).
pub(crate) struct Consumers {
    asked: HashSet<NodeName>,
    tx: mpsc::UnboundedSender<NodeName>,
    task: tokio::task::JoinHandle<()>,
    bus: Bus,
    /// [`Bus::commands_remade`] when `asked` was begun.
    remade: u64,
}

impl Consumers {
    /// Start the task that makes consumers on `bus`.
    pub(crate) fn spawn(bus: Bus) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            asked: HashSet::new(),
            tx,
            remade: bus.commands_remade(),
            task: tokio::spawn(make(bus.clone(), rx)),
            bus,
        }
    }

    /// Make sure `node`'s command consumer exists (asked once per node,
    /// and once more after `SKOS_COMMANDS` was made again).
    pub(crate) fn want(&mut self, node: &NodeName) {
        let remade = self.bus.commands_remade();
        if remade != self.remade {
            tracing::warn!(
                nodes = self.asked.len(),
                "the command stream was made again: every node's command consumer is made again as its next heartbeat comes"
            );
            self.remade = remade;
            self.asked.clear();
        }
        if self.asked.contains(node) {
            return;
        }
        if self.tx.send(node.clone()).is_ok() {
            self.asked.insert(node.clone());
        }
    }
}

impl Drop for Consumers {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Make the consumer of every node asked for; what fails is tried again,
/// backing off, until it is made.
async fn make(bus: Bus, mut rx: mpsc::UnboundedReceiver<NodeName>) {
    let mut pending = BTreeSet::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(node) => {
                    pending.insert(node);
                }
                None => return,
            }
        }
        while let Ok(node) = rx.try_recv() {
            pending.insert(node);
        }
        let mut failed = BTreeSet::new();
        for node in std::mem::take(&mut pending) {
            if let Err(e) = bus.ensure_command_consumer(&node).await {
                tracing::warn!(node = %node, error = %e, retry_s = backoff.as_secs_f64(), "command consumer not made; its agent gets no commands until it is");
                failed.insert(node);
            }
        }
        if failed.is_empty() {
            backoff = Duration::from_millis(200);
            continue;
        }
        pending = failed;
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            more = rx.recv() => match more {
                Some(node) => {
                    pending.insert(node);
                }
                None => return,
            },
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In process there is nothing to make: asking is harmless, and each
    /// node is asked for once.
    #[tokio::test]
    async fn each_node_is_asked_for_once() {
        let bus = Bus::InProc(skos_bus::InProcBus::new());
        let mut c = Consumers::spawn(bus);
        let nova = NodeName::parse("nova").unwrap();
        c.want(&nova);
        c.want(&nova);
        c.want(&NodeName::parse("lyra").unwrap());
        assert_eq!(c.asked.len(), 2);
    }
}
