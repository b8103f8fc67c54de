//! The antibody registry: the antibodies this build has, by the name
//! `agent.antibodies` gives them, one line each. To add an antibody, add
//! its line here (and see `antibody.rs` for the rest).

use std::path::Path;

use skos_core::config::Config;

use crate::antibody::Antibody;
use crate::{loops, mesh, storage, thermal, workloads};

/// Builds one antibody from the config and the agent's state dir.
type Build = fn(&Config, Option<&Path>) -> Box<dyn Antibody>;

/// Every antibody this build has: its name and how it is built.
const BUILT: &[(&str, Build)] = &[
    (thermal::AGENT_TYPE, |cfg, state| {
        Box::new(thermal::ThermalSentinel::new(cfg, state))
    }),
    (storage::AGENT_TYPE, |cfg, _| {
        Box::new(storage::StorageWatcher::new(cfg))
    }),
    (loops::AGENT_TYPE, |cfg, _| {
        Box::new(loops::LoopBreaker::new(cfg))
    }),
    (mesh::AGENT_TYPE, |cfg, _| {
        Box::new(mesh::MeshHealer::new(cfg))
    }),
    (workloads::AGENT_TYPE, |cfg, state| {
        Box::new(workloads::Workloads::new(cfg, state))
    }),
];

/// The names of the antibodies this build has, in registry order.
pub fn built() -> impl Iterator<Item = &'static str> {
    BUILT.iter().map(|(name, _)| *name)
}

/// The enabled antibodies, in configuration order. Unknown names were
/// already refused by `Config::check`; names not built here are skipped
/// with a warning (their actions are answered `unsupported`).
pub fn enabled(cfg: &Config, state_dir: Option<&Path>) -> Vec<Box<dyn Antibody>> {
    let mut out = Vec::new();
    for name in &cfg.agent.antibodies {
        match BUILT.iter().find(|(n, _)| n == name) {
            Some((_, build)) => out.push(build(cfg, state_dir)),
            None => {
                tracing::warn!(antibody = %name, "antibody not available in this build; its commands are answered unsupported")
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_antibody_is_named_once_and_known_to_the_catalogue() {
        let names: Vec<&str> = built().collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for n in names {
            let e = skos_core::catalogue::Executor::parse(n);
            assert!(e.is_some_and(|e| e.built()), "{n} is not a built executor");
        }
    }
}
