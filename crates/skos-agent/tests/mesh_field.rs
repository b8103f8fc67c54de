//! Field cases 13 and 14: `wg show <if> dump` as real hubs and boringtun
//! printed it, parsed with the time passed in, and sensed through the
//! cases' fake `wg` and `ip` (`tests/fixtures/field/`, copied to a temp
//! dir and made executable).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chrono::{Duration, Utc};
use skos_agent::antibody::Antibody;
use skos_agent::mesh::wg::{parse_dump_at, HandshakeUnit};
use skos_agent::mesh::MeshHealer;
use skos_core::config::Config;
use skos_core::protocol::Heartbeat;

const HUB: &str = "13-wg-dump-hub-roadwarriors";
const BORINGTUN: &str = "14-wg-dump-boringtun-relative-handshake";

const NEVER: &str = "AjkSNzm/8iQZ3HdcxoD/GT0zfEdLVQwhfWa/II7FzHE=";
const V6_PSK: &str = "1ZX3IKhqwup/OyQVUQtCIQ3pjKOghRExc5PHkXIdOjU=";
const LINK_LOCAL: &str = "25izd67kmhI6/82okdw2R9nt7Uk7xnFnU6QfJoe5KAc=";
const PHONE: &str = "icen8oL5AVnvXBMPr5wJ6C3sqCzdZe+X41sZ92RQS20=";
const LAPTOP: &str = "shG1NPssZF4GabaG7FbyFqwpxTaZFojujUgeYNfa9HU=";

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/field")
        .join(case)
}

/// Case 13's template with `NOW-N` replaced by now - N, as its `bin/wg`
/// does.
fn hub_dump(now: i64) -> String {
    let t = std::fs::read_to_string(fixture(HUB).join("wg-show-wg0-dump.template.txt")).unwrap();
    let mut out = String::new();
    let mut rest = t.as_str();
    while let Some(i) = rest.find("NOW-") {
        out.push_str(&rest[..i]);
        let digits: String = rest[i + 4..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let n: i64 = digits.parse().unwrap();
        out.push_str(&(now - n).to_string());
        rest = &rest[i + 4 + digits.len()..];
    }
    out.push_str(rest);
    out
}

/// A copy of a case folder whose `bin/` scripts are executable.
fn tools(case: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let src = fixture(case);
    std::fs::create_dir(d.path().join("bin")).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), d.path().join(e.file_name())).unwrap();
        }
    }
    for name in ["wg", "ip"] {
        let to = d.path().join("bin").join(name);
        std::fs::copy(src.join("bin").join(name), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    d
}

fn healer(bin: &Path, peers: &[(&str, &str)], stale_after: u32) -> MeshHealer {
    let peers: String = if peers.is_empty() {
        "  peers: []\n".into()
    } else {
        peers
            .iter()
            .map(|(name, key)| {
                format!("    - {{name: {name}, interface: wg0, public_key: '{key}'}}\n")
            })
            .fold("  peers:\n".to_string(), |acc, l| acc + &l)
    };
    let cfg = Config::from_yaml(&format!(
        "
node: {{name: hub}}
mesh:
  stale_after: {stale_after}
  tools: {{ip: {b}/ip, wg: {b}/wg}}
  interfaces: [wg0]
{peers}",
        b = bin.display()
    ))
    .unwrap();
    MeshHealer::new(&cfg)
}

fn mesh(h: &MeshHealer) -> serde_json::Value {
    let mut hb: Heartbeat = serde_json::from_value(serde_json::json!({
        "agent_id": "a", "agent_type": "mesh_healer", "node": "hub",
        "timestamp": "2024-01-01T00:00:00Z"
    }))
    .unwrap();
    h.report(&mut hb);
    hb.metadata["mesh"].clone()
}

/// Case 13, the parser: a never-connected peer, an IPv6 endpoint with a
/// preshared key and two allowed IPs, a link-local endpoint with a zone,
/// keepalive off; handshake ages 40 s / none / 7200 s.
#[test]
fn case13_hub_dump_parses_with_its_handshake_ages() {
    let now = 1_764_500_000;
    let d = parse_dump_at(&hub_dump(now), now).unwrap();
    assert_eq!(
        d.public_key.as_deref(),
        Some("U7g63/B1NpDuj3Z5bE8AfYevBlqjqIdtghIeNQqaylc=")
    );
    assert_eq!(d.listen_port, Some(51820));
    assert_eq!(d.fwmark, None);
    assert_eq!(d.peers.len(), 3);
    let ages: Vec<Option<i64>> = d
        .peers
        .iter()
        .map(|p| p.latest_handshake.map(|h| now - h))
        .collect();
    assert_eq!(ages, [None, Some(40), Some(7200)]);

    let never = d.peer(NEVER).unwrap();
    assert_eq!(never.endpoint, None);
    assert!(!never.preshared_key);
    assert_eq!((never.rx_bytes, never.tx_bytes), (0, 0));
    assert_eq!(never.handshake_unit, None);
    assert_eq!(never.handshake_error, None);

    let v6 = d.peer(V6_PSK).unwrap();
    assert!(v6.preshared_key);
    assert_eq!(v6.endpoint.as_deref(), Some("[2001:db8:41::7]:51820"));
    assert_eq!(v6.allowed_ips, ["10.99.0.3/32", "fd99::3/128"]);
    assert_eq!(v6.persistent_keepalive, Some(25));
    assert_eq!(v6.handshake_unit, Some(HandshakeUnit::UnixSeconds));
    assert_eq!((v6.rx_bytes, v6.tx_bytes), (14_554_000, 252_800_000));

    let ll = d.peer(LINK_LOCAL).unwrap();
    assert_eq!(
        ll.endpoint.as_deref(),
        Some("[fe80::5054:ff:fe12:3456%eth0]:51820")
    );
    assert_eq!(ll.persistent_keepalive, None);
    assert!(!ll.preshared_key);

    // Nothing of the private key or the preshared key survives.
    let shown = format!("{d:?}{}", serde_json::to_string(&d).unwrap());
    assert!(!shown.contains("ME5kpEVTw9uhGUncy3c1dBvCGL4msoe4uhpeDQJjMF0="));
    assert!(!shown.contains("5S6aZaEzEcZxCL9NBU2NCY+zTch81iE5MUqtKETsgQE="));
}

/// Case 13, sensed through its fake `wg` (which stamps now - N at each
/// call) and `ip`: the interface is up, the ages are reported as such.
#[test]
fn case13_hub_is_sensed_with_its_handshake_ages() {
    let dir = tools(HUB);
    let mut h = healer(
        &dir.path().join("bin"),
        &[("road1", NEVER), ("road2", V6_PSK), ("road3", LINK_LOCAL)],
        180,
    );
    let now = Utc::now();
    assert!(h.sense(now).is_empty());
    let m = mesh(&h);
    assert_eq!(m["interfaces"]["wg0"]["state"], "up", "{m}");
    assert_eq!(m["interfaces"]["wg0"]["peers"], 3);
    let age = |p: &str| m["peers"][p]["latest_handshake_age_seconds"].as_f64();
    assert_eq!(age("road1"), None, "{m}");
    // Whole seconds from the script's clock, read a moment after `now`
    // (with its fraction of a second) was taken.
    let a2 = age("road2").unwrap();
    assert!((38.0..41.0).contains(&a2), "{a2}");
    let a3 = age("road3").unwrap();
    assert!((7198.0..7201.0).contains(&a3), "{a3}");
    assert_eq!(m["peers"]["road2"]["rx_bytes"], 14_554_000);
}

/// Case 14, the parser: boringtun's `latest handshake` is seconds ago.
/// 37 s ago, never in 1970; 13.88 MiB received.
#[test]
fn case14_boringtun_handshake_is_seconds_ago() {
    let text = std::fs::read_to_string(fixture(BORINGTUN).join("wg-show-wg0-dump.txt")).unwrap();
    let now = 1_764_500_000;
    let d = parse_dump_at(&text, now).unwrap();
    assert_eq!(d.public_key, None, "boringtun shows no interface key");
    assert_eq!(d.listen_port, Some(58593));
    let phone = d.peer(PHONE).unwrap();
    assert_eq!(phone.latest_handshake_field, 37);
    assert_eq!(phone.latest_handshake, Some(now - 37));
    assert_eq!(phone.handshake_unit, Some(HandshakeUnit::SecondsAgo));
    assert_eq!(phone.handshake_error, None);
    let mib = |b: u64| (b as f64 / 1_048_576.0 * 100.0).round() / 100.0;
    assert_eq!(mib(phone.rx_bytes), 13.88);
    assert_eq!(mib(phone.tx_bytes), 241.09);
    assert_eq!(phone.endpoint.as_deref(), Some("[2001:db8:5::20]:56309"));
    let laptop = d.peer(LAPTOP).unwrap();
    assert_eq!(laptop.latest_handshake, None, "0 stays never");
    assert!(laptop.preshared_key);
}

/// Case 14, sensed through its fake tools: the peer handshook 37 s ago
/// (not 55 years), the interface is up, and it stays so past
/// `stale_after` while boringtun keeps saying 37 s: a working tunnel is
/// not called stale or unreachable, so nothing restarts it.
#[test]
fn case14_boringtun_interface_is_up_with_a_37_s_handshake() {
    let dir = tools(BORINGTUN);
    let mut h = healer(&dir.path().join("bin"), &[("phone", PHONE)], 120);
    let t0 = Utc::now();
    for s in [0, 60, 130, 300, 900] {
        let alerts = h.sense(t0 + Duration::seconds(s));
        assert!(alerts.is_empty(), "at {s} s: {alerts:#?}");
        let m = mesh(&h);
        assert_eq!(m["interfaces"]["wg0"]["state"], "up", "at {s} s: {m}");
        assert_eq!(m["interfaces"]["wg0"]["level"], 0);
        let phone = &m["peers"]["phone"];
        assert_eq!(phone["state"], "healthy", "at {s} s: {m}");
        // 37 whole seconds before `now`, which has a fraction of one.
        let age = phone["latest_handshake_age_seconds"].as_f64().unwrap();
        assert!((37.0..38.0).contains(&age), "at {s} s: {m}");
        assert_eq!(phone["rx_bytes"], 14_554_000);
    }
}

/// The interface alone (no peers configured) is judged on its dump's
/// handshakes: with boringtun's 37 s it is up, not stale.
#[test]
fn case14_interface_without_configured_peers_is_up() {
    let dir = tools(BORINGTUN);
    let mut h = healer(&dir.path().join("bin"), &[], 120);
    let t0 = Utc::now();
    for s in [0, 600] {
        assert!(h.sense(t0 + Duration::seconds(s)).is_empty());
        let m = mesh(&h);
        assert_eq!(m["interfaces"]["wg0"]["state"], "up", "at {s} s: {m}");
    }
}

/// A kernel dump with an impossible handshake (a day ahead of now): the
/// peer is still parsed and its data counted, its handshake unknown, never
/// a negative age.
#[test]
fn an_impossible_handshake_is_not_reported() {
    let dir = tools(BORINGTUN);
    let ahead = Utc::now().timestamp() + 86_400;
    let text = std::fs::read_to_string(dir.path().join("wg-show-wg0-dump.txt")).unwrap();
    std::fs::write(
        dir.path().join("wg-show-wg0-dump.txt"),
        text.replace("\t37\t", &format!("\t{ahead}\t")),
    )
    .unwrap();
    let mut h = healer(&dir.path().join("bin"), &[("phone", PHONE)], 120);
    assert!(h.sense(Utc::now()).is_empty());
    let m = mesh(&h);
    assert!(
        m["peers"]["phone"]["latest_handshake_age_seconds"].is_null(),
        "{m}"
    );
    assert_eq!(m["peers"]["phone"]["rx_bytes"], 14_554_000);
}
