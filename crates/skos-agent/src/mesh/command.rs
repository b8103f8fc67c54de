//! Commands: the configured interface or peer a command is about, and
//! the action carried out on it (slow ones as background jobs).

use serde_json::Value;
use skos_core::config::MeshPeer;
use skos_core::protocol::{Command, ResultStatus};

use super::jobs::{lock, Busy};
use super::{actions, MeshHealer};
use crate::antibody::Execution;
use crate::Outcome;

impl MeshHealer {
    /// The configured interface or peer a command is about: its
    /// `interface`/`peer` parameter, else its problem (`mesh:<name>`). Only
    /// configured names are accepted.
    fn target(&self, cmd: &Command) -> Result<Target, Outcome> {
        let from_params = ["interface", "peer"]
            .iter()
            .find_map(|k| cmd.parameters.get(*k).and_then(Value::as_str));
        let name = from_params.or_else(|| {
            cmd.problem
                .as_deref()
                .and_then(|p| p.strip_prefix(skos_core::events::MESH_PREFIX))
        });
        let Some(name) = name else {
            return Err(Outcome::new(
                ResultStatus::Rejected,
                format!("{} names no interface or peer", cmd.action_type),
            ));
        };
        if self.cfg.interface(name).is_some() {
            Ok(Target::Interface(name.to_string()))
        } else if self.cfg.peer(name).is_some() {
            Ok(Target::Peer(name.to_string()))
        } else {
            Err(Outcome::new(
                ResultStatus::Rejected,
                format!(
                    "{:?} is not a configured mesh interface or peer",
                    name.escape_debug().to_string()
                ),
            ))
        }
    }

    pub fn execute(&mut self, cmd: &Command) -> Execution {
        let target = match self.target(cmd) {
            Ok(t) => t,
            Err(o) => return Execution::Done(o),
        };
        let cfg = self.cfg.clone();
        match cmd.action_type.as_str() {
            "restart_wireguard" | "regenerate_config" => {
                let name = match &target {
                    Target::Interface(i) => i.clone(),
                    Target::Peer(p) => cfg.peer(p).map(|p| p.interface.clone()).unwrap_or_default(),
                };
                let Some(itf) = cfg.interface(&name).cloned() else {
                    return Execution::Done(Outcome::new(
                        ResultStatus::Rejected,
                        format!("no configured interface {name}"),
                    ));
                };
                {
                    let mut j = lock(&self.jobs);
                    if !j.busy.insert(name.clone()) {
                        return Execution::Done(Outcome::new(
                            ResultStatus::Rejected,
                            format!("{name} is already being restarted"),
                        ));
                    }
                }
                let busy = Busy {
                    jobs: self.jobs.clone(),
                    name,
                    settle: cfg.settle_seconds,
                };
                let regenerate = cmd.action_type == "regenerate_config";
                Execution::Background(Box::new(move || {
                    let _busy = busy;
                    if regenerate {
                        actions::regenerate(&cfg, &itf)
                    } else {
                        actions::restart(&cfg, &itf)
                    }
                }))
            }
            "ping_peer" => {
                let peers: Vec<MeshPeer> = match &target {
                    Target::Peer(p) => cfg.peer(p).cloned().into_iter().collect(),
                    Target::Interface(i) => cfg
                        .peers
                        .iter()
                        .filter(|p| &p.interface == i)
                        .cloned()
                        .collect(),
                };
                Execution::Background(Box::new(move || actions::ping(&cfg, &peers)))
            }
            "failover_route" => match &target {
                Target::Peer(p) => match cfg.peer(p) {
                    Some(peer) => Execution::Done(actions::failover(&cfg, peer)),
                    None => Execution::Done(Outcome::new(ResultStatus::Rejected, "no such peer")),
                },
                Target::Interface(i) => Execution::Done(Outcome::new(
                    ResultStatus::Unsupported,
                    format!("failover_route needs a peer, not the interface {i}"),
                )),
            },
            other => Execution::Done(Outcome::new(
                ResultStatus::Unsupported,
                format!("{other} is not a mesh action"),
            )),
        }
    }
}

enum Target {
    Interface(String),
    Peer(String),
}
