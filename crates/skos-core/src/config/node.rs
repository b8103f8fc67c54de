//! `node:`: who this node is.

use serde::{Deserialize, Serialize};

use super::{Config, Section};
use crate::node::NodeName;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeSection {
    /// This node's name (`NODE_NAME`); the seed's default is `nova`.
    pub name: NodeName,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            name: NodeName::parse("nova").unwrap_or_else(|_| unreachable!("valid literal")),
        }
    }
}

impl Section for NodeSection {
    const KEY: &'static str = "node";

    fn get(cfg: &Config) -> &Self {
        &cfg.node
    }

    fn get_mut(cfg: &mut Config) -> &mut Self {
        &mut cfg.node
    }
}
