//! A permissioned nats-server, configured from `skos fleet nats-config`:
//! each agent may publish only its own subjects; strangers cannot connect;
//! TLS with certificates made for the test.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::{json, Value};
use skos_bus::{Bus, NatsAuth, NatsBus, NatsOptions};
use skos_testsupport::cpufreq::{fake_cpufreq, read_khz};
use skos_testsupport::nats::NatsServer;
use skos_testsupport::sysfs::FakeSysfs;

fn fleet(dir: &Path, nodes: &str) -> std::path::PathBuf {
    let keys = dir.join("keys");
    let out = run({
        let mut c = skos();
        c.args(["fleet", "nats-config", "--nodes", nodes, "--out"])
            .arg(&keys);
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conf = dir.join("nats-server.conf");
    std::fs::write(&conf, &out.stdout).unwrap();
    conf
}

fn seed(dir: &Path, who: &str) -> String {
    std::fs::read_to_string(dir.join("keys").join(format!("{who}.nk")))
        .unwrap()
        .trim()
        .to_string()
}

async fn connect_as(
    url: &str,
    auth: NatsAuth,
    inbox: Option<&str>,
) -> Result<NatsBus, skos_bus::Error> {
    let mut o = NatsOptions::new(url, "test");
    o.auth = auth;
    o.inbox_prefix = inbox.map(str::to_owned);
    o.connect_timeout = Duration::from_secs(3);
    NatsBus::connect(&o).await
}

#[test]
fn agents_are_confined_to_their_own_subjects() {
    let work = tempfile::tempdir().unwrap();
    let conf = fleet(work.path(), "nova,lyra");
    let text = std::fs::read_to_string(&conf).unwrap();
    for p in ["coordinator", "nova", "lyra"] {
        assert!(
            !text.contains(&seed(work.path(), p)),
            "a seed leaked into the server config"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(work.path().join(format!("keys/{p}.nk")))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{p}.nk");
    }
    let nats = NatsServer::start_with_config(Some(conf));
    let keys = work.path().join("keys");
    let trust = format!(
        "trust:\n  signing_key_file: {k}/coordinator-signing.nk\n  coordinator_keys: [{public}]\n",
        k = keys.display(),
        public = skos_bus::trust::Signer::from_seed_file(&keys.join("coordinator-signing.nk"))
            .unwrap()
            .public_key()
    );
    let coord_cfg = fast_config(
        work.path(),
        &format!(
            "nats:\n  nkey_seed_file: {}/coordinator.nk\n{trust}",
            keys.display()
        ),
    );
    let coord_cfg2 = work.path().join("coordinator.yaml");
    // No verification deadline passes during the test: an escalation would
    // send throttle_100, the very command lyra forges below.
    let text = std::fs::read_to_string(&coord_cfg).unwrap();
    assert!(text.contains("verify_within: 5\n"), "{text}");
    std::fs::write(
        &coord_cfg2,
        text.replace("verify_within: 5\n", "verify_within: 600\n"),
    )
    .unwrap();
    std::fs::remove_file(&coord_cfg).unwrap();
    let agent_cfg = fast_config(
        work.path(),
        &format!(
            "nats:\n  nkey_seed_file: {}/nova.nk\n{trust}",
            keys.display()
        ),
    );

    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(50.0, &[]);
    fake_cpufreq(sys.root(), 1, 800_000, 3_000_000);
    let _coord = Proc::spawn(
        {
            let mut c = skos();
            c.arg("coordinator")
                .arg("--config")
                .arg(&coord_cfg2)
                .env("NATS_URL", nats.url());
            c
        },
        work.path(),
        "coordinator",
    );
    let _agent = Proc::spawn(
        {
            let mut c = skos();
            c.arg("agent")
                .arg("--config")
                .arg(&agent_cfg)
                .arg("--data-dir")
                .arg(work.path().join("agent"))
                .env("NATS_URL", nats.url())
                .env("NODE_NAME", "nova")
                .env("SKOS_SYSFS_ROOT", sys.root());
            c
        },
        work.path(),
        "agent-nova",
    );
    // The whole loop works within the permissions: heat -> throttle.
    cpu.heat(88.0);
    wait_for(
        Duration::from_secs(40),
        "nova throttled through the permissioned server",
        || (read_khz(sys.root(), 0) == 1_500_000).then_some(()),
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // A stranger cannot even connect.
        assert!(connect_as(&nats.url(), NatsAuth::None, None).await.is_err(), "unauthenticated client connected");
        // lyra may not speak for nova: the server refuses the publish.
        let lyra = connect_as(&nats.url(), NatsAuth::NkeySeed(seed(work.path(), "lyra")), Some("_INBOX_lyra"))
            .await
            .expect("lyra connects");
        let forged = json!({
            "alert_id": "forged-by-lyra", "agent_id": "x", "type": "thermal", "severity": "emergency",
            "node": "nova", "message": "forged", "details": {"sensor": "cpu"}, "timestamp": "2024-01-01T00:00:00Z"
        });
        let alert: skos_core::Alert = serde_json::from_value(forged.clone()).unwrap();
        let bus = Bus::Nats(lyra);
        assert!(bus.publish_alert(&alert).await.is_err(), "JetStream accepted lyra's alert for nova");
        let _ = bus.publish_raw("skos.alert.nova", Bytes::from(forged.to_string())).await;
        let cmd = json!({"action_id": "lyra-cmd", "action_type": "throttle_100", "parameters": {}, "timestamp": "2024-01-01T00:00:00Z"});
        let forged_cmd: skos_core::Command = serde_json::from_value(cmd.clone()).unwrap();
        let nova = skos_core::NodeName::parse("nova").unwrap();
        assert!(
            bus.send_command(&nova, &forged_cmd, None).await.is_err(),
            "JetStream accepted lyra's command for nova"
        );
        // A core publish is fire and forget: the server refuses it without
        // telling the client, so its Ok proves nothing. That it was not
        // stored is checked on SKOS_COMMANDS below.
        bus.publish_raw("skos.command.nova", Bytes::from(cmd.to_string()))
            .await
            .expect("a core publish is only written to the connection");
        // lyra's own subjects are fine.
        let own: skos_core::Alert = serde_json::from_value(json!({
            "alert_id": "lyra-own", "agent_id": "x", "type": "thermal", "severity": "warning",
            "node": "lyra", "message": "own", "details": {"sensor": "cpu"}, "timestamp": "2024-01-01T00:00:00Z"
        }))
        .unwrap();
        bus.publish_alert(&own).await.expect("lyra may publish its own alerts");
    });
    // A fence on the command path: a command signed by the coordinator's
    // key, sent after lyra's attempts (lyra's own alert was acknowledged, so
    // the server had handled them). Had lyra's command been stored, it would
    // come before this one in nova's stream, and nova answers its commands
    // in order: its result would be audited before this one's. throttle_50
    // leaves nova as it is.
    let coord_bus = Bus::Nats(
        rt.block_on(connect_as(
            &nats.url(),
            NatsAuth::NkeySeed(seed(work.path(), "coordinator")),
            None,
        ))
        .expect("the coordinator's key connects"),
    );
    let signer =
        skos_bus::trust::Signer::from_seed_file(&keys.join("coordinator-signing.nk")).unwrap();
    // Under the leader's term: agents refuse commands without one once a
    // leader has spoken.
    let term = wait_for(Duration::from_secs(20), "the leader's term", || {
        let out = run({
            let mut c = skos();
            c.args(["status", "--json"])
                .env("NATS_URL", nats.url())
                .env("SKOS_CONFIG", &coord_cfg2);
            c
        });
        serde_json::from_slice::<Value>(&out.stdout).ok()?["leader"]["term"].as_u64()
    });
    let now = chrono::Utc::now();
    let fence: skos_core::Command = serde_json::from_value(json!({
        "action_id": "fence-after-lyra", "action_type": "throttle_50", "parameters": {},
        "timestamp": now.to_rfc3339(), "node": "nova",
        "deadline": (now + chrono::Duration::seconds(120)).to_rfc3339(), "term": term,
    }))
    .unwrap();
    rt.block_on(coord_bus.send_command(
        &skos_core::NodeName::parse("nova").unwrap(),
        &fence,
        Some(&signer),
    ))
    .expect("the coordinator's key may command nova");
    // The coordinator saw lyra's own alert, never the forged one; and nova
    // answered the fence.
    let records = wait_for(
        Duration::from_secs(30),
        "lyra's own alert and the fence's result audited",
        || {
            let out = run({
                let mut c = skos();
                c.args(["audit", "tail", "--json", "-n", "100000"])
                    .env("NATS_URL", nats.url())
                    .env("SKOS_CONFIG", &coord_cfg2);
                c
            });
            let r = json_lines(&out);
            let own = audit_events(&r, "alert")
                .iter()
                .any(|a| a["entry"]["data"]["alert_id"] == "lyra-own");
            let fenced = audit_events(&r, "result")
                .iter()
                .any(|a| a["entry"]["data"]["result"]["action_id"] == "fence-after-lyra");
            (own && fenced).then_some(r)
        },
    );
    let fence_results: Vec<Value> = audit_events(&records, "result")
        .into_iter()
        .map(|a| a["entry"]["data"]["result"].clone())
        .filter(|r| r["action_id"] == "fence-after-lyra")
        .collect();
    assert_eq!(fence_results.len(), 1, "{fence_results:?}");
    assert_eq!(fence_results[0]["status"], "succeeded", "{fence_results:?}");
    assert!(!audit_events(&records, "alert")
        .iter()
        .any(|a| a["entry"]["data"]["alert_id"] == "forged-by-lyra"));
    assert!(!audit_events(&records, "result")
        .iter()
        .any(|a| a["entry"]["data"]["result"]["action_id"] == "lyra-cmd"));
    // Neither of lyra's commands was stored: nothing in SKOS_COMMANDS has
    // lyra's id, as message id or in the payload (the fence is there, so
    // the scan does see what is stored).
    let stored: Vec<(String, String, String)> = rt.block_on(async {
        let Bus::Nats(b) = &coord_bus else {
            unreachable!()
        };
        let stream = b
            .jetstream()
            .get_stream(skos_bus::subjects::STREAM_COMMANDS)
            .await
            .unwrap();
        let state = stream.get_info().await.unwrap().state;
        let mut stored = Vec::new();
        for seq in state.first_sequence..=state.last_sequence {
            if state.messages == 0 {
                break;
            }
            let m = stream.get_raw_message(seq).await.unwrap();
            let msg_id = m
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.to_string())
                .unwrap_or_default();
            let body: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
            let field = |k: &str| body[k].as_str().unwrap_or_default().to_string();
            stored.push((msg_id, field("action_id"), field("action_type")));
        }
        assert_eq!(stored.len() as u64, state.messages, "{stored:?}");
        stored
    });
    assert!(
        stored
            .iter()
            .all(|(msg_id, action_id, _)| msg_id != "lyra-cmd" && action_id != "lyra-cmd"),
        "lyra's command was stored: {stored:?}"
    );
    assert!(
        stored
            .iter()
            .any(|(msg_id, action_id, _)| msg_id == "fence-after-lyra" && action_id == msg_id),
        "the fence is stored: {stored:?}"
    );
    assert!(
        stored
            .iter()
            .any(|(msg_id, action_id, action)| action == "throttle_50"
                && action_id == msg_id
                && action_id != "fence-after-lyra"),
        "the coordinator's throttle_50 is stored: {stored:?}"
    );
    assert_eq!(
        read_khz(sys.root(), 0),
        1_500_000,
        "lyra's command never reached nova"
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=skos-test-ca",
    ]);
    openssl(dir, &ca);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        let mut req = vec!["req"];
        req.extend(ec);
        let key = format!("{who}.key");
        let csr = format!("{who}.csr");
        let subj = format!("/CN={who}");
        req.extend([
            "-keyout",
            key.as_str(),
            "-out",
            csr.as_str(),
            "-subj",
            subj.as_str(),
        ]);
        openssl(dir, &req);
        let pem = format!("{who}.pem");
        let ext = format!("{who}.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "1",
                "-extfile",
                &ext,
            ],
        );
    }
}

#[test]
fn tls_with_client_certificates() {
    // openssl makes the test certificates.
    skos_testsupport::require!(
        "openssl",
        skos_testsupport::require::program("openssl", &["version"], "openssl")
    );
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    certificates(d);
    let conf = d.join("tls.conf");
    std::fs::write(
        &conf,
        format!(
            "tls {{\n  cert_file: \"{0}/server.pem\"\n  key_file: \"{0}/server.key\"\n  ca_file: \"{0}/ca.pem\"\n  verify: true\n  timeout: 2\n}}\n",
            d.display()
        ),
    )
    .unwrap();
    let nats = NatsServer::start_with_config(Some(conf));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = |client_cert: bool| {
        let mut o = NatsOptions::new(nats.url(), "tls-test");
        o.connect_timeout = Duration::from_secs(3);
        o.tls.required = true;
        o.tls.ca_file = Some(d.join("ca.pem"));
        if client_cert {
            o.tls.cert_file = Some(d.join("client.pem"));
            o.tls.key_file = Some(d.join("client.key"));
        }
        o
    };
    rt.block_on(async {
        let bus = NatsBus::connect(&opts(true))
            .await
            .expect("TLS with a client certificate connects");
        assert!(bus.client().server_info().tls_required);
        assert!(
            NatsBus::connect(&opts(false)).await.is_err(),
            "connected without a client certificate"
        );
        let mut plain = NatsOptions::new(nats.url(), "plain");
        plain.connect_timeout = Duration::from_secs(3);
        assert!(
            NatsBus::connect(&plain).await.is_err(),
            "connected without TLS"
        );
    });
    // The binary reads the same settings from its config.
    let cfg = d.join("skos.yaml");
    std::fs::write(
        &cfg,
        format!(
            "nats:\n  tls:\n    required: true\n    ca_file: {0}/ca.pem\n    cert_file: {0}/client.pem\n    key_file: {0}/client.key\n",
            d.display()
        ),
    )
    .unwrap();
    let out = run({
        let mut c = skos();
        c.args(["audit", "verify", "--config"])
            .arg(&cfg)
            .env("NATS_URL", nats.url());
        c
    });
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
