//! What SKOS keeps on the bus replaced under running processes (deleted,
//! or deleted and made again, by an admin or a server that lost its store),
//! against a real nats-server: the audit writer records the loss and
//! carries its chain on, `verify` names it, followers read the new stream;
//! the other streams and the lease bucket are made again as they were
//! made, and terms never go back. The embedded trail's live file too.
//! At the edges: [`edges`], [`hostile`], [`strays`].

mod edges;
mod hostile;
mod strays;

use std::time::Duration;

use serde_json::Value;
use skos_bus::audit::{self, AuditLog};
use skos_bus::audit_follow::{AuditFollower, AuditSource};
use skos_bus::{subjects, Error, NatsBus, NatsOptions};
use skos_core::{AuditEntry, AuditEvent};
use skos_testsupport::nats::{nats_server_binary, NatsServer};

fn entry(i: u32) -> AuditEntry {
    AuditEntry::new(
        AuditEvent::Node,
        chrono::Utc::now(),
        None,
        "t",
        format!("e{i}"),
        serde_json::json!({ "i": i }),
    )
}

async fn connect(server: &NatsServer) -> NatsBus {
    let mut opts = NatsOptions::new(server.url(), "test");
    opts.audit_max_age = Duration::from_secs(30 * 86_400);
    NatsBus::connect(&opts).await.unwrap()
}

/// Delete `SKOS_AUDIT` (deny_delete does not stop it: only permissions do).
async fn delete(bus: &NatsBus) {
    bus.jetstream()
        .delete_stream(subjects::STREAM_AUDIT)
        .await
        .unwrap();
}

/// The records' seqs (a message that is no record has none).
fn seqs(records: &[Value]) -> Vec<u64> {
    records.iter().filter_map(|r| r["seq"].as_u64()).collect()
}

fn events(records: &[Value]) -> Vec<&str> {
    records
        .iter()
        .map(|r| r["entry"]["event_type"].as_str().unwrap_or("?"))
        .collect()
}

async fn verify(bus: &NatsBus) -> audit::TrailReport {
    audit::check::verify_jetstream(bus, None, None, |_, _| {})
        .await
        .unwrap()
}

/// Deleted and made again (another process connecting makes the streams):
/// the writer's next append records the replacement, naming its head and
/// both streams, and carries the chain on from its head; `verify` fails,
/// naming the loss once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_made_again_under_the_writer_is_recorded_and_its_chain_goes_on() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let log = AuditLog::open_jetstream(&bus).await.unwrap();
    for i in 0..3 {
        log.append(entry(i)).await.unwrap();
    }
    log.append_many(vec![entry(3), entry(4)]).await.unwrap();
    let head = read(&bus).await.last().unwrap()["hash"].clone();
    delete(&bus).await;
    let _other = connect(&server).await;

    assert_eq!(log.append(entry(5)).await.unwrap().seq, 7);
    log.append_many(vec![entry(6), entry(7)]).await.unwrap();
    let records = read(&bus).await;
    assert_eq!(seqs(&records), [6, 7, 8, 9]);
    assert_eq!(events(&records)[0], "audit_trail_replaced");
    let data = &records[0]["entry"]["data"];
    assert_eq!(data["head_seq"], 5);
    assert_eq!(data["head_hash"], head);
    assert_eq!(
        records[0]["prev_hash"], head,
        "the chain goes on from the head"
    );
    assert_eq!(
        data["was"]["last_stream_seq"], 4,
        "three records and a batch"
    );
    assert_eq!(data["now"]["last_stream_seq"], 0);
    assert_eq!(data["remade"], false);
    assert_ne!(data["was"]["made"], data["now"]["made"]);

    let report = verify(&bus).await;
    assert!(!report.ok());
    assert_eq!(report.break_count, 1, "{:?}", report.breaks);
    assert!(
        report.breaks[0].contains("replaced under its writer")
            && report.breaks[0].contains("records up to seq 5"),
        "{:?}",
        report.breaks
    );
    assert_eq!(report.records, 4);
}

/// Deleted and not made again: the writer makes it again, locked and with
/// its retention, and records that it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_deleted_under_the_writer_is_made_again_locked() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let log = AuditLog::open_jetstream(&bus).await.unwrap();
    log.append(entry(0)).await.unwrap();
    delete(&bus).await;

    log.append_many(vec![entry(1), entry(2)]).await.unwrap();
    let records = read(&bus).await;
    assert_eq!(seqs(&records), [2, 3, 4]);
    assert_eq!(records[0]["entry"]["data"]["remade"], true);
    assert!(audit::stream_is_locked(&bus).await.unwrap());
    let mut stream = bus
        .jetstream()
        .get_stream(subjects::STREAM_AUDIT)
        .await
        .unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, Duration::from_secs(30 * 86_400));
}

/// Made again with as many messages as the writer wrote: its appends are
/// not refused, so the writer's own check of the stream's identity finds
/// it (every ten seconds, here asked for at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_made_again_to_the_same_length_is_found_by_its_identity() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let log = AuditLog::open_jetstream(&bus).await.unwrap();
    log.append(entry(0)).await.unwrap();
    log.append(entry(1)).await.unwrap();
    delete(&bus).await;
    let _other = connect(&server).await;
    for _ in 0..2 {
        bus.jetstream()
            .publish(format!("{}.x", subjects::STREAM_AUDIT), "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    log.check_stream_now().await.unwrap();
    log.append(entry(2)).await.unwrap();
    let records: Vec<Value> = read(&bus)
        .await
        .into_iter()
        .filter(|r| r.get("seq").is_some())
        .collect();
    assert_eq!(seqs(&records), [3, 4]);
    assert_eq!(events(&records)[0], "audit_trail_replaced");
    assert_eq!(records[0]["entry"]["data"]["now"]["last_stream_seq"], 2);
}

/// Fencing holds across a replacement: a newer leader records it, and the
/// deposed writer's next append fails; a writer of the same term whose
/// head is older than the new stream's continues from it, recording
/// nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_replacement_a_deposed_writer_is_fenced_and_a_later_one_carries_on() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let old = AuditLog::open_jetstream(&bus).await.unwrap();
    old.set_term(Some(1));
    old.append(entry(0)).await.unwrap();
    let stale = AuditLog::open_jetstream(&bus).await.unwrap();
    stale.set_term(Some(2));
    let new = AuditLog::open_jetstream(&bus).await.unwrap();
    new.set_term(Some(2));
    new.append(entry(1)).await.unwrap();
    delete(&bus).await;
    let _other = connect(&server).await;

    new.append(entry(2)).await.unwrap();
    assert!(
        matches!(
            old.append(entry(3)).await,
            Err(Error::Deposed { term: 1, newer: 2 })
        ),
        "the deposed writer is fenced"
    );
    assert_eq!(stale.append(entry(4)).await.unwrap().seq, 5);
    let records = read(&bus).await;
    assert_eq!(seqs(&records), [3, 4, 5]);
    assert_eq!(
        events(&records),
        ["audit_trail_replaced", "node", "node"],
        "one record of the replacement"
    );
    assert_eq!(verify(&bus).await.break_count, 1);
}

/// A follower of the stream finds the replacement (its ordered consumer
/// would wait past the old stream's last sequence for good) and, opened
/// again, reads the new stream's records; `audit tail -f`'s read by
/// sequence does too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_read_the_stream_made_again_from_its_start() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let log = AuditLog::open_jetstream(&bus).await.unwrap();
    let source = AuditSource::JetStream(bus.clone(), None);
    let (mut follower, _) = AuditFollower::open(&source, 0).await.unwrap();
    let tail = audit::read_jetstream_after(&bus, None, 10).await.unwrap();
    for i in 0..3 {
        log.append(entry(i)).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(follower.next().await.unwrap());
    }
    assert_eq!(seqs(&got), [1, 2, 3]);
    delete(&bus).await;
    let _other = connect(&server).await;
    log.append(entry(3)).await.unwrap();

    let found = tokio::time::timeout(Duration::from_secs(60), follower.next())
        .await
        .expect("the follower finds the replacement");
    assert!(matches!(found, Err(Error::Replaced { .. })), "{found:?}");
    let (_, recent) = AuditFollower::open(&source, 10).await.unwrap();
    assert_eq!(seqs(&recent), [4, 5]);
    let later = audit::read_jetstream_after(&bus, Some(tail.at), 10)
        .await
        .unwrap();
    assert!(later.replaced);
    assert_eq!(seqs(&later.records), [4, 5]);
    let next = audit::read_jetstream_after(&bus, Some(later.at), 10)
        .await
        .unwrap();
    assert!(!next.replaced && next.records.is_empty());
}

async fn read(bus: &NatsBus) -> Vec<Value> {
    audit::read_jetstream(bus, None).await.unwrap()
}

/// The embedded mode's live file, removed under its writer: made again,
/// locked, the loss recorded first in it on the chain carried on; `verify`
/// names it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_file_removed_under_the_writer_is_made_again_and_the_loss_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open_file(&path).unwrap();
    for i in 0..3 {
        log.append(entry(i)).await.unwrap();
    }
    std::fs::remove_file(&path).unwrap();

    assert_eq!(log.append(entry(3)).await.unwrap().seq, 5);
    log.append_many(vec![entry(4), entry(5)]).await.unwrap();
    let records = audit::read_file(&path).unwrap();
    assert_eq!(seqs(&records), [4, 5, 6, 7]);
    let data = &records[0]["entry"]["data"];
    assert_eq!(events(&records)[0], "audit_trail_replaced");
    assert_eq!(data["head_seq"], 3);
    assert_eq!(data["remade"], true);
    assert!(data["was"]["bytes"].as_u64().unwrap() > 0);
    assert!(data["now"].get("bytes").is_none(), "no file was there");
    // Made again locked: a second writer is refused.
    assert!(AuditLog::open_file(&path).is_err());

    let report = audit::check::verify_file(&path, None).unwrap();
    assert_eq!(report.break_count, 1, "{:?}", report.breaks);
    assert!(
        report.breaks[0].contains("replaced under its writer")
            && report.breaks[0].contains("records up to seq 3"),
        "{:?}",
        report.breaks
    );
    assert_eq!(report.records, 4);
}

/// Moved away after a seal, another file put in its place: the records
/// since the seal are named lost (once, the gap after the segment with
/// them); a second process that took the path's lock keeps it, and this
/// writer's appends fail rather than go nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_file_swapped_under_the_writer_is_named_and_a_second_writer_keeps_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open_file(&path).unwrap();
    for i in 0..3 {
        log.append(entry(i)).await.unwrap();
    }
    assert!(log.rotate_now().await.unwrap(), "sealed");
    log.append(entry(3)).await.unwrap();
    std::fs::rename(&path, dir.path().join("moved.jsonl")).unwrap();
    std::fs::write(&path, "").unwrap();

    assert_eq!(log.append(entry(4)).await.unwrap().seq, 7);
    let records = audit::read_file(&path).unwrap();
    assert_eq!(seqs(&records), [6, 7]);
    assert_eq!(records[0]["entry"]["data"]["now"]["bytes"], 0);
    assert_eq!(records[0]["entry"]["data"]["remade"], false);
    let report = audit::check::verify_file(&path, None).unwrap();
    assert_eq!(report.break_count, 1, "{:?}", report.breaks);
    assert!(
        report.breaks[0].contains("records up to seq 5"),
        "{:?}",
        report.breaks
    );
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("its audit_sealed record (seq 4) was lost")),
        "{:?}",
        report.notes
    );

    // Removed again, and a second process opens the path first.
    std::fs::remove_file(&path).unwrap();
    let second = AuditLog::open_file(&path).unwrap();
    let refused = log.append(entry(5)).await;
    assert!(
        matches!(&refused, Err(Error::Corrupt { reason, .. }) if reason.contains("locked")),
        "{refused:?}"
    );
    second.append(entry(6)).await.unwrap();
}

/// A symlink put in place of the live file is never written through: the
/// append fails, naming the path, and the file it points at is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_in_place_of_the_live_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, "keep\n").unwrap();
    let log = AuditLog::open_file(&path).unwrap();
    log.append(entry(0)).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&target, &path).unwrap();

    let refused = log.append(entry(1)).await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(refused.unwrap_err().to_string().contains("audit.jsonl"));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep\n");
}

/// Streams gone under a running process (a server that lost its store):
/// the next durable publish makes every SKOS stream again as it was made
/// (locked where it was, the per-node limit kept), says `SKOS_COMMANDS`
/// was made again, and is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_gone_are_made_again_as_they_were_made() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let state = skos_bus::state::StateStore::jetstream(&bus).await.unwrap();
    let wrapped = skos_bus::Bus::Nats(bus.clone());
    wrapped.limit_per_node(7).await.unwrap();
    let js = bus.jetstream();
    for name in [
        subjects::STREAM_ALERTS,
        subjects::STREAM_COMMANDS,
        subjects::STREAM_RESULTS,
        subjects::STREAM_AUDIT,
        subjects::STREAM_STATE,
    ] {
        js.delete_stream(name).await.unwrap();
    }
    assert_eq!(wrapped.commands_remade(), 0);

    let nova = skos_core::NodeName::parse("nova").unwrap();
    let cmd = skos_core::protocol::Command {
        action_id: "c-1".into(),
        action_type: "throttle_50".into(),
        parameters: Default::default(),
        timestamp: chrono::Utc::now(),
        node: Some(nova.clone()),
        deadline: None,
        cause: None,
        problem: None,
        term: None,
        level: None,
    };
    wrapped.send_command(&nova, &cmd, None).await.unwrap();
    assert_eq!(wrapped.commands_remade(), 1);
    let config = |name: &'static str| async move {
        let mut s = js.get_stream(name).await.unwrap();
        let info = s.info().await.unwrap();
        (info.config.clone(), info.state.messages)
    };
    assert_eq!(config(subjects::STREAM_COMMANDS).await.1, 1, "stored");
    assert_eq!(
        config(subjects::STREAM_ALERTS)
            .await
            .0
            .max_messages_per_subject,
        7
    );
    assert_eq!(
        config(subjects::STREAM_RESULTS)
            .await
            .0
            .max_messages_per_subject,
        7
    );
    assert!(audit::stream_is_locked(&bus).await.unwrap());
    let (state_config, _) = config(subjects::STREAM_STATE).await;
    assert!(state_config.deny_delete && state_config.deny_purge);
    // The command consumer of a node is made again on the new stream.
    wrapped.ensure_command_consumer(&nova).await.unwrap();

    // SKOS_STATE was made again above by another (the bus): the store
    // finds another stream in place of its own.
    assert_eq!(state.remade(), 0);
    state.check_made_now().await;
    assert_eq!(state.remade(), 1, "made again by another process");
    state.check_made_now().await;
    assert_eq!(state.remade(), 1, "once");
    // The state stream gone alone: a save makes it again, is stored, and
    // counts it (the writer then saves every key again).
    js.delete_stream(subjects::STREAM_STATE).await.unwrap();
    state.save("node_nova", "x".into()).await.unwrap();
    assert_eq!(
        state.load("node_nova").await.unwrap().as_deref(),
        Some(&b"x"[..])
    );
    assert_eq!(state.remade(), 2);
}

/// The lease bucket gone (with the key in it): the next try makes it again,
/// and the term won is above the highest seen, not the new bucket's first
/// revision; a leader renewing finds its lease lost, and wins again above
/// its own term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_bucket_made_again_never_gives_a_lower_term() {
    use skos_bus::lease::{Lease, Renewal};
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let bucket = format!("KV_{}", subjects::LEADER_BUCKET);
    let mut a = Lease::open(&bus, "a:1:x".into(), Duration::from_secs(30))
        .await
        .unwrap();
    for _ in 0..4 {
        let _ = a.try_acquire(chrono::Utc::now()).await.unwrap();
        a.release().await;
    }
    let won = a.try_acquire(chrono::Utc::now()).await.unwrap().unwrap();
    assert!(won.term > 1, "{won:?}");
    bus.jetstream().delete_stream(&bucket).await.unwrap();

    assert_eq!(a.renew().await.unwrap(), Renewal::Lost);
    let again = a.try_acquire(chrono::Utc::now()).await.unwrap().unwrap();
    assert_eq!(again.term, won.term + 1);
    let (record, revision) = a.current().await.unwrap().unwrap();
    assert_eq!(record.term, Some(again.term));
    assert!(revision <= again.term);

    // Another coordinator that knows no term: it learns one from the
    // trail (observe) and passes it.
    bus.jetstream().delete_stream(&bucket).await.unwrap();
    let mut b = Lease::open(&bus, "b:2:y".into(), Duration::from_secs(30))
        .await
        .unwrap();
    b.observe(40);
    assert_eq!(
        b.try_acquire(chrono::Utc::now())
            .await
            .unwrap()
            .unwrap()
            .term,
        41
    );
    assert!(a.try_acquire(chrono::Utc::now()).await.unwrap().is_none());
    assert!(a.floor() >= 41, "a sees b's term");

    // No term left above the highest seen: refused, never the same twice.
    bus.jetstream().delete_stream(&bucket).await.unwrap();
    let mut c = Lease::open(&bus, "c:3:z".into(), Duration::from_secs(30))
        .await
        .unwrap();
    // A term far above any seen is not believed (forged)...
    c.observe(u64::MAX);
    assert_eq!(c.floor(), 0);
    // ...so the highest is reached only by steps of at most the bound.
    while c.floor() < u64::MAX {
        c.observe(c.floor().saturating_add(skos_bus::lease::TERM_JUMP_MAX));
    }
    let refused = c.try_acquire(chrono::Utc::now()).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("no term is left")),
        "{refused:?}"
    );
    assert!(c.term().is_none());
    // The key its create made is given back: another coordinator leads.
    let mut d = Lease::open(&bus, "d:4:w".into(), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(d.try_acquire(chrono::Utc::now()).await.unwrap().is_some());
}
