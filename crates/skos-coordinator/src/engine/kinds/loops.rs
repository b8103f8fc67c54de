//! A runaway chain or process group: its actions (`circuit_break`,
//! `reset_chain`) are judged by their result alone; the agent's own
//! sensing raises the alert again if the loop goes on.

use super::ProblemKind;

pub(crate) struct Loops;

impl ProblemKind for Loops {}
