//! Fairness: one node floods `Opts::flood_alerts` alerts (50,000 by
//! default) into `SKOS_ALERTS` as fast as one publisher can, while other
//! nodes' alerts (each for a different node, so no quota or in-progress
//! skip applies to them; eight lanes, each sending its next alert once the
//! previous one has its command) are timed from the publish to their
//! command on the bus. The same probe is run first without the flood, on
//! the same server and coordinator: the reference.
//!
//! A responder plays the nodes' agents: it answers every command with a
//! successful result on `skos.result.<node>`, as an agent would, so the
//! coordinator's result path carries its share of the load.
//!
//! The flood is over when the coordinator has counted every flood alert
//! (`alerts.handled` + `alerts.coalesced` + `alerts.duplicate` +
//! `alerts.dropped_unread`, less the probes); probing stops then. Dropped:
//! past `coordinator.max_queued_per_node` of the flooding node's alerts
//! waiting in the stream, the bus drops its oldest, and the coordinator
//! counts them from the gap in stream sequences.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde_json::{json, Value};
use skos_bus::subjects;
use skos_core::counters::Counters;
use tokio::sync::oneshot;

use crate::coord::{self, InProcCoordinator};
use crate::error::Context;
use crate::ingest::join_fleet;
use crate::natsutil::{self, Server};
use crate::progress::{CounterWatch, Task};
use crate::report::{Figure, SectionReport};
use crate::stats::Summary;
use crate::{say, sim, Error, Opts, Result};

const S: &str = "fairness";

/// Pause between two probe alerts of one lane.
const GAP: Duration = Duration::from_millis(5);
/// Probe lanes, with and without the flood: several probes in flight at
/// once, so that a short flood still yields samples enough for a p99, each
/// for a different node.
const LANES: usize = 8;
/// A probe alert without its command by then is counted lost.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the flood may take to be counted by the coordinator.
const FLOOD_LIMIT: Duration = Duration::from_secs(600);

/// Alerts the coordinator has counted, whatever became of them.
fn counted(c: &Counters) -> u64 {
    c.get("alerts.handled")
        + c.get("alerts.coalesced")
        + c.get("alerts.duplicate")
        + c.get("alerts.dropped_unread")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Probes waiting for their command, by alert id (the command's cause).
type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<Instant>>>>;

/// Watch every command on the bus: a probe waiting for it (by cause) is
/// told when it arrived; every command is answered with a success result,
/// as its agent would.
async fn watch_commands(
    url: &str,
    waiting: Waiting,
    results: Arc<AtomicU64>,
) -> Result<(async_nats::Client, Task)> {
    let agent = natsutil::client(url, "skos-bench-agents").await?;
    let mut sub = agent
        .subscribe(subjects::COMMANDS)
        .await
        .ctx("subscribe commands")?;
    agent.flush().await.ctx("flush")?;
    let js = async_nats::jetstream::new(agent.clone());
    let task = Task::spawn(async move {
        let mut acks = FuturesUnordered::new();
        loop {
            tokio::select! {
                m = sub.next() => {
                    let Some(m) = m else { return };
                    let at = Instant::now();
                    let Ok(cmd) = serde_json::from_slice::<Value>(&m.payload) else {
                        continue;
                    };
                    let cause = cmd["cause"].as_str().unwrap_or_default();
                    let waiter = waiting.lock().ok().and_then(|mut w| w.remove(cause));
                    if let Some(w) = waiter {
                        let _ = w.send(at);
                    }
                    if let Ok((node, body)) = sim::result(&cmd) {
                        if let Ok(ack) = js.send_publish(subjects::result(&node), PublishMessage::build().payload(body)).await {
                            acks.push(ack.into_future());
                            results.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Some(_) = acks.next(), if !acks.is_empty() => {}
            }
        }
    });
    Ok((agent, task))
}

/// Probe alerts, each for a node of its own (`next..end`), each timed
/// from its publish to its command.
struct Prober {
    js: async_nats::jetstream::Context,
    waiting: Waiting,
    prefix: String,
    run: String,
    next: AtomicUsize,
    end: usize,
}

/// What a probe run measured: samples (ms) and probes without a command
/// in time.
#[derive(Default)]
struct Probed {
    samples: Vec<f64>,
    lost: u64,
}

impl Prober {
    /// One probe, or `None` when the nodes are used up.
    async fn one(&self) -> Result<Option<Option<f64>>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i >= self.end {
            return Ok(None);
        }
        let node = sim::node(&self.prefix, i)?;
        let id = format!("probe-{}-{i}", self.run);
        let payload = sim::alert(&node, &id, "warning", 80.0)?;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(id.clone(), tx);
        }
        let t0 = Instant::now();
        let ack = self
            .js
            .send_publish(
                subjects::alert(&node),
                PublishMessage::build()
                    .payload(payload)
                    .message_id(id.as_str()),
            )
            .await
            .ctx("publish probe alert")?;
        let r = tokio::time::timeout(PROBE_TIMEOUT, async {
            tokio::join!(ack.into_future(), rx).1
        })
        .await;
        if let Ok(mut w) = self.waiting.lock() {
            w.remove(&id);
        }
        Ok(Some(match r {
            Ok(Ok(at)) => Some(ms(at - t0)),
            _ => None,
        }))
    }

    /// `lanes` probers side by side, each sending its next probe once the
    /// previous one has its command, until `n` are sent, the nodes are used
    /// up or `stop` (given how many were sent) says so.
    async fn run(&self, n: usize, lanes: usize, stop: impl Fn(usize) -> bool) -> Result<Probed> {
        let sent = AtomicUsize::new(0);
        let lane = || async {
            let mut out = Probed::default();
            while sent.load(Ordering::Relaxed) < n && !stop(sent.load(Ordering::Relaxed)) {
                sent.fetch_add(1, Ordering::Relaxed);
                match self.one().await? {
                    None => break,
                    Some(Some(v)) => out.samples.push(v),
                    Some(None) => out.lost += 1,
                }
                tokio::time::sleep(GAP).await;
            }
            Ok::<_, Error>(out)
        };
        let mut all = Probed::default();
        for r in futures::future::join_all((0..lanes.max(1)).map(|_| lane())).await {
            let r = r?;
            all.samples.extend(r.samples);
            all.lost += r.lost;
        }
        Ok(all)
    }
}

/// What the flooding publisher did.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct Flood {
    published: u64,
    errors: u64,
    seconds: f64,
}

/// `n` alerts of one node, pipelined (256 acks in flight).
async fn flood(
    client: async_nats::Client,
    node: skos_core::NodeName,
    run: String,
    n: u64,
) -> Result<Flood> {
    let js = async_nats::jetstream::new(client);
    let t0 = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut errors = 0u64;
    let subject = subjects::alert(&node);
    for i in 0..n {
        let id = format!("flood-{run}-{i}");
        let payload = sim::alert(&node, &id, "warning", 80.0)?;
        let msg = PublishMessage::build().payload(payload).message_id(id);
        let ack = js
            .send_publish(subject.clone(), msg)
            .await
            .ctx("publish flood alert")?;
        inflight.push(ack.into_future());
        while inflight.len() >= 256 {
            if let Some(Err(_)) = inflight.next().await {
                errors += 1;
            }
        }
    }
    while let Some(r) = inflight.next().await {
        if r.is_err() {
            errors += 1;
        }
    }
    Ok(Flood {
        published: n,
        errors,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

pub async fn run(o: &Opts) -> Result<SectionReport> {
    if o.flood_alerts == 0 {
        return Err(Error::Missing("no flood asked for (--flood 0)".into()));
    }
    let server = Server::start(o.nats_url.as_deref())?;
    let url = server.url().to_string();
    let run = sim::run_id();
    let prefix = format!("fa{run}-");
    let n_flood = o.flood_alerts as u64;
    let n_base = o.fairness_probes.max(1);
    // Probe nodes: the baseline's, then enough for the flood's duration.
    let pool = n_base + (n_base * 4).max(5_000);
    let _setup = natsutil::bus(&url, "skos-bench-setup").await?;
    let cfg = coord::bench_config(&url, o.lease_seconds);
    let bench_cfg_queued = cfg.coordinator.max_queued_per_node;
    let coordinator = InProcCoordinator::start(cfg).await?;
    let counters = coordinator.counters.clone();
    let hb_watch = CounterWatch::start(counters.clone(), "heartbeats.received");
    // What the process logs from here on (not the coordinator's start).
    let mark = crate::logged::logged().mark();

    let results = Arc::new(AtomicU64::new(0));
    let waiting: Waiting = Arc::default();
    let (_agents, _agents_task) = watch_commands(&url, waiting.clone(), results.clone()).await?;

    let publisher = natsutil::client(&url, "skos-bench-publisher").await?;
    let flooder = natsutil::client(&url, "skos-bench-flooder").await?;
    // Node `pool` is the flooding one; 0..pool are probed.
    let fleet = sim::nodes(&prefix, pool + 1)?;
    say(S, format!("{} nodes join", pool + 1));
    join_fleet(
        &publisher,
        &fleet,
        &hb_watch.progress,
        1_000,
        Duration::from_secs(120 + pool as u64 / 500),
    )
    .await?;
    let flood_node = sim::node(&prefix, pool)?;

    let prober = Prober {
        js: async_nats::jetstream::new(publisher.clone()),
        waiting,
        prefix: prefix.clone(),
        run: run.clone(),
        next: AtomicUsize::new(0),
        end: pool,
    };
    say(
        S,
        format!("{n_base} alerts of other nodes, {LANES} in flight, no flood"),
    );
    let Probed {
        samples: quiet,
        lost: quiet_lost,
    } = prober.run(n_base, LANES, |_| false).await?;

    say(
        S,
        format!("{n_flood} alerts from {flood_node}, other nodes' alerts timed meanwhile"),
    );
    let c0 = counted(&counters);
    let coalesced0 = counters.get("alerts.coalesced");
    let dropped0 = counters.get("alerts.dropped_unread");
    let t0 = Instant::now();
    let flood_task = tokio::spawn(flood(flooder, flood_node.clone(), run.clone(), n_flood));
    let cs = counters.clone();
    // Probes sent during the flood are counted too: the flood is over once
    // the coordinator has counted all of it plus every probe sent.
    let drained_at = std::sync::Mutex::new(None::<Instant>);
    let over = |sent: usize| {
        let done = counted(&cs).saturating_sub(c0) >= n_flood + sent as u64;
        if done {
            if let Ok(mut d) = drained_at.lock() {
                d.get_or_insert_with(Instant::now);
            }
        }
        done || t0.elapsed() > FLOOD_LIMIT
    };
    let Probed {
        samples: flooded,
        lost: flooded_lost,
    } = prober.run(usize::MAX, LANES, over).await?;
    let probes_during = flooded.len() as u64 + flooded_lost;
    let fl = match flood_task.await {
        Ok(r) => r?,
        Err(e) => return Err(Error::failed("flood", e)),
    };
    // Probing may have stopped because the pool ran out: wait for the rest.
    let deadline = t0 + FLOOD_LIMIT;
    while counted(&counters).saturating_sub(c0) < n_flood + probes_during
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained = drained_at
        .lock()
        .ok()
        .and_then(|d| *d)
        .unwrap_or_else(Instant::now);
    let drain_s = drained.duration_since(t0).as_secs_f64().max(1e-6);
    let counted_flood = counted(&counters)
        .saturating_sub(c0)
        .saturating_sub(probes_during);
    let coalesced = counters.get("alerts.coalesced") - coalesced0;
    let dropped = counters.get("alerts.dropped_unread") - dropped0;
    say(
        S,
        format!(
            "flood counted in {drain_s:.1} s ({:.0}/s; published in {:.1} s), {coalesced} coalesced, {dropped} dropped unread by the per-node limit; {} probes timed during it",
            counted_flood as f64 / drain_s,
            fl.seconds,
            flooded.len()
        ),
    );
    let snapshot = counters.snapshot();
    let logged = crate::logged::logged().since(mark);
    coordinator.stop(Duration::from_secs(15)).await?;

    let (q, f) = (Summary::of(&quiet), Summary::of(&flooded));
    let get = |s: &Option<Summary>, g: fn(&Summary) -> f64| s.as_ref().map(g).unwrap_or(f64::NAN);
    let figures = vec![
        Figure::new(
            S,
            format!("other node's alert → command p50, {n_flood}-alert flood"),
            get(&f, |s| s.p50),
            "ms",
        )
        .beside("same without the flood p50", get(&q, |s| s.p50)),
        Figure::new(
            S,
            format!("other node's alert → command p99, {n_flood}-alert flood"),
            get(&f, |s| s.p99),
            "ms",
        )
        .beside("same without the flood p99", get(&q, |s| s.p99))
        .at_most(100.0)
        .note(format!(
            "{} probes during the flood, {} without ({LANES} in flight at a time in both)",
            flooded.len(),
            quiet.len()
        )),
        Figure::new(
            S,
            format!("other node's alert → command max, {n_flood}-alert flood"),
            get(&f, |s| s.max),
            "ms",
        )
        .beside("same without the flood max", get(&q, |s| s.max)),
        Figure::new(
            S,
            "flood alerts counted by the coordinator/s",
            counted_flood as f64 / drain_s,
            "msg/s",
        )
        .beside(
            "flood published/s",
            fl.published as f64 / fl.seconds.max(1e-6),
        )
        .note(format!(
            "{coalesced} of {n_flood} coalesced past the node's quota, {dropped} dropped unread past the {} it may have queued",
            bench_cfg_queued
        )),
        Figure::new(
            S,
            "other nodes' alerts without a command in 10 s",
            (quiet_lost + flooded_lost) as f64,
            "msgs",
        )
        .at_most(0.0),
        logged.figure(S, "while alerts were timed"),
    ];
    let data = json!({
        "flood_alerts": n_flood,
        "logged": logged,
        "flood_node": flood_node,
        "flood_publish": fl,
        "flood_counted": counted_flood,
        "flood_drain_seconds": drain_s,
        "coalesced": coalesced,
        "dropped_unread": dropped,
        "max_queued_per_node": bench_cfg_queued,
        "probe_gap_ms": ms(GAP),
        "probe_lanes": LANES,
        "without_flood_ms": serde_json::to_value(&q).unwrap_or(Value::Null),
        "without_flood_lost": quiet_lost,
        "during_flood_ms": serde_json::to_value(&f).unwrap_or(Value::Null),
        "during_flood_lost": flooded_lost,
        "results_sent_by_responder": results.load(Ordering::Relaxed),
        "server": if server.is_own() { "started for this section" } else { "external (--nats-url)" },
        "counters": snapshot,
    });
    Ok(SectionReport { data, figures })
}
