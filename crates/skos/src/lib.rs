//! What the `skos` and `skos-agent` binaries share: the agent's process
//! ([`node`]) and giving free heap back ([`heap`]). The rest of `skos`
//! (coordinator, embedded mode, operator's commands) lives in the `skos`
//! binary itself, so that `skos-agent` links none of it.

pub mod heap;
pub mod node;
