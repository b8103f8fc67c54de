//! A server that lost its store, at its edges (real nats-server): terms
//! in a lease bucket made again, a forged lease record, streams made again
//! by another process than the leader's.

use std::time::Duration;

use bytes::Bytes;
use skos_bus::lease::{LeaderRecord, Lease, Renewal};
use skos_bus::{subjects, NatsBus, NatsOptions};
use skos_testsupport::nats::{nats_server_binary, NatsServer};

async fn connect(server: &NatsServer, name: &str) -> NatsBus {
    let mut opts = NatsOptions::new(server.url(), name);
    opts.audit_max_age = Duration::from_secs(30 * 86_400);
    NatsBus::connect(&opts).await.unwrap()
}

/// As `skos agent` connects: no stream made at connect.
async fn connect_agent(server: &NatsServer) -> NatsBus {
    let mut opts = NatsOptions::new(server.url(), "skos-agent-nova");
    opts.audit_max_age = Duration::from_secs(30 * 86_400);
    opts.create_streams = false;
    NatsBus::connect(&opts).await.unwrap()
}

const ALL: [&str; 5] = [
    subjects::STREAM_ALERTS,
    subjects::STREAM_COMMANDS,
    subjects::STREAM_RESULTS,
    subjects::STREAM_AUDIT,
    subjects::STREAM_STATE,
];

/// Delete every SKOS stream there is (`SKOS_STATE` is made by the
/// coordinator's state store, not at connect).
async fn lose_streams(js: &async_nats::jetstream::Context) {
    for name in ALL {
        let _ = js.delete_stream(name).await;
    }
    for name in ALL {
        assert!(js.get_stream(name).await.is_err(), "{name} is still there");
    }
}

fn nova() -> skos_core::NodeName {
    skos_core::NodeName::parse("nova").unwrap()
}

fn command(id: &str) -> skos_core::protocol::Command {
    skos_core::protocol::Command {
        action_id: id.into(),
        action_type: "throttle_50".into(),
        parameters: Default::default(),
        timestamp: chrono::Utc::now(),
        node: Some(nova()),
        deadline: None,
        cause: None,
        problem: None,
        term: Some(3),
        level: None,
    }
}

/// Two coordinators both know the fleet's highest term (50); the bucket is
/// made again; A wins, then gives the lease up before B read A's record;
/// B wins after it: B's term is above A's, never the same (agents accept a
/// command whose term equals the highest they saw).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_term_is_never_taken_twice_in_a_bucket_made_again() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server, "test").await;
    let bucket = format!("KV_{}", subjects::LEADER_BUCKET);
    let mut a = Lease::open(&bus, "a:1:x".into(), Duration::from_secs(30))
        .await
        .unwrap();
    let mut b = Lease::open(&bus, "b:2:y".into(), Duration::from_secs(30))
        .await
        .unwrap();
    a.observe(50);
    b.observe(50);
    bus.jetstream().delete_stream(&bucket).await.unwrap();

    let ta = a.try_acquire(chrono::Utc::now()).await.unwrap().unwrap();
    assert_eq!(ta.term, 51);
    a.release().await;
    let tb = b.try_acquire(chrono::Utc::now()).await.unwrap().unwrap();
    assert!(
        tb.term > ta.term,
        "B leads in term {} after A led in term {}: the same term twice",
        tb.term,
        ta.term
    );
}

/// One forged lease record at term `u64::MAX` (a credential that may write
/// the bucket) keeps coordinators out only until it ages out: a term that
/// far above any seen is not believed, so a coordinator leads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_lease_record_keeps_the_fleet_leaderless_only_until_it_ages_out() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let bus = connect(&server, "test").await;
    let lease = Duration::from_secs(2);
    let mut a = Lease::open(&bus, "a:1:x".into(), lease).await.unwrap();
    let mut b = Lease::open(&bus, "b:2:y".into(), lease).await.unwrap();
    assert!(a.try_acquire(chrono::Utc::now()).await.unwrap().is_some());

    // The forgery: one put.
    let kv = bus
        .jetstream()
        .get_key_value(subjects::LEADER_BUCKET)
        .await
        .unwrap();
    let forged = LeaderRecord {
        holder: "forger:1:z".into(),
        term: Some(u64::MAX),
        since: chrono::Utc::now(),
    };
    kv.put(
        subjects::LEADER_KEY,
        Bytes::from(serde_json::to_vec(&forged).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(a.renew().await.unwrap(), Renewal::Lost);
    assert!(b.try_acquire(chrono::Utc::now()).await.unwrap().is_none());

    // The forged record ages out; the coordinators poll as standby does.
    tokio::time::sleep(lease + Duration::from_secs(1)).await;
    let mut errors = Vec::new();
    let mut led = false;
    for _ in 0..4 {
        for l in [&mut a, &mut b] {
            match l.try_acquire(chrono::Utc::now()).await {
                Ok(Some(_)) => led = true,
                Ok(None) => {}
                Err(e) => errors.push(e.to_string()),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A fresh coordinator, which never read the forged record.
    let mut c = Lease::open(&bus, "c:3:w".into(), lease).await.unwrap();
    let c_won = c.try_acquire(chrono::Utc::now()).await.unwrap();
    let held = c.current().await.unwrap();
    assert!(
        led || c_won.is_some(),
        "no coordinator leads after the forged record aged out: errors {errors:?}; \
         the key is held by {held:?} (a refusing coordinator, term None)"
    );
}

/// Streams made again by a bus that is not the leader's (an agent with
/// permissive credentials publishing an alert) are made without the
/// per-node limit: the leader's next look finds them made again and sets
/// the limit again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_made_again_by_an_agent_get_the_per_node_limit_back() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let coord = connect(&server, "skos-coordinator").await;
    let wrapped = skos_bus::Bus::Nats(coord.clone());
    wrapped.limit_per_node(7).await.unwrap();
    let agent = skos_bus::Bus::Nats(connect_agent(&server).await);
    lose_streams(coord.jetstream()).await;

    let alert: skos_core::protocol::Alert = serde_json::from_value(serde_json::json!({
        "agent_id": "a", "type": "thermal", "severity": "critical", "node": "nova",
        "message": "hot", "timestamp": "2026-01-01T00:00:00Z",
    }))
    .unwrap();
    agent.publish_alert(&alert).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let made = coord.remake_missing_streams().await.unwrap();
    assert!(
        made.contains(&subjects::STREAM_ALERTS) && made.contains(&subjects::STREAM_RESULTS),
        "{made:?}"
    );
    for name in [subjects::STREAM_ALERTS, subjects::STREAM_RESULTS] {
        let mut s = coord.jetstream().get_stream(name).await.unwrap();
        let per_subject = s.info().await.unwrap().config.max_messages_per_subject;
        assert_eq!(per_subject, 7, "{name}: the per-node limit was lost");
    }
}

/// SKOS_COMMANDS made again by anyone but the leader's own bus (another
/// coordinator process connecting) is found by the leader's periodic look
/// (`check_streams`), counted in `commands_remade()`, so the coordinator
/// asks every node's command consumer again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commands_stream_made_again_elsewhere_is_found_by_the_leader() {
    skos_testsupport::require!("nats-server", nats_server_binary());
    let server = NatsServer::start();
    let leader = skos_bus::Bus::Nats(connect(&server, "skos-coordinator").await);
    leader.ensure_command_consumer(&nova()).await.unwrap();
    let Some(js) = (match &leader {
        skos_bus::Bus::Nats(b) => Some(b.jetstream().clone()),
        _ => None,
    }) else {
        unreachable!()
    };
    lose_streams(&js).await;
    // Another coordinator process starts (a standby restarted by systemd):
    // its connect makes the streams.
    let _standby = connect(&server, "skos-coordinator").await;

    leader
        .send_command(&nova(), &command("c-1"), None)
        .await
        .unwrap();
    let stream = js.get_stream(subjects::STREAM_COMMANDS).await.unwrap();
    let consumer = stream
        .consumer_info(subjects::agent_consumer(&nova()))
        .await;
    assert!(consumer.is_err(), "the consumer went with the stream");
    assert_eq!(leader.commands_remade(), 0, "not looked at yet");
    let found = leader.check_streams().await.unwrap();
    assert!(found.contains(&subjects::STREAM_COMMANDS), "{found:?}");
    assert_eq!(
        leader.commands_remade(),
        1,
        "SKOS_COMMANDS was made again: nova's command consumer is asked for again"
    );
}
