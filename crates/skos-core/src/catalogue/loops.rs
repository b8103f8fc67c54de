//! The loop breaker's actions on a runaway chain or process group.

use super::{ActionSpec, Executor::LoopBreaker, ParamKind::Token};

const CHAIN: &[(&str, super::ParamKind)] = &[("chain_id", Token), ("chain_kind", Token)];

pub(super) const ACTIONS: &[ActionSpec] = &[
    // Signals a watched process group (SIGSTOP, then TERM, then KILL).
    ActionSpec::new("circuit_break", LoopBreaker)
        .params(CHAIN)
        .destructive(),
    ActionSpec::new("reset_chain", LoopBreaker).params(CHAIN),
];
