//! What every antibody offers the agent runtime. The list of them is in
//! [`crate::registry`].
//!
//! An antibody senses (returning alerts), adds its readings to the
//! heartbeat, and carries out the actions it knows. Long actions run as
//! background jobs so heartbeats never stop.

use skos_core::protocol::{Alert, Command, Heartbeat};
use skos_core::timefmt::Timestamp;

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
