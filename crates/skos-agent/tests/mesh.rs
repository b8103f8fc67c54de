//! The mesh healer on real WireGuard tunnels: two network namespaces joined
//! by veth pairs, wireguard-go in each (this kernel has no WireGuard
//! module). The antibody runs on a thread inside namespace `a`.

use std::time::Duration;

use serde_json::Value;
use skos_agent::antibody::{Antibody, Execution, Precondition};
use skos_agent::mesh::probe::{probe, ProbeOpts};
use skos_agent::mesh::wg::parse_dump;
use skos_agent::mesh::MeshHealer;
use skos_agent::Outcome;
use skos_core::config::{Config, ProbeMethod, RestartMethod};
use skos_core::protocol::{Alert, Command, Heartbeat, ResultStatus, Severity};
use skos_testsupport::netns::{self, WgPair, ENDPOINT_B, TUNNEL_B};

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

fn config(p: &WgPair, extra_interface: &str) -> Config {
    let text = format!(
        "
node: {{name: athena}}
agent: {{antibodies: [mesh_healer]}}
mesh:
  stale_after: 3
  settle_seconds: 0
  reconnect_attempts: 2
  reconnect_delay_seconds: 0.2
  command_timeout: 10
  probe: {{count: 2, interval: 0.05, timeout: 0.5}}
  interfaces:
    - name: {if_a}
      config_path: {conf}
      private_key_file: {key}
      address: [10.99.0.1/24]
      listen_port: 51820
{extra_interface}
  peers:
    - name: hermes
      interface: {if_a}
      public_key: '{pub_b}'
      endpoint: {ENDPOINT_B}:51820
      allowed_ips: [{TUNNEL_B}/32]
      persistent_keepalive: 1
      address: {TUNNEL_B}
",
        if_a = p.if_a,
        conf = p.conf_a().display(),
        key = p.key_file_a().display(),
        pub_b = p.keys_b.public,
    );
    Config::from_yaml(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"))
}

fn cmd(action: &str, problem: &str) -> Command {
    serde_json::from_value(serde_json::json!({
        "action_id": format!("t-{action}"), "action_type": action, "parameters": {},
        "timestamp": "2024-01-01T00:00:00Z", "problem": problem,
    }))
    .unwrap()
}

fn run(e: Execution) -> Outcome {
    match e {
        Execution::Done(o) => o,
        Execution::Background(job) => job(),
    }
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
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

/// Sense until an alert for `sensor` comes, or panic.
fn sense_until(h: &mut MeshHealer, sensor: &str, what: &str) -> Alert {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(a) = h
            .sense(now())
            .into_iter()
            .find(|a| a.sensor() == Some(sensor))
        {
            return a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} alert for {sensor}; heartbeat: {}",
            serde_json::to_string(&heartbeat(h).metadata).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn live_dumps_parse_and_probes_answer_through_the_tunnel() {
    let Some(p) = pair(false) else { return };
    for (ns, ifname, peer_key) in [
        (&p.a, &p.if_a, &p.keys_b.public),
        (&p.b, &p.if_b, &p.keys_a.public),
    ] {
        let out = ns.exec(&["wg", "show", ifname, "dump"]);
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let d = parse_dump(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.listen_port, Some(51820));
        assert_eq!(&d.peers[0].public_key, peer_key);
        assert_eq!(d.peers[0].persistent_keepalive, Some(1));
        let h = d.peers[0].latest_handshake.expect("a handshake");
        assert!((now().timestamp() - h).abs() < 30, "handshake {h}");
        assert!(d.peers[0].rx_bytes > 0 && d.peers[0].tx_bytes > 0);
        let shown = format!("{d:?}");
        for k in [&p.keys_a.private, &p.keys_b.private] {
            assert!(!shown.contains(k.as_str()), "private key kept");
        }
    }
    let opts = ProbeOpts {
        method: ProbeMethod::Auto,
        count: 3,
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(800),
        tcp_port: None,
        bind_device: None,
    };
    let tunnel_b = TUNNEL_B.parse().unwrap();
    let r = p.a.run_in(|| probe(tunnel_b, &opts)).unwrap();
    assert!(r.method.starts_with("icmp"), "{r:?}");
    assert_eq!(r.received, 3, "{r:?}");
    assert!(r.rtt_avg_ms.is_some());
    // TCP: a closed port on the peer answers with a reset, which counts.
    let tcp = ProbeOpts {
        method: ProbeMethod::Tcp,
        tcp_port: Some(9),
        ..opts.clone()
    };
    let r = p.a.run_in(|| probe(tunnel_b, &tcp)).unwrap();
    assert_eq!((r.method, r.received, r.port), ("tcp", 3, Some(9)), "{r:?}");
    // An address nobody holds does not answer.
    let nobody = "10.99.0.77".parse().unwrap();
    let r = p.a.run_in(|| probe(nobody, &opts)).unwrap();
    assert_eq!(r.received, 0, "{r:?}");
    assert_eq!(r.loss_percent, 100.0);
}

#[test]
fn killed_tunnel_is_sensed_restarted_and_recovers() {
    let Some(p) = pair(false) else { return };
    let cfg = config(&p, "");
    p.a.run_in(|| {
        let mut h = MeshHealer::new(&cfg);
        // Healthy: nothing to say, levels 0.
        let quiet = h.sense(now());
        assert!(quiet.is_empty(), "{quiet:?}");
        let hb = heartbeat(&h);
        assert_eq!(
            hb.metadata["mesh"]["interfaces"][&p.if_a]["level"], 0,
            "{hb:?}"
        );
        assert_eq!(hb.metadata["mesh"]["peers"]["hermes"]["level"], 0, "{hb:?}");
        assert_eq!(hb.metadata["mesh"]["peers"]["hermes"]["node"], "hermes");
        // The check before acting: a tunnel that is up is no problem.
        let problem = format!("mesh:{}", p.if_a);
        assert!(
            matches!(h.precondition(&problem, 1.0), Precondition::Gone { reading, .. } if reading == 0.0)
        );
        assert_eq!(h.precondition("mesh:nowhere", 1.0), Precondition::Unknown);

        assert_eq!(netns::kill_wireguard(&p.if_a), 1);
        let a = sense_until(&mut h, &p.if_a, "tunnel_down");
        assert_eq!(h.precondition(&problem, 1.0), Precondition::Holds);
        assert_eq!(a.severity, Severity::Critical);
        assert_eq!(a.details["event"], "tunnel_down");
        // Just after the kill the tun device may linger a moment.
        let state = a.details["state"].as_str().unwrap();
        assert!(["missing", "unreadable"].contains(&state), "{a:?}");
        assert_eq!(a.problem().as_str(), format!("mesh:{}", p.if_a));
        // Peers of a dead interface are not blamed.
        let hb = heartbeat(&h);
        assert_eq!(
            hb.metadata["mesh"]["peers"]["hermes"]["state"],
            "interface_down"
        );

        let before = netns::latest_handshake(&p.a, &p.if_a);
        assert_eq!(before, None, "the interface is gone");
        let o = run(h.execute(&cmd("restart_wireguard", &format!("mesh:{}", p.if_a))));
        assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
        assert_eq!(o.details["method"], "wg-quick");
        p.wait_handshake_after(0, Duration::from_secs(15));
        let back = sense_until(&mut h, &p.if_a, "recovery");
        assert_eq!(back.severity, Severity::Normal);
        assert_eq!(back.details["recovered"], Value::Bool(true));
        assert!(matches!(
            h.precondition(&problem, 1.0),
            Precondition::Gone { .. }
        ));
        // Unknown targets are refused: names come from the config only.
        let o = run(h.execute(&cmd("restart_wireguard", "mesh:eth0")));
        assert_eq!(o.status, ResultStatus::Rejected);
        let o = run(h.execute(&cmd("failover_route", "mesh:hermes")));
        assert_eq!(
            o.status,
            ResultStatus::Unsupported,
            "no failover configured"
        );

        // The same through a configured command (argv, no shell).
        let mut by_command = cfg.clone();
        by_command.mesh.interfaces[0].restart = RestartMethod::Command;
        by_command.mesh.interfaces[0].restart_command = vec![
            "wg-quick".into(),
            "up".into(),
            p.conf_a().display().to_string(),
        ];
        let mut h2 = MeshHealer::new(&by_command);
        assert_eq!(netns::kill_wireguard(&p.if_a), 1);
        let o = run(h2.execute(&cmd("restart_wireguard", "mesh:hermes")));
        assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
        assert_eq!(o.details["method"], "command");
        assert_eq!(
            o.details["interface"],
            p.if_a.as_str(),
            "a peer maps to its interface"
        );
    });
    p.traffic_flows(Duration::from_secs(5)).unwrap();
}

#[test]
fn corrupt_config_is_regenerated_from_the_template_keeping_the_previous() {
    let Some(p) = pair(false) else { return };
    let bad_template = p.dir.path().join("bad.tmpl");
    std::fs::write(
        &bad_template,
        "[Interface]\nPrivateKey = {{private_key}}\n{{oops}}\n",
    )
    .unwrap();
    let cfg = config(&p, "");
    let conf = p.conf_a();
    let corrupt = p.config_a().replace(&p.keys_a.private, "this-is-not-a-key");
    std::fs::write(&conf, &corrupt).unwrap();
    netns::kill_wireguard(&p.if_a);
    p.a.run_in(|| {
        let mut h = MeshHealer::new(&cfg);
        let problem = format!("mesh:{}", p.if_a);
        let o = run(h.execute(&cmd("restart_wireguard", &problem)));
        assert_eq!(o.status, ResultStatus::Failed, "{o:?}");
        assert_eq!(o.details["attempts"], 2);
        for k in [&p.keys_a.private, &p.keys_b.private] {
            assert!(!format!("{o:?}").contains(k.as_str()), "key in {o:?}");
        }

        // A template that does not render changes nothing.
        let mut bad = cfg.clone();
        bad.mesh.interfaces[0].template = Some(bad_template.clone());
        let mut hb = MeshHealer::new(&bad);
        let o = run(hb.execute(&cmd("regenerate_config", &problem)));
        assert_eq!(o.status, ResultStatus::Failed, "{o:?}");
        assert!(o.message.contains("unknown placeholder"), "{}", o.message);
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), corrupt);

        let o = run(h.execute(&cmd("regenerate_config", &problem)));
        assert_eq!(o.status, ResultStatus::Succeeded, "{o:?}");
        assert!(!format!("{o:?}").contains(p.keys_a.private.as_str()));
    });
    let prev = std::fs::read_to_string(format!("{}.prev", conf.display())).unwrap();
    assert_eq!(prev, corrupt, "the previous config is kept");
    let new = std::fs::read_to_string(&conf).unwrap();
    assert!(new.contains(&format!("PrivateKey = {}", p.keys_a.private)));
    assert!(new.contains(&format!("PublicKey = {}", p.keys_b.public)));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&conf).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    p.wait_handshake_after(0, Duration::from_secs(15));
    p.traffic_flows(Duration::from_secs(5)).unwrap();
}

/// `config` probing with windows of `count` probes `interval` s apart,
/// each waited for `timeout` s, back to back or not.
fn config_probing(
    p: &WgPair,
    count: u32,
    interval: f64,
    timeout: f64,
    back_to_back: bool,
) -> Config {
    let mut cfg = config(p, "");
    cfg.mesh.probe.count = count;
    cfg.mesh.probe.interval = interval;
    cfg.mesh.probe.timeout = timeout;
    cfg.mesh.probe.back_to_back = back_to_back;
    cfg
}

/// The agent loop's way: sense (links asked, a probe window asked), then
/// judge whatever arrived.
fn loop_until(h: &mut MeshHealer, sensor: &str, what: &str, sensing: bool) -> Alert {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let alerts = if sensing {
            Antibody::sense(h, now())
        } else {
            Antibody::judge(h, now())
        };
        if let Some(a) = alerts
            .into_iter()
            .find(|a| a.sensor() == Some(sensor) && a.details["event"] == what)
        {
            return a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} alert for {sensor}; heartbeat: {}",
            serde_json::to_string(&heartbeat(h).metadata).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A probe window waiting out a dead peer (here 60 s) never delays the
/// next look at the links: the tunnel going down is seen while that window
/// still waits.
#[test]
fn a_dead_peers_probe_window_never_delays_seeing_the_tunnel_go_down() {
    let Some(p) = pair(false) else { return };
    let cfg = config_probing(&p, 1, 0.05, 60.0, false);
    p.b.ip(&["link", "set", "pb", "down"]);
    p.a.run_in(|| {
        let mut h = MeshHealer::new(&cfg);
        Antibody::sense(&mut h, now());
        assert_eq!(netns::kill_wireguard(&p.if_a), 1);
        let a = loop_until(&mut h, &p.if_a, "tunnel_down", true);
        assert_eq!(a.details["event"], "tunnel_down");
        let hb = heartbeat(&h);
        assert_eq!(
            hb.metadata["mesh"]["peers"]["hermes"]["loss_percent"],
            Value::Null,
            "the window is still waiting: {hb:?}"
        );
    });
    p.b.ip(&["link", "set", "pb", "up"]);
}

/// With `probe.back_to_back`, windows follow one another without the
/// monitor schedule: after one look, a peer cut off is found unreachable
/// by judging what arrives, no further look asked.
#[test]
fn back_to_back_probes_find_a_cut_peer_without_waiting_for_the_next_look() {
    let Some(p) = pair(false) else { return };
    let cfg = config_probing(&p, 2, 0.05, 0.3, true);
    p.a.run_in(|| {
        let mut h = MeshHealer::new(&cfg);
        let quiet = Antibody::sense(&mut h, now());
        assert!(quiet.is_empty(), "{quiet:?}");
        // A window judged healthy first.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            Antibody::judge(&mut h, now());
            let hb = heartbeat(&h);
            if hb.metadata["mesh"]["peers"]["hermes"]["loss_percent"] == 0.0 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{hb:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        // A command discards the window in progress (it shows the mesh
        // from before the command): the next starts all the same.
        let o = run(Antibody::execute(
            &mut h,
            &cmd("failover_route", "mesh:hermes"),
        ));
        assert_eq!(o.status, ResultStatus::Unsupported, "{o:?}");
        p.b.ip(&["link", "set", "pb", "down"]);
        // A window that straddles the cut lost some: degraded on the way.
        let a = loop_until(&mut h, "hermes", "peer_unreachable", false);
        assert_eq!(a.details["event"], "peer_unreachable");
        assert_eq!(a.details["probe"]["received"], 0, "{a:?}");
    });
    p.b.ip(&["link", "set", "pb", "up"]);
}

/// A link change is heard from the kernel and looked at at once: after
/// one look, the tunnel killed is seen by judging what arrives, no
/// further look asked.
#[test]
fn a_tunnel_going_down_is_heard_without_waiting_for_the_next_look() {
    let Some(p) = pair(false) else { return };
    let cfg = config(&p, "");
    p.a.run_in(|| {
        let mut h = MeshHealer::new(&cfg);
        let quiet = Antibody::sense(&mut h, now());
        assert!(quiet.is_empty(), "{quiet:?}");
        assert_eq!(netns::kill_wireguard(&p.if_a), 1);
        let a = loop_until(&mut h, &p.if_a, "tunnel_down", false);
        assert_eq!(a.details["event"], "tunnel_down");
    });
}

/// ICMP echo requests `ns` has received (`/proc/net/snmp`, `Icmp:
/// InEchos`).
fn echoes_received(ns: &netns::Netns) -> u64 {
    let out = ns.exec(&["cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut icmp = text.lines().filter(|l| l.starts_with("Icmp: "));
    let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "InEchos")
        .unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// Back to back, a window whose probes are all answered at once still
/// lasts its span (`(count − 1) × interval + timeout`): a window of one
/// probe answered in well under a millisecond is not followed by the next
/// at once, a flood of probes at the peer, however fast the agent loop
/// judges what arrives.
#[test]
fn back_to_back_windows_answered_at_once_are_no_flood() {
    let Some(p) = pair(false) else { return };
    let cfg = config_probing(&p, 1, 0.0, 0.5, true);
    let before = echoes_received(&p.b);
    p.a.run_in(|| {
        let mut h = MeshHealer::new(&cfg);
        Antibody::sense(&mut h, now());
        let arrivals = Antibody::arrivals(&h).expect("the mesh healer's arrivals");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        // The agent loop's way: judge whatever arrives, as it arrives.
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_millis(100), arrivals.notified()).await;
            });
            Antibody::judge(&mut h, now());
        }
        let hb = heartbeat(&h);
        assert_eq!(
            hb.metadata["mesh"]["peers"]["hermes"]["loss_percent"], 0.0,
            "{hb:?}"
        );
    });
    // 2 s of windows of one probe, each lasting 0.5 s: 4, and one more
    // in progress (and the look's own).
    let sent = echoes_received(&p.b) - before;
    assert!((1..=6).contains(&sent), "{sent} probes in 2 s");
}
