//! The mesh healer's actions on WireGuard interfaces and routes. Each takes
//! the interface or peer it acts on, chosen among the configured ones.

use super::{ActionSpec, Executor::MeshHealer, ParamKind::Token};

pub(super) const ACTIONS: &[ActionSpec] = &[
    ActionSpec::new("restart_wireguard", MeshHealer)
        .params(&[("interface", Token)])
        .verified(),
    ActionSpec::new("regenerate_config", MeshHealer)
        .params(&[("interface", Token)])
        .verified(),
    // A probe: it finds out, it does not fix.
    ActionSpec::new("ping_peer", MeshHealer).params(&[("peer", Token)]),
    ActionSpec::new("failover_route", MeshHealer)
        .params(&[("peer", Token)])
        .verified(),
];
