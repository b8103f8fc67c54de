//! A hostile or unlucky hand at the edges: a file cut to its head, a
//! copy with a torn tail, a failed look at the streams, a replacement
//! stream with a message limit, leases won by coordinators that saw
//! different terms, a forged record far past the head.

use super::*;
use skos_bus::lease::Lease;

// ---------------------------------------------------------------- files

/// A hostile local user replaces the live file with a file holding only
/// the head record (the last line): records 4..=7 since the last seal are
/// gone, and the writer records the loss; it is no copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_cut_to_its_head_record_is_a_loss_recorded() {
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
    let forged = dir.path().join("forged");
    std::fs::write(&forged, format!("{last}\n")).unwrap();
    std::fs::rename(&forged, &path).unwrap();
    log.append(entry(7)).await.unwrap();
    let trail = audit::read_trail(&path).unwrap();
    let report = audit::check::verify_file(&path, None).unwrap();
    eprintln!("trail {:?} {:?}", seqs(&trail), events(&trail));
    eprintln!("verify: ok={} {:?}", report.ok(), report.breaks);
    assert!(
        events(&trail).contains(&"audit_trail_replaced"),
        "records deleted by swapping in a file holding only the head record are not recorded by the writer \
         (verify ok={}, breaks {:?})",
        report.ok(),
        report.breaks
    );
}

/// A copy ending with the head, followed by an unended line (a copy with
/// trailing junk): the next record still goes on a line of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_with_an_unended_tail_keeps_the_next_record_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open_file(&path).unwrap();
    for i in 0..3 {
        log.append(entry(i)).await.unwrap();
    }
    let copy = dir.path().join("copy");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"half\":");
    std::fs::write(&copy, &text).unwrap();
    std::fs::rename(&copy, &path).unwrap();
    let r = log.append(entry(3)).await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    eprintln!("{text}");
    let readable = text.lines().any(|l| {
        serde_json::from_str::<Value>(l)
            .ok()
            .and_then(|v| v["seq"].as_u64())
            == Some(r.seq)
    });
    assert!(
        readable,
        "record {} was appended onto the unended line: it is not readable",
        r.seq
    );
}

// ---------------------------------------------------------------- streams

/// A plain server restart on the same store is no stream made again:
/// nothing named, `commands_remade` stays 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_is_not_streams_made_again() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let mut server = NatsServer::start();
    let bus = connect(&server).await;
    // SKOS_STATE is made by the coordinator's state store, not at connect.
    bus.remake_missing_streams().await.unwrap();
    assert_eq!(bus.commands_remade(), 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    server.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let found = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        match bus.remake_missing_streams().await {
            Ok(v) => break v,
            Err(e) if std::time::Instant::now() < deadline => eprintln!("{e}"),
            Err(e) => panic!("{e}"),
        }
    };
    tokio::time::sleep(Duration::from_secs(11)).await;
    let again = bus.check_streams().await.unwrap();
    assert!(found.is_empty(), "after a restart: {found:?}");
    assert!(again.is_empty(), "after a restart: {again:?}");
    assert_eq!(bus.commands_remade(), 0);
}

/// SKOS_COMMANDS made again by another process, while another SKOS
/// stream is gone and cannot be made at that moment (its subjects held by
/// a stray stream). The look fails; SKOS_COMMANDS is counted as made
/// again all the same (else every agent's command consumer stays gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_look_at_the_streams_loses_no_count() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let leader = connect(&server).await;
    let admin = connect(&server).await;
    let js = admin.jetstream();
    js.delete_stream(subjects::STREAM_COMMANDS).await.unwrap();
    js.delete_stream(subjects::STREAM_RESULTS).await.unwrap();
    // Another process makes SKOS_COMMANDS again.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: subjects::STREAM_COMMANDS.into(),
        subjects: vec![subjects::COMMANDS.into()],
        max_age: Duration::from_secs(86_400),
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    // A stray stream on the results subjects: SKOS_RESULTS cannot be made.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "STRAY".into(),
        subjects: vec![subjects::RESULTS.into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let first = leader.remake_missing_streams().await;
    eprintln!(
        "first check: {first:?}, commands_remade {}",
        leader.commands_remade()
    );
    js.delete_stream("STRAY").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = leader.remake_missing_streams().await;
    eprintln!("second check: {second:?}");
    assert!(
        leader.commands_remade() >= 1,
        "SKOS_COMMANDS was made again by another process, but commands_remade is {} \
         (first check {first:?}, second {second:?})",
        leader.commands_remade()
    );
}

/// A replacement SKOS_AUDIT made (by someone else) with a tiny
/// max_msgs: the writer takes the limit off, so the loss record stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_audit_stream_with_a_message_limit_keeps_the_loss_record() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let log = AuditLog::open_jetstream(&bus).await.unwrap();
    for i in 0..5 {
        log.append(entry(i)).await.unwrap();
    }
    bus.jetstream()
        .delete_stream(subjects::STREAM_AUDIT)
        .await
        .unwrap();
    bus.jetstream()
        .create_stream(async_nats::jetstream::stream::Config {
            name: subjects::STREAM_AUDIT.to_string(),
            subjects: vec![subjects::AUDIT.to_string()],
            max_messages: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 5..10 {
        log.append(entry(i)).await.unwrap();
    }
    let records = read(&bus).await;
    let report = audit::check::verify_jetstream(&bus, None, None, |_, _| {})
        .await
        .unwrap();
    let cfg = bus
        .jetstream()
        .get_stream(subjects::STREAM_AUDIT)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    eprintln!(
        "left {:?} {:?}; max_messages {} max_age {:?}; verify ok={} {:?}",
        seqs(&records),
        events(&records),
        cfg.max_messages,
        cfg.max_age,
        report.ok(),
        report.breaks
    );
    assert!(
        events(&records).contains(&"audit_trail_replaced"),
        "the loss record was evicted by the replacement stream's max_msgs ({}) (verify ok={})",
        cfg.max_messages,
        report.ok()
    );
}

// ---------------------------------------------------------------- lease

/// Bucket made again; A (highest term seen 100) wins at revision 1:
/// term 101, writes it in the trail, renews, then gives the lease up. B
/// (highest seen 60: it never read A's record) wins at revision 41: not
/// 60 + 41 = 101, A's term, for it reads the trail's last term first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_that_saw_different_terms_never_share_one() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let bucket = format!("KV_{}", subjects::LEADER_BUCKET);
    let mut a = Lease::open(&bus, "a:1:x".into(), Duration::from_secs(30))
        .await
        .unwrap();
    let mut b = Lease::open(&bus, "b:2:y".into(), Duration::from_secs(30))
        .await
        .unwrap();
    a.observe(100);
    b.observe(60);
    bus.jetstream().delete_stream(&bucket).await.unwrap();
    let ta = a.try_acquire(chrono::Utc::now()).await.unwrap().unwrap();
    assert_eq!(ta.term, 101);
    // As a coordinator does once it won: its term in the trail first.
    let trail = AuditLog::open_jetstream(&bus).await.unwrap();
    trail.set_term(Some(ta.term));
    trail.append(entry(0)).await.unwrap();
    // Renew until B's create will land at revision 41 (purge at 40).
    loop {
        let (_, rev) = a.current().await.unwrap().unwrap();
        if rev >= 39 {
            break;
        }
        a.renew().await.unwrap();
    }
    a.release().await;
    let tb = b.try_acquire(chrono::Utc::now()).await.unwrap().unwrap();
    eprintln!("A term {}, B term {}", ta.term, tb.term);
    assert_ne!(tb.term, ta.term, "two leaderships in the same term");
}

/// Unsigned bus: one forged message holding a record at head + 2000
/// (hashes made up) does not link to the head: not built on, the chain
/// takes no leap on a stranger's word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_record_far_past_the_head_makes_no_leap() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let log = AuditLog::open_jetstream(&bus).await.unwrap();
    for i in 0..3 {
        log.append(entry(i)).await.unwrap();
    }
    let forged = serde_json::json!({
        "seq": 2003u64, "prev_hash": "x".repeat(64), "hash": "y".repeat(64),
        "entry": serde_json::to_value(entry(7)).unwrap(),
    });
    bus.jetstream()
        .publish(
            format!("{}.node", subjects::STREAM_AUDIT),
            serde_json::to_vec(&forged).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    log.check_stream_now().await.unwrap();
    let next = log.append(entry(3)).await.unwrap();
    eprintln!("next seq {} prev_hash {}", next.seq, next.prev_hash);
    assert_eq!(
        next.seq, 4,
        "the chain leapt to {} on a forged record",
        next.seq
    );
}
