//! The JetStream audit trail cannot be quietly rewritten: every message a
//! coordinator writes is signed; `skos audit verify` reports a stranger's
//! correctly chained record by its stream sequence and keeps going; the
//! coordinator never builds on it; a checkpoint kept outside the trail
//! shows a trail deleted and rebuilt with re-hashed records.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;
use skos_bus::{subjects, NatsBus, NatsOptions};
use skos_core::audit::Chain;
use skos_core::protocol::AuditEntry;
use skos_testsupport::cpufreq::fake_cpufreq;
use skos_testsupport::nats::{nats_server_binary, NatsServer};
use skos_testsupport::sysfs::FakeSysfs;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn verify(nats: &NatsServer, cfg: Option<&Path>, checkpoint: Option<&Path>) -> (bool, String) {
    let out = run({
        let mut c = skos();
        c.args(["audit", "verify"]).env("NATS_URL", nats.url());
        if let Some(cfg) = cfg {
            c.arg("--config").arg(cfg);
        }
        if let Some(cp) = checkpoint {
            c.arg("--checkpoint").arg(cp);
        }
        c
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The last record of the trail, as a stranger reading it would see it.
fn last_record(nats: &NatsServer) -> skos_core::audit::AuditRecord {
    let records = audit(nats);
    serde_json::from_value(records.last().unwrap().clone()).unwrap()
}

/// Publish `record` on `subject` as a plain client (no signature).
fn publish_raw(nats: &NatsServer, subject: &str, payload: Vec<u8>) -> u64 {
    rt().block_on(async {
        let bus = NatsBus::connect(&NatsOptions::new(nats.url(), "stranger"))
            .await
            .unwrap();
        let ack = bus
            .jetstream()
            .publish(subject.to_string(), payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
        ack.sequence
    })
}

fn forged_entry(summary: &str) -> AuditEntry {
    AuditEntry::new(
        skos_core::AuditEvent::Alert,
        chrono::Utc::now(),
        None,
        "coordinator",
        summary.to_string(),
        serde_json::json!({"forged": true}),
    )
}

#[test]
fn a_strangers_record_is_named_and_never_built_upon_and_a_rebuilt_trail_is_caught() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = fast_config(work.path(), &trust_section(work.path()));
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(50.0, &[48.0]);
    fake_cpufreq(sys.root(), 2, 800_000, 3_600_000);
    let _coordinator = coordinator(&nats, &cfg, work.path(), "coordinator");
    let _agent = agent(&nats, &cfg, work.path(), sys.root(), "n1");
    wait_for(Duration::from_secs(30), "n1 joined", || {
        audit_events(&audit(&nats), "node").first().cloned()
    });

    // Signed throughout.
    let (ok, text) = verify(&nats, Some(&cfg), None);
    assert!(ok, "{text}");
    assert!(
        text.contains("every message signed by a trusted key"),
        "{text}"
    );

    // A checkpoint kept outside the trail.
    let cp = work.path().join("checkpoint.json");
    let out = run({
        let mut c = skos();
        c.args(["audit", "checkpoint", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&cp)
            .env("NATS_URL", nats.url());
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checkpoint: Value = serde_json::from_str(&std::fs::read_to_string(&cp).unwrap()).unwrap();
    assert!(checkpoint["signature"].is_string(), "{checkpoint}");
    let (ok, text) = verify(&nats, Some(&cfg), Some(&cp));
    assert!(ok && text.contains("matches the checkpoint"), "{text}");

    // A stranger appends a correctly chained record.
    let last = last_record(&nats);
    let mut chain = Chain::resume(Some(&last));
    let forged = chain.seal(forged_entry("forged: n1 is fine"));
    let at = publish_raw(
        &nats,
        &subjects::audit("alert"),
        serde_json::to_vec(&forged).unwrap(),
    );
    let (ok, text) = verify(&nats, Some(&cfg), None);
    assert!(!ok, "a stranger's record passed:\n{text}");
    assert!(
        text.contains(&format!("foreign: message {at} on SKOS_AUDIT.alert")),
        "{text}"
    );
    assert!(text.contains("0 breaks, 1 foreign"), "{text}");
    // Without keys it cannot be told apart: the note says so.
    let (_, text) = verify(&nats, None, None);
    assert!(text.contains("signatures not checked"), "{text}");

    // `audit tail -f` with the operator's read-only means (no consumer):
    // what is written from now on is printed as it comes.
    let mut tail = Proc::spawn(
        {
            let mut c = skos();
            c.args(["audit", "tail", "-f", "-n", "1", "--json"])
                .env("NATS_URL", nats.url());
            c
        },
        work.path(),
        "tail-f",
    );
    // The coordinator goes on from its own last record, not the stranger's.
    cpu.heat(87.0);
    wait_for(Duration::from_secs(30), "the throttle audited", || {
        let r = audit(&nats);
        r.iter()
            .any(|r| result_is(r, "throttle_50", "succeeded"))
            .then_some(())
    });
    let followed = wait_for(
        Duration::from_secs(30),
        "tail -f to print the throttle's result",
        || {
            let lines: Vec<Value> = tail
                .log_text()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            lines
                .iter()
                .any(|r| result_is(r, "throttle_50", "succeeded"))
                .then_some(lines)
        },
    );
    // Every record written meanwhile, once each, as stored: the stranger's
    // (printed first, by `-n 1`) and then the coordinator's own, though
    // both say seq {n}.
    let hashes: Vec<&str> = followed.iter().filter_map(|r| r["hash"].as_str()).collect();
    let mut unique = hashes.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), hashes.len(), "a record printed twice");
    let n = last.seq + 1;
    assert_eq!(
        followed
            .iter()
            .filter(|r| r["seq"].as_u64() == Some(n))
            .count(),
        2,
        "the forged record and the coordinator's own"
    );
    assert!(tail.sigterm().success());
    let records = audit(&nats);
    let after: Vec<&Value> = records
        .iter()
        .filter(|r| r["seq"].as_u64() > Some(last.seq))
        .collect();
    assert!(after.len() >= 3, "{after:?}");
    let own = after
        .iter()
        .find(|r| r["entry"]["summary"] != "forged: n1 is fine")
        .unwrap();
    assert_eq!(own["seq"].as_u64(), Some(last.seq + 1), "{own}");
    assert_eq!(own["prev_hash"], last.hash.as_str(), "{own}");
    let (ok, text) = verify(&nats, Some(&cfg), Some(&cp));
    assert!(!ok, "{text}");
    assert!(
        text.contains("0 breaks, 1 foreign") && !text.contains("checkpoint:"),
        "only the stranger's message is wrong:\n{text}"
    );

    // The stream deleted and rebuilt with every record re-hashed, one of
    // them changed: nothing in it is signed, and the checkpoint's record
    // no longer has its hash.
    let originals = audit(&nats);
    rt().block_on(async {
        let bus = NatsBus::connect(&NatsOptions::new(nats.url(), "stranger"))
            .await
            .unwrap();
        bus.jetstream()
            .delete_stream(subjects::STREAM_AUDIT)
            .await
            .unwrap();
    });
    drop(_coordinator);
    rt().block_on(async {
        // Connecting creates the streams again, as a coordinator would.
        let bus = NatsBus::connect(&NatsOptions::new(nats.url(), "stranger"))
            .await
            .unwrap();
        let mut chain = Chain::default();
        for (i, r) in originals.iter().enumerate() {
            let mut entry: AuditEntry = serde_json::from_value(r["entry"].clone()).unwrap();
            if i == 1 {
                entry.summary = "rewritten".into();
            }
            let record = chain.seal(entry);
            bus.jetstream()
                .publish(
                    subjects::audit(&record.entry.event_type),
                    serde_json::to_vec(&record).unwrap().into(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    let (ok, text) = verify(&nats, Some(&cfg), Some(&cp));
    assert!(!ok, "{text}");
    assert!(text.contains("foreign: message 1 "), "{text}");
    // Even with no key to check signatures, the checkpoint catches it.
    let (ok, text) = verify(&nats, None, Some(&cp));
    assert!(
        !ok,
        "a rebuilt trail passed against the checkpoint:\n{text}"
    );
    assert!(text.contains("the trail was changed or rebuilt"), "{text}");
}

/// Before any coordinator has written (a new fleet), a stranger creates
/// `SKOS_AUDIT` and publishes one unsigned record: the coordinator does not
/// build on it (its signed chain starts at seq 1 on the genesis hash), and
/// `audit verify` names the stranger's message and finds the chain intact.
#[test]
fn a_strangers_record_on_an_unwritten_trail_is_not_built_upon() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = fast_config(work.path(), &trust_section(work.path()));
    let forged = rt().block_on(async {
        let bus = NatsBus::connect(&NatsOptions::new(nats.url(), "stranger"))
            .await
            .unwrap();
        let log = skos_bus::AuditLog::open_jetstream(&bus).await.unwrap();
        log.append(forged_entry("forged: the fleet's history begins here"))
            .await
            .unwrap()
    });
    let sys = FakeSysfs::new();
    sys.coretemp(50.0, &[48.0]);
    let _coordinator = coordinator(&nats, &cfg, work.path(), "coordinator");
    let _agent = agent(&nats, &cfg, work.path(), sys.root(), "n1");
    wait_for(Duration::from_secs(30), "n1 joined", || {
        audit_events(&audit(&nats), "node").first().cloned()
    });
    let records = audit(&nats);
    let second = &records[1];
    assert_ne!(second["prev_hash"], forged.hash.as_str(), "{second}");
    assert_eq!(second["seq"], 1, "{second}");
    assert_eq!(second["prev_hash"], skos_core::audit::GENESIS, "{second}");
    let (ok, text) = verify(&nats, Some(&cfg), None);
    assert!(!ok, "the stranger's message is named: {text}");
    assert!(
        text.contains("foreign: message 1 ") && text.contains("0 breaks, 1 foreign"),
        "{text}"
    );
}

/// The embedded trail kept compact: `skos audit verify` goes through the
/// sealed segments and the live file, says how many records aged out by
/// policy (recorded in the chain) and passes; `skos audit tail` reads
/// across the rotation; a segment removed by hand fails, named.
#[test]
fn sealed_segments_and_an_age_out_verify_and_a_removed_segment_is_named() {
    use skos_bus::audit::{AuditLog, Policy};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let path = data.join("audit.jsonl");
    let entry = |i: u32, at: chrono::DateTime<chrono::Utc>| {
        AuditEntry::new(
            skos_core::AuditEvent::Decision,
            at,
            None,
            "coordinator",
            format!("e{i}"),
            serde_json::json!({ "i": i }),
        )
    };
    rt().block_on(async {
        let log = AuditLog::open_file_with(
            &path,
            Policy {
                segment_bytes: u64::MAX,
                segment_age: Duration::from_secs(365 * 86_400),
                retain: Some(Duration::from_secs(30 * 86_400)),
            },
        )
        .unwrap();
        let old = chrono::Utc::now() - chrono::Duration::days(40);
        log.append_many((0..20).map(|i| entry(i, old)).collect())
            .await
            .unwrap();
        // 1..=20 sealed and aged out at once (seal 21, expired 22).
        log.rotate_now().await.unwrap();
        log.append_many((20..30).map(|i| entry(i, chrono::Utc::now())).collect())
            .await
            .unwrap();
        // 21..=32 sealed (seal 33), then 34..=36 in the live file.
        log.rotate_now().await.unwrap();
        for i in 30..33 {
            log.append(entry(i, chrono::Utc::now())).await.unwrap();
        }
    });
    let verify = || {
        run({
            let mut c = skos();
            c.args(["audit", "verify", "--data-dir"]).arg(&data);
            c
        })
    };
    let out = verify();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("OK: 16 records")
            && said.contains("1 sealed segments")
            && said.contains("20 records aged out by policy (seq 1..20)"),
        "{said}"
    );
    let out = run({
        let mut c = skos();
        c.args(["audit", "tail", "-n", "6", "--json", "--data-dir"])
            .arg(&data);
        c
    });
    let seqs: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (31..=36).collect::<Vec<u64>>());

    let segment = skos_bus::audit::segments::list(&path).unwrap()[0]
        .name
        .clone();
    std::fs::remove_file(data.join(&segment)).unwrap();
    let out = verify();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "segment {segment} (seq 21..32), sealed at seq 33, is missing"
        )),
        "{said}"
    );
}

/// `skos up` killed (`SKOS_FAILPOINT`, as abrupt as a SIGKILL) between
/// the steps of sealing its audit file into a segment, at start when the
/// file is past `audit.segment_bytes`: the trail verifies as the crash left
/// it, and the next `skos up` completes the rotation.
#[test]
fn skos_up_killed_mid_rotation_leaves_a_trail_that_verifies() {
    use skos_bus::audit::AuditLog;
    for point in ["audit.segment_written", "audit.sealed"] {
        let work = tempfile::tempdir().unwrap();
        let sys = FakeSysfs::new();
        let data = work.path().join("data");
        let path = data.join("audit.jsonl");
        rt().block_on(async {
            let log = AuditLog::open_file(&path).unwrap();
            let entries = (0..400)
                .map(|i| {
                    AuditEntry::new(
                        skos_core::AuditEvent::Decision,
                        chrono::Utc::now(),
                        None,
                        "coordinator",
                        format!("e{i}"),
                        serde_json::json!({ "i": i, "pad": "x".repeat(200) }),
                    )
                })
                .collect();
            log.append_many(entries).await.unwrap();
        });
        assert!(std::fs::metadata(&path).unwrap().len() > 65_536);
        let cfg = fast_config(
            work.path(),
            "audit:\n  segment_bytes: 65536\nhttp:\n  listen: 'off'\n",
        );
        let up = |failpoint: Option<&str>, name: &str| {
            let mut c = skos();
            c.arg("up")
                .arg("--config")
                .arg(&cfg)
                .arg("--data-dir")
                .arg(&data)
                .env("SKOS_SYSFS_ROOT", sys.root());
            match failpoint {
                Some(p) => c.env("SKOS_FAILPOINT", p),
                None => c.env_remove("SKOS_FAILPOINT"),
            };
            Proc::spawn(c, work.path(), name)
        };
        let verify = || {
            let out = run({
                let mut c = skos();
                c.args(["audit", "verify", "--data-dir"]).arg(&data);
                c
            });
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).to_string(),
            )
        };
        let mut crashed = up(Some(point), "crashed");
        wait_for(Duration::from_secs(30), "skos up to abort", || {
            (!crashed.alive()).then_some(())
        });
        wait_for(Duration::from_secs(10), "the abort in the log", || {
            let log = crashed.log_text();
            (log.contains("SKOS_FAILPOINT: aborting at") && log.contains(point)).then_some(())
        });
        let (ok, said) = verify();
        assert!(
            ok && said.contains("copies left by an interrupted rotation"),
            "{point}: {said}"
        );

        let mut again = up(None, "again");
        wait_for(Duration::from_secs(30), "the start record", || {
            skos_bus::audit::read_file_tail(&path, 3)
                .ok()?
                .iter()
                .any(|r| r["entry"]["event_type"] == "start")
                .then_some(())
        });
        assert!(again.sigterm().success());
        let (ok, said) = verify();
        assert!(ok, "{point}: {said}");
        assert!(
            said.contains("1 sealed segments") && !said.contains("copies"),
            "{point}: {said}"
        );
        let live = skos_bus::audit::read_file(&path).unwrap();
        assert_eq!(live[0]["entry"]["event_type"], "audit_sealed", "{point}");
    }
}

/// A user who may not read the data dir (`0700` root's, read by `nobody`)
/// is told so by `skos audit tail` and `verify`, not that there is no trail.
#[test]
fn a_trail_the_user_may_not_read_is_said_so_not_missing() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    skos_testsupport::require!("root", skos_testsupport::require::root());
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut chain = Chain::resume(None);
    let record = chain.seal(forged_entry("a record"));
    std::fs::write(
        data.join("audit.jsonl"),
        format!("{}\n", serde_json::to_string(&record).unwrap()),
    )
    .unwrap();
    for what in ["tail", "verify"] {
        let out = run({
            let mut c = skos();
            c.args(["audit", what, "--data-dir"])
                .arg(&data)
                .uid(65534)
                .gid(65534);
            c
        });
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: {err}");
        assert!(!err.contains("no audit trail"), "{what}: {err}");
        assert!(err.contains("Permission denied"), "{what}: {err}");
    }
}

/// An intact trail whose entries hold floats at full precision (a usage
/// percentage computed from counters, an averaged reading) verifies. Both
/// ways a record is written are checked: the entry's canonical text
/// (`Chain::seal_to`, what the binary writes), verified from its stored
/// text whatever the float parser, and its fields in declared order (what
/// earlier versions wrote), hashed as the entry renders again after
/// reading it, which holds only where floats read back exactly (the
/// package's default `exact-floats`): read approximately,
/// `10059.572680154533` came back as `10059.572680154532` and the record
/// was reported changed.
#[test]
fn full_precision_floats_in_an_intact_trail_verify() {
    let dir = tempfile::tempdir().unwrap();
    let floats = [
        10059.572680154533,
        30031.507059462838,
        -1.603964615428183e143,
        1.5860846119992697e-265,
        100.0 / 3.0,
        93.737_362_918_73,
    ];
    let mut chain = Chain::resume(None);
    let mut text = Vec::new();
    for (i, f) in floats.into_iter().enumerate() {
        let mut entry = forged_entry(&format!("reading {i}"));
        entry.data = serde_json::json!({"usage_percent": f, "mean": [f / 3.0, f * 7.0]});
        if i % 2 == 0 {
            chain.seal_to(entry, &mut text).unwrap();
        } else {
            serde_json::to_writer(&mut text, &chain.seal(entry)).unwrap();
        }
        text.push(b'\n');
    }
    std::fs::write(dir.path().join("audit.jsonl"), &text).unwrap();
    let out = run({
        let mut c = skos();
        c.args(["audit", "verify", "--data-dir"]).arg(dir.path());
        c
    });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("{} records verified", floats.len())),
        "{said}"
    );
}

/// `SKOS_AUDIT` deleted under a running coordinator (by an admin: no SKOS
/// credential may): the coordinator makes it again, records the loss
/// (signed, first in the new stream) and carries its chain on; the heal
/// that follows is audited in it; `/metrics` counts both; `audit verify`
/// fails, naming the replacement.
#[test]
fn a_trail_deleted_under_a_running_coordinator_is_made_again_and_the_loss_recorded() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = fast_config(work.path(), &trust_section(work.path()));
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(50.0, &[48.0]);
    fake_cpufreq(sys.root(), 2, 800_000, 3_600_000);
    let coordinator = Proc::spawn(
        {
            let mut c = skos();
            c.arg("coordinator")
                .arg("--config")
                .arg(&cfg)
                .args(["--http", "127.0.0.1:0"])
                .env("NATS_URL", nats.url());
            c
        },
        work.path(),
        "coordinator",
    );
    let addr = http_addr(&coordinator);
    let _agent = agent(&nats, &cfg, work.path(), sys.root(), "n1");
    wait_for(Duration::from_secs(30), "n1 joined", || {
        audit_events(&audit(&nats), "node").first().cloned()
    });
    let head = last_record(&nats);

    rt().block_on(async {
        let bus = NatsBus::connect(&NatsOptions::new(nats.url(), "admin"))
            .await
            .unwrap();
        bus.jetstream()
            .delete_stream(subjects::STREAM_AUDIT)
            .await
            .unwrap();
    });
    // What the coordinator writes next (its checkpoint, or the heal) finds
    // the stream gone.
    cpu.heat(87.0);
    let records = wait_for(Duration::from_secs(60), "the throttle audited", || {
        let r = audit(&nats);
        r.iter()
            .any(|r| result_is(r, "throttle_50", "succeeded"))
            .then_some(r)
    });
    let first = &records[0];
    assert_eq!(
        first["entry"]["event_type"], "audit_trail_replaced",
        "{first}"
    );
    assert!(first["seq"].as_u64() > Some(head.seq), "{first}");
    assert_eq!(first["entry"]["data"]["remade"], true, "{first}");
    let named = first["entry"]["data"]["head_seq"].as_u64().unwrap();
    assert!(named >= head.seq, "{first}");
    assert_eq!(first["seq"].as_u64(), Some(named + 1), "{first}");
    let seqs: Vec<u64> = records.iter().filter_map(|r| r["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "the chain goes on: {seqs:?}"
    );

    let (ok, text) = verify(&nats, Some(&cfg), None);
    assert!(!ok, "{text}");
    assert!(
        text.contains("replaced under its writer") && text.contains("0 foreign"),
        "signed, and named:\n{text}"
    );
    wait_for(
        Duration::from_secs(30),
        "the replacement and the heal in /metrics",
        || {
            let m = http_get(addr, "/metrics", Duration::from_secs(10)).1;
            (m.contains(r#"skos_audit_records_total{event_type="audit_trail_replaced"} 1"#)
                && m.contains(r#"skos_audit_records_total{event_type="result"}"#))
            .then_some(())
        },
    );
    assert!(
        coordinator.log_text().contains("the audit stream is gone"),
        "{}",
        coordinator.log_text()
    );
}
