//! The embedded trail kept compact: old records sealed into compressed
//! segments beside `audit.jsonl`, segments past the retention aged out by
//! policy (recorded in the chain), and `verify` telling that apart from a
//! segment or record removed by hand. Real files in a temp dir.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use skos_bus::audit::{self, segments, AuditLog, Policy, RotateStop};
use skos_core::AuditEntry;

fn entry_at(i: u32, at: chrono::DateTime<chrono::Utc>) -> AuditEntry {
    AuditEntry::new(
        skos_core::AuditEvent::Decision,
        at,
        None,
        "coordinator",
        format!("e{i}"),
        serde_json::json!({ "i": i, "pad": "x".repeat(100) }),
    )
}

fn entry(i: u32) -> AuditEntry {
    entry_at(i, chrono::Utc::now())
}

/// A policy that seals only when told (huge segments, a year's age).
fn manual(retain: Option<Duration>) -> Policy {
    Policy {
        segment_bytes: u64::MAX,
        segment_age: Duration::from_secs(365 * 86_400),
        retain,
    }
}

fn seqs(records: &[Value]) -> Vec<u64> {
    records.iter().map(|r| r["seq"].as_u64().unwrap()).collect()
}

/// `skos audit verify`'s check of the file trail at `path`, on a thread,
/// held at its first progress report (the first segment's 4096th line)
/// until [`Paused::finish`]: what a writer does meanwhile is what the check
/// meets.
struct Paused {
    go_on: std::sync::mpsc::Sender<()>,
    verify: std::thread::JoinHandle<audit::check::TrailReport>,
}

impl Paused {
    async fn verify(path: &Path) -> Self {
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let p = path.to_path_buf();
        let verify = std::thread::spawn(move || {
            let mut once = Some((go_tx, done_rx));
            audit::check::verify_file_trail(&p, None, |_, _| {
                if let Some((go, done)) = once.take() {
                    go.send(()).unwrap();
                    done.recv().unwrap();
                }
            })
            .unwrap()
        });
        tokio::task::spawn_blocking(move || go_rx.recv())
            .await
            .unwrap()
            .expect("verify reached the first segment's 4096th line");
        Paused {
            go_on: done_tx,
            verify,
        }
    }

    /// Let the check go on; its report.
    async fn finish(self) -> audit::check::TrailReport {
        self.go_on.send(()).unwrap();
        tokio::task::spawn_blocking(move || self.verify.join().unwrap())
            .await
            .unwrap()
    }
}

fn segment_names(path: &Path) -> Vec<String> {
    segments::list(path)
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect()
}

/// A trail of three sealed segments and a live file: records 1..=10,
/// seal 11; 12..=21, seal 22; 23..=32, seal 33; 34..=38 in the live file.
async fn three_segments(dir: &Path) -> PathBuf {
    let path = dir.join("audit.jsonl");
    let log = AuditLog::open_file_with(&path, manual(None)).unwrap();
    for round in 0..3 {
        log.append_many((0..10).map(|i| entry(round * 10 + i)).collect())
            .await
            .unwrap();
        assert!(log.rotate_now().await.unwrap());
    }
    for i in 0..5 {
        log.append(entry(100 + i)).await.unwrap();
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_records_move_into_sealed_segments_and_the_chain_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = three_segments(dir.path()).await;
    assert_eq!(
        segment_names(&path),
        [
            "audit-00000000000000000001-00000000000000000010.jsonl.zst",
            "audit-00000000000000000011-00000000000000000021.jsonl.zst",
            "audit-00000000000000000022-00000000000000000032.jsonl.zst",
        ]
    );
    // The live file continues the chain from the last sealed record: the
    // seal record, then what came after.
    let live = audit::read_file(&path).unwrap();
    assert_eq!(seqs(&live), [33, 34, 35, 36, 37, 38]);
    assert_eq!(live[0]["entry"]["event_type"], "audit_sealed");
    assert_eq!(live[0]["entry"]["data"]["first_seq"], 22);
    assert_eq!(live[0]["entry"]["data"]["last_seq"], 32);

    let r = audit::check::verify_file(&path, None).unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!((r.records, r.segments, r.aged_out), (38, 3, None));

    // Every reader reads across the segments: the tail, the whole trail,
    // a page after a seq.
    assert_eq!(
        seqs(&audit::read_file_tail(&path, 9).unwrap()),
        (30..=38).collect::<Vec<u64>>()
    );
    assert_eq!(
        seqs(&audit::read_file_tail(&path, 1000).unwrap()),
        (1..=38).collect::<Vec<u64>>()
    );
    assert_eq!(
        seqs(&audit::read_trail(&path).unwrap()),
        (1..=38).collect::<Vec<u64>>()
    );
    let (page, more) = skos_bus::audit_follow::read_file_after(&path, 8, 5).unwrap();
    assert_eq!((seqs(&page), more), (vec![9, 10, 11, 12, 13], true));
    let (page, more) = skos_bus::audit_follow::read_file_after(&path, 30, 100).unwrap();
    assert_eq!(
        (seqs(&page), more),
        ((31..=38).collect::<Vec<u64>>(), false)
    );

    // Reopened, the writer reads only the tail and goes on.
    let log = AuditLog::open_file_with(&path, manual(None)).unwrap();
    assert_eq!(log.append(entry(200)).await.unwrap().seq, 39);
    assert_eq!(seqs(&log.read_recent(3).await.unwrap()), [37, 38, 39]);
    assert!(audit::check::verify_file(&path, None).unwrap().ok());

    // A live file removed (not the segments): the chain goes on from the
    // newest segment, and the loss shows.
    drop(log);
    std::fs::remove_file(&path).unwrap();
    let log = AuditLog::open_file_with(&path, manual(None)).unwrap();
    assert_eq!(log.append(entry(300)).await.unwrap().seq, 33);
    drop(log);
    let r = audit::check::verify_file(&path, None).unwrap();
    assert!(!r.ok(), "{r:?}");
}

/// Past `segment_bytes` the writer seals on its own, and a follower
/// (`skos audit tail -f`) goes on across the live file's replacement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_file_is_sealed_when_full_and_a_follower_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let policy = Policy {
        segment_bytes: 64 * 1024,
        ..manual(None)
    };
    let log = AuditLog::open_file_with(&path, policy).unwrap();
    let source = skos_bus::audit_follow::AuditSource::File(path.clone());
    let (mut follower, _) = skos_bus::audit_follow::AuditFollower::open(&source, 0)
        .await
        .unwrap();
    let mut seen = Vec::new();
    for i in 0..1500 {
        log.append(entry(i)).await.unwrap();
        if i % 100 == 99 {
            while seen.last().copied().unwrap_or(0) < u64::from(i) + 1 {
                seen.extend(seqs(&follower.next().await.unwrap()));
            }
        }
    }
    let segs = segments::list(&path).unwrap();
    assert!(segs.len() >= 3, "{segs:?}");
    assert!(std::fs::metadata(&path).unwrap().len() < 64 * 1024 + 4096);
    let r = audit::check::verify_file(&path, None).unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.segments, segs.len() as u64);
    // 1500 records and a seal per segment.
    assert_eq!(r.records, 1500 + segs.len() as u64);
    // The follower saw every record written, once each, in order (the
    // seal records with them), across every replacement of the live file.
    let last = *seen.last().unwrap();
    assert!(last >= 1500, "{last}");
    let twice: Vec<&[u64]> = seen.windows(2).filter(|w| w[0] + 1 != w[1]).collect();
    assert!(
        twice.is_empty() && seen[0] == 1,
        "not each once, in order: {twice:?}"
    );
    // Each segment is compressed: smaller than what it holds.
    let raw: u64 = segs
        .iter()
        .map(|s| {
            zstd::decode_all(std::fs::File::open(&s.path).unwrap())
                .unwrap()
                .len() as u64
        })
        .sum();
    let stored: u64 = segs
        .iter()
        .map(|s| std::fs::metadata(&s.path).unwrap().len())
        .sum();
    assert!(stored * 3 < raw, "{stored} bytes for about {raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_past_the_retention_age_out_by_policy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let policy = manual(Some(Duration::from_secs(30 * 86_400)));
    let log = AuditLog::open_file_with(&path, policy.clone()).unwrap();
    let old = chrono::Utc::now() - chrono::Duration::days(40);
    log.append_many((0..20).map(|i| entry_at(i, old)).collect())
        .await
        .unwrap();
    let cp = audit::check::checkpoint_file(&path).unwrap();
    assert_eq!(cp.seq, 20);
    // Sealed (1..=20, seal 21), and at once past the retention: an
    // `audit_expired` record (22), then the segment is removed.
    assert!(log.rotate_now().await.unwrap());
    assert!(segment_names(&path).is_empty());
    for i in 0..5 {
        log.append(entry(100 + i)).await.unwrap();
    }
    // A newer segment stays.
    assert!(log.rotate_now().await.unwrap());
    assert_eq!(segment_names(&path).len(), 1);
    drop(log);
    let live = audit::read_file(&path).unwrap();
    let expired: Vec<&Value> = live
        .iter()
        .filter(|r| r["entry"]["event_type"] == "audit_expired")
        .collect();
    assert!(expired.is_empty(), "sealed into the newer segment");
    let all = audit::read_trail(&path).unwrap();
    let expired = all
        .iter()
        .find(|r| r["entry"]["event_type"] == "audit_expired")
        .unwrap();
    assert_eq!(expired["seq"], 22);
    assert_eq!(expired["entry"]["data"]["through_seq"], 20);
    assert_eq!(expired["entry"]["data"]["through_hash"], cp.hash.as_str());

    let r = audit::check::verify_file(&path, None).unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.aged_out, Some((1, 20)));
    assert_eq!(r.records, 8, "21 (seal), 22 (expired), 23..=27, 28 (seal)");
    assert_eq!(seqs(&all).first(), Some(&21));
    // A checkpoint whose record aged out is said so, not a failure.
    let r = audit::check::verify_file(&path, Some(&cp)).unwrap();
    assert!(r.ok(), "{r:?}");
    assert!(r.notes[0].contains("aged out by policy"), "{:?}", r.notes);

    // The same gap without the expired record (the trail rebuilt without
    // it) is a deletion.
    let copy = tempfile::tempdir().unwrap();
    let p2 = copy.path().join("audit.jsonl");
    let mut chain = skos_core::audit::Chain::after(20, &cp.hash);
    let mut text = String::new();
    for i in 0..3 {
        let r = chain.seal(entry(i));
        text.push_str(&serde_json::to_string(&r).unwrap());
        text.push('\n');
    }
    std::fs::write(&p2, text).unwrap();
    let r = audit::check::verify_file(&p2, None).unwrap();
    assert!(!r.ok());
    assert!(
        r.breaks[0].contains("records seq 1..20 are missing") && r.breaks[0].contains("deleted"),
        "{:?}",
        r.breaks
    );
}

/// Copy the trail in `from` to a new dir.
fn copy_trail(from: &Path) -> (tempfile::TempDir, PathBuf) {
    let to = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.path().join(e.file_name())).unwrap();
    }
    let path = to.path().join("audit.jsonl");
    (to, path)
}

fn failed_with(path: &Path, words: &[&str]) {
    let r = audit::check::verify_file(path, None).unwrap();
    assert!(!r.ok(), "verified: {r:?}");
    let all = r.breaks.join("\n");
    for w in words {
        assert!(all.contains(w), "{w:?} not in:\n{all}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_removed_or_changed_or_a_record_cut_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = three_segments(dir.path()).await;
    let names = segment_names(&path);
    assert!(audit::check::verify_file(&path, None).unwrap().ok());

    // The middle segment removed by hand.
    let (_d, p) = copy_trail(dir.path());
    std::fs::remove_file(p.with_file_name(&names[1])).unwrap();
    failed_with(
        &p,
        &[
            "records seq 11..21 are missing",
            &format!(
                "segment {} (seq 11..21), sealed at seq 22, is missing",
                names[1]
            ),
        ],
    );

    // The first segment removed by hand: no record says it aged out.
    let (_d, p) = copy_trail(dir.path());
    std::fs::remove_file(p.with_file_name(&names[0])).unwrap();
    failed_with(
        &p,
        &["records seq 1..10 are missing and no record of the trail says they aged out by policy"],
    );

    // A segment changed: a summary edited inside, compressed again.
    let (_d, p) = copy_trail(dir.path());
    let seg = p.with_file_name(&names[1]);
    let text = zstd::decode_all(std::fs::File::open(&seg).unwrap()).unwrap();
    let text = String::from_utf8(text)
        .unwrap()
        .replace("\"e12\"", "\"e99\"");
    std::fs::write(&seg, zstd::encode_all(text.as_bytes(), 3).unwrap()).unwrap();
    failed_with(
        &p,
        &[
            &format!(
                "segment {}: record seq 14: hash does not match its content",
                names[1]
            ),
            &format!("segment {} was changed after it was sealed", names[1]),
        ],
    );

    // A segment's records re-hashed after the edit: the seal (in the
    // next segment) still tells.
    let (_d, p) = copy_trail(dir.path());
    let seg = p.with_file_name(&names[0]);
    let text =
        String::from_utf8(zstd::decode_all(std::fs::File::open(&seg).unwrap()).unwrap()).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().to_string();
    let mut chain = skos_core::audit::Chain::default();
    let mut out = vec![];
    for l in lines {
        let mut r: skos_core::audit::AuditRecord = serde_json::from_str(l).unwrap();
        r.entry.summary = r.entry.summary.replace("e3", "e33");
        out.push(serde_json::to_string(&chain.seal(r.entry)).unwrap());
    }
    let mut h: segments::SegmentHeader = serde_json::from_str(&header).unwrap();
    h.last_hash = chain.last_hash().to_string();
    let text = format!(
        "{}\n{}\n",
        serde_json::to_string(&h).unwrap(),
        out.join("\n")
    );
    std::fs::write(&seg, zstd::encode_all(text.as_bytes(), 3).unwrap()).unwrap();
    failed_with(
        &p,
        &[
            &format!("segment {} was changed after it was sealed", names[0]),
            "prev_hash does not match",
        ],
    );

    // A record cut from the middle of the live file.
    let (_d, p) = copy_trail(dir.path());
    let text = std::fs::read_to_string(&p).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(2);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    failed_with(&p, &["records seq 35..35 are missing, deleted"]);

    // A segment no rotation sealed, slipped in.
    let (_d, p) = copy_trail(dir.path());
    std::fs::rename(
        p.with_file_name(&names[2]),
        p.with_file_name("audit-00000000000000000022-00000000000000000031.jsonl.zst"),
    )
    .unwrap();
    failed_with(&p, &["its header says seq 22..32"]);
}

/// A crash between the steps of a rotation (after the segment is in place;
/// after its seal is recorded; with the temp files of a step half done
/// left behind) leaves a trail that verifies, and the next open completes
/// the rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_cut_short_verifies_and_is_completed_on_open() {
    for stop in [RotateStop::AfterSegment, RotateStop::AfterSeal] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        {
            let log = AuditLog::open_file_with(&path, manual(None)).unwrap();
            log.append_many((0..10).map(entry).collect()).await.unwrap();
            assert!(log.rotate_now().await.unwrap());
            log.append_many((10..20).map(entry).collect())
                .await
                .unwrap();
            assert!(log.rotate_stopping(stop).await.unwrap());
            // The process dies here.
        }
        // Half-written temp files of a later step.
        std::fs::write(
            dir.path()
                .join(".audit-00000000000000000012-00000000000000000099.jsonl.zst.tmp"),
            b"\x28\xb5\x2f",
        )
        .unwrap();
        std::fs::write(dir.path().join(".audit.jsonl.cut"), b"{\"seq\":").unwrap();
        let r = audit::check::verify_file(&path, None).unwrap();
        assert!(r.ok(), "{stop:?}: {r:?}");
        assert!(r.copies >= 10, "{stop:?}: {r:?}");
        let want = if stop == RotateStop::AfterSeal {
            22
        } else {
            21
        };
        assert_eq!(r.records, want, "{stop:?}");

        let log = AuditLog::open_file_with(&path, manual(None)).unwrap();
        let live = audit::read_file(&path).unwrap();
        assert_eq!(live[0]["entry"]["event_type"], "audit_sealed", "{stop:?}");
        assert_eq!(live[0]["seq"], 22, "{stop:?}: the live file was cut");
        log.append(entry(99)).await.unwrap();
        let r = audit::check::verify_file(&path, None).unwrap();
        assert!(r.ok(), "{stop:?}: {r:?}");
        assert_eq!((r.records, r.copies, r.segments), (23, 0, 2), "{stop:?}");
        let strays: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(strays.is_empty(), "{strays:?}");
    }
}

async fn stream_state(bus: &skos_bus::NatsBus) -> async_nats::jetstream::stream::State {
    let mut s = bus
        .jetstream()
        .get_stream(skos_bus::subjects::STREAM_AUDIT)
        .await
        .unwrap();
    s.info().await.unwrap().state.clone()
}

/// On the stream the records age out by its `max_age` (set when it is
/// made: no SKOS credential may purge it or change it), and the leader's
/// checkpoint records let `verify` tell that from a purge: the first record
/// left must be within a checkpoint interval of the age-out horizon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_aged_out_of_the_stream_are_told_apart_from_a_purge() {
    use skos_bus::audit::Signing;
    use skos_bus::{trust, NatsBus, NatsOptions};
    use skos_testsupport::nats::{nats_server_binary, NatsServer};
    use std::sync::Arc;
    skos_testsupport::require!("nats-server", nats_server_binary());
    let signer = Arc::new(trust::Signer::ephemeral());
    let trusted = trust::Verifier::new(&[signer.public_key()], true).unwrap();
    let every = Duration::from_secs(60);

    // Aged out: a stream that keeps records 4 s.
    let server = NatsServer::start();
    let mut opts = NatsOptions::new(server.url(), "test");
    opts.audit_max_age = Duration::from_secs(4);
    let bus = NatsBus::connect(&opts).await.unwrap();
    let log =
        AuditLog::open_jetstream_signed(&bus, Some(Signing::new(signer.clone(), &[]).unwrap()))
            .await
            .unwrap();
    for i in 0..5 {
        log.append(entry(i)).await.unwrap();
    }
    // The server ages them out (waited for, not timed).
    while stream_state(&bus).await.messages > 0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cp = log.checkpoint(opts.audit_max_age).await.unwrap().unwrap();
    assert_eq!(cp.seq, 6);
    assert_eq!(cp.entry.event_type, "audit_checkpoint");
    assert_eq!(cp.entry.data["head_seq"], 5);
    log.append(entry(9)).await.unwrap();
    let r = audit::check::verify_jetstream_within(&bus, Some(&trusted), None, every, |_, _| {})
        .await
        .unwrap();
    assert!(r.ok(), "{r:?}");
    // (Or later still, if the server aged more out meanwhile.)
    assert!(r.aged_out.is_some_and(|(a, b)| a == 1 && b >= 5), "{r:?}");

    // Purged: a stream that keeps 30 days, made without the purge lock
    // (by an admin, before SKOS ran), purged of its first three messages.
    let server = NatsServer::start();
    let mut opts = NatsOptions::new(server.url(), "test");
    opts.audit_max_age = Duration::from_secs(30 * 86_400);
    let admin = NatsBus::connect(&NatsOptions {
        create_streams: false,
        ..NatsOptions::new(server.url(), "admin")
    })
    .await
    .unwrap();
    admin
        .jetstream()
        .create_stream(async_nats::jetstream::stream::Config {
            name: skos_bus::subjects::STREAM_AUDIT.to_string(),
            subjects: vec![skos_bus::subjects::AUDIT.to_string()],
            max_age: opts.audit_max_age,
            ..Default::default()
        })
        .await
        .unwrap();
    let bus = NatsBus::connect(&opts).await.unwrap();
    let log =
        AuditLog::open_jetstream_signed(&bus, Some(Signing::new(signer.clone(), &[]).unwrap()))
            .await
            .unwrap();
    for i in 0..6 {
        log.append(entry(i)).await.unwrap();
    }
    let before =
        audit::check::verify_jetstream_within(&bus, Some(&trusted), None, every, |_, _| {})
            .await
            .unwrap();
    assert!(before.ok(), "{before:?}");
    admin
        .jetstream()
        .get_stream(skos_bus::subjects::STREAM_AUDIT)
        .await
        .unwrap()
        .purge()
        .sequence(4)
        .await
        .unwrap();
    let r = audit::check::verify_jetstream_within(&bus, Some(&trusted), None, every, |_, _| {})
        .await
        .unwrap();
    assert!(!r.ok(), "{r:?}");
    assert_eq!(r.aged_out, None);
    assert!(
        r.breaks[0].contains("records seq 1..3 are missing")
            && r.breaks[0].contains("purged or deleted, not aged out by policy"),
        "{:?}",
        r.breaks
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_segment_does_not_keep_the_trail_from_opening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    {
        let log = AuditLog::open_file_with(&path, manual(None)).unwrap();
        let old = chrono::Utc::now() - chrono::Duration::days(40);
        log.append_many((0..10).map(|i| entry_at(i, old)).collect())
            .await
            .unwrap();
        assert!(log.rotate_now().await.unwrap());
        for i in 0..3 {
            log.append(entry(100 + i)).await.unwrap();
        }
    }
    // The oldest segment, past the retention, rotted on disk; and one that
    // claims to overlap the live file (a rotation cut short) is garbage.
    let oldest = segment_names(&path).remove(0);
    std::fs::write(path.with_file_name(&oldest), b"not zstd at all").unwrap();
    let planted = segments::name(&path, 11, 99);
    std::fs::write(path.with_file_name(&planted), b"\x28\xb5\x2f\xfdgarbage").unwrap();

    let log = AuditLog::open_file_with(&path, manual(Some(Duration::from_secs(30 * 86_400))))
        .expect("the trail opens and records go on");
    log.append(entry(7)).await.unwrap();
    drop(log);
    assert_eq!(
        segment_names(&path),
        [oldest.clone(), planted.clone()],
        "an unreadable segment is not aged out (its range cannot be recorded), nor trusted"
    );
    let live = audit::read_file(&path).unwrap();
    assert_eq!(
        seqs(&live),
        [11, 12, 13, 14, 15],
        "the live file was not cut"
    );
    failed_with(
        &path,
        &[
            &format!("segment {oldest}: unreadable"),
            &format!("segment {planted}: unreadable"),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_while_the_live_file_is_sealed_sees_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open_file_with(&path, manual(None)).unwrap();
    log.append_many((0..5000).map(entry).collect())
        .await
        .unwrap();
    assert!(log.rotate_now().await.unwrap());
    for i in 0..10 {
        log.append(entry(100 + i)).await.unwrap();
    }
    // verify is told its progress every 4096 lines of the first segment:
    // the writer seals the live file (5001..=5011) there.
    let paused = Paused::verify(&path).await;
    assert!(log.rotate_now().await.unwrap());
    assert_eq!(segment_names(&path).len(), 2);
    let r = paused.finish().await;
    assert!(r.ok(), "a rotation meanwhile is no deletion: {r:?}");
    assert_eq!(
        r.records, 5012,
        "5001..=5011 and their seal, in the file replaced"
    );
    assert!(
        r.notes[0].contains("sealed while the check ran"),
        "{:?}",
        r.notes
    );
    // And once it is over, the new segment is read as such.
    let r = audit::check::verify_file(&path, None).unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!((r.records, r.segments), (5012, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_inflating_to_an_endless_line_is_passed_over() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let path = three_segments(dir.path()).await;
    let names = segment_names(&path);
    let seg = path.with_file_name(&names[1]);
    // The segment rewritten with 40 MiB of one line (no newline) after its
    // header: a few kilobytes on disk.
    let plain = zstd::decode_all(std::fs::File::open(&seg).unwrap()).unwrap();
    let mut lines = plain.split_inclusive(|b| *b == b'\n');
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    enc.write_all(lines.next().unwrap()).unwrap();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..40 {
        enc.write_all(&chunk).unwrap();
    }
    enc.write_all(b"\n").unwrap();
    for l in lines {
        enc.write_all(l).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
    std::fs::write(&seg, &bomb).unwrap();

    let r = audit::check::verify_file(&path, None).unwrap();
    assert!(!r.ok());
    let f = r
        .foreign
        .iter()
        .find(|f| f.subject == names[1])
        .unwrap_or_else(|| panic!("{r:?}"));
    assert_eq!(f.at, 2, "{f:?}");
    assert!(
        f.reason
            .contains(&format!("longer than {} bytes", segments::MAX_LINE)),
        "{f:?}"
    );
    // Its records are still read and the chain holds; the seal names the
    // change.
    assert!(
        r.breaks
            .iter()
            .any(|b| b.contains(&format!("segment {} was changed", names[1]))),
        "{:?}",
        r.breaks
    );
    assert_eq!(r.break_count, 1, "{:?}", r.breaks);
    assert_eq!(r.records, 38);
    // The readers pass it over too.
    assert_eq!(audit::read_trail(&path).unwrap().len(), 38);
}

/// The stream's `max_age` lowered by an admin after it was made (the
/// leaders applied 30 days) ages the whole trail out in seconds: `verify`
/// judges the gap by what the leaders' checkpoints say they applied, not
/// by the stream's config as it is now, and names the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_max_age_is_no_age_out_by_policy() {
    use skos_bus::audit::Signing;
    use skos_bus::{trust, NatsBus, NatsOptions};
    use skos_testsupport::nats::{nats_server_binary, NatsServer};
    use std::sync::Arc;
    skos_testsupport::require!("nats-server", nats_server_binary());
    let signer = Arc::new(trust::Signer::ephemeral());
    let trusted = trust::Verifier::new(&[signer.public_key()], true).unwrap();
    let every = Duration::from_secs(60);
    let server = NatsServer::start();
    let mut opts = NatsOptions::new(server.url(), "test");
    opts.audit_max_age = Duration::from_secs(30 * 86_400);
    let admin = NatsBus::connect(&NatsOptions {
        create_streams: false,
        ..NatsOptions::new(server.url(), "admin")
    })
    .await
    .unwrap();
    let config = async_nats::jetstream::stream::Config {
        name: skos_bus::subjects::STREAM_AUDIT.to_string(),
        subjects: vec![skos_bus::subjects::AUDIT.to_string()],
        max_age: opts.audit_max_age,
        ..Default::default()
    };
    admin
        .jetstream()
        .create_stream(config.clone())
        .await
        .unwrap();
    let bus = NatsBus::connect(&opts).await.unwrap();
    let log =
        AuditLog::open_jetstream_signed(&bus, Some(Signing::new(signer.clone(), &[]).unwrap()))
            .await
            .unwrap();
    for i in 0..3 {
        log.append(entry(i)).await.unwrap();
    }
    log.checkpoint(opts.audit_max_age).await.unwrap().unwrap();
    for i in 3..6 {
        log.append(entry(i)).await.unwrap();
    }
    // The admin lowers max_age to 2 s: the server removes every record.
    admin
        .jetstream()
        .update_stream(async_nats::jetstream::stream::Config {
            max_age: Duration::from_secs(2),
            duplicate_window: Duration::from_secs(1),
            ..config
        })
        .await
        .unwrap();
    while stream_state(&bus).await.messages > 0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The leader goes on: its next checkpoint, and a record.
    log.checkpoint(opts.audit_max_age).await.unwrap().unwrap();
    log.append(entry(9)).await.unwrap();
    let r = audit::check::verify_jetstream_within(&bus, Some(&trusted), None, every, |_, _| {})
        .await
        .unwrap();
    assert!(!r.ok(), "{r:?}");
    assert_eq!(r.aged_out, None, "{r:?}");
    let all = r.breaks.join("\n");
    assert!(
        all.contains("the stream's max_age is 2 s, shorter than the 2592000 s the leaders applied"),
        "{all}"
    );
    assert!(
        all.contains("records seq 1..7 are missing")
            && all.contains("purged or deleted, not aged out by policy"),
        "{all}"
    );
}

/// A full filesystem at every point of a rotation (a real tmpfs, filled to
/// leave from 0 to 24 KiB): every record whose append succeeded is in the
/// trail, the trail verifies once space is back, the next rotation
/// completes, and no half-written file is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_during_rotation_never_tears_the_trail() {
    use skos_testsupport::tmpfs::Tmpfs;
    for room in (0..24 * 1024).step_by(1536) {
        let fs = skos_testsupport::require!("a tmpfs mount", Tmpfs::mount("1M", None));
        let dir = fs.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let path = dir.join("audit.jsonl");
        let policy = Policy {
            segment_bytes: 64 * 1024,
            segment_age: Duration::from_secs(365 * 86_400),
            retain: None,
        };
        let log = AuditLog::open_file_with(&path, policy.clone()).unwrap();
        let mut stored = Vec::new();
        let mut i = 0u32;
        while std::fs::metadata(&path).unwrap().len() < 60 * 1024 {
            stored.push(log.append(entry(i)).await.unwrap().seq);
            i += 1;
        }
        // Fill what is left but `room` bytes.
        let free = {
            let out = std::process::Command::new("df")
                .args(["-B1", "--output=avail"])
                .arg(fs.path())
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .nth(1)
                .unwrap()
                .trim()
                .parse::<usize>()
                .unwrap()
        };
        let filler = fs.path().join("filler");
        let _ = std::fs::write(&filler, vec![0u8; free.saturating_sub(room)]);
        let mut failed = 0;
        for _ in 0..60 {
            match log.append(entry(i)).await {
                Ok(r) => stored.push(r.seq),
                Err(_) => failed += 1,
            }
            i += 1;
        }
        std::fs::remove_file(&filler).unwrap();
        stored.push(log.append(entry(i)).await.unwrap().seq);
        log.rotate_now().await.unwrap();
        stored.push(log.append(entry(i + 1)).await.unwrap().seq);
        drop(log);
        let r = audit::check::verify_file(&path, None).unwrap();
        assert!(r.ok(), "room {room} ({failed} appends failed): {r:?}");
        let all: std::collections::BTreeSet<u64> = seqs(&audit::read_trail(&path).unwrap())
            .into_iter()
            .collect();
        for s in &stored {
            assert!(all.contains(s), "room {room}: record {s} lost");
        }
        let strays: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(strays.is_empty(), "room {room}: {strays:?}");
        drop(AuditLog::open_file_with(&path, policy).unwrap());
    }
}

/// A follower (`skos audit tail -f`) that falls behind by more than one
/// rotation (the live file replaced twice or more between two reads) still
/// gives every record once, in order: those sealed meanwhile come from the
/// segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_several_rotations_misses_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let policy = Policy {
        segment_bytes: 64 * 1024,
        ..manual(None)
    };
    let log = AuditLog::open_file_with(&path, policy).unwrap();
    log.append(entry(0)).await.unwrap();
    let source = skos_bus::audit_follow::AuditSource::File(path.clone());
    let (mut follower, _) = skos_bus::audit_follow::AuditFollower::open(&source, 0)
        .await
        .unwrap();
    log.append(entry(1)).await.unwrap();
    assert_eq!(seqs(&follower.next().await.unwrap()), [2]);
    for i in 2..1500 {
        log.append(entry(i)).await.unwrap();
    }
    assert!(segments::list(&path).unwrap().len() >= 3);
    let head = audit::read_file_tail(&path, 1).unwrap()[0]["seq"]
        .as_u64()
        .unwrap();
    let mut seen = vec![2];
    while *seen.last().unwrap() < head {
        seen.extend(seqs(&follower.next().await.unwrap()));
    }
    let gaps: Vec<&[u64]> = seen.windows(2).filter(|w| w[0] + 1 != w[1]).collect();
    assert!(gaps.is_empty(), "not each once, in order: {gaps:?}");
}

/// Segments aged out by the writer while `verify` reads the trail (listed,
/// then removed before they were read, their `audit_expired` records
/// written to the live file): no deletion is reported, the check starts
/// over and finds them aged out by policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_aged_out_while_verify_reads_are_no_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let old = chrono::Utc::now() - chrono::Duration::days(40);
    {
        let log = AuditLog::open_file_with(&path, manual(None)).unwrap();
        log.append_many((0..5000).map(|i| entry_at(i, old)).collect())
            .await
            .unwrap();
        assert!(log.rotate_now().await.unwrap());
        log.append_many((0..10).map(|i| entry_at(i, old)).collect())
            .await
            .unwrap();
        assert!(log.rotate_now().await.unwrap());
        log.append(entry(1)).await.unwrap();
    }
    assert_eq!(segment_names(&path).len(), 2);
    // While verify reads the first segment, the writer starts with a
    // retention both are past (none kept: the policy's edge) and ages both
    // out.
    let paused = Paused::verify(&path).await;
    let log = AuditLog::open_file_with(&path, manual(Some(Duration::ZERO))).unwrap();
    assert!(segment_names(&path).is_empty());
    let r = paused.finish().await;
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.aged_out, Some((1, 5011)), "{r:?}");
    drop(log);
}
