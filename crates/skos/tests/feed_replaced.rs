//! The HTTP feed across an audit stream replaced (real nats-server).

use std::time::Duration;

use skos_bus::audit::AuditLog;
use skos_bus::audit_follow::AuditSource;
use skos_bus::{subjects, NatsBus, NatsOptions};
use skos_core::{AuditEntry, AuditEvent};
use skos_http::feed::Feed;
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

/// The stream deleted and made again empty (another process connecting
/// makes the streams); the feed finds the replacement on the empty stream;
/// then a coordinator starting on it writes a chain begun afresh (seq 1..).
/// Those records must reach the feed's streams and metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_chain_in_a_stream_found_empty_after_a_replacement_reaches_the_feed() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let log = AuditLog::open_jetstream(&bus).await.unwrap();
    let feed = Feed::start(AuditSource::JetStream(bus.clone(), None));
    assert!(feed.ready(Duration::from_secs(10)).await);
    let mut rx = feed.subscribe();
    for i in 0..5 {
        log.append(entry(i)).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 5 {
        let r = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        got.push(r.seq);
    }
    assert_eq!(got, [1, 2, 3, 4, 5]);
    drop(log);
    bus.jetstream()
        .delete_stream(subjects::STREAM_AUDIT)
        .await
        .unwrap();
    let other = connect(&server).await; // makes SKOS_AUDIT again, empty
                                        // The feed finds the replacement (5 s of quiet) and reopens on the
                                        // empty stream.
    tokio::time::sleep(Duration::from_secs(9)).await;
    // A coordinator (re)started on the empty stream: a chain afresh.
    let fresh = AuditLog::open_jetstream(&other).await.unwrap();
    for i in 0..3 {
        fresh.append(entry(10 + i)).await.unwrap();
    }
    let mut after = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Ok(r)) = tokio::time::timeout_at(until, rx.recv()).await {
        after.push(r.seq);
    }
    let held: Vec<u64> = feed.tail(10).iter().map(|r| r.seq).collect();
    eprintln!("sent after the replacement: {after:?}; ring: {held:?}");
    assert_eq!(
        after,
        [1, 2, 3],
        "the new trail's records were not sent (ring {held:?})"
    );
}
