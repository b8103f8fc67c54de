//! The mesh healer's judgement, without root: `ip` and `wg` are replaced
//! (through `mesh.tools`) by scripts that print what real ones printed,
//! and time is passed in.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use chrono::Duration;
use skos_agent::antibody::Antibody;
use skos_agent::mesh::MeshHealer;
use skos_core::config::Config;
use skos_core::protocol::{Heartbeat, Severity};

const PRIVATE: &str = "YK86J1JS22zRRFV7h0yOf3qlpGPEeFomPrpmctMM8FY=";
const PUBLIC: &str = "/LkTFzeU60BpiIdbL3UiuWTxqd4YFjb1PyaEmEb91So=";
const PEER: &str = "Po5SJsFbRL9I/+l1cP+616Jr6zhCKIJZqmAKYukmgGc=";
const OTHER: &str = "LdNG28z4MtHuUzdspWUYC7I9m2BoeUZHGl4cG+bCCTE=";
const LINK_UP: &str = r#"[{"ifindex":2,"ifname":"wg0","flags":["POINTOPOINT","MULTICAST","NOARP","UP","LOWER_UP"],"mtu":1420,"qdisc":"pfifo_fast","operstate":"UNKNOWN","linkmode":"DEFAULT","group":"default","txqlen":500,"link_type":"none"}]"#;

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn dump(peer: &str, handshake: i64, rx: u64) -> String {
    format!("{PRIVATE}\t{PUBLIC}\t51820\toff\n{peer}\t(none)\t192.0.2.7:51820\t10.99.0.2/32\t{handshake}\t{rx}\t500\t25\n")
}

fn heartbeat(h: &MeshHealer) -> Heartbeat {
    let mut hb: Heartbeat = serde_json::from_value(serde_json::json!({
        "agent_id": "a", "agent_type": "mesh_healer", "node": "athena",
        "timestamp": "2024-01-01T00:00:00Z"
    }))
    .unwrap();
    h.report(&mut hb);
    hb
}

#[test]
fn stale_peers_missing_links_and_unreadable_interfaces() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    script(
        &d.join("ip"),
        &format!(
            "D={d}\ncase \"$*\" in\n  \"-j link show dev \"*) if [ -f \"$D/link-$5\" ]; then cat \"$D/link-$5\"; else echo \"Device \\\"$5\\\" does not exist.\" >&2; exit 1; fi;;\n  *) echo '[]';;\nesac",
            d = d.display()
        ),
    );
    script(
        &d.join("wg"),
        &format!(
            "D={d}\nif [ -f \"$D/eperm\" ]; then echo 'Unable to access interface: Operation not permitted' >&2; exit 1; fi\nif [ \"$1\" = show ] && [ \"$3\" = dump ] && [ -f \"$D/dump-$2\" ]; then cat \"$D/dump-$2\"; else echo 'Unable to access interface: Protocol not supported' >&2; exit 1; fi",
            d = d.display()
        ),
    );
    let cfg = Config::from_yaml(&format!(
        "
node: {{name: athena}}
mesh:
  stale_after: 5
  tools: {{ip: {d}/ip, wg: {d}/wg}}
  interfaces: [wg0]
  peers:
    - {{name: lyra, interface: wg0, public_key: '{PEER}'}}
",
        d = d.display()
    ))
    .unwrap();
    let t0 = chrono::Utc::now();
    let at = |s: i64| t0 + Duration::seconds(s);
    std::fs::write(d.join("link-wg0"), LINK_UP).unwrap();
    std::fs::write(d.join("dump-wg0"), dump(PEER, t0.timestamp() - 1, 100)).unwrap();
    let mut h = MeshHealer::new(&cfg);

    assert!(h.sense(at(0)).is_empty());
    let hb = heartbeat(&h);
    let mesh = &hb.metadata["mesh"];
    assert_eq!(mesh["interfaces"]["wg0"]["level"], 0, "{mesh}");
    assert_eq!(mesh["peers"]["lyra"]["level"], 0, "{mesh}");
    assert_eq!(mesh["peers"]["lyra"]["node"], "lyra");

    // No handshake and no data for longer than stale_after: the peer is
    // down; the interface itself is not (it is only stale).
    let alerts = h.sense(at(10));
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(
        (a.severity, a.problem().as_str()),
        (Severity::Critical, "mesh:lyra")
    );
    assert_eq!(a.details["event"], "peer_unreachable");
    assert_eq!(a.details["peer_node"], "lyra");
    assert!(a.details["activity_age_seconds"].as_f64().unwrap() > 5.0);
    let hb = heartbeat(&h);
    assert_eq!(hb.metadata["mesh"]["interfaces"]["wg0"]["state"], "stale");
    assert_eq!(hb.metadata["mesh"]["interfaces"]["wg0"]["level"], 1);

    // Data arrives (keepalives): alive again, though the handshake is old.
    std::fs::write(d.join("dump-wg0"), dump(PEER, t0.timestamp() - 1, 164)).unwrap();
    let alerts = h.sense(at(11));
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].severity, Severity::Normal);
    assert_eq!(alerts[0].details["event"], "peer_unreachable");
    assert_eq!(alerts[0].details["recovered"], true);

    // The link disappears: the tunnel is down; its peer is not blamed.
    std::fs::remove_file(d.join("link-wg0")).unwrap();
    let alerts = h.sense(at(12));
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].details["event"], "tunnel_down");
    assert_eq!(alerts[0].details["state"], "missing");
    assert_eq!(
        heartbeat(&h).metadata["mesh"]["peers"]["lyra"]["state"],
        "interface_down"
    );

    // Back, but wg cannot read it, then it lacks the configured peer: still
    // down (no new alert at the same level).
    std::fs::write(d.join("link-wg0"), LINK_UP).unwrap();
    std::fs::remove_file(d.join("dump-wg0")).unwrap();
    assert!(h.sense(at(13)).is_empty());
    assert_eq!(
        heartbeat(&h).metadata["mesh"]["interfaces"]["wg0"]["state"],
        "unreadable"
    );
    std::fs::write(d.join("dump-wg0"), dump(OTHER, t0.timestamp() + 13, 10)).unwrap();
    assert!(h.sense(at(14)).is_empty());
    assert_eq!(
        heartbeat(&h).metadata["mesh"]["interfaces"]["wg0"]["state"],
        "misconfigured"
    );

    // Healthy again: a fresh handshake with the right peer.
    std::fs::write(d.join("dump-wg0"), dump(PEER, t0.timestamp() + 14, 10)).unwrap();
    let alerts = h.sense(at(15));
    let tunnel: Vec<_> = alerts
        .iter()
        .filter(|a| a.problem() == "mesh:wg0")
        .collect();
    assert_eq!(tunnel.len(), 1, "{alerts:?}");
    assert_eq!(tunnel[0].severity, Severity::Normal);

    // Without the right to read WireGuard state nothing is claimed.
    std::fs::write(d.join("eperm"), "").unwrap();
    assert!(h.sense(at(16)).is_empty(), "no invented tunnel_down");
    let hb = heartbeat(&h);
    assert_eq!(
        hb.metadata["mesh"]["interfaces"]["wg0"]["state"],
        "no_permission"
    );
    assert!(hb.metadata["mesh"]["interfaces"]["wg0"]["level"].is_null());
    assert_eq!(hb.metadata["mesh"]["peers"]["lyra"]["state"], "unknown");
    assert!(hb.metadata["mesh"]["peers"]["lyra"]["level"].is_null());

    // The private key in the dump went nowhere.
    let all = format!(
        "{alerts:?}{}",
        serde_json::to_string(&heartbeat(&h)).unwrap()
    );
    assert!(!all.contains(PRIVATE));
}
