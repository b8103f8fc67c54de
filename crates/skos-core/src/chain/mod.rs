//! The loop breaker: the cooperative chain protocol and its detection.
//!
//! An application asks before every step of a chain (`skos.chain.<node>`,
//! request/reply) with a [`ChainEvent`]; the loop breaker answers with a
//! [`ChainDecision`]. A step is denied when it goes deeper than the
//! chain's `max_depth`, past `max_iterations`, over the step rate, or
//! closes a cycle of step signatures (A→B→A→B→A→B). The first denied step
//! opens the chain's circuit at once ("tripped"): further steps are denied
//! until the cool-off ends (then one trial step is judged: half-open), or
//! until a `reset_chain` clears the chain. Breaks and resets are announced
//! as [`ChainControl`] messages.
//!
//! [`ChainTable`] keeps every chain's state, bounded: at most
//! `loop.max_chains` chains, idle ones forgotten, a fixed number of steps
//! kept per chain. Nothing here does I/O; time is passed in.
//!
//! [`tree`] is the same for uncooperative chains: process trees read from
//! `/proc` by the agent.
//!
//! Laid out as: `wire.rs` (the protocol's messages and id rules),
//! `cycle.rs` (cycle detection over step signatures), `circuit.rs` (one
//! chain's state: counters, windows, circuit), `table.rs` ([`ChainTable`],
//! judging steps and carrying out commands) and [`tree`].

mod circuit;
mod cycle;
mod table;
pub mod tree;
mod wire;

/// The conditions and kind names are the config's vocabulary (the keys of
/// `loop.actions`, `loop.kinds` and process group names); the chain logic
/// uses them from there.
pub use crate::config::{valid_kind, Condition, MAX_KIND_LEN};

pub use cycle::detect_cycle;
pub use table::{ChainTable, ChainView, StepOutcome, TickReport, Transition, Trip};
pub use wire::{
    valid_id, valid_signature, ChainControl, ChainDecision, ChainEvent, CircuitState, ControlEvent,
    Reason, StepRecord, Verdict, MAX_ID_LEN,
};
