//! The refusal of the reply inbox around reconnections, against a real
//! nats-server.
//!
//! async-nats counts a connection (`Statistics::connects`) on its
//! connection task and hands events to the callback through a queue of
//! 128 on another task; `Connected` is dropped when that queue is full.
//! Here the callback is held up in the log's writer (a pipe to a slow
//! reader does the same) while the queue fills:
//! - the inbox refused on one connection, taken only after the client
//!   reconnected to a server that allows it, must not deny the new one;
//! - after one `Connected` dropped, a later connection's refusal, taken in
//!   order, must still be named.

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

/// One test at a time in a process: the log and its gate are shared.
static SERIAL: Mutex<()> = Mutex::new(());

/// What each test runs against: the server, its config file, the bus under
/// test and its client, and something answering on `svc`.
struct Rig {
    _dir: tempfile::TempDir,
    conf: std::path::PathBuf,
    nats: NatsServer,
    bus: Bus,
    client: async_nats::Client,
}

async fn rig(inbox_allowed: bool) -> Rig {
    static LOG: std::sync::Once = std::sync::Once::new();
    LOG.call_once(|| tracing::subscriber::set_global_default(SlowLog).unwrap());
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(120));
        eprintln!("stuck for two minutes");
        std::process::exit(3);
    });
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    config(&conf, inbox_allowed);
    let nats = NatsServer::start_with_config(Some(conf.clone()));
    let mut opts = NatsOptions::new(nats.url(), "op");
    opts.auth = NatsAuth::UserPassword("op".into(), "op".into());
    opts.create_streams = false;
    opts.reconnect_wait = Some(Duration::from_millis(100));
    let bus = NatsBus::connect(&opts).await.unwrap();
    let client = bus.client().clone();
    // Something answering on `svc` on every connection of its own.
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
    Rig {
        _dir: dir,
        conf,
        nats,
        bus: Bus::Nats(bus),
        client,
    }
}

/// Wait until `client` made its `n`th connection and is connected.
async fn reconnected(client: &async_nats::Client, n: u64) {
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

// The gate is held across awaits on purpose: the event callback, on
// another worker, blocks on it as on a slow log writer.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_inbox_refusal_taken_late_does_not_deny_the_next_connection() {
    skos_testsupport::require!("nats-server", skos_testsupport::nats::nats_server_binary());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Rig {
        conf,
        mut nats,
        bus,
        client,
        _dir: _kept,
    } = rig(false).await;
    // The log's writer is slow from here: the callback stops at the first
    // refusal it logs.
    let gate = GATE.lock().unwrap_or_else(|e| e.into_inner());
    client.publish("denied.first", Bytes::new()).await.unwrap();
    client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The inbox is refused on connection 1 (its refusal waits in the queue).
    let first = bus
        .request_raw("svc", Bytes::new(), Duration::from_millis(500))
        .await;
    assert!(first.is_err(), "{first:?}");
    // More refusals than the queue holds.
    for _ in 0..400 {
        client.publish("denied.more", Bytes::new()).await.unwrap();
    }
    client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The server comes back allowing the inbox; the client reconnects.
    config(&conf, true);
    nats.restart();
    reconnected(&client, 2).await;
    // Answers come back on connection 2's inbox.
    let mut answered = false;
    for _ in 0..50 {
        if let Ok(Ok(m)) =
            tokio::time::timeout(Duration::from_secs(1), client.request("svc", Bytes::new())).await
        {
            assert_eq!(&m.payload[..], b"ok");
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "connection 2's inbox is taken by the server");
    // The writer catches up; the callback takes what was queued.
    drop(gate);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let now = bus
        .request_raw("svc", Bytes::new(), Duration::from_secs(3))
        .await;
    assert!(
        now.is_ok(),
        "a request on connection 2, whose inbox the server took, ended with {now:?}"
    );
}

#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_inbox_refused_after_a_dropped_connected_is_still_named() {
    skos_testsupport::require!("nats-server", skos_testsupport::nats::nats_server_binary());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Rig {
        conf,
        mut nats,
        bus,
        client,
        _dir: _kept,
    } = rig(true).await;
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

    // A storm: the callback is held up, the queue fills, and the client
    // reconnects (connection 2's `Connected` is dropped).
    {
        let _gate = GATE.lock().unwrap_or_else(|e| e.into_inner());
        client.publish("denied.first", Bytes::new()).await.unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..400 {
            client.publish("denied.more", Bytes::new()).await.unwrap();
        }
        client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        nats.restart();
        reconnected(&client, 2).await;
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
    reconnected(&client, 3).await;
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
