//! A permissioned nats-server, configured from `skos fleet nats-config`:
//! each agent may publish only its own subjects; strangers cannot connect;
//! TLS with certificates made for the test.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::StreamExt;
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

/// Connect with `auth`, replies on `inbox`; only the coordinator's key
/// (no inbox of its own) creates the streams.
async fn connect_as(
    url: &str,
    auth: NatsAuth,
    inbox: Option<&str>,
) -> Result<NatsBus, skos_bus::Error> {
    let mut o = NatsOptions::new(url, "test");
    o.auth = auth;
    o.create_streams = inbox.is_none();
    o.inbox_prefix = inbox.map(str::to_owned);
    o.connect_timeout = Duration::from_secs(3);
    NatsBus::connect(&o).await
}

/// A config file for `skos status` and `skos audit` with the operator's
/// read-only key.
fn operator_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("operator.yaml");
    std::fs::write(
        &path,
        format!(
            "nats:\n  nkey_seed_file: {}/keys/operator.nk\n",
            dir.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn agents_are_confined_to_their_own_subjects() {
    let work = tempfile::tempdir().unwrap();
    let conf = fleet(work.path(), "nova,lyra");
    let text = std::fs::read_to_string(&conf).unwrap();
    for p in ["coordinator", "operator", "nova", "lyra"] {
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
    // The coordinator first, as a fleet is set up: it creates the streams
    // (an agent may not). nova's consumer it makes on nova's first
    // heartbeat; till then nova waits for it.
    wait_for(Duration::from_secs(20), "the coordinator leads", || {
        _coord
            .log_text()
            .contains("coordinator started")
            .then_some(())
    });
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
    // Asked with the operator's read-only key.
    let operator_cfg = operator_config(work.path());
    let term = wait_for(Duration::from_secs(20), "the leader's term", || {
        let out = run({
            let mut c = skos();
            c.args(["status", "--json"])
                .env("NATS_URL", nats.url())
                .env("SKOS_CONFIG", &operator_cfg);
            c
        });
        serde_json::from_slice::<Value>(&out.stdout).ok()?["leader"]["term"].as_u64()
    });
    // The operator's key may add and list silences (the coordinator's
    // control subject); an agent's may not even ask.
    let out = run({
        let mut c = skos();
        c.args([
            "silence",
            "add",
            "--node",
            "athena",
            "--for",
            "1h",
            "--comment",
            "rack move",
            "--by",
            "ana",
            "--json",
        ])
        .env("NATS_URL", nats.url())
        .env("SKOS_CONFIG", &operator_cfg);
        c
    });
    assert!(
        out.status.success(),
        "the operator adds a silence: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let added: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(added["silences"][0]["node"], "athena", "{added}");
    let nova_bus = Bus::Nats(
        rt.block_on(connect_as(
            &nats.url(),
            NatsAuth::NkeySeed(seed(work.path(), "nova")),
            Some("_INBOX_nova"),
        ))
        .expect("nova's key connects"),
    );
    let asked = rt.block_on(nova_bus.request_control(
        &json!({"op": "silence_expire", "id": added["silences"][0]["id"], "by": "nova"}),
        Duration::from_secs(3),
    ));
    // The server's refusal is what the caller hears, not that nobody
    // answered.
    assert!(
        matches!(&asked, Err(skos_bus::Error::Denied { subject, reason })
            if subject == skos_bus::subjects::CONTROL && reason.starts_with("Permissions Violation for ")),
        "an agent's key may not send control requests: {asked:?}"
    );
    let nova_cfg = work.path().join("nova-operator.yaml");
    std::fs::write(
        &nova_cfg,
        format!("nats:\n  nkey_seed_file: {}/nova.nk\n", keys.display()),
    )
    .unwrap();
    for args in [&["status"][..], &["silence", "list"]] {
        let out = run({
            let mut c = skos();
            c.args(args)
                .env("NATS_URL", nats.url())
                .env("SKOS_CONFIG", &nova_cfg);
            c
        });
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?} with nova's key: {err}"
        );
        assert!(
            err.contains("this credential may not") && err.contains("Permissions Violation for "),
            "{args:?} with nova's key says the bus refused it: {err}"
        );
    }
    let out = run({
        let mut c = skos();
        c.args(["silence", "list", "--json"])
            .env("NATS_URL", nats.url())
            .env("SKOS_CONFIG", &operator_cfg);
        c
    });
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed["silences"][0]["id"], added["silences"][0]["id"],
        "still there: nova's expiry never reached the coordinator ({listed})"
    );
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
                    .env("SKOS_CONFIG", &operator_cfg);
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
        stored.iter().any(
            |(msg_id, action_id, _)| msg_id.starts_with("fence-after-lyra.")
                && action_id == "fence-after-lyra"
        ),
        "the fence is stored: {stored:?}"
    );
    assert!(
        stored
            .iter()
            // Signed: stored under its id and the start of its signature.
            .any(|(msg_id, action_id, action)| action == "throttle_50"
                && msg_id.starts_with(&format!("{action_id}."))
                && action_id != "fence-after-lyra"),
        "the coordinator's throttle_50 is stored: {stored:?}"
    );
    assert_eq!(
        read_khz(sys.root(), 0),
        1_500_000,
        "lyra's command never reached nova"
    );
    // The operator's key verifies the trail, and finds it locked.
    let out = run({
        let mut c = skos();
        c.args(["audit", "verify"])
            .env("NATS_URL", nats.url())
            .env("SKOS_CONFIG", &operator_cfg);
        c
    });
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("allows deletes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
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

/// What the server answered a request within `wait` (`None`: nothing,
/// as for a subject the credential may not publish on).
async fn answer(
    client: &async_nats::Client,
    subject: &str,
    body: Value,
    headers: &[(&str, &str)],
    wait: Duration,
) -> Option<Value> {
    let payload = Bytes::from(if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    });
    let mut map = async_nats::HeaderMap::new();
    for (k, v) in headers {
        map.insert(*k, *v);
    }
    let asked = client.request_with_headers(subject.to_string(), map, payload);
    match tokio::time::timeout(wait, asked).await {
        Ok(Ok(m)) => Some(serde_json::from_slice(&m.payload).unwrap_or(Value::Null)),
        _ => None,
    }
}

/// One thing a credential must not do: a request and its body.
struct Try {
    who: &'static str,
    subject: String,
    body: Value,
    headers: Vec<(&'static str, &'static str)>,
}

fn attempt(who: &'static str, subject: impl Into<String>, body: Value) -> Try {
    Try {
        who,
        subject: subject.into(),
        body,
        headers: Vec::new(),
    }
}

/// Every overreach tried against the permissions `skos fleet nats-config`
/// writes, by the agent (nova), the operator and the coordinator: each is
/// refused (no answer, or an error), and afterwards the streams, their
/// messages and the consumers are as they were.
#[test]
fn no_credential_overreaches() {
    let work = tempfile::tempdir().unwrap();
    let conf = fleet(work.path(), "nova,lyra");
    let nats = NatsServer::start_with_config(Some(conf));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = |who: &str| NatsAuth::NkeySeed(seed(work.path(), who));
    let nova = skos_core::NodeName::parse("nova").unwrap();
    let lyra = skos_core::NodeName::parse("lyra").unwrap();
    rt.block_on(async {
        // The coordinator's key: streams, both agents' consumers, a
        // command for each node, an audit record and a state.
        let coord = connect_as(&nats.url(), key("coordinator"), None)
            .await
            .expect("the coordinator connects");
        let state = skos_bus::StateStore::jetstream(&coord).await.unwrap();
        coord.lock_streams().await.expect("fresh streams are locked");
        // The leader's lease bucket, so a write to it would be answered.
        skos_bus::lease::Lease::open(&coord, "test:1:x".into(), Duration::from_secs(30))
            .await
            .unwrap();
        state
            .save("node_lyra", Bytes::from_static(b"{\"lyra\":1}"))
            .await
            .unwrap();
        let cjs = coord.jetstream().clone();
        cjs.publish("SKOS_AUDIT.test", Bytes::from_static(b"{\"record\":1}"))
            .await
            .unwrap()
            .await
            .expect("the coordinator writes the audit trail");
        let coord_bus = Bus::Nats(coord.clone());
        for n in [&nova, &lyra] {
            coord_bus.ensure_command_consumer(n).await.unwrap();
        }
        let command = |id: &str, node: &str| -> skos_core::Command {
            serde_json::from_value(json!({
                "action_id": id, "action_type": "throttle_50", "parameters": {},
                "timestamp": chrono::Utc::now().to_rfc3339(), "node": node,
            }))
            .unwrap()
        };
        coord_bus
            .send_command(&lyra, &command("for-lyra", "lyra"), None)
            .await
            .unwrap();
        coord_bus
            .send_command(&nova, &command("for-nova", "nova"), None)
            .await
            .unwrap();
        // The coordinator's own consumers, so taking from them would be
        // answered.
        let _alerts = coord_bus.subscribe(skos_bus::Feed::Alerts).await.unwrap();
        let _results = coord_bus.subscribe(skos_bus::Feed::Results).await.unwrap();
        for feed in [skos_bus::Feed::Alerts, skos_bus::Feed::Results] {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while coord_bus.consumer_position(&feed).await.unwrap().is_none() {
                assert!(std::time::Instant::now() < deadline, "{feed:?} consumer");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let before = |name: &'static str| {
            let cjs = cjs.clone();
            async move {
                let mut s = cjs.get_stream(name).await.unwrap();
                let info = s.info().await.unwrap();
                (info.state.messages, info.config.clone())
            }
        };
        let (audit_msgs, audit_cfg) = before("SKOS_AUDIT").await;
        let (state_msgs, state_cfg) = before("SKOS_STATE").await;
        assert_eq!((audit_msgs, state_msgs), (1, 1));

        let agent = connect_as(&nats.url(), key("nova"), Some("_INBOX_nova"))
            .await
            .expect("nova connects without touching a stream");
        let operator = connect_as(
            &nats.url(),
            key("operator"),
            Some(skos_bus::subjects::OPERATOR_INBOX),
        )
        .await
        .expect("the operator connects without touching a stream");

        // What each may do.
        let own = answer(
            agent.client(),
            "$JS.API.CONSUMER.INFO.SKOS_COMMANDS.skos-agent-nova",
            json!({}),
            &[],
            Duration::from_secs(5),
        )
        .await
        .expect("nova may look at its own consumer");
        assert_eq!(own["config"]["filter_subject"], "skos.command.nova", "{own}");
        let audit_info = answer(
            operator.client(),
            "$JS.API.STREAM.INFO.SKOS_AUDIT",
            json!({}),
            &[],
            Duration::from_secs(5),
        )
        .await
        .expect("the operator may look at the audit stream");
        assert_eq!(audit_info["state"]["messages"], 1, "{audit_info}");
        let read = skos_bus::audit::read_jetstream(&operator, None)
            .await
            .expect("the operator reads the audit trail");
        assert_eq!(read, [json!({"record": 1})]);
        assert!(skos_bus::audit::stream_is_locked(&operator).await.unwrap());
        // nova's commands reach nova through its consumer, lyra's never.
        let mut feed = Bus::Nats(agent.clone())
            .subscribe(skos_bus::Feed::Commands(nova.clone()))
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(15), feed.next())
            .await
            .expect("nova's command reaches nova")
            .unwrap();
        let body: Value = serde_json::from_slice(&got.payload).unwrap();
        assert_eq!(body["action_id"], "for-nova");
        got.ack().await.unwrap();
        // A core subscription to other nodes' subjects gets nothing.
        let mut spy = agent.client().subscribe("skos.command.>").await.unwrap();
        let mut spy_inbox = agent.client().subscribe("_INBOX.>").await.unwrap();
        let mut op_spy = operator.client().subscribe(">").await.unwrap();

        // What none may do.
        let consumer = |filter: &str, durable: Option<&str>| {
            let mut config = json!({
                "filter_subject": filter, "ack_policy": "explicit", "deliver_policy": "all",
            });
            if let Some(d) = durable {
                config["durable_name"] = json!(d);
            }
            json!({"stream_name": "SKOS_COMMANDS", "config": config})
        };
        let api = "$JS.API";
        let mut tries = vec![
            // nova re-points its consumer (any filter, any form of create).
            attempt("nova", format!("{api}.CONSUMER.CREATE.SKOS_COMMANDS.skos-agent-nova.skos.command.nova"), consumer("skos.command.lyra", Some("skos-agent-nova"))),
            attempt("nova", format!("{api}.CONSUMER.CREATE.SKOS_COMMANDS.skos-agent-nova"), consumer("skos.command.>", Some("skos-agent-nova"))),
            attempt("nova", format!("{api}.CONSUMER.DURABLE.CREATE.SKOS_COMMANDS.skos-agent-nova"), consumer("skos.command.>", Some("skos-agent-nova"))),
            attempt("nova", format!("{api}.CONSUMER.CREATE.SKOS_COMMANDS"), consumer("skos.command.lyra", None)),
            attempt("nova", format!("{api}.CONSUMER.CREATE.SKOS_COMMANDS.spy"), consumer("skos.command.lyra", Some("spy"))),
            attempt("nova", format!("{api}.CONSUMER.DELETE.SKOS_COMMANDS.skos-agent-nova"), json!({})),
            attempt("nova", format!("{api}.STREAM.CREATE.SPY"), json!({"name": "SPY", "mirror": {"name": "SKOS_COMMANDS"}})),
            // nova fetches or looks at lyra's consumer.
            attempt("nova", format!("{api}.CONSUMER.MSG.NEXT.SKOS_COMMANDS.skos-agent-lyra"), json!({"batch": 10, "no_wait": true})),
            attempt("nova", format!("{api}.CONSUMER.INFO.SKOS_COMMANDS.skos-agent-lyra"), json!({})),
            // nova and the operator take what is another's to read.
            attempt("nova", format!("{api}.CONSUMER.MSG.NEXT.SKOS_ALERTS.skos-coordinator"), json!({"batch": 10, "no_wait": true})),
            attempt("nova", format!("{api}.CONSUMER.MSG.NEXT.SKOS_RESULTS.skos-coordinator"), json!({"batch": 10, "no_wait": true})),
            attempt("operator", format!("{api}.CONSUMER.MSG.NEXT.SKOS_COMMANDS.skos-agent-nova"), json!({"batch": 10, "no_wait": true})),
            attempt("operator", format!("{api}.CONSUMER.MSG.NEXT.SKOS_ALERTS.skos-coordinator"), json!({"batch": 10, "no_wait": true})),
            // nova learns other nodes' names.
            attempt("nova", format!("{api}.INFO"), json!({})),
            attempt("nova", format!("{api}.STREAM.INFO.SKOS_COMMANDS"), json!({"subjects_filter": ">"})),
            attempt("nova", format!("{api}.STREAM.INFO.SKOS_ALERTS"), json!({})),
            attempt("nova", format!("{api}.STREAM.INFO.SKOS_AUDIT"), json!({})),
            attempt("nova", format!("{api}.STREAM.NAMES"), json!({})),
            attempt("nova", format!("{api}.STREAM.LIST"), json!({})),
            attempt("nova", format!("{api}.CONSUMER.NAMES.SKOS_COMMANDS"), json!({})),
            attempt("nova", format!("{api}.CONSUMER.LIST.SKOS_COMMANDS"), json!({})),
            attempt("nova", format!("{api}.STREAM.MSG.GET.SKOS_COMMANDS"), json!({"seq": 1})),
            attempt("nova", format!("{api}.DIRECT.GET.SKOS_COMMANDS"), json!({"seq": 1})),
            // The operator writes anything.
            attempt("operator", "skos.command.nova", json!({"action_id": "op", "action_type": "throttle_100"})),
            attempt("operator", "skos.alert.nova", json!({})),
            attempt("operator", format!("$KV.{}.{}", skos_bus::subjects::LEADER_BUCKET, skos_bus::subjects::LEADER_KEY), json!({"holder": "operator"})),
            attempt("operator", format!("{api}.STREAM.CREATE.SPY"), json!({"name": "SPY", "mirror": {"name": "SKOS_COMMANDS"}})),
            attempt("operator", format!("{api}.CONSUMER.CREATE.SKOS_COMMANDS.spy"), consumer("skos.command.>", Some("spy"))),
            attempt("operator", format!("{api}.CONSUMER.CREATE.SKOS_AUDIT"), json!({"stream_name": "SKOS_AUDIT", "config": {"ack_policy": "none", "deliver_policy": "all"}})),
            attempt("operator", format!("{api}.STREAM.INFO.SKOS_COMMANDS"), json!({})),
        ];
        for who in ["nova", "operator"] {
            for subject in ["SKOS_AUDIT.alert", "SKOS_STATE.node_lyra"] {
                tries.push(attempt(who, subject, json!({"forged": who})));
            }
        }
        for who in ["nova", "operator", "coordinator"] {
            for stream in ["SKOS_AUDIT", "SKOS_STATE"] {
                let cfg = if stream == "SKOS_AUDIT" { &audit_cfg } else { &state_cfg };
                let mut shortened = serde_json::to_value(cfg).unwrap();
                shortened["max_age"] = json!(1_000_000_000u64);
                shortened["max_msgs"] = json!(0);
                let mut unlocked = serde_json::to_value(cfg).unwrap();
                unlocked["deny_delete"] = json!(false);
                unlocked["deny_purge"] = json!(false);
                tries.extend([
                    attempt(who, format!("{api}.STREAM.DELETE.{stream}"), json!({})),
                    attempt(who, format!("{api}.STREAM.PURGE.{stream}"), json!({})),
                    attempt(who, format!("{api}.STREAM.PURGE.{stream}"), json!({"filter": format!("{stream}.>")})),
                    attempt(who, format!("{api}.STREAM.MSG.DELETE.{stream}"), json!({"seq": 1})),
                    attempt(who, format!("{api}.STREAM.MSG.DELETE.{stream}"), json!({"seq": 1, "no_erase": true})),
                    attempt(who, format!("{api}.STREAM.UPDATE.{stream}"), shortened),
                    attempt(who, format!("{api}.STREAM.UPDATE.{stream}"), unlocked),
                ]);
            }
        }
        // The coordinator re-creates a locked stream with other limits,
        // and nova takes the leader's lease.
        for stream in ["SKOS_AUDIT", "SKOS_STATE"] {
            let cfg = if stream == "SKOS_AUDIT" {
                &audit_cfg
            } else {
                &state_cfg
            };
            let mut shortened = serde_json::to_value(cfg).unwrap();
            shortened["max_age"] = json!(1_000_000_000u64);
            shortened["deny_delete"] = json!(false);
            shortened["deny_purge"] = json!(false);
            tries.push(attempt(
                "coordinator",
                format!("{api}.STREAM.CREATE.{stream}"),
                shortened,
            ));
        }
        tries.push(attempt(
            "nova",
            format!(
                "$KV.{}.{}",
                skos_bus::subjects::LEADER_BUCKET,
                skos_bus::subjects::LEADER_KEY
            ),
            json!({"holder": "nova"}),
        ));
        // The coordinator rolls a locked stream up (a purge by publish).
        for subject in ["SKOS_AUDIT.x", "SKOS_STATE.x"] {
            tries.push(Try {
                headers: vec![("Nats-Rollup", "all")],
                ..attempt("coordinator", subject, json!({"rollup": true}))
            });
        }
        let clients = [
            ("nova", agent.client().clone()),
            ("operator", operator.client().clone()),
            ("coordinator", coord.client().clone()),
        ];
        let answers = futures::future::join_all(tries.iter().map(|t| {
            let client = clients.iter().find(|(w, _)| *w == t.who).unwrap().1.clone();
            async move {
                let a = answer(&client, &t.subject, t.body.clone(), &t.headers, Duration::from_secs(3)).await;
                (t, a)
            }
        }))
        .await;
        let mut done = Vec::new();
        for (t, a) in &answers {
            // Refused: no answer (not permitted), or an error answer.
            let refused = match a {
                None => true,
                Some(v) => v.get("error").is_some(),
            };
            if !refused {
                done.push(format!("{} {} {} -> {}", t.who, t.subject, t.body, a.clone().unwrap_or_default()));
            }
        }
        assert!(done.is_empty(), "overreaches that were not refused:\n{}", done.join("\n"));

        // Nothing changed.
        let (audit_now, audit_cfg_now) = before("SKOS_AUDIT").await;
        let (state_now, state_cfg_now) = before("SKOS_STATE").await;
        assert_eq!((audit_now, state_now), (1, 1), "a message was added or removed");
        assert_eq!(audit_cfg_now, audit_cfg);
        assert_eq!(state_cfg_now, state_cfg);
        assert_eq!(
            state.load("node_lyra").await.unwrap().as_deref(),
            Some(&b"{\"lyra\":1}"[..])
        );
        let mut names = cjs.stream_names();
        let mut streams = Vec::new();
        while let Some(n) = names.next().await {
            streams.push(n.unwrap());
        }
        streams.sort();
        assert_eq!(
            streams,
            [
                "KV_SKOS_LEADER",
                "SKOS_ALERTS",
                "SKOS_AUDIT",
                "SKOS_COMMANDS",
                "SKOS_RESULTS",
                "SKOS_STATE"
            ]
        );
        let commands = cjs.get_stream("SKOS_COMMANDS").await.unwrap();
        let mut names = commands.consumer_names();
        let mut consumers = Vec::new();
        while let Some(n) = names.next().await {
            consumers.push(n.unwrap());
        }
        consumers.sort();
        assert_eq!(consumers, ["skos-agent-lyra", "skos-agent-nova"]);
        for n in [&nova, &lyra] {
            let info = commands
                .consumer_info(skos_bus::subjects::agent_consumer(n))
                .await
                .unwrap();
            assert_eq!(info.config.filter_subject, skos_bus::subjects::command(n));
            if n == &lyra {
                assert_eq!(info.delivered.stream_sequence, 0, "lyra's command was fetched");
            }
        }
        // And the spies heard nothing (lyra is commanded once more).
        coord_bus
            .send_command(&lyra, &command("for-lyra-2", "lyra"), None)
            .await
            .unwrap();
        for (what, sub) in [("skos.command.>", &mut spy), ("_INBOX.>", &mut spy_inbox), ("operator >", &mut op_spy)] {
            let heard = tokio::time::timeout(Duration::from_secs(1), sub.next()).await;
            assert!(
                !matches!(heard, Ok(Some(_))),
                "{what}: heard {:?}",
                heard.ok().flatten().map(|m| m.subject)
            );
        }
    });
}

/// An agent started before anything is set up (no streams, no consumer of
/// its own, which it may not create) keeps running, says why it gets no
/// commands, and heals once the coordinator has run and made its consumer.
#[test]
fn an_agent_waits_for_its_consumer_saying_why() {
    let work = tempfile::tempdir().unwrap();
    let conf = fleet(work.path(), "nova");
    let nats = NatsServer::start_with_config(Some(conf));
    let keys = work.path().join("keys");
    let trust = format!(
        "trust:\n  signing_key_file: {k}/coordinator-signing.nk\n  coordinator_keys: [{public}]\n",
        k = keys.display(),
        public = skos_bus::trust::Signer::from_seed_file(&keys.join("coordinator-signing.nk"))
            .unwrap()
            .public_key()
    );
    let agent_dir = work.path().join("agent-cfg");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let agent_cfg = fast_config(
        &agent_dir,
        &format!(
            "nats:\n  nkey_seed_file: {}/nova.nk\n{trust}",
            keys.display()
        ),
    );
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(50.0, &[]);
    fake_cpufreq(sys.root(), 1, 800_000, 3_000_000);
    let mut agent = Proc::spawn(
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
    wait_for(
        Duration::from_secs(40),
        "nova says why it gets no commands",
        || {
            let log = agent.log_text();
            (log.contains("streams not set up yet")
                && log.contains("an agent may not create it; the coordinator does"))
            .then_some(())
        },
    );
    // The creation ended at the server's refusal, which it names (not at
    // the JetStream request's time-out).
    let log = agent.log_text();
    assert!(
        log.contains("could not be created ($JS.API.")
            && log
                .contains("the bus refused this credential: Permissions Violation for Publish to"),
        "{log}"
    );
    assert!(agent.alive(), "{}", agent.log_text());

    let coord_dir = work.path().join("coord-cfg");
    std::fs::create_dir_all(&coord_dir).unwrap();
    let coord_cfg = fast_config(
        &coord_dir,
        &format!(
            "nats:\n  nkey_seed_file: {}/coordinator.nk\n{trust}",
            keys.display()
        ),
    );
    let _coord = Proc::spawn(
        {
            let mut c = skos();
            c.arg("coordinator")
                .arg("--config")
                .arg(&coord_cfg)
                .env("NATS_URL", nats.url());
            c
        },
        work.path(),
        "coordinator",
    );
    wait_for(Duration::from_secs(40), "nova finds its consumer", || {
        agent
            .log_text()
            .contains("command consumer found: commands flow")
            .then_some(())
    });
    cpu.heat(88.0);
    wait_for(
        Duration::from_secs(40),
        "nova throttled once its consumer is made",
        || (read_khz(sys.root(), 0) == 1_500_000).then_some(()),
    );
    assert!(agent.alive(), "{}", agent.log_text());
}

/// `skos audit` creates nothing (an operator's key may not): on a server
/// where no coordinator has run, there is no trail, and verify says so
/// rather than "OK: 0 records".
#[test]
fn audit_verify_without_a_trail_says_so() {
    let nats = NatsServer::start();
    let out = run({
        let mut c = skos();
        c.args(["audit", "verify"]).env("NATS_URL", nats.url());
        c
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("stream SKOS_AUDIT does not exist"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("OK"));
}

/// A state stream an earlier version left open to purges, under the new
/// permissions (which do not let the coordinator change it): the
/// coordinator refuses to start, saying what to do, rather than keep a
/// state anyone with its key could purge.
#[test]
fn a_coordinator_refuses_an_unlocked_state_stream_it_may_not_lock() {
    let work = tempfile::tempdir().unwrap();
    let conf = fleet(work.path(), "nova");
    let nats = NatsServer::start_with_config(Some(conf));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let coord = connect_as(
            &nats.url(),
            NatsAuth::NkeySeed(seed(work.path(), "coordinator")),
            None,
        )
        .await
        .unwrap();
        coord
            .jetstream()
            .create_stream(async_nats::jetstream::stream::Config {
                name: "SKOS_STATE".into(),
                subjects: vec!["SKOS_STATE.*".into()],
                max_messages_per_subject: 1,
                allow_rollup: true,
                ..Default::default()
            })
            .await
            .unwrap();
    });
    let keys = work.path().join("keys");
    let cfg = fast_config(
        work.path(),
        &format!(
            "nats:\n  nkey_seed_file: {}/coordinator.nk\ntrust:\n  signing_key_file: {}/coordinator-signing.nk\n",
            keys.display(),
            keys.display()
        ),
    );
    let out = run({
        let mut c = skos();
        c.arg("coordinator")
            .arg("--config")
            .arg(&cfg)
            .env("NATS_URL", nats.url());
        c
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("SKOS_STATE") && stderr.contains("cannot be locked with this credential"),
        "{stderr}"
    );
}
