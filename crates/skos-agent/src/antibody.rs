//! What every antibody offers the agent runtime, and the list of them.
//!
//! An antibody senses (returning alerts), adds its readings to the
//! heartbeat, and carries out the actions it knows. Long actions run as
//! background jobs so heartbeats never stop.

use std::path::Path;

use skos_core::config::Config;
use skos_core::protocol::{Alert, Command, Heartbeat};
use skos_core::timefmt::Timestamp;

use crate::storage::StorageWatcher;
use crate::thermal::ThermalSentinel;
use crate::Outcome;

pub enum Execution {
    /// Done on the spot.
    Done(Outcome),
    /// Long work: runs on a blocking thread while the agent keeps
    /// heartbeating; its result is published when it finishes.
    Background(Box<dyn FnOnce() -> Outcome + Send>),
}

pub trait Antibody: Send + Sync {
    /// The antibody's name, as in `agent.antibodies` (`thermal_sentinel`).
    fn name(&self) -> &'static str;
    fn handles(&self, action: &str) -> bool;
    /// Read the sources; return the alerts to raise.
    fn sense(&mut self, now: Timestamp) -> Vec<Alert>;
    /// Add this antibody's readings to a heartbeat.
    fn report(&self, hb: &mut Heartbeat);
    fn execute(&mut self, cmd: &Command) -> Execution;
    /// A background job of this antibody finished.
    fn finished(&mut self, _action: &str, _outcome: &Outcome) {}
    /// A task of its own that the runtime runs beside the agent loop until
    /// shutdown (the loop breaker answers chain steps there). Called once.
    fn serve(
        &mut self,
        _bus: &skos_bus::Bus,
        _counters: &skos_core::counters::Counters,
    ) -> Option<futures::future::BoxFuture<'static, ()>> {
        None
    }
}

/// The enabled antibodies, in configuration order. Unknown names were
/// already refused by `Config::check`; names not built here are skipped
/// with a warning (their actions are answered `unsupported`).
pub fn enabled(cfg: &Config, state_dir: Option<&Path>) -> Vec<Box<dyn Antibody>> {
    let mut out: Vec<Box<dyn Antibody>> = Vec::new();
    for name in &cfg.agent.antibodies {
        match name.as_str() {
            crate::thermal::AGENT_TYPE => out.push(Box::new(ThermalSentinel::new(cfg, state_dir))),
            crate::storage::AGENT_TYPE => out.push(Box::new(StorageWatcher::new(cfg))),
            crate::loops::AGENT_TYPE => out.push(Box::new(crate::loops::LoopBreaker::new(cfg))),
            crate::mesh::AGENT_TYPE => out.push(Box::new(crate::mesh::MeshHealer::new(cfg))),
            other => {
                tracing::warn!(antibody = %other, "antibody not available in this build; its commands are answered unsupported")
            }
        }
    }
    out
}
