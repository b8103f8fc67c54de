//! The audit trail replaced under its writer, at its edges: a server
//! restarted or wiped, a stream made by someone else, forged records, a
//! follower across a replacement, batches racing deletions; the embedded
//! file swapped, torn, copied, or removed on a full disk.

use super::*;
use skos_core::audit::Chain;

/// A server restarted on the same store keeps the stream: no replacement
/// may be recorded (else every server restart is a false alarm).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_on_the_same_store_is_not_a_replacement() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let mut server = NatsServer::start();
    let bus = connect(&server).await;
    let log = AuditLog::open_jetstream(&bus).await.unwrap();
    for i in 0..3 {
        log.append(entry(i)).await.unwrap();
    }
    server.restart();
    // Reconnected.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match log.check_stream_now().await {
            Ok(()) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("{e}");
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    let mut tries = 0;
    loop {
        match log.append(entry(3)).await {
            Ok(_) => break,
            Err(e) if tries < 50 => {
                eprintln!("{e}");
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    let records = read(&bus).await;
    assert_eq!(seqs(&records), [1, 2, 3, 4], "{:?}", events(&records));
    assert!(!events(&records).contains(&"audit_trail_replaced"));
    assert!(verify(&bus).await.ok());
}

/// A server that lost its store (wiped) and came back: the writer records
/// the loss, once, and carries its chain on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_back_with_a_wiped_store_is_recorded_once_and_the_chain_carried_on() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let mut server = NatsServer::start();
    let bus = connect(&server).await;
    let log = AuditLog::open_jetstream(&bus).await.unwrap();
    for i in 0..3 {
        log.append(entry(i)).await.unwrap();
    }
    server.kill();
    for e in std::fs::read_dir(server.store_dir()).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    server.restart();
    let mut tries = 0;
    loop {
        match log.append(entry(3)).await {
            Ok(r) => {
                assert_eq!(r.seq, 5);
                break;
            }
            Err(e) if tries < 50 => {
                eprintln!("try {tries}: {e}");
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    let records = read(&bus).await;
    assert_eq!(seqs(&records), [4, 5], "{:?}", events(&records));
    assert_eq!(events(&records)[0], "audit_trail_replaced");
    assert!(audit::stream_is_locked(&bus).await.unwrap());
    let report = verify(&bus).await;
    assert_eq!(report.break_count, 1, "{:?}", report.breaks);
}

/// The stream replaced by one made (by someone else) unlocked and with a
/// short max_age: the writer records the loss in it, locks it and raises
/// its max_age to the retention, so the record stays and verify names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_put_in_place_unlocked_and_short_lived_is_locked_and_keeps_the_loss() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let log = AuditLog::open_jetstream(&bus).await.unwrap();
    for i in 0..5 {
        log.append(entry(i)).await.unwrap();
    }
    delete(&bus).await;
    bus.jetstream()
        .create_stream(async_nats::jetstream::stream::Config {
            name: subjects::STREAM_AUDIT.to_string(),
            subjects: vec![subjects::AUDIT.to_string()],
            max_age: Duration::from_secs(2),
            duplicate_window: Duration::from_secs(1),
            ..Default::default()
        })
        .await
        .unwrap();
    // The writer finds it and records the loss in it.
    log.append(entry(5)).await.unwrap();
    let records = read(&bus).await;
    assert_eq!(events(&records)[0], "audit_trail_replaced");
    let report = verify(&bus).await;
    assert!(!report.ok(), "named at first: {:?}", report.breaks);
    assert!(audit::stream_is_locked(&bus).await.unwrap());
    tokio::time::sleep(Duration::from_secs(4)).await;
    log.append(entry(6)).await.unwrap();
    log.append(entry(7)).await.unwrap();
    let records = read(&bus).await;
    eprintln!("left: {:?} {:?}", seqs(&records), events(&records));
    let report = verify(&bus).await;
    eprintln!("{report:?}");
    assert_eq!(events(&records)[0], "audit_trail_replaced");
    assert!(
        !report.ok(),
        "records 1..=5 were deleted with the stream, yet verify passes: {report:?}"
    );
}

/// Unsigned deployment: a stray publisher's record with a low seq is not
/// built on: the chain never goes back on the same stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_low_record_never_takes_the_chain_back() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let log = AuditLog::open_jetstream(&bus).await.unwrap();
    for i in 0..5 {
        log.append(entry(i)).await.unwrap();
    }
    let mut forged = Chain::resume(None);
    let r = forged.seal(entry(99));
    bus.jetstream()
        .publish(
            format!("{}.node", subjects::STREAM_AUDIT),
            serde_json::to_vec(&r).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let next = log.append(entry(5)).await.unwrap();
    assert_eq!(next.seq, 6, "the chain went back to {}", next.seq);
}

/// A follower whose stream is deleted and not made again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_waits_out_a_stream_deleted_for_a_while() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let log = AuditLog::open_jetstream(&bus).await.unwrap();
    for i in 0..3 {
        log.append(entry(i)).await.unwrap();
    }
    let source = AuditSource::JetStream(bus.clone(), None);
    let (mut follower, recent) = AuditFollower::open(&source, 10).await.unwrap();
    assert_eq!(seqs(&recent), [1, 2, 3]);
    delete(&bus).await;
    let t = std::time::Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(60), follower.next())
        .await
        .expect("follower hangs");
    eprintln!("after {:?}: {got:?}", t.elapsed());
    assert!(matches!(got, Err(Error::Replaced { .. })), "{got:?}");
}

/// A follower; the stream deleted and at once made again with a fresh
/// chain (a coordinator started on the empty stream) that soon holds more
/// messages than the old one did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_follows_a_fresh_chain_in_a_busy_new_stream() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let log = AuditLog::open_jetstream(&bus).await.unwrap();
    for i in 0..3 {
        log.append(entry(i)).await.unwrap();
    }
    let source = AuditSource::JetStream(bus.clone(), None);
    let (mut follower, recent) = AuditFollower::open(&source, 10).await.unwrap();
    assert_eq!(seqs(&recent), [1, 2, 3]);
    delete(&bus).await;
    let other = connect(&server).await;
    let fresh = AuditLog::open_jetstream(&other).await.unwrap();
    let writer = tokio::spawn(async move {
        for i in 0..40 {
            fresh.append(entry(100 + i)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let mut given = Vec::new();
    let end = tokio::time::sleep(Duration::from_secs(12));
    tokio::pin!(end);
    let outcome = loop {
        tokio::select! {
            _ = &mut end => break "nothing said".to_string(),
            got = follower.next() => match got {
                Ok(r) => given.extend(seqs(&r)),
                Err(e) => break format!("{e:?}"),
            }
        }
    };
    writer.abort();
    eprintln!("given {given:?}, then {outcome}");
    assert!(
        given.is_empty() || given[0] == 1,
        "records of the new trail skipped silently: given {given:?}, then {outcome}"
    );
}

fn forged_file(path: &std::path::Path, n: u32) {
    let mut c = Chain::resume(None);
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&serde_json::to_string(&c.seal(entry(900 + i))).unwrap());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// rotate_now right after the live file was swapped: the swap is found
/// and recorded first, and the stranger's records are not taken for the
/// writer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_right_after_a_swap_records_it_and_never_seals_the_strangers_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open_file(&path).unwrap();
    for i in 0..3 {
        log.append(entry(i)).await.unwrap();
    }
    std::fs::remove_file(&path).unwrap();
    forged_file(&path, 2);
    let wrote = log.rotate_now().await;
    eprintln!("rotate_now: {wrote:?}");
    log.append(entry(3)).await.unwrap();
    let trail = audit::read_trail(&path).unwrap();
    eprintln!("trail: {:?} {:?}", seqs(&trail), events(&trail));
    let report = audit::check::verify_file(&path, None).unwrap();
    eprintln!("{report:?}");
    assert!(
        events(&trail).contains(&"audit_trail_replaced"),
        "the swap is not recorded: {:?}",
        events(&trail)
    );
}

/// The data directory itself moved away and another made in its place:
/// the writer goes on in the one at the path, recording the loss there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_replaced_is_followed_to_its_path() {
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("data");
    let path = dir.join("audit.jsonl");
    let log = AuditLog::open_file(&path).unwrap();
    for i in 0..3 {
        log.append(entry(i)).await.unwrap();
    }
    std::fs::rename(&dir, top.path().join("data.old")).unwrap();
    std::fs::create_dir(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    log.append(entry(3)).await.unwrap();
    let records = audit::read_file(&path).unwrap();
    assert_eq!(seqs(&records), [4, 5]);
    assert_eq!(events(&records)[0], "audit_trail_replaced");
    assert_eq!(records[0]["entry"]["data"]["remade"], true);
    let moved = audit::read_file(&top.path().join("data.old/audit.jsonl")).unwrap();
    assert_eq!(
        seqs(&moved),
        [1, 2, 3],
        "nothing written into the moved one"
    );

    // Removed outright: made again.
    std::fs::remove_dir_all(&dir).unwrap();
    log.append(entry(4)).await.unwrap();
    let records = audit::read_file(&path).unwrap();
    assert_eq!(seqs(&records), [6, 7]);
    assert_eq!(events(&records)[0], "audit_trail_replaced");
}

/// The live file replaced by one whose last line is not ended (a torn
/// write, or a file being copied): the audit_trail_replaced record goes on
/// a line of its own, readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_file_with_an_unended_last_line_keeps_the_record_on_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open_file(&path).unwrap();
    for i in 0..3 {
        log.append(entry(i)).await.unwrap();
    }
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, "{\"half\":").unwrap();
    log.append(entry(3)).await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    eprintln!("{text}");
    let report = audit::check::verify_file(&path, None).unwrap();
    eprintln!("{report:?}");
    assert!(
        report
            .breaks
            .iter()
            .any(|b| b.contains("replaced under its writer")),
        "the replacement is not named: {:?}",
        report.breaks
    );
}

/// The live file replaced by an identical copy (an editor's save, cp + mv):
/// nothing is lost, so no loss is recorded and verify passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_ending_with_the_head_put_in_place_is_no_loss() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open_file(&path).unwrap();
    for i in 0..3 {
        log.append(entry(i)).await.unwrap();
    }
    let copy = dir.path().join("copy");
    std::fs::copy(&path, &copy).unwrap();
    std::fs::rename(&copy, &path).unwrap();
    log.append(entry(3)).await.unwrap();
    let records = audit::read_file(&path).unwrap();
    eprintln!("{:?} {:?}", seqs(&records), events(&records));
    let report = audit::check::verify_file(&path, None).unwrap();
    eprintln!("{report:?}");
    assert!(report.ok(), "every record is there: {:?}", report.breaks);
    assert!(!events(&records).contains(&"audit_trail_replaced"));

    // A copy holding the head alone (the records before it cut away) is
    // a loss, recorded.
    let text = std::fs::read_to_string(&path).unwrap();
    let head = text.lines().last().unwrap();
    std::fs::write(&copy, format!("{head}\n")).unwrap();
    std::fs::rename(&copy, &path).unwrap();
    log.append(entry(4)).await.unwrap();
    let records = audit::read_file(&path).unwrap();
    assert_eq!(seqs(&records), [4, 5, 6]);
    assert_eq!(events(&records)[1], "audit_trail_replaced");
    assert!(!audit::check::verify_file(&path, None).unwrap().ok());
}

/// Crash right after the replacement record; reopened: the chain goes on
/// and verify names the loss once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_the_replacement_record_names_the_loss_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open_file(&path).unwrap();
    for i in 0..3 {
        log.append(entry(i)).await.unwrap();
    }
    assert!(log.rotate_now().await.unwrap());
    log.append(entry(3)).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    log.append(entry(4)).await.unwrap();
    drop(log);
    let log = AuditLog::open_file(&path).unwrap();
    log.append(entry(5)).await.unwrap();
    assert!(log.rotate_now().await.unwrap());
    log.append(entry(6)).await.unwrap();
    let trail = audit::read_trail(&path).unwrap();
    eprintln!("{:?} {:?}", seqs(&trail), events(&trail));
    let report = audit::check::verify_file(&path, None).unwrap();
    eprintln!("{report:?}");
    assert_eq!(report.break_count, 1, "{:?}", report.breaks);
}

fn big(i: u32) -> AuditEntry {
    AuditEntry::new(
        AuditEvent::Node,
        chrono::Utc::now(),
        None,
        "t",
        format!("b{i}"),
        serde_json::json!({ "i": i, "pad": "x".repeat(20_000) }),
    )
}

/// Batches (several messages each) racing deletions of the stream: the
/// last stream must hold one replacement at its start and every entry
/// appended after it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_racing_deletions_hold_one_replacement_and_every_entry_once() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let admin = connect(&server).await;
    let log = std::sync::Arc::new(AuditLog::open_jetstream(&bus).await.unwrap());
    for round in 0..25u32 {
        let batch: Vec<AuditEntry> = (0..30).map(|k| big(round * 100 + k)).collect();
        let l = log.clone();
        let t = tokio::spawn(async move { l.append_many(batch).await });
        tokio::time::sleep(Duration::from_millis((round as u64 * 7) % 40)).await;
        let _ = admin
            .jetstream()
            .delete_stream(subjects::STREAM_AUDIT)
            .await;
        if round % 2 == 0 {
            // Another process makes it again at once.
            let _ = connect(&server).await;
        }
        match t.await.unwrap() {
            Ok(()) => {}
            Err(e) => eprintln!("round {round}: {} ({} back)", e.error, e.entries.len()),
        }
    }
    let mut tries = 0;
    while let Err(e) = log.append_many(vec![entry(1), entry(2)]).await {
        tries += 1;
        assert!(tries < 5, "{}", e.error);
    }
    let records = read(&bus).await;
    let ev = events(&records);
    eprintln!("{:?}", seqs(&records));
    eprintln!("{:?}", ev);
    let summaries: Vec<&str> = records
        .iter()
        .map(|r| r["entry"]["summary"].as_str().unwrap())
        .collect();
    let mut dedup = summaries.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), summaries.len(), "duplicates");
    assert!(
        summaries.ends_with(&["e1", "e2"]),
        "the entries appended after the last deletion: {summaries:?}"
    );
    let report = verify(&bus).await;
    eprintln!("{:?}", report.breaks);
    assert_eq!(
        ev.iter().filter(|e| **e == "audit_trail_replaced").count(),
        1,
        "{ev:?}"
    );
    assert_eq!(ev[0], "audit_trail_replaced");
    assert_eq!(report.break_count, 1, "{:?}", report.breaks);
}

/// The live file removed on a full disk: the replacement record cannot be
/// written; once space is back the writer records it (once), and nothing
/// written meanwhile is taken for stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_removed_on_a_full_disk_is_recorded_once_space_is_back() {
    let fs = skos_testsupport::require!(
        "a tmpfs mount",
        skos_testsupport::tmpfs::Tmpfs::mount("64k", None)
    );
    let path = fs.path().join("data/audit.jsonl");
    let log = AuditLog::open_file(&path).unwrap();
    for i in 0..3 {
        log.append(entry(i)).await.unwrap();
    }
    let filler = fs.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let _ = f.write_all(&vec![0u8; 1 << 20]);
        let _ = f.sync_all();
    }
    std::fs::remove_file(&path).unwrap();
    // Fill what the removal freed.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&filler)
            .unwrap();
        let _ = f.write_all(&vec![0u8; 1 << 20]);
        let _ = f.sync_all();
    }
    let r = log.append(entry(3)).await;
    eprintln!("on a full disk: {r:?}");
    assert!(r.is_err());
    std::fs::remove_file(&filler).unwrap();
    log.append(entry(4)).await.unwrap();
    let records = audit::read_file(&path).unwrap();
    eprintln!("{:?} {:?}", seqs(&records), events(&records));
    eprintln!("{}", records[0]["entry"]["data"]);
    let report = audit::check::verify_file(&path, None).unwrap();
    eprintln!("{:?}", report.breaks);
    assert_eq!(report.break_count, 1);
    assert_eq!(
        records[0]["entry"]["data"]["remade"], true,
        "the file at the path is the one this writer made"
    );
}

/// Unsigned deployment: after the stream is replaced, a stray publisher's
/// record at seq u64::MAX in the new stream is not carried on from (and
/// nothing panics): the loss is recorded on the writer's own chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_max_seq_record_in_a_new_stream_is_not_carried_on() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let log = AuditLog::open_jetstream(&bus).await.unwrap();
    log.append(entry(0)).await.unwrap();
    delete(&bus).await;
    let _other = connect(&server).await;
    let forged = serde_json::json!({
        "seq": u64::MAX, "prev_hash": "x", "hash": "y",
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
    let l = std::sync::Arc::new(log);
    let l2 = l.clone();
    let r = tokio::spawn(async move {
        l2.check_stream_now().await?;
        l2.append(entry(1)).await
    })
    .await;
    eprintln!("{r:?}");
    let records = read(&bus).await;
    eprintln!("{:?} {:?}", seqs(&records), events(&records));
    let appended = r.expect("the writer panicked").unwrap();
    assert_eq!(
        appended.seq, 3,
        "after the head (1) and the replacement (2)"
    );
    assert!(events(&records).contains(&"audit_trail_replaced"));
}
