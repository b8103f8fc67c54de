//! Only the coordinator can order a node to act: signed commands, checked
//! by the agent, against a real nats-server.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::{json, Value};
use skos_bus::trust::{Signer, COMMAND_CONTEXT, HEADER_CONTEXT, HEADER_SIGNATURE, HEADER_SIGNER};
use skos_bus::{Bus, NatsBus, NatsOptions};
use skos_testsupport::cpufreq::{fake_cpufreq, read_khz};
use skos_testsupport::nats::NatsServer;
use skos_testsupport::sysfs::FakeSysfs;

const MAX: u64 = 3_600_000;

fn agent(nats: &NatsServer, cfg: &Path, work: &Path, sys: &Path, name: &str) -> Proc {
    let mut c = skos();
    c.arg("agent")
        .arg("--config")
        .arg(cfg)
        .arg("--data-dir")
        .arg(work.join("agent-state"))
        .env("NATS_URL", nats.url())
        .env("NODE_NAME", "nova")
        .env("SKOS_SYSFS_ROOT", sys);
    Proc::spawn(c, work, name)
}

fn command(id: &str, action: &str, node: &str, deadline_in: i64) -> Bytes {
    command_with(id, action, node, deadline_in, json!({}))
}

fn command_with(id: &str, action: &str, node: &str, deadline_in: i64, parameters: Value) -> Bytes {
    let now = chrono::Utc::now();
    Bytes::from(
        serde_json::to_vec(&json!({
            "action_id": id,
            "action_type": action,
            "parameters": parameters,
            "timestamp": now.to_rfc3339(),
            "node": node,
            "deadline": (now + chrono::Duration::seconds(deadline_in)).to_rfc3339(),
        }))
        .unwrap(),
    )
}

/// The headers of a command for nova signed as the coordinator signs it.
fn signed(s: &Signer, payload: &Bytes) -> Vec<(String, String)> {
    signed_for(s, "nova", payload)
}

/// Signed as a command for `node` (on its subject).
fn signed_for(s: &Signer, node: &str, payload: &Bytes) -> Vec<(String, String)> {
    s.sign_command(&format!("skos.command.{node}"), node, payload)
        .unwrap()
}

/// The results the coordinator audited.
fn audited(nats: &NatsServer) -> Vec<Value> {
    let out = run({
        let mut c = skos();
        c.args(["audit", "tail", "--json", "-n", "100000"])
            .env("NATS_URL", nats.url());
        c
    });
    audit_events(&json_lines(&out), "result")
        .into_iter()
        .map(|r| r["entry"]["data"]["result"].clone())
        .collect()
}

/// The results the agent published, as the results stream keeps them. (The
/// coordinator audits one by one only the first ten a minute of those that
/// answer no command it sent, so its trail does not show them all.)
fn published(nats: &NatsServer) -> Vec<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        // Not there until the coordinator has made it.
        let Ok(mut stream) = js.get_stream(skos_bus::subjects::STREAM_RESULTS).await else {
            return Vec::new();
        };
        let state = stream.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        for seq in state.first_sequence..=state.last_sequence {
            if let Ok(m) = stream.get_raw_message(seq).await {
                out.push(serde_json::from_slice(&m.payload).unwrap());
            }
        }
        out
    })
}

/// Where results are read from: [`audited`] or [`published`].
type Results = fn(&NatsServer) -> Vec<Value>;

/// `status: message` of each result for `id` in `results`.
fn status_of(results: Results, nats: &NatsServer, id: &str) -> Vec<String> {
    results(nats)
        .iter()
        .filter(|r| r["action_id"] == id)
        .map(|r| {
            format!(
                "{}: {}",
                r["status"].as_str().unwrap_or("?"),
                r["message"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn wait_status(results: Results, nats: &NatsServer, id: &str, want: &str) -> String {
    wait_for(
        Duration::from_secs(20),
        &format!("{id} answered {want}"),
        || {
            status_of(results, nats, id)
                .into_iter()
                .find(|s| s.starts_with(want))
        },
    )
}

#[test]
fn forged_unsigned_expired_replayed_and_misaddressed_commands_are_refused() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    sys.coretemp(50.0, &[]);
    fake_cpufreq(sys.root(), 2, 800_000, MAX);
    let cfg = fast_config(work.path(), &trust_section(work.path()));
    let key = Signer::from_seed_file(&work.path().join("coordinator.nk")).unwrap();
    let stranger = Signer::ephemeral();
    let _coord = Proc::spawn(
        {
            let mut c = skos();
            c.arg("coordinator")
                .arg("--config")
                .arg(&cfg)
                .env("NATS_URL", nats.url());
            c
        },
        work.path(),
        "coordinator",
    );
    let mut a = agent(&nats, &cfg, work.path(), sys.root(), "agent-1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bus = Bus::Nats(
        rt.block_on(NatsBus::connect(&NatsOptions::new(nats.url(), "attacker")))
            .unwrap(),
    );
    let send = |payload: &Bytes, headers: Vec<(String, String)>| {
        rt.block_on(bus.publish_raw_with_headers("skos.command.nova", payload.clone(), &headers))
            .unwrap();
    };
    wait_for(Duration::from_secs(20), "agent heartbeating", || {
        a.log_text().contains("agent started").then_some(())
    });

    let forged = command("forged-1", "throttle_100", "nova", 60);
    send(&forged, signed(&stranger, &forged));
    assert!(wait_status(published, &nats, "forged-1", "rejected").contains("unknown key"));

    let unsigned = command("unsigned-1", "throttle_100", "nova", 60);
    send(&unsigned, vec![]);
    assert!(wait_status(published, &nats, "unsigned-1", "rejected").contains("unsigned"));

    // Signed by the right key, but the payload was changed after signing.
    let original = command("tampered-1", "throttle_10", "nova", 60);
    let headers = signed(&key, &original);
    let tampered = Bytes::from(
        String::from_utf8(original.to_vec())
            .unwrap()
            .replace("throttle_10", "throttle_100"),
    );
    send(&tampered, headers);
    assert!(wait_status(published, &nats, "tampered-1", "rejected").contains("bad signature"));

    // The right key's signature over the bare payload: what an nkey
    // login gives a hostile server that chose the payload as its nonce.
    let oracle = command("oracle-1", "throttle_100", "nova", 60);
    let (who, bare) = key.sign(&oracle).unwrap();
    send(
        &oracle,
        vec![
            (HEADER_SIGNER.into(), who.clone()),
            (HEADER_SIGNATURE.into(), bare.clone()),
        ],
    );
    assert!(wait_status(published, &nats, "oracle-1", "rejected").contains("not for a command"));
    let oracle = command("oracle-2", "throttle_100", "nova", 60);
    let (_, bare) = key.sign(&oracle).unwrap();
    send(
        &oracle,
        vec![
            (HEADER_SIGNER.into(), who),
            (HEADER_SIGNATURE.into(), bare),
            (HEADER_CONTEXT.into(), COMMAND_CONTEXT.into()),
        ],
    );
    assert!(wait_status(published, &nats, "oracle-2", "rejected").contains("bad signature"));

    // A command signed for lyra, relabelled for nova.
    let relabelled = command("relabelled-1", "throttle_100", "nova", 60);
    send(&relabelled, signed_for(&key, "lyra", &relabelled));
    assert!(wait_status(published, &nats, "relabelled-1", "rejected").contains("bad signature"));

    // Signed, but for no node in particular, or to be kept for ten years.
    let mut anywhere: Value =
        serde_json::from_slice(&command("anywhere-1", "throttle_100", "nova", 60)).unwrap();
    anywhere.as_object_mut().unwrap().remove("node");
    let anywhere = Bytes::from(serde_json::to_vec(&anywhere).unwrap());
    send(&anywhere, signed(&key, &anywhere));
    assert!(wait_status(published, &nats, "anywhere-1", "rejected").contains("names no node"));
    let mut forever: Value =
        serde_json::from_slice(&command("forever-1", "throttle_100", "nova", 60)).unwrap();
    forever.as_object_mut().unwrap().remove("deadline");
    let forever = Bytes::from(serde_json::to_vec(&forever).unwrap());
    send(&forever, signed(&key, &forever));
    assert!(wait_status(published, &nats, "forever-1", "rejected").contains("no deadline"));
    let kept = command("kept-1", "throttle_100", "nova", 10 * 365 * 86_400);
    send(&kept, signed(&key, &kept));
    assert!(wait_status(published, &nats, "kept-1", "rejected").contains("max_deadline_seconds"));

    let expired = command("expired-1", "throttle_100", "nova", -5);
    send(&expired, signed(&key, &expired));
    wait_status(published, &nats, "expired-1", "expired");

    let elsewhere = command("elsewhere-1", "throttle_100", "lyra", 60);
    send(&elsewhere, signed(&key, &elsewhere));
    assert!(wait_status(published, &nats, "elsewhere-1", "rejected").contains("another node"));

    // Signed, well formed, but an action this build does not know (a
    // newer coordinator's, say): unsupported, not rejected (a rejection
    // would count against the breaker); a throttle level the catalogue
    // does not declare is no throttle either. Parameters the catalogue
    // cannot check (it has no entry for the action) do not turn that into
    // a rejection for invalid parameters.
    let unknown = [
        ("future-1", "defragment_disk", json!({})),
        ("odd-level-1", "throttle_37", json!({})),
        ("future-params-1", "defragment_disk", json!({"x": 1})),
    ];
    for (id, action, parameters) in &unknown {
        let cmd = command_with(id, action, "nova", 60, parameters.clone());
        send(&cmd, signed(&key, &cmd));
        wait_status(published, &nats, id, "unsupported");
    }

    // Nothing changed on the node.
    assert_eq!(
        read_khz(sys.root(), 0),
        MAX,
        "a refused command changed the machine"
    );

    // A correctly signed command runs.
    let good = command("good-1", "throttle_50", "nova", 120);
    let good_headers = signed(&key, &good);
    send(&good, good_headers.clone());
    wait_status(published, &nats, "good-1", "succeeded");
    assert_eq!(read_khz(sys.root(), 0), MAX / 2);

    // good-1 was sent after every unknown action and the agent answers its
    // commands in stream order, so their results are all audited by now:
    // exactly one each, unsupported because no antibody implements it.
    for (id, action, _) in &unknown {
        let answers = status_of(published, &nats, id);
        assert_eq!(
            answers,
            vec![format!(
                "unsupported: no enabled antibody on nova implements {action}"
            )],
            "{id}"
        );
    }

    // Delivered again, it is not executed twice: the agent answers with the
    // recorded outcome (the same result, which the stream stores once),
    // also after the agent restarts.
    let reset = command("reset-1", "reset_throttle", "nova", 120);
    send(&reset, signed(&key, &reset));
    wait_status(published, &nats, "reset-1", "succeeded");
    assert_eq!(read_khz(sys.root(), 0), MAX);
    const REPLAYED: &str = "answered with its recorded outcome";
    send(&good, good_headers.clone());
    wait_for(
        Duration::from_secs(20),
        "replay answered from the record",
        || a.log_text().contains(REPLAYED).then_some(()),
    );
    a.sigkill();
    let a2 = agent(&nats, &cfg, work.path(), sys.root(), "agent-2");
    // The stream delivers nothing new; send the replay once more.
    std::thread::sleep(Duration::from_millis(500));
    send(&good, good_headers);
    wait_for(
        Duration::from_secs(20),
        "replay answered from the record after restart",
        || a2.log_text().contains(REPLAYED).then_some(()),
    );
    let statuses = status_of(published, &nats, "good-1");
    assert!(
        !statuses.is_empty() && statuses.iter().all(|s| s.starts_with("succeeded")),
        "good-1 answered once, as it ran: {statuses:?}"
    );
    assert_eq!(
        read_khz(sys.root(), 0),
        MAX,
        "a replayed command changed the machine"
    );
}

#[test]
fn secret_files_readable_by_others_are_reported() {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("nova.nk");
    let (seed, _) = Signer::generate().unwrap();
    std::fs::write(&key, format!("{seed}\n")).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = work.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!("nats:\n  nkey_seed_file: {}\n", key.display()),
    )
    .unwrap();
    let out = run({
        let mut c = skos();
        c.args(["status", "--config"])
            .arg(&cfg)
            .env("NATS_URL", "nats://127.0.0.1:9");
        c
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("readable by group or others"), "{stderr}");
    assert!(!stderr.contains(&seed), "the seed itself is never printed");
    // `skos keys generate` writes 600.
    let fresh = work.path().join("fresh.nk");
    let out = run({
        let mut c = skos();
        c.args(["keys", "generate", "--out"]).arg(&fresh);
        c
    });
    assert!(out.status.success());
    assert_eq!(
        std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // It refuses to overwrite without --force.
    let again = run({
        let mut c = skos();
        c.args(["keys", "generate", "--out"]).arg(&fresh);
        c
    });
    assert!(!again.status.success());
}

#[test]
fn a_coordinator_whose_signing_key_is_its_nats_login_key_refuses_to_start() {
    let work = tempfile::tempdir().unwrap();
    let trust = trust_section(work.path());
    let key = work.path().join("coordinator.nk");
    let cfg = work.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!("nats:\n  nkey_seed_file: {}\n{trust}", key.display()),
    )
    .unwrap();
    // Refused before it connects: no server is needed (nor reached).
    let out = run({
        let mut c = skos();
        c.arg("coordinator")
            .arg("--config")
            .arg(&cfg)
            .env("NATS_URL", "nats://127.0.0.1:1");
        c
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("trust.signing_key_file")
            && stderr.contains("same key as the NATS login key")
            && stderr.contains(&key.display().to_string()),
        "{stderr}"
    );
}

#[test]
fn fleet_nats_config_writes_a_signing_key_apart_from_every_login_key() {
    let work = tempfile::tempdir().unwrap();
    let keys = work.path().join("keys");
    let out = run({
        let mut c = skos();
        c.args(["fleet", "nats-config", "--nodes", "nova,lyra", "--out"])
            .arg(&keys);
        c
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let signing = Signer::from_seed_file(&keys.join("coordinator-signing.nk")).unwrap();
    assert!(
        stderr.contains(&format!(
            "trust.coordinator_keys: [{}]",
            signing.public_key()
        )),
        "{stderr}"
    );
    let logins: Vec<std::path::PathBuf> = ["coordinator.nk", "operator.nk", "nova.nk", "lyra.nk"]
        .iter()
        .map(|f| keys.join(f))
        .collect();
    let logins: Vec<&Path> = logins.iter().map(|p| p.as_path()).collect();
    assert!(
        skos_bus::trust::key_conflicts(Some(&signing), &logins, &[signing.public_key()])
            .unwrap()
            .is_empty()
    );
    let config = String::from_utf8_lossy(&out.stdout);
    assert!(
        !config.contains(&signing.public_key()),
        "the signing key must not be a NATS user: {config}"
    );
    // Each node has a signing key of its own, apart from every login key,
    // listed for the coordinator's trust.node_keys.
    let node_keys: Vec<Signer> = ["nova", "lyra"]
        .iter()
        .map(|n| Signer::from_seed_file(&keys.join("node-keys").join(format!("{n}.nk"))).unwrap())
        .collect();
    assert!(
        stderr.contains(&format!(
            "trust.node_keys: {{\"nova\": {}, \"lyra\": {}}}",
            node_keys[0].public_key(),
            node_keys[1].public_key()
        )),
        "{stderr}"
    );
    for k in &node_keys {
        assert!(skos_bus::trust::node_key_conflicts(k, &logins)
            .unwrap()
            .is_empty());
        assert!(
            !config.contains(&k.public_key()),
            "a node key is a NATS user: {config}"
        );
    }
    // A node key that is its login key is found.
    let login = Signer::from_seed_file(&keys.join("nova.nk")).unwrap();
    assert_eq!(
        skos_bus::trust::node_key_conflicts(&login, &logins).unwrap()[0].key,
        "trust.node_key_file"
    );

    // Run again: nothing is replaced without --force (agents already
    // trust the signing key), and a node may not take the name of the
    // coordinator's key files.
    let again = |nodes: &str, force: bool| {
        run({
            let mut c = skos();
            c.args(["fleet", "nats-config", "--nodes", nodes, "--out"])
                .arg(&keys);
            if force {
                c.arg("--force");
            }
            c
        })
    };
    let out = again("nova,lyra,athena", false);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert!(!keys.join("athena.nk").exists(), "nothing written");
    assert_eq!(
        Signer::from_seed_file(&keys.join("coordinator-signing.nk"))
            .unwrap()
            .public_key(),
        signing.public_key()
    );
    for bad in ["coordinator-signing", "coordinator", "operator"] {
        let out = again(&format!("nova,{bad}"), true);
        assert!(!out.status.success(), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("coordinator's own key file"),
            "{bad}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Nor one whose name would need quoting in the server config.
    for bad in ["a\",\">", "a#b", "a{b"] {
        let out = again(&format!("nova,{bad}"), true);
        assert!(!out.status.success(), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not written into a server config"),
            "{bad}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(again("nova,lyra,athena", true).status.success());
    assert_ne!(
        Signer::from_seed_file(&keys.join("coordinator-signing.nk"))
            .unwrap()
            .public_key(),
        signing.public_key(),
        "replaced with --force"
    );
}

#[test]
fn a_login_key_trusted_as_a_coordinator_key_is_refused_everywhere() {
    let work = tempfile::tempdir().unwrap();
    let trust = trust_section(work.path());
    let key = work.path().join("coordinator.nk");
    let signing_public = Signer::from_seed_file(&key).unwrap().public_key();
    // The old advice: the login key also signs. Through a creds file
    // whose note line starts like a seed.
    let login = Signer::from_seed_file(&key).unwrap();
    let creds = work.path().join("coordinator.creds");
    std::fs::write(
        &creds,
        format!(
            "SUPPORT: ops\n-----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            std::fs::read_to_string(&key).unwrap().trim()
        ),
    )
    .unwrap();
    assert_eq!(login.public_key(), signing_public);
    let check = |yaml: String| {
        let cfg = work.path().join("check.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        run({
            let mut c = skos();
            c.args(["config", "check", "--config"]).arg(&cfg);
            c
        })
    };
    let out = check(format!("nats:\n  creds_file: {}\n{trust}", creds.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("trust.signing_key_file"), "{text}");
    assert!(text.contains("trust.coordinator_keys"), "{text}");

    // An agent whose own login key is among the keys it trusts (an old
    // signing key kept while rotating) refuses to start, before it
    // connects.
    let agent_cfg = work.path().join("agent.yaml");
    std::fs::write(
        &agent_cfg,
        format!(
            "nats:\n  nkey_seed_file: {}\ntrust:\n  coordinator_keys: [{signing_public}]\n",
            key.display()
        ),
    )
    .unwrap();
    let out = run({
        let mut c = skos();
        c.arg("agent")
            .arg("--config")
            .arg(&agent_cfg)
            .arg("--data-dir")
            .arg(work.path().join("agent-data"))
            .env("NATS_URL", "nats://127.0.0.1:1")
            .env("NODE_NAME", "nova");
        c
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("trust.coordinator_keys") && stderr.contains("never be trusted"),
        "{stderr}"
    );

    // Nor may a node sign its messages with its login key: config check
    // says so, and the agent refuses to start, before it connects.
    let agent_cfg = work.path().join("agent-node-key.yaml");
    std::fs::write(
        &agent_cfg,
        format!(
            "nats:\n  nkey_seed_file: {}\ntrust:\n  node_key_file: {}\n",
            key.display(),
            key.display()
        ),
    )
    .unwrap();
    let out = run({
        let mut c = skos();
        c.args(["config", "check", "--config"]).arg(&agent_cfg);
        c
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("trust.node_key_file"), "{text}");
    let out = run({
        let mut c = skos();
        c.arg("agent")
            .arg("--config")
            .arg(&agent_cfg)
            .arg("--data-dir")
            .arg(work.path().join("agent-data"))
            .env("NATS_URL", "nats://127.0.0.1:1")
            .env("NODE_NAME", "nova");
        c
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("trust.node_key_file") && stderr.contains("login key"),
        "{stderr}"
    );
}

#[test]
fn nats_credentials_in_the_url_never_reach_logs_or_errors() {
    let work = tempfile::tempdir().unwrap();
    // A one-shot command: its error names the server, not the password.
    let out = run({
        let mut c = skos();
        c.arg("status")
            .env("NATS_URL", "nats://ops:hunter2@127.0.0.1:1");
        c
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("nats://127.0.0.1:1"), "{stderr}");
    assert!(
        !stderr.contains("hunter2") && !stderr.contains("ops:"),
        "{stderr}"
    );
    // A long-running one logs its retries the same way.
    let mut agent = Proc::spawn(
        {
            let mut c = skos();
            c.arg("agent")
                .arg("--data-dir")
                .arg(work.path().join("agent"))
                .env("NATS_URL", "nats://t0k3n@127.0.0.1:1")
                .env("NODE_NAME", "nova");
            c
        },
        work.path(),
        "agent",
    );
    let log = wait_for(Duration::from_secs(20), "a retry logged", || {
        let log = agent.log_text();
        log.contains("NATS not reachable yet").then_some(log)
    });
    agent.sigkill();
    assert!(log.contains("nats://127.0.0.1:1"), "{log}");
    assert!(!log.contains("t0k3n"), "{log}");
}

/// A node cannot raise (nor clear) one of the coordinator's own problems:
/// a `heartbeat_missing` or `mesh:node` alert published on a node's subject
/// without a trusted coordinator's signature is refused and audited, and
/// never opens; the coordinator's own (signed) alerts still are taken.
#[test]
fn a_coordinators_own_alert_from_anyone_else_is_refused() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = fast_config(work.path(), &trust_section(work.path()));
    let sys = FakeSysfs::new();
    sys.coretemp(50.0, &[48.0]);
    let _coordinator = coordinator(&nats, &cfg, work.path(), "coordinator");
    let _agent = agent(&nats, &cfg, work.path(), sys.root(), "agent-nova");
    wait_for(Duration::from_secs(30), "nova joined", || {
        status(&nats).filter(|s| node(s, "nova").is_some())
    });
    let forged = |kind: &str, sensor: &str, id: &str| -> skos_core::protocol::Alert {
        serde_json::from_value(json!({
            "alert_id": id, "agent_id": "coordinator", "type": kind,
            "severity": "critical", "node": "nova", "message": "forged",
            "details": {"sensor": sensor, "event": "node_unreachable"},
            "timestamp": skos_core::timefmt::format(&chrono::Utc::now()),
        }))
        .unwrap()
    };
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let bus = NatsBus::connect(&NatsOptions::new(nats.url(), "stranger"))
            .await
            .unwrap();
        let bus = Bus::Nats(bus);
        bus.publish_alert(&forged("heartbeat_missing", "heartbeat", "forged-1"))
            .await
            .unwrap();
        bus.publish_alert(&forged("mesh", "node", "forged-2"))
            .await
            .unwrap();
    });
    let records = wait_for(Duration::from_secs(30), "both refusals audited", || {
        let r = audit(&nats);
        let refused = audit_events(&r, "rejected")
            .into_iter()
            .filter(|e| {
                e["entry"]["summary"]
                    .as_str()
                    .is_some_and(|s| s.contains("not signed by a trusted coordinator key"))
            })
            .count();
        (refused == 2).then_some(r)
    });
    assert!(
        !records.iter().any(|r| r["entry"]["event_type"] == "alert"
            && r["entry"]["data"]["alert"]["alert_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("forged"))),
        "a forged coordinator alert was handled"
    );
    let s = status(&nats).unwrap();
    assert_eq!(s["open_alerts"], json!([]), "{s}");
}

/// The coordinator's own `heartbeat_missing` alert has a predictable id
/// (`coord-<node>-heartbeat_missing-critical-<ms of the node's last
/// heartbeat>`), and the alert id is the JetStream message id. A stranger
/// who sees the heartbeats (any client of an open server) publishes, for
/// each, an ordinary unsigned alert (`thermal`, normal) under that id. It
/// is refused (an unsigned alert may not take a coordinator's id), and the
/// coordinator's own signed alert is stored under an id that also holds
/// its signature, so the server never drops it as a duplicate: the node's
/// silence is raised.
#[test]
fn a_stranger_cannot_preempt_the_coordinators_own_offline_alert_by_its_id() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = fast_config(work.path(), &trust_section(work.path()));
    let sys = FakeSysfs::new();
    sys.coretemp(50.0, &[48.0]);
    let _coordinator = coordinator(&nats, &cfg, work.path(), "coordinator");
    let mut nova = agent(&nats, &cfg, work.path(), sys.root(), "agent-nova");
    wait_for(Duration::from_secs(30), "nova joined", || {
        status(&nats).filter(|s| node(s, "nova").is_some())
    });
    let url = nats.url();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move {
                use futures::StreamExt;
                let bus = NatsBus::connect(&NatsOptions::new(url, "stranger"))
                    .await
                    .unwrap();
                let mut hbs = bus
                    .client()
                    .subscribe("skos.heartbeat.nova".to_string())
                    .await
                    .unwrap();
                let bus = Bus::Nats(bus);
                let mut sent = 0;
                while let Some(m) = hbs.next().await {
                    let Ok(hb) =
                        serde_json::from_slice::<skos_core::protocol::Heartbeat>(&m.payload)
                    else {
                        continue;
                    };
                    let id = format!(
                        "coord-nova-heartbeat_missing-critical-{}",
                        hb.timestamp.timestamp_millis()
                    );
                    let forged: skos_core::protocol::Alert = serde_json::from_value(json!({
                        "alert_id": id, "agent_id": "stranger", "type": "thermal",
                        "severity": "normal", "node": "nova", "message": "nothing to see",
                        "details": {"sensor": "nothing"},
                        "timestamp": skos_core::timefmt::format(&chrono::Utc::now()),
                    }))
                    .unwrap();
                    bus.publish_alert(&forged).await.unwrap();
                    sent += 1;
                    if sent == 3 {
                        let _ = ready_tx.send(());
                    }
                }
            })
    });
    ready_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    // The node dies.
    nova.sigkill();
    // heartbeat_timeout is 2 s: the coordinator finds it silent within a
    // few seconds.
    let raised = (0..75).any(|_| {
        std::thread::sleep(Duration::from_millis(200));
        audit_events(&audit(&nats), "alert").iter().any(|a| {
            let a = &a["entry"]["data"]["alert"];
            a["type"] == "heartbeat_missing" && a["node"] == "nova" && a["severity"] == "critical"
        })
    });
    let s = status(&nats).unwrap();
    assert!(
        raised,
        "nova went silent and the coordinator's own heartbeat_missing alert was never handled \
         (pre-empted by a stranger's unsigned alert under its id): status {s}"
    );
}

/// A node whose clock is 10 minutes behind: its heartbeats are published
/// here (as its agent would), and with `preempt`, before each one, an
/// ordinary unsigned alert under the id the coordinator gives its own
/// `clock_skew` alert (`coord-<node>-clock_skew-warning-<ms of the
/// heartbeat's own timestamp>`, which the node chooses). Whether the
/// coordinator's `clock_skew` alert about the node was handled.
fn clock_skew_raised(preempt: bool) -> bool {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = fast_config(work.path(), &trust_section(work.path()));
    let _coordinator = coordinator(&nats, &cfg, work.path(), "coordinator");
    wait_for(Duration::from_secs(30), "the coordinator answers", || {
        status(&nats)
    });
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let bus = NatsBus::connect(&NatsOptions::new(nats.url(), "tardy"))
            .await
            .unwrap();
        let bus = Bus::Nats(bus);
        for _ in 0..12 {
            let at = chrono::Utc::now() - chrono::Duration::seconds(600);
            let hb: skos_core::protocol::Heartbeat = serde_json::from_value(json!({
                "agent_id": "thermal-sentinel-tardy", "agent_type": "thermal_sentinel",
                "node": "tardy", "timestamp": skos_core::timefmt::format(&at),
                "cpu_temp": 50.0, "gpu_temp": null,
            }))
            .unwrap();
            if preempt {
                let forged: skos_core::protocol::Alert = serde_json::from_value(json!({
                    "alert_id": format!("coord-tardy-clock_skew-warning-{}", hb.timestamp.timestamp_millis()),
                    "agent_id": "thermal-sentinel-tardy", "type": "thermal",
                    "severity": "normal", "node": "tardy", "message": "fine",
                    "details": {"sensor": "nothing"},
                    "timestamp": skos_core::timefmt::format(&at),
                }))
                .unwrap();
                bus.publish_alert(&forged).await.unwrap();
            }
            bus.publish_heartbeat(&hb).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    (0..25).any(|_| {
        std::thread::sleep(Duration::from_millis(200));
        audit_events(&audit(&nats), "alert").iter().any(|a| {
            let a = &a["entry"]["data"]["alert"];
            a["type"] == "clock_skew" && a["node"] == "tardy"
        })
    })
}

/// The control: the skew is raised (passes).
#[test]
fn a_nodes_skewed_clock_is_raised() {
    assert!(clock_skew_raised(false));
}

/// A node cannot suppress the coordinator's own alert about its clock by
/// an unsigned alert under the id it would take.
#[test]
fn a_node_cannot_preempt_the_coordinators_clock_skew_alert_about_itself() {
    assert!(
        clock_skew_raised(true),
        "a node hid its own skewed clock by an unsigned alert under the coordinator's alert id"
    );
}

/// The `trust:` section with a coordinator key and a key of nova's own
/// (`skos keys generate`): nova's agent signs its heartbeats, alerts and
/// results with it, and the coordinator takes nova's messages only signed
/// with it. `extra` lines go under `trust:` too.
fn node_trust_section(dir: &Path, extra: &str) -> String {
    let key = dir.join("nova-node.nk");
    let out = run({
        let mut c = skos();
        c.args(["keys", "generate", "--out"]).arg(&key);
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
    format!(
        "{}  node_key_file: {}\n  node_keys: {{nova: {public}}}\n{extra}",
        trust_section(dir),
        key.display()
    )
}

/// Audit records of messages refused as not signed with their node's key,
/// on a subject starting with `subject`.
fn untrusted(records: &[Value], subject: &str) -> Vec<String> {
    audit_events(records, "rejected")
        .into_iter()
        .filter(|e| {
            e["entry"]["data"]["subject"]
                .as_str()
                .is_some_and(|s| s.starts_with(subject))
                && e["entry"]["data"]["reason"] == "untrusted"
        })
        .map(|e| e["entry"]["summary"].as_str().unwrap_or("").to_string())
        .collect()
}

/// A stranger who knows (or guesses) a command's id stores a result under
/// the message id a node's result would take (`nova:<id>:succeeded`),
/// before the node answers. Nova signs its results with its own key and
/// stores them under an id that holds a signature of that id: the forged
/// result is refused and audited as such, nova's own is handled; sent
/// again (a redelivered command answered from the record, with a new
/// timestamp), nova's result takes the same message id and is handled
/// once.
#[test]
fn a_stranger_cannot_preempt_a_signed_nodes_result_by_its_id() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    sys.coretemp(50.0, &[]);
    fake_cpufreq(sys.root(), 2, 800_000, MAX);
    let cfg = fast_config(work.path(), &node_trust_section(work.path(), ""));
    let key = Signer::from_seed_file(&work.path().join("coordinator.nk")).unwrap();
    let _coord = coordinator(&nats, &cfg, work.path(), "coordinator");
    let a = agent(&nats, &cfg, work.path(), sys.root(), "agent-nova");
    wait_for(Duration::from_secs(30), "nova joined", || {
        status(&nats).filter(|s| node(s, "nova").is_some())
    });
    assert!(
        a.log_text().contains("signed with the node key"),
        "{}",
        a.log_text()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bus = Bus::Nats(
        rt.block_on(NatsBus::connect(&NatsOptions::new(nats.url(), "stranger")))
            .unwrap(),
    );
    let forged: skos_core::protocol::CommandResult = serde_json::from_value(json!({
        "action_id": "pre-1", "action_type": "throttle_50", "node": "nova",
        "agent_id": "skos-agent-nova", "status": "succeeded", "message": "forged",
        "timestamp": skos_core::timefmt::format(&chrono::Utc::now()),
    }))
    .unwrap();
    assert_eq!(skos_bus::result_message_id(&forged), "nova:pre-1:succeeded");
    rt.block_on(bus.publish_result(&forged)).unwrap();
    let cmd = command("pre-1", "throttle_50", "nova", 120);
    let headers = signed(&key, &cmd);
    let send = |headers: &[(String, String)]| {
        rt.block_on(bus.publish_raw_with_headers("skos.command.nova", cmd.clone(), headers))
            .unwrap()
    };
    send(&headers);
    let answers = wait_for(Duration::from_secs(30), "nova's own result handled", || {
        let s = status_of(audited, &nats, "pre-1");
        s.iter().any(|s| !s.ends_with("forged")).then_some(s)
    });
    assert!(
        answers.iter().all(|s| !s.ends_with("forged")),
        "the stranger's result was handled: {answers:?}"
    );
    assert_eq!(read_khz(sys.root(), 0), MAX / 2);
    let refused = untrusted(&audit(&nats), "skos.result.nova");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("unsigned"), "{refused:?}");
    // Delivered again: answered from the record, under the same message id.
    send(&headers);
    wait_for(Duration::from_secs(20), "the replay answered", || {
        a.log_text()
            .contains("answered with its recorded outcome")
            .then_some(())
    });
    // A later command's result is handled after the replay's would be.
    let next = command("next-1", "reset_throttle", "nova", 120);
    rt.block_on(bus.publish_raw_with_headers(
        "skos.command.nova",
        next.clone(),
        &signed(&key, &next),
    ))
    .unwrap();
    wait_status(audited, &nats, "next-1", "succeeded");
    assert_eq!(
        status_of(audited, &nats, "pre-1").len(),
        1,
        "{:?}",
        status_of(audited, &nats, "pre-1")
    );
}

/// Nova has a key, and node signatures are required: an alert for nova
/// that nobody signed, or a stranger signed; a heartbeat of nova's that
/// nobody signed, or nova's own signed heartbeat published again (to make
/// nova look alive once it falls silent); a heartbeat from lyra, which has
/// no key: each is refused (never handled), audited and counted. Nova's
/// own keep being taken.
#[test]
fn forged_heartbeats_and_alerts_of_a_keyed_node_are_refused_and_audited() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = fast_config(
        work.path(),
        &node_trust_section(work.path(), "  require_node_signatures: true\n"),
    );
    let sys = FakeSysfs::new();
    sys.coretemp(50.0, &[48.0]);
    let _coordinator = coordinator(&nats, &cfg, work.path(), "coordinator");
    let _agent = agent(&nats, &cfg, work.path(), sys.root(), "agent-nova");
    wait_for(Duration::from_secs(30), "nova joined", || {
        status(&nats).filter(|s| node(s, "nova").is_some())
    });
    let alert = |id: &str| -> skos_core::protocol::Alert {
        serde_json::from_value(json!({
            "alert_id": id, "agent_id": "thermal-sentinel-nova", "type": "thermal",
            "severity": "critical", "node": "nova", "message": "forged",
            "details": {"sensor": "cpu", "temp": 99.0},
            "timestamp": skos_core::timefmt::format(&chrono::Utc::now()),
        }))
        .unwrap()
    };
    let heartbeat = |node: &str| -> skos_core::protocol::Heartbeat {
        serde_json::from_value(json!({
            "agent_id": format!("thermal-sentinel-{node}"), "agent_type": "thermal_sentinel",
            "node": node, "timestamp": skos_core::timefmt::format(&chrono::Utc::now()),
            "cpu_temp": 99.0, "gpu_temp": null,
        }))
        .unwrap()
    };
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use futures::StreamExt;
        let nats_bus = NatsBus::connect(&NatsOptions::new(nats.url(), "stranger"))
            .await
            .unwrap();
        let mut hbs = nats_bus
            .client()
            .subscribe("skos.heartbeat.nova".to_string())
            .await
            .unwrap();
        let client = nats_bus.client().clone();
        let bus = Bus::Nats(nats_bus);
        bus.publish_alert(&alert("forged-unsigned")).await.unwrap();
        let stranger = Signer::ephemeral();
        let a = alert("forged-stranger");
        let payload = Bytes::from(serde_json::to_vec(&a).unwrap());
        let headers = stranger
            .sign_node(
                skos_bus::trust::NodeMessage::Alert,
                "skos.alert.nova",
                "nova",
                &payload,
            )
            .unwrap();
        bus.publish_raw_with_headers("skos.alert.nova", payload, &headers)
            .await
            .unwrap();
        bus.publish_heartbeat(&heartbeat("nova")).await.unwrap();
        bus.publish_heartbeat(&heartbeat("lyra")).await.unwrap();
        // Nova's own signed heartbeat, published again as it was.
        let real = loop {
            let m = hbs.next().await.unwrap();
            if m.headers.is_some() {
                break m;
            }
        };
        let headers: Vec<(String, String)> = real
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
            .collect();
        assert!(
            headers.iter().any(|(k, _)| k == HEADER_SIGNATURE),
            "nova's heartbeat is signed: {headers:?}"
        );
        bus.publish_raw_with_headers("skos.heartbeat.nova", real.payload.clone(), &headers)
            .await
            .unwrap();
        client.flush().await.unwrap();
    });
    let records = wait_for(Duration::from_secs(30), "every forgery refused", || {
        let r = audit(&nats);
        let alerts = untrusted(&r, "skos.alert.nova");
        let nova = untrusted(&r, "skos.heartbeat.nova");
        let lyra = untrusted(&r, "skos.heartbeat.lyra");
        (alerts.len() == 2 && nova.len() == 2 && lyra.len() == 1).then_some(r)
    });
    let alerts = untrusted(&records, "skos.alert.nova");
    assert!(alerts.iter().any(|s| s.contains("unsigned")), "{alerts:?}");
    assert!(
        alerts.iter().any(|s| s.contains("unknown key")),
        "{alerts:?}"
    );
    let nova = untrusted(&records, "skos.heartbeat.nova");
    assert!(nova.iter().any(|s| s.contains("unsigned")), "{nova:?}");
    assert!(nova.iter().any(|s| s.contains("a replay")), "{nova:?}");
    assert!(
        untrusted(&records, "skos.heartbeat.lyra")[0].contains("has no key"),
        "{records:?}"
    );
    assert!(
        !records.iter().any(|r| r["entry"]["event_type"] == "alert"
            && r["entry"]["data"]["alert"]["alert_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("forged"))),
        "a forged alert was handled"
    );
    let s = status(&nats).unwrap();
    assert_eq!(s["open_alerts"], json!([]), "{s}");
    assert!(
        node(&s, "lyra").is_none(),
        "lyra joined on an unsigned heartbeat: {s}"
    );
    // Nova's own heartbeats are still taken: it stays online.
    std::thread::sleep(Duration::from_secs(3));
    let s = status(&nats).unwrap();
    assert_eq!(node(&s, "nova").unwrap()["status"], "healthy", "{s}");
}
