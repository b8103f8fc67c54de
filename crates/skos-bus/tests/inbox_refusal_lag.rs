//! The refusal of the reply inbox on a connection made after a
//! reconnect storm, against a real nats-server.
//!
//! async-nats drops `Connected` when the event queue (128) is full. Here
//! it is dropped once (connection 2, made while the queue is full), the
//! queue then drains, and the server comes back a second time refusing
//! the inbox (connection 3, whose `Connected` is taken in order): a
//! request on it should end with the refusal, as on connection 1.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use skos_bus::{Bus, NatsAuth, NatsBus, NatsOptions};
use skos_testsupport::nats::NatsServer;

/// Held by the test while the log's writer is to be slow.
static GATE: Mutex<()> = Mutex::new(());

/// Logs nothing; each warning of this crate waits for [`GATE`].
struct SlowLog;

impl tracing::Subscriber for SlowLog {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        m.target().starts_with("skos_bus") && *m.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {
        // The worker's other tasks (the connection's) move to another
        // thread while this one waits.
        tokio::task::block_in_place(|| drop(GATE.lock().unwrap_or_else(|e| e.into_inner())));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn config(path: &std::path::Path, inbox_allowed: bool) {
    let sub = if inbox_allowed {
        r#"subscribe = { allow = [">"] }"#
    } else {
        r#"subscribe = { allow = [">"], deny = ["_INBOX.>"] }"#
    };
    std::fs::write(
        path,
        format!(
            r#"
authorization {{
  users = [
    {{ user = "op", password = "op", permissions = {{
        publish = {{ allow = [">"], deny = ["denied.>"] }}
        {sub}
    }} }}
    {{ user = "svc", password = "svc" }}
  ]
}}
"#
        ),
    )
    .unwrap();
}

// The gate is held across awaits on purpose: the event callback, on
// another worker, blocks on it as on a slow log writer.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_inbox_refused_after_a_dropped_connected_is_still_named() {
    skos_testsupport::require!("nats-server", skos_testsupport::nats::nats_server_binary());
    tracing::subscriber::set_global_default(SlowLog).unwrap();
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(120));
        eprintln!("stuck for two minutes");
        std::process::exit(3);
    });
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    config(&conf, true);
    let mut nats = NatsServer::start_with_config(Some(conf.clone()));
    let mut opts = NatsOptions::new(nats.url(), "op");
    opts.auth = NatsAuth::UserPassword("op".into(), "op".into());
    opts.create_streams = false;
    opts.reconnect_wait = Some(Duration::from_millis(100));
    let bus = NatsBus::connect(&opts).await.unwrap();
    let client = bus.client().clone();
    let answering = async_nats::ConnectOptions::with_user_and_password("svc".into(), "svc".into())
        .retry_on_initial_connect();
    let svc = answering.connect(nats.url()).await.unwrap();
    let mut asked = svc.subscribe("svc").await.unwrap();
    let replier = svc.clone();
    tokio::spawn(async move {
        use futures::StreamExt;
        while let Some(m) = asked.next().await {
            if let Some(reply) = m.reply {
                let _ = replier.publish(reply, Bytes::from_static(b"ok")).await;
            }
        }
    });
    svc.flush().await.unwrap();
    let bus = Bus::Nats(bus);
    // Connection 1 answers (its inbox allowed).
    bus.request_raw("svc", Bytes::new(), Duration::from_secs(3))
        .await
        .unwrap();
    let connects = || {
        client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let reconnected = |n: u64| {
        let client = client.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while client
                .statistics()
                .connects
                .load(std::sync::atomic::Ordering::SeqCst)
                < n
                || client.connection_state() != async_nats::connection::State::Connected
            {
                assert!(Instant::now() < deadline, "not reconnected");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    // A storm: the callback is held up, the queue fills, and the client
    // reconnects (connection 2's `Connected` is dropped).
    {
        let _gate = GATE.lock().unwrap();
        client.publish("denied.first", Bytes::new()).await.unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..400 {
            client.publish("denied.more", Bytes::new()).await.unwrap();
        }
        client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        nats.restart();
        reconnected(2).await;
        assert_eq!(connects(), 2);
    }
    // The queue drains.
    tokio::time::sleep(Duration::from_secs(2)).await;
    bus.request_raw("svc", Bytes::new(), Duration::from_secs(3))
        .await
        .unwrap();

    // The server comes back refusing the inbox: connection 3, whose
    // `Connected` is taken in order, then the refusal of its inbox.
    config(&conf, false);
    nats.restart();
    reconnected(3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let asked = bus
        .request_raw("svc", Bytes::new(), Duration::from_secs(3))
        .await;
    assert!(
        matches!(&asked, Err(skos_bus::Error::Denied { .. })),
        "a request whose inbox connection 3 refused ended after {:?} with {asked:?}",
        started.elapsed()
    );
}
