//! What every antibody offers the agent runtime. The list of them is in
//! [`crate::registry`].
//!
//! An antibody senses (returning alerts), adds its readings to the
//! heartbeat, and carries out the actions it knows. Long actions run as
//! background jobs so heartbeats never stop.

use skos_core::protocol::{Alert, Command, Heartbeat};
use skos_core::timefmt::Timestamp;
use std::sync::Arc;
use tokio::sync::Notify;

use crate::Outcome;

pub enum Execution {
    /// Done on the spot.
    Done(Outcome),
    /// Long work: runs on a blocking thread while the agent keeps
    /// heartbeating; its result is published when it finishes.
    Background(Box<dyn FnOnce() -> Outcome + Send>),
}

/// What an antibody found on this machine, said once at start: the
/// sensors it reads and the actuators it would use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// The sensors read, or "none".
    pub sensors: String,
    /// The actuators found, and why the missing ones are missing.
    pub actuators: String,
}

/// Whether the problem a command answers is still there, as an
/// antibody's current readings say ([`Antibody::precondition`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Precondition {
    /// The reading is still at the command's level: act.
    Holds,
    /// The reading has cleared the command's level (fallen below it by the
    /// antibody's hysteresis, as a level alert would clear): the problem is
    /// gone, nothing is to be done.
    Gone {
        /// The reading now, in the problem's unit (°C, percent, mesh level).
        reading: f64,
        /// What it was read from (a sensor, a mount, an interface).
        source: String,
    },
    /// The antibody has no current reading for the problem (or does not
    /// know it): act, as without a check.
    Unknown,
}

pub trait Antibody: Send + Sync {
    /// The antibody's name, as in `agent.antibodies` (`thermal_sentinel`).
    fn name(&self) -> &'static str;
    fn handles(&self, action: &str) -> bool;
    /// Read the sources; return the alerts to raise. Called on the agent
    /// loop every `monitor_interval`: an antibody whose sources may be slow
    /// only asks for a read here and judges what has arrived (see
    /// [`Antibody::arrivals`]).
    fn sense(&mut self, now: Timestamp) -> Vec<Alert>;
    /// For an antibody that reads its sources off the agent loop: the
    /// signal raised (from any thread) when new readings arrived. The
    /// runtime then calls [`Antibody::judge`] at once, so an alert does
    /// not wait for the next `monitor_interval`. `None` (the default):
    /// everything happens in `sense`.
    fn arrivals(&self) -> Option<Arc<Notify>> {
        None
    }
    /// Judge the readings that arrived since the last look, reading
    /// nothing: the alerts to raise. Must return at once.
    fn judge(&mut self, _now: Timestamp) -> Vec<Alert> {
        Vec::new()
    }
    /// After one of its background jobs finished: read what the job left
    /// and judge it now, waiting at most a second, so the heartbeat sent
    /// next carries it (a read asked before the job is discarded). The
    /// default senses as every `monitor_interval`.
    fn refresh(&mut self, now: Timestamp) -> Vec<Alert> {
        self.sense(now)
    }
    /// Add this antibody's readings to a heartbeat.
    fn report(&self, hb: &mut Heartbeat);
    fn execute(&mut self, cmd: &Command) -> Execution;
    /// Whether `problem` (a command's `problem`, e.g. `thermal:cpu`) is
    /// still at `level` (its `level`) by the current readings. Asked just
    /// before a command that carries both runs; must return at once. The
    /// default: [`Precondition::Unknown`] (the command runs).
    fn precondition(&self, _problem: &str, _level: f64) -> Precondition {
        Precondition::Unknown
    }
    /// What it found on this machine (logged once at start, after the
    /// first sensing pass); `None` for an antibody with nothing to say.
    fn inventory(&self) -> Option<Inventory> {
        None
    }
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
