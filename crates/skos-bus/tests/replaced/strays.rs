//! Strays on the bus and by the file: junk and forged records between two
//! writers (signed or not), messages aged out between them, replacement
//! streams that drop or refuse records, junk at the trail's tail while a
//! lease is won, a file cut and padded to the size held, a stream that
//! cannot be made among those to make again.

use std::sync::Arc;
use std::time::Instant;

use super::*;
use skos_bus::audit::Signing;
use skos_bus::lease::Lease;
use skos_bus::trust;

async fn connect_age(server: &NatsServer, age: Duration) -> NatsBus {
    let mut opts = NatsOptions::new(server.url(), "test");
    opts.audit_max_age = age;
    NatsBus::connect(&opts).await.unwrap()
}

fn increasing(s: &[u64]) -> bool {
    s.windows(2).all(|w| w[1] > w[0])
}

/// A stray publisher's message on the audit subjects (no headers: unsigned).
async fn stray(bus: &NatsBus, payload: Vec<u8>) {
    bus.jetstream()
        .publish(format!("{}.node", subjects::STREAM_AUDIT), payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

// ------------------------------------------------------------ links_on

/// Unsigned, two writers with no term (as `a_batch_on_a_stale_tail_...`
/// in audit.rs): A writes 1..3, B opens on A's head. A stray publisher
/// puts 17 junk messages in; B carries the chain on (seq 4, built on A's
/// head). A's next append must build on B's record: the chain must not
/// fork (seq 4 twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_between_two_writers_forks_no_chain() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let a_bus = connect(&server).await;
    let b_bus = connect(&server).await;
    let a = AuditLog::open_jetstream(&a_bus).await.unwrap();
    for i in 0..3 {
        a.append(entry(i)).await.unwrap();
    }
    let b = AuditLog::open_jetstream(&b_bus).await.unwrap();
    for i in 0..17 {
        stray(&b_bus, format!("{{\"junk\":{i}}}").into_bytes()).await;
    }
    let rb = b.append(entry(100)).await.unwrap();
    let ra = a.append(entry(3)).await.unwrap();
    let records = read(&a_bus).await;
    let report = audit::check::verify_jetstream(&a_bus, None, None, |_, _| {})
        .await
        .unwrap();
    eprintln!(
        "B wrote seq {}, A then seq {}; trail {:?}; verify breaks {} {:?} foreign {}",
        rb.seq,
        ra.seq,
        seqs(&records),
        report.break_count,
        report.breaks,
        report.foreign_count
    );
    assert!(
        increasing(&seqs(&records)),
        "the chain forked after 17 stray messages: trail seqs {:?} (B wrote {}, A wrote {})",
        seqs(&records),
        rb.seq,
        ra.seq
    );
    assert_eq!(seqs(&records), [1, 2, 3, 4, 5]);
    // The junk is named by verify, nothing else.
    assert!(
        report.breaks.iter().all(|b| b.contains("unreadable")),
        "verify breaks: {:?}",
        report.breaks
    );
}

/// Signing on (two coordinators trusting each other): 17 unsigned
/// (untrusted) records interleaved by a stranger, then B's signed record
/// built on A's head. A's next append must build on B's signed record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_messages_between_two_signed_writers_fork_no_chain() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let a_bus = connect(&server).await;
    let b_bus = connect(&server).await;
    let sa = Arc::new(trust::Signer::ephemeral());
    let sb = Arc::new(trust::Signer::ephemeral());
    let a = AuditLog::open_jetstream_signed(
        &a_bus,
        Some(Signing::new(sa.clone(), &[sb.public_key()]).unwrap()),
    )
    .await
    .unwrap();
    for i in 0..3 {
        a.append(entry(i)).await.unwrap();
    }
    let b = AuditLog::open_jetstream_signed(
        &b_bus,
        Some(Signing::new(sb.clone(), &[sa.public_key()]).unwrap()),
    )
    .await
    .unwrap();
    let stranger = connect(&server).await;
    for i in 0..17u64 {
        let forged = serde_json::json!({
            "seq": 1000 + i, "prev_hash": "x".repeat(64), "hash": "y".repeat(64),
            "entry": serde_json::to_value(entry(900)).unwrap(),
        });
        stray(&stranger, serde_json::to_vec(&forged).unwrap()).await;
    }
    let rb = b.append(entry(100)).await.unwrap();
    let ra = a.append(entry(3)).await.unwrap();
    let trusted = trust::Verifier::new(&[sa.public_key(), sb.public_key()], true).unwrap();
    let report = audit::check::verify_jetstream(&a_bus, Some(&trusted), None, |_, _| {})
        .await
        .unwrap();
    eprintln!(
        "B wrote seq {} (prev {}), A then seq {} (prev {}); verify breaks {} {:?} foreign {}",
        rb.seq,
        &rb.prev_hash[..8],
        ra.seq,
        &ra.prev_hash[..8],
        report.break_count,
        report.breaks,
        report.foreign_count
    );
    assert!(
        ra.seq > rb.seq,
        "signed chain forked: B's trusted record seq {} then A's seq {} (A did not build on B)",
        rb.seq,
        ra.seq
    );
    assert_eq!(report.break_count, 0, "verify breaks: {:?}", report.breaks);
}

/// Unsigned: the first message after the head holds a record that links
/// to the head (seq head+1, prev_hash the head's hash: both readable by
/// anyone), the next a record at head + 2000 with made-up hashes. Only
/// the first is checked: the chain leaps to 2004 anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linking_decoy_lets_no_forged_record_far_past_the_head_be_built_on() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let log = AuditLog::open_jetstream(&bus).await.unwrap();
    let mut head = None;
    for i in 0..3 {
        head = Some(log.append(entry(i)).await.unwrap());
    }
    let head = head.unwrap();
    let decoy = serde_json::json!({
        "seq": head.seq + 1, "prev_hash": head.hash, "hash": "z".repeat(64),
        "entry": serde_json::to_value(entry(6)).unwrap(),
    });
    let forged = serde_json::json!({
        "seq": head.seq + 2000, "prev_hash": "x".repeat(64), "hash": "y".repeat(64),
        "entry": serde_json::to_value(entry(7)).unwrap(),
    });
    stray(&bus, serde_json::to_vec(&decoy).unwrap()).await;
    stray(&bus, serde_json::to_vec(&forged).unwrap()).await;
    log.check_stream_now().await.unwrap();
    let next = log.append(entry(3)).await.unwrap();
    eprintln!("next seq {} prev_hash {}", next.seq, next.prev_hash);
    assert!(
        next.seq <= head.seq + 2,
        "the chain leapt to {} on a forged record (a decoy linking to the head first)",
        next.seq
    );
}

/// Legit: A writes 1..3; B (resumed from A's head) writes 4, then 5 two
/// seconds later; the stream's max_age (3 s) ages 1..4 out. A (idle) then
/// appends: the first message after its last is gone, the first found
/// (5) is not its next: links_on says no, A writes seq 4 after seq 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_record_aged_out_takes_the_chain_never_back() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let age = Duration::from_secs(3);
    let a_bus = connect_age(&server, age).await;
    let b_bus = connect_age(&server, age).await;
    let a = AuditLog::open_jetstream(&a_bus).await.unwrap();
    for i in 0..3 {
        a.append(entry(i)).await.unwrap();
    }
    let b = AuditLog::open_jetstream(&b_bus).await.unwrap();
    b.append(entry(100)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let r5 = b.append(entry(101)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let before = seqs(&read(&a_bus).await);
    let ra = a.append(entry(3)).await.unwrap();
    let after = seqs(&read(&a_bus).await);
    eprintln!(
        "before {before:?}; B's last {}; A wrote {}; after {after:?}",
        r5.seq, ra.seq
    );
    assert!(
        ra.seq > r5.seq,
        "the chain went back: A wrote seq {} after B's seq {} (trail {after:?})",
        ra.seq,
        r5.seq
    );
}

// ------------------------------------------------------------ replacement stream

async fn replace_with(bus: &NatsBus, config: async_nats::jetstream::stream::Config) {
    bus.jetstream()
        .delete_stream(subjects::STREAM_AUDIT)
        .await
        .unwrap();
    bus.jetstream().create_stream(config).await.unwrap();
}

/// A replacement SKOS_AUDIT with interest retention (no consumer: every
/// message dropped as stored): the loss record and everything after it
/// vanish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_stream_with_interest_retention_is_made_to_keep_records() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let log = AuditLog::open_jetstream(&bus).await.unwrap();
    for i in 0..5 {
        log.append(entry(i)).await.unwrap();
    }
    replace_with(
        &bus,
        async_nats::jetstream::stream::Config {
            name: subjects::STREAM_AUDIT.to_string(),
            subjects: vec![subjects::AUDIT.to_string()],
            retention: async_nats::jetstream::stream::RetentionPolicy::Interest,
            ..Default::default()
        },
    )
    .await;
    for i in 5..10 {
        log.append(entry(i)).await.unwrap();
    }
    let records = read(&bus).await;
    let cfg = bus
        .jetstream()
        .get_stream(subjects::STREAM_AUDIT)
        .await
        .unwrap()
        .cached_info()
        .clone();
    eprintln!(
        "left {:?} {:?}; retention {:?}; state {:?}",
        seqs(&records),
        events(&records),
        cfg.config.retention,
        cfg.state
    );
    assert!(
        events(&records).contains(&"audit_trail_replaced") && records.len() >= 6,
        "interest retention on the replacement dropped the records: {} left ({:?})",
        records.len(),
        events(&records)
    );
}

/// A replacement SKOS_AUDIT with a tiny max_msg_size: every record is
/// refused; the writer takes message and byte limits off, not this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_stream_with_a_tiny_message_size_takes_records_again() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let log = AuditLog::open_jetstream(&bus).await.unwrap();
    for i in 0..5 {
        log.append(entry(i)).await.unwrap();
    }
    replace_with(
        &bus,
        async_nats::jetstream::stream::Config {
            name: subjects::STREAM_AUDIT.to_string(),
            subjects: vec![subjects::AUDIT.to_string()],
            max_message_size: 64,
            ..Default::default()
        },
    )
    .await;
    let mut errors = Vec::new();
    for i in 5..10 {
        if let Err(e) = log.append(entry(i)).await {
            errors.push(e.to_string());
        }
    }
    let records = read(&bus).await;
    eprintln!("errors {errors:?}; left {:?}", events(&records));
    assert!(
        errors.is_empty(),
        "{} of 5 appends failed on a replacement with max_msg_size 64: {:?}",
        errors.len(),
        errors.first()
    );
}

// ------------------------------------------------------------ lease

/// Bucket made again (floor 100 > revision): try_acquire reads the trail's
/// last term unsigned by walking back over every message that holds no
/// record, while holding the key it just made. A stray publisher's junk
/// at the trail's tail makes that walk outlast the lease: the key ages
/// out, the term update fails, nobody leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_at_the_trails_tail_keeps_no_lease_from_being_won() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let trail = AuditLog::open_jetstream(&bus).await.unwrap();
    trail.set_term(Some(100));
    trail.append(entry(0)).await.unwrap();
    // Junk at the tail (no record), published in bulk.
    let js = bus.jetstream().clone();
    let n = 30_000;
    let t = Instant::now();
    let mut acks = Vec::new();
    for i in 0..n {
        acks.push(
            js.publish(
                format!("{}.node", subjects::STREAM_AUDIT),
                format!("{i}").into(),
            )
            .await
            .unwrap(),
        );
        if acks.len() >= 2000 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks.drain(..) {
        a.await.unwrap();
    }
    eprintln!("published {n} junk in {:?}", t.elapsed());
    let lease = Duration::from_secs(2);
    let mut l = Lease::open(&bus, "a:1:x".into(), lease).await.unwrap();
    l.observe(100);
    let bucket = format!("KV_{}", subjects::LEADER_BUCKET);
    bus.jetstream().delete_stream(&bucket).await.unwrap();
    let mut l = Lease::open(&bus, "a:1:x".into(), lease).await.unwrap();
    l.observe(100);
    let mut won = None;
    let t = Instant::now();
    for _ in 0..3 {
        let s = Instant::now();
        let r = l.try_acquire(chrono::Utc::now()).await;
        eprintln!(
            "try_acquire {:?} in {:?}",
            r.as_ref().map(|o| o.as_ref().map(|t| t.term)),
            s.elapsed()
        );
        if let Ok(Some(term)) = r {
            won = Some(term.term);
            break;
        }
    }
    eprintln!("won {won:?} after {:?}", t.elapsed());
    assert!(
        won.is_some(),
        "no leadership won in a remade bucket with {n} junk messages at the trail's tail (lease {lease:?})"
    );
}

// ------------------------------------------------------------ file trail

/// 654f02a: a file cut to its head is a loss recorded, a same-size copy
/// is adopted. A file cut to its head record and padded with blank lines
/// (which every reader skips) to the held size is adopted: no loss
/// recorded, records 4..=6 gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_file_padded_to_the_held_size_is_a_loss_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open_file(&path).unwrap();
    for i in 0..3 {
        log.append(entry(i)).await.unwrap();
    }
    assert!(log.rotate_now().await.unwrap());
    for i in 3..7 {
        log.append(entry(i)).await.unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let last = text.lines().last().unwrap().to_string();
    let pad = text.len() - last.len() - 1;
    let forged = dir.path().join("forged");
    std::fs::write(&forged, format!("{}{last}\n", "\n".repeat(pad))).unwrap();
    assert_eq!(
        std::fs::metadata(&forged).unwrap().len(),
        std::fs::metadata(&path).unwrap().len()
    );
    std::fs::rename(&forged, &path).unwrap();
    log.append(entry(7)).await.unwrap();
    let trail = audit::read_trail(&path).unwrap();
    let report = audit::check::verify_file(&path, None).unwrap();
    eprintln!("trail {:?} {:?}", seqs(&trail), events(&trail));
    eprintln!("verify: ok={} {:?}", report.ok(), report.breaks);
    assert!(
        events(&trail).contains(&"audit_trail_replaced"),
        "records cut and padded back to the held size with blank lines: no loss recorded \
         (trail {:?}; verify ok={}, breaks {:?})",
        seqs(&trail),
        report.ok(),
        report.breaks
    );
}

// ------------------------------------------------------------ remake_within

/// One stream that cannot be made (a stray stream holds SKOS_ALERTS'
/// subjects) stops the look at the first `?`: SKOS_COMMANDS, gone too and
/// later in the loop, is never made again while the stray stream stays,
/// however many times the leader looks (every 10 s, each time the same
/// warning).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_that_cannot_be_made_keeps_no_later_one_gone() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let leader = connect(&server).await;
    let admin = connect(&server).await;
    let js = admin.jetstream();
    js.delete_stream(subjects::STREAM_ALERTS).await.unwrap();
    js.delete_stream(subjects::STREAM_COMMANDS).await.unwrap();
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "STRAY".into(),
        subjects: vec![subjects::ALERTS.into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut results = Vec::new();
    for _ in 0..3 {
        results.push(format!("{:?}", leader.remake_missing_streams().await));
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let commands = js.get_stream(subjects::STREAM_COMMANDS).await.is_ok();
    eprintln!("looks {results:?}; SKOS_COMMANDS exists: {commands}");
    assert!(
        commands,
        "SKOS_COMMANDS stays gone while SKOS_ALERTS cannot be made (looks: {results:?})"
    );
}
