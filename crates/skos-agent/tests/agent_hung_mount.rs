//! The agent never waits for a watched mount. A FUSE mount whose `statfs`
//! never answers (a network mount whose server is gone: `statvfs(2)` of it
//! blocks in the kernel) is watched beside a real tmpfs that is full;
//! through the real agent runtime on the in-process bus, heartbeats keep
//! their interval, the full tmpfs is alerted on and reported all the same
//! (each mount has a reader of its own), the heartbeat names the hung
//! mount slow, the loop breaker's looks are not held up, and the agent
//! stops at once. And after a job, the heartbeat sent at once carries what
//! the job left, not a reading from before it.
//! Measured over real time, with slack for a loaded machine far below what
//! a wait for the mount would cost.

use std::time::Duration;

use futures::StreamExt;
use skos_agent::antibody::Antibody;
use skos_agent::runtime::Agent;
use skos_agent::storage::StorageWatcher;
use skos_bus::{Bus, Feed, InProcBus};
use skos_core::config::Config;
use skos_core::counters::Counters;
use skos_core::protocol::{Alert, Heartbeat, Severity};
use skos_testsupport::hungfs::HungMount;
use skos_testsupport::require;
use skos_testsupport::tmpfs::Tmpfs;
use tokio::sync::watch;
use tokio::time::Instant;

const HEARTBEAT: f64 = 0.5;
const MONITOR: f64 = 0.5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_time_while_a_watched_mount_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let hung_at = dir.path().join("nfs");
    std::fs::create_dir(&hung_at).unwrap();
    let hung = require!(
        "a FUSE mount that never answers statfs",
        HungMount::mount(&hung_at)
    );
    let full = require!("a tmpfs mount", Tmpfs::mount("10M", None));
    full.fill("big.bin", 9_900 * 1024);
    let mut cfg = Config::from_yaml(&format!(
        "agent: {{heartbeat_interval: {HEARTBEAT}, monitor_interval: {MONITOR}, \
         antibodies: [storage_watcher, loop_breaker]}}\n\
         storage:\n  mounts: ['{}', '{}']\n",
        hung_at.display(),
        full.path().display()
    ))
    .unwrap();
    cfg.node.name = skos_core::NodeName::parse("filer").unwrap();
    let bus = Bus::InProc(InProcBus::new());
    let mut heartbeats = bus.subscribe(Feed::Heartbeats).await.unwrap();
    let mut alerts = bus.subscribe(Feed::Alerts).await.unwrap();
    let started = Instant::now();
    let agent = Agent::new(cfg, bus.clone(), Counters::default(), None).unwrap();
    let (stop, mut rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        agent
            .run(async move {
                let _ = rx.wait_for(|v| *v).await;
            })
            .await
            .unwrap();
    });

    let watch_until = started + Duration::from_secs(9);
    let mut beats: Vec<(Instant, Heartbeat)> = Vec::new();
    let mut raised: Vec<Alert> = Vec::new();
    while Instant::now() < watch_until {
        tokio::select! {
            m = heartbeats.next() => {
                let m = m.expect("heartbeat feed closed");
                let hb: Heartbeat = serde_json::from_slice(&m.payload).unwrap();
                beats.push((Instant::now(), hb));
            }
            m = alerts.next() => {
                let m = m.expect("alert feed closed");
                raised.push(serde_json::from_slice(&m.payload).unwrap());
            }
            _ = tokio::time::sleep_until(watch_until) => {}
        }
    }
    assert!(hung.waiting() >= 1, "statfs of the mount was never asked");

    // The first heartbeat came after at most the first look's wait.
    let first = beats.first().map(|(at, _)| *at - started);
    assert!(
        first.is_some_and(|f| f < Duration::from_millis(2500)),
        "first heartbeat after {first:?}"
    );
    let gaps: Vec<f64> = beats
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).as_secs_f64())
        .collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
    let max = gaps.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "{} heartbeats, gaps mean {mean:.3} s, max {max:.3} s, first after {first:?}",
        beats.len()
    );
    assert!(gaps.len() >= 14, "{} heartbeats in 9 s", beats.len());
    assert!(
        (mean - HEARTBEAT).abs() <= HEARTBEAT * 0.1,
        "mean heartbeat gap {mean:.3} s, interval {HEARTBEAT} s: {gaps:?}"
    );
    assert!(max <= 2.0 * HEARTBEAT, "a heartbeat waited: {gaps:?}");

    // The full tmpfs was alerted on while the other mount hung.
    let tmpfs = full.path().display().to_string();
    assert!(
        raised.iter().any(|a| a.severity >= Severity::Critical
            && a.details["mount"].as_str() == Some(tmpfs.as_str())),
        "no alert for the full {tmpfs}: {raised:?}"
    );
    // The last heartbeat names the hung mount slow (past its 5 s budget,
    // asked once and still hanging), reports the tmpfs's usage and none
    // for the hung mount; the listing and the loop breaker kept reading.
    let (_, last) = beats.last().expect("heartbeats");
    let errors = &last.metadata["sensor_errors"];
    let e = &errors[format!("storage:{}", hung_at.display()).as_str()];
    assert_eq!(e["problem"], "slow", "{:?}", last.metadata);
    assert_eq!(e["count"], 1, "{e}");
    assert!(
        e["reading_for_seconds"].as_f64().is_some_and(|s| s > 5.0),
        "{e}"
    );
    assert!(e["last_good_seconds"].is_null(), "{e}");
    let errors = errors.as_object().unwrap();
    assert_eq!(errors.len(), 1, "only the hung mount: {errors:?}");
    assert!(last.storage_percent.is_some_and(|p| p > 95.0), "{last:?}");
    let usage = last.metadata["storage"].as_array().unwrap();
    assert_eq!(usage.len(), 1, "{usage:?}");
    assert_eq!(usage[0]["mount"], tmpfs.as_str());

    // Stopping does not wait for the hung statfs.
    let stopping = Instant::now();
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the agent did not stop")
        .unwrap();
    let took = stopping.elapsed();
    eprintln!("stopped in {took:?}");
    assert!(took < Duration::from_secs(1), "stopping took {took:?}");
    drop(hung);
}

#[test]
fn after_a_job_the_heartbeat_carries_what_it_left() {
    let fs = require!("a tmpfs mount", Tmpfs::mount("10M", None));
    let mut cfg = Config::default();
    cfg.storage.mounts = vec![fs.path().to_path_buf()];
    let mut w = StorageWatcher::new(&cfg);
    let report = |w: &StorageWatcher| {
        let mut hb = Heartbeat::bare(
            "a",
            "agent",
            skos_core::NodeName::parse("a").unwrap(),
            chrono::Utc::now(),
        );
        w.report(&mut hb);
        hb.storage_percent
    };
    for i in 0..10 {
        let big = fs.fill(&format!("big-{i}.bin"), 9_500 * 1024);
        // The loop's looks: the first waits for its reads, later ones
        // judge what arrived and ask again.
        Antibody::sense(&mut w, chrono::Utc::now());
        std::thread::sleep(Duration::from_millis(50));
        Antibody::judge(&mut w, chrono::Utc::now());
        assert!(report(&w).is_some_and(|p| p > 90.0), "{:?}", report(&w));
        // A look asks for a read, then a cleanup frees the space and ends:
        // the runtime refreshes before the heartbeat.
        Antibody::sense(&mut w, chrono::Utc::now());
        std::fs::remove_file(&big).unwrap();
        Antibody::refresh(&mut w, chrono::Utc::now());
        assert!(
            report(&w).is_some_and(|p| p < 10.0),
            "try {i}: the heartbeat after the job says {:?}",
            report(&w)
        );
    }
}
