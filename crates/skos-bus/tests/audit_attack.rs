//! Attacks on the signed JetStream audit trail, by a client that may publish
//! on `SKOS_AUDIT.*` (an open server, as agents set up by default).

use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;
use serde_json::Value;
use skos_bus::audit::{self, AuditLog, Signing};
use skos_bus::{subjects, trust, NatsBus, NatsOptions};
use skos_core::AuditEntry;
use skos_testsupport::nats::{nats_server_binary, NatsServer};

fn entry(i: u32) -> AuditEntry {
    AuditEntry::new(
        skos_core::AuditEvent::Node,
        chrono::Utc::now(),
        None,
        "coordinator",
        format!("e{i}"),
        serde_json::json!({ "i": i }),
    )
}

async fn signed_log(bus: &NatsBus, signer: &Arc<trust::Signer>) -> AuditLog {
    AuditLog::open_jetstream_signed(bus, Some(Signing::new(signer.clone(), &[]).unwrap()))
        .await
        .unwrap()
}

fn seqs(records: &[Value]) -> Vec<u64> {
    records.iter().map(|r| r["seq"].as_u64().unwrap()).collect()
}

/// Republish the stored message at `stream_seq` as it is (its payload and
/// signature headers, not its Nats-Msg-Id), as any client on the server can.
async fn replay(bus: &NatsBus, stream_seq: u64) {
    let s = bus
        .jetstream()
        .get_stream(subjects::STREAM_AUDIT)
        .await
        .unwrap();
    let m = s.get_raw_message(stream_seq).await.unwrap();
    let mut h = HeaderMap::new();
    for name in [
        trust::HEADER_SIGNER,
        trust::HEADER_SIGNATURE,
        trust::HEADER_CONTEXT,
    ] {
        if let Some(v) = m.headers.get(name) {
            h.insert(name, v.as_str());
        }
    }
    bus.jetstream()
        .publish_with_headers(m.subject.to_string(), h, m.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// An old, genuinely signed message republished at the tail by a stranger
/// is not signed for that place in the stream: the coordinator goes on from
/// its own last record (no fork).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_old_signed_message_is_not_built_upon() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = NatsBus::connect(&NatsOptions::new(server.url(), "coord"))
        .await
        .unwrap();
    let signer = Arc::new(trust::Signer::ephemeral());
    let log = signed_log(&bus, &signer).await;
    for i in 1..=10 {
        log.append(entry(i)).await.unwrap();
    }
    // A stranger republishes message 3 (record seq 3) at the tail.
    let stranger = NatsBus::connect(&NatsOptions::new(server.url(), "stranger"))
        .await
        .unwrap();
    replay(&stranger, 3).await;
    // The coordinator writes on: its publish is refused (wrong last
    // sequence), it re-reads the tail ...
    let r = log.append(entry(11)).await.unwrap();
    assert_eq!(
        r.seq, 11,
        "the coordinator continued from the replayed record seq 3, not from its own seq 10: \
         it wrote seq {} (a fork of the chain)",
        r.seq
    );
}

/// However many messages that are not records lie at the tail (a payload
/// such as `0`), the coordinator goes on from its own last record, never
/// from the genesis hash in the middle of the trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_at_the_tail_never_restarts_the_chain() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = NatsBus::connect(&NatsOptions::new(server.url(), "coord"))
        .await
        .unwrap();
    let signer = Arc::new(trust::Signer::ephemeral());
    let log = signed_log(&bus, &signer).await;
    for i in 1..=5 {
        log.append(entry(i)).await.unwrap();
    }
    let stranger = NatsBus::connect(&NatsOptions::new(server.url(), "stranger"))
        .await
        .unwrap();
    let mut acks = Vec::new();
    for _ in 0..1001 {
        acks.push(
            stranger
                .jetstream()
                .publish("SKOS_AUDIT.x", Bytes::from_static(b"0"))
                .await
                .unwrap(),
        );
    }
    for a in acks {
        a.await.unwrap();
    }
    let r = log.append(entry(6)).await.unwrap();
    assert_eq!(
        r.seq, 6,
        "after 1,001 junk messages the coordinator wrote seq {} (prev_hash {})",
        r.seq, r.prev_hash
    );
}

/// Many unsigned, well-chained records at the tail carrying a high term:
/// the coordinator neither builds on them nor takes their term for a newer
/// leader's (it is not deposed by a stranger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_records_at_the_tail_neither_fork_nor_depose() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = NatsBus::connect(&NatsOptions::new(server.url(), "coord"))
        .await
        .unwrap();
    let signer = Arc::new(trust::Signer::ephemeral());
    let log = signed_log(&bus, &signer).await;
    log.set_term(Some(1));
    for i in 1..=5 {
        log.append(entry(i)).await.unwrap();
    }
    // The stranger continues the chain, unsigned, with term 1_000_000.
    let stranger = NatsBus::connect(&NatsOptions::new(server.url(), "stranger"))
        .await
        .unwrap();
    let forger = AuditLog::open_jetstream(&stranger).await.unwrap();
    forger.set_term(Some(1_000_000));
    let mut batch = Vec::new();
    for i in 0..1001 {
        batch.push(entry(1000 + i));
    }
    // One by one, so that there are 1,001 messages.
    for e in batch {
        forger.append(e).await.unwrap();
    }
    let out = log.append(entry(6)).await;
    match out {
        Ok(r) => assert!(
            !r.prev_hash.is_empty() && r.seq == 6,
            "the coordinator built on the stranger's record: it wrote seq {}",
            r.seq
        ),
        Err(e) => panic!("the coordinator can no longer write its trail: {e}"),
    }
}

/// `skos audit verify`'s check, with the coordinator's key trusted, after a
/// replay: reported (not OK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_after_replay_is_not_ok() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = NatsBus::connect(&NatsOptions::new(server.url(), "coord"))
        .await
        .unwrap();
    let signer = Arc::new(trust::Signer::ephemeral());
    let log = signed_log(&bus, &signer).await;
    log.append(entry(1)).await.unwrap();
    log.append_many((2..=6).map(entry).collect()).await.unwrap();
    replay(&bus, 2).await;
    let v = trust::Verifier::new(&[signer.public_key()], true).unwrap();
    let r = audit::check::verify_jetstream(&bus, Some(&v), None, |_, _| {})
        .await
        .unwrap();
    assert!(!r.ok(), "{r:?}");
    // A batch message mixing the genuine last record with junk after it:
    // the signature holds (the last *record* is genuine).
    let s = bus
        .jetstream()
        .get_stream(subjects::STREAM_AUDIT)
        .await
        .unwrap();
    let m = s.get_raw_message(2).await.unwrap();
    let mut arr: Vec<Value> = serde_json::from_slice(&m.payload).unwrap();
    arr.push(serde_json::json!({"not": "a record"}));
    let mut h = HeaderMap::new();
    for name in [
        trust::HEADER_SIGNER,
        trust::HEADER_SIGNATURE,
        trust::HEADER_CONTEXT,
    ] {
        h.insert(name, m.headers.get(name).unwrap().as_str());
    }
    bus.jetstream()
        .publish_with_headers(
            m.subject.to_string(),
            h,
            Bytes::from(serde_json::to_vec(&arr).unwrap()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let r = audit::check::verify_jetstream(&bus, Some(&v), None, |_, _| {})
        .await
        .unwrap();
    assert!(!r.ok(), "{r:?}");
    assert_eq!(r.foreign_count, 2, "the replay and the mixed array: {r:?}");
}

/// What held: a signed message relabelled onto another subject, a deeply
/// nested array, non-record payloads, a huge array of junk, a message id
/// taken from the coordinator's last batch: the coordinator goes on from
/// its own last record, verify names each as foreign, nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relabelled_nested_and_junk_messages_are_foreign_and_not_built_upon() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = NatsBus::connect(&NatsOptions::new(server.url(), "coord"))
        .await
        .unwrap();
    let signer = Arc::new(trust::Signer::ephemeral());
    let log = signed_log(&bus, &signer).await;
    log.append(entry(1)).await.unwrap();
    log.append_many((2..=4).map(entry).collect()).await.unwrap();
    let js = bus.jetstream();
    let s = js.get_stream(subjects::STREAM_AUDIT).await.unwrap();
    // Relabelled: message 1 (SKOS_AUDIT.node) onto SKOS_AUDIT.alert.
    let m = s.get_raw_message(1).await.unwrap();
    let mut h = HeaderMap::new();
    for name in [
        trust::HEADER_SIGNER,
        trust::HEADER_SIGNATURE,
        trust::HEADER_CONTEXT,
    ] {
        h.insert(name, m.headers.get(name).unwrap().as_str());
    }
    js.publish_with_headers("SKOS_AUDIT.alert", h, m.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    let huge = format!("[{}0]", "0,".repeat(400_000));
    for p in [
        deep.as_str(),
        "5",
        "\"x\"",
        "null",
        "{}",
        "[]",
        huge.as_str(),
    ] {
        js.publish("SKOS_AUDIT.x", Bytes::from(p.to_string()))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // A message with the coordinator's last batch id: deduplicated or stored, never built upon.
    let last = s.get_raw_message(2).await.unwrap();
    let id = last
        .headers
        .get("Nats-Msg-Id")
        .map(|v| v.as_str().to_string());
    if let Some(id) = id {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", id.as_str());
        let _ = js
            .publish_with_headers("SKOS_AUDIT.batch", h, Bytes::from_static(b"[1,2]"))
            .await
            .unwrap()
            .await;
    }
    let r = log.append(entry(5)).await.unwrap();
    assert_eq!(r.seq, 5);
    let v = trust::Verifier::new(&[signer.public_key()], true).unwrap();
    let rep = audit::check::verify_jetstream(&bus, Some(&v), None, |_, _| {})
        .await
        .unwrap();
    assert_eq!(rep.break_count, 0, "{rep:?}");
    assert_eq!(rep.records, 5, "{rep:?}");
    assert!(rep.foreign_count >= 8, "{rep:?}");
    let recent = log.read_recent(5).await.unwrap();
    assert_eq!(seqs(&recent[recent.len() - 1..]), [5]);
}

/// A record changed on disk by adding a field to its entry fails, as the
/// README's own Python check fails it: the hash is checked over the entry
/// as stored.
#[test]
fn an_added_field_in_a_stored_entry_is_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut chain = skos_core::audit::Chain::default();
    let lines: Vec<String> = (1..=3)
        .map(|i| serde_json::to_string(&chain.seal(entry(i))).unwrap())
        .collect();
    let mut v: Value = serde_json::from_str(&lines[1]).unwrap();
    v["entry"]["approved_by"] = Value::from("the on-call engineer");
    let mut changed = lines.clone();
    changed[1] = serde_json::to_string(&v).unwrap();
    std::fs::write(&path, changed.join("\n") + "\n").unwrap();
    let r = audit::check::verify_file(&path, None).unwrap();
    assert!(!r.ok(), "a changed record verified: {r:?}");
}
