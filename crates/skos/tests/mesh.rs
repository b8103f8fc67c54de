//! The mesh healer end to end: the real `skos up` runs inside network
//! namespace `a` (`ip netns exec`), watching a real WireGuard tunnel
//! (wireguard-go) to namespace `b`, and heals it through the coordinator.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;
use skos_testsupport::netns::{self, WgPair, BACKUP_GW, ENDPOINT_B, PRIMARY_GW};

fn pair(backup: bool) -> Option<WgPair> {
    // Skips, or fails under SKOS_TEST_REQUIRE_ALL=1, without real tunnels.
    skos_testsupport::require::require(
        &skos_testsupport::require::test_name(module_path!()),
        "real WireGuard tunnels",
        skos_testsupport::require::wireguard(),
    )?;
    let p = WgPair::new(backup);
    p.up();
    Some(p)
}

fn config(dir: &Path, p: &WgPair, failover: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    let text = format!(
        "
agent:
  heartbeat_interval: 0.5
  monitor_interval: 0.3
  antibodies: [mesh_healer]
coordinator:
  heartbeat_timeout: 10
  verify_within: 10
  command_deadline: 30
{}",
        p.mesh_section(failover)
    );
    std::fs::write(&path, text).unwrap();
    let check = run({
        let mut c = skos();
        c.args(["config", "check", "--config"]).arg(&path);
        c
    });
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    path
}

/// `skos up` inside namespace `a`, as node `athena`.
fn up_in(p: &WgPair, cfg: &Path, data: &Path, work: &Path) -> Proc {
    let mut c: Command = p.a.command(env!("CARGO_BIN_EXE_skos"));
    c.arg("up")
        .arg("--config")
        .arg(cfg)
        .arg("--data-dir")
        .arg(data)
        .env_remove("NATS_URL")
        .env_remove("SKOS_CONFIG")
        .env_remove("SKOS_DATA_DIR")
        .env_remove("SKOS_SYSFS_ROOT")
        .env_remove("RUST_LOG")
        .env("LOG_LEVEL", "DEBUG")
        .env("NODE_NAME", "athena");
    Proc::spawn(c, work, "skos-up")
}

fn audit(data: &Path) -> Vec<Value> {
    let out = run({
        let mut c = skos();
        c.args(["audit", "tail", "--json", "-n", "100000", "--data-dir"])
            .arg(data);
        c
    });
    json_lines(&out)
}

fn entry(r: &Value) -> &Value {
    &r["entry"]
}

/// The audit records of `event` whose text mentions `needle`.
fn find<'a>(records: &'a [Value], event: &str, needle: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| entry(r)["event_type"] == event && entry(r).to_string().contains(needle))
        .collect()
}

fn verified(records: &[Value], action: &str) -> bool {
    find(records, "verification", &format!(":{action}:"))
        .iter()
        .any(|v| entry(v)["data"]["outcome"] == "succeeded")
}

fn result_of<'a>(records: &'a [Value], action: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| {
            entry(r)["event_type"] == "result"
                && entry(r)["data"]["result"]["action_type"] == action
        })
        .map(|r| &entry(r)["data"]["result"])
        .collect()
}

fn wait_joined(data: &Path) {
    wait_for(Duration::from_secs(30), "athena joined", || {
        find(&audit(data), "node", "athena").first().map(|_| ())
    });
}

fn audit_verifies(data: &Path) {
    let out = run({
        let mut c = skos();
        c.args(["audit", "verify", "--data-dir"]).arg(data);
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn no_secret_in(p: &WgPair, data: &Path, up: &Proc) {
    let audit_text = audit(data).iter().map(Value::to_string).collect::<String>();
    let log = up.log_text();
    for k in [&p.keys_a.private, &p.keys_b.private] {
        assert!(
            !audit_text.contains(k.as_str()),
            "a private key in the audit trail"
        );
        assert!(!log.contains(k.as_str()), "a private key in the log");
    }
}

#[test]
fn killed_wireguard_is_restarted_through_skos_up_and_audited() {
    let Some(p) = pair(false) else { return };
    let work = tempfile::tempdir().unwrap();
    let cfg = config(work.path(), &p, "");
    let data = work.path().join("data");
    let mut up = up_in(&p, &cfg, &data, work.path());
    wait_joined(&data);

    let killed_at = chrono::Utc::now().timestamp();
    assert_eq!(
        netns::kill_wireguard(&p.if_a),
        1,
        "one wireguard-go to kill"
    );
    let records = wait_for(
        Duration::from_secs(40),
        "restart_wireguard verified",
        || {
            let r = audit(&data);
            verified(&r, "restart_wireguard").then_some(r)
        },
    );
    let alert = find(&records, "alert", "tunnel_down")
        .into_iter()
        .map(|r| &entry(r)["data"]["alert"])
        .find(|a| a["severity"] == "critical")
        .expect("tunnel_down alert audited");
    assert_eq!(alert["type"], "mesh");
    assert_eq!(alert["details"]["sensor"], p.if_a.as_str());
    assert!(alert["details"]["reason"].is_string(), "evidence: {alert}");
    assert!(!find(&records, "command", "\"restart_wireguard\"").is_empty());
    let results = result_of(&records, "restart_wireguard");
    assert_eq!(results[0]["status"], "succeeded", "{}", results[0]);
    assert_eq!(results[0]["details"]["method"], "wg-quick");
    assert!(
        find(&records, "command", "\"regenerate_config\"").is_empty(),
        "one step at a time: the restart was enough"
    );
    // The handshake is fresh again: made by the new wireguard-go.
    let h = netns::latest_handshake(&p.a, &p.if_a).expect("a handshake after the restart");
    assert!(
        h >= killed_at - 1,
        "handshake {h} predates the kill at {killed_at}"
    );
    p.traffic_flows(Duration::from_secs(5)).unwrap();
    no_secret_in(&p, &data, &up);
    assert!(up.sigterm().success());
    audit_verifies(&data);
}

#[test]
fn corrupt_config_fails_the_restart_and_is_regenerated() {
    let Some(p) = pair(false) else { return };
    let work = tempfile::tempdir().unwrap();
    let cfg = config(work.path(), &p, "");
    let data = work.path().join("data");
    let mut up = up_in(&p, &cfg, &data, work.path());
    wait_joined(&data);

    let corrupt = p.config_a().replace(&p.keys_a.private, "garbage-not-a-key");
    std::fs::write(p.conf_a(), &corrupt).unwrap();
    assert_eq!(netns::kill_wireguard(&p.if_a), 1);
    let records = wait_for(
        Duration::from_secs(50),
        "regenerate_config verified",
        || {
            let r = audit(&data);
            verified(&r, "regenerate_config").then_some(r)
        },
    );
    let restart = result_of(&records, "restart_wireguard");
    assert_eq!(restart[0]["status"], "failed", "{}", restart[0]);
    let regen = result_of(&records, "regenerate_config");
    assert_eq!(regen[0]["status"], "succeeded", "{}", regen[0]);
    assert!(regen[0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["target"] == p.conf_a().display().to_string()));
    let prev = std::fs::read_to_string(format!("{}.prev", p.conf_a().display())).unwrap();
    assert_eq!(prev, corrupt, "the previous config is kept");
    let new = std::fs::read_to_string(p.conf_a()).unwrap();
    assert!(new.contains(&format!("PublicKey = {}", p.keys_b.public)));
    assert!(netns::latest_handshake(&p.a, &p.if_a).is_some());
    p.traffic_flows(Duration::from_secs(5)).unwrap();
    no_secret_in(&p, &data, &up);
    assert!(up.sigterm().success());
    audit_verifies(&data);
}

/// The failover's `hold_seconds` in the test below, and the most a sense
/// that straddles the primary's return may start before it, in seconds.
const HOLD: f64 = 8.0;
const SLACK: i64 = 3;

#[test]
fn cut_link_fails_the_route_over_and_back_after_the_hold_time() {
    let Some(p) = pair(true) else { return };
    let work = tempfile::tempdir().unwrap();
    let failover = format!(
        "      failover:
        networks: [{ENDPOINT_B}/32]
        primary: {{gateway: {PRIMARY_GW}, dev: pa}}
        backup: {{gateway: {BACKUP_GW}, dev: ba}}
        hold_seconds: {HOLD}
"
    );
    let cfg = config(work.path(), &p, &failover);
    let data = work.path().join("data");
    let mut up = up_in(&p, &cfg, &data, work.path());
    wait_joined(&data);
    assert_eq!(p.endpoint_route(), (PRIMARY_GW.to_string(), "pa".into()));

    // The primary path loses its carrier (b's end goes down).
    p.b.ip(&["link", "set", "pb", "down"]);
    let records = wait_for(Duration::from_secs(90), "failover_route verified", || {
        let r = audit(&data);
        verified(&r, "failover_route").then_some(r)
    });
    let alert = find(&records, "alert", "peer_unreachable")
        .into_iter()
        .map(|r| &entry(r)["data"]["alert"])
        .find(|a| a["severity"] == "critical")
        .expect("peer_unreachable alert audited");
    assert_eq!(alert["details"]["sensor"], "hermes");
    assert_eq!(alert["details"]["probe"]["received"], 0, "{alert}");
    assert!(alert["details"]["probe"]["method"]
        .as_str()
        .unwrap()
        .starts_with("icmp"));
    let ping = result_of(&records, "ping_peer");
    assert_eq!(ping[0]["details"]["resolved"], false, "{}", ping[0]);
    assert!(ping[0]["details"]["peers"]["hermes"]["loss_percent"].is_number());
    let fo = result_of(&records, "failover_route");
    assert_eq!(fo[0]["status"], "succeeded", "{}", fo[0]);
    assert_eq!(p.endpoint_route(), (BACKUP_GW.to_string(), "ba".into()));
    p.traffic_flows(Duration::from_secs(5))
        .expect("traffic flows over the backup path");

    // The primary comes back: routes return after the hold time, not
    // before. The real route is sampled all along.
    let up_at = chrono::Utc::now();
    p.b.ip(&["link", "set", "pb", "up"]);
    let mut samples = Vec::new();
    let records = wait_for(Duration::from_secs(60), "route_restored", || {
        let route = p.endpoint_route();
        samples.push((chrono::Utc::now(), route));
        let r = audit(&data);
        (!find(&r, "alert", "route_restored").is_empty()).then_some(r)
    });
    let restored = find(&records, "alert", "route_restored");
    assert_eq!(restored.len(), 1, "routes switched back once");
    let back = &entry(restored[0])["data"]["alert"];
    assert_eq!(back["severity"], "normal");
    assert_eq!(back["details"]["hold_seconds"], HOLD);
    assert_eq!(back["details"]["primary_check"]["device"], "pa", "{back}");
    assert!(
        back["details"]["primary_check"]["received"].as_u64() > Some(0),
        "switched back on an answering primary: {back}"
    );
    assert_eq!(p.endpoint_route(), (PRIMARY_GW.to_string(), "pa".into()));
    // Lower bounds only, so a slow machine cannot fail them. The primary
    // could not answer before `up_at`, and the agent's hold starts at the
    // start of the sense that first saw it answer, at most one sense
    // (probes of a dead path included) before `up_at`: SLACK covers that.
    let earliest = up_at + chrono::Duration::seconds(HOLD as i64 - SLACK);
    let switched = skos_core::timefmt::parse(back["timestamp"].as_str().unwrap()).unwrap();
    assert!(
        switched >= earliest,
        "routes switched back {} ms after the primary came up; the hold is {HOLD} s",
        (switched - up_at).num_milliseconds()
    );
    let early: Vec<_> = samples
        .iter()
        .filter(|(t, route)| *t < earliest && route.0 != BACKUP_GW)
        .collect();
    assert!(
        early.is_empty(),
        "the route left the backup path during the hold: {early:?}"
    );
    wait_for(
        Duration::from_secs(15),
        "traffic on the primary path",
        || p.traffic_flows(Duration::from_secs(2)).ok(),
    );
    no_secret_in(&p, &data, &up);
    // Probing the dead primary path (every sense while failed over) never
    // held the agent's heartbeats up: the node was never offline, and the
    // cut, the failover and the failback were no flap.
    let records = audit(&data);
    let offline = find(&records, "alert", "heartbeat_missing");
    assert!(offline.is_empty(), "the node went offline: {offline:?}");
    let flapping: Vec<_> = records
        .iter()
        .filter(|r| entry(r)["event_type"] == "flapping")
        .collect();
    assert!(flapping.is_empty(), "{flapping:?}");
    assert!(up.sigterm().success());
    audit_verifies(&data);
}
