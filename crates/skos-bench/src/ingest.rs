//! Ingest: heartbeats and alerts from many simulated nodes through a real
//! nats-server into the coordinator, beside the bus's ceiling measured on
//! the same burst at the same time:
//!
//! * heartbeats (core NATS): the coordinator's `heartbeats.received` beside
//!   a plain async-nats subscriber on `skos.heartbeat.*`;
//! * alerts (JetStream): the coordinator fully handling each (decision,
//!   command published durably, audit entries written, state saved, ack)
//!   beside a plain JetStream pull consumer on `SKOS_ALERTS` that acks each.
//!
//! Each node first sends one heartbeat ("join": the coordinator audits a
//! new node), paced so the coordinator keeps up; then the burst is sent as
//! fast as the publisher can. Every message not counted is reported lost.
//!
//! Then the alert scaling runs: for each size in `Opts::alert_scale` (1,000
//! and 10,000 by default) a fresh server and coordinator, as many nodes,
//! one alert each (so that many alerts are open at the end), the same
//! burst beside the same plain consumer: the per-alert rate at the largest
//! size against the smallest says whether handling an alert costs more
//! when more are open.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{self, pull};
use async_nats::jetstream::message::PublishMessage;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde_json::json;
use skos_bus::subjects;

use crate::coord::{self, InProcCoordinator};
use crate::error::Context;
use crate::logged::{logged, Since};
use crate::natsutil::{self, Server};
use crate::progress::{count_audited, count_messages, wait_count, CounterWatch, Progress, Task};
use crate::report::{Figure, SectionReport};
use crate::{say, sim, Error, Opts, Result};

const S: &str = "ingest";

/// Most alerts in the main burst (one per node).
pub const MAX_ALERTS: usize = 10_000;

/// Send each node's first heartbeat (stamped as it is sent), at most
/// `window` ahead of what the coordinator has counted; returns once all
/// are counted.
pub async fn join_fleet(
    client: &async_nats::Client,
    fleet: &[sim::SimNode],
    handled: &Progress,
    window: u64,
    timeout: Duration,
) -> Result<f64> {
    let base = handled.count();
    let t0 = Instant::now();
    for (i, n) in fleet.iter().enumerate() {
        while (i as u64) > handled.count().saturating_sub(base) + window {
            if t0.elapsed() > timeout {
                return Err(Error::timeout("the coordinator to count joins", timeout));
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        client
            .publish(n.subject.clone(), n.heartbeat(5.0)?)
            .await
            .ctx("publish heartbeat")?;
    }
    client.flush().await.ctx("flush")?;
    let r = wait_count(
        handled,
        base + fleet.len() as u64,
        t0,
        Duration::from_secs(10),
        timeout,
    )
    .await;
    if !r.reached {
        return Err(Error::failed(
            "join",
            format!(
                "the coordinator counted {} of {} first heartbeats",
                r.count - base,
                fleet.len()
            ),
        ));
    }
    Ok(r.last_change.duration_since(t0).as_secs_f64())
}

/// One consumer's share of a burst.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Drain {
    pub received: u64,
    pub lost: u64,
    /// From the first publish to the last message counted.
    pub seconds: f64,
    pub rate: f64,
}

fn drain(sent: u64, base: u64, r: crate::progress::Reached, t0: Instant) -> Drain {
    let received = r.count.saturating_sub(base);
    let seconds = r
        .last_change
        .saturating_duration_since(t0)
        .as_secs_f64()
        .max(1e-6);
    Drain {
        received,
        lost: sent.saturating_sub(received),
        seconds,
        rate: received as f64 / seconds,
    }
}

/// CPU time of the coordinator's runtime threads and of nats-server (when
/// the run started it) from [`CpuWindow::open`] to [`CpuWindow::close`].
struct CpuWindow {
    coordinator_ticks: u64,
    server: Option<(u32, crate::procfs::ProcSample)>,
}

impl CpuWindow {
    fn open(server_pid: Option<u32>) -> Self {
        Self {
            server: server_pid.and_then(|p| Some((p, crate::procfs::sample(p).ok()?))),
            coordinator_ticks: crate::procfs::own_threads_cpu_ticks(coord::RUNTIME_THREADS),
        }
    }

    /// CPU seconds since opened: the coordinator's, and nats-server's
    /// (`None` with `--nats-url`, or when it could not be read).
    fn close(self) -> (f64, Option<f64>) {
        let hz = crate::procfs::clock_ticks_per_second() as f64;
        let coordinator = crate::procfs::own_threads_cpu_ticks(coord::RUNTIME_THREADS)
            .saturating_sub(self.coordinator_ticks) as f64
            / hz;
        let server = self.server.and_then(|(pid, a)| {
            let b = crate::procfs::sample(pid).ok()?;
            Some(crate::procfs::usage(&a, &b).cpu_seconds)
        });
        (coordinator, server)
    }
}

/// How long [`settle`] waits at most.
const QUIET_LIMIT: Duration = Duration::from_secs(30);

/// CPU (coordinator and nats-server together, in cores) under which the
/// two count as quiet.
const QUIET_CORES: f64 = 0.1;

/// Wait until the coordinator and nats-server are quiet: together under
/// [`QUIET_CORES`] over half a second. What came before a burst (a fleet
/// joining: its node records and audit records are written after the
/// heartbeats are counted) would otherwise be measured as part of it.
/// Gives up after `limit` and says so; the burst is measured anyway.
async fn settle(rig: &Rig, what: &str, limit: Duration) {
    let window = Duration::from_millis(500);
    let t0 = Instant::now();
    loop {
        let cpu = CpuWindow::open(rig.server.pid());
        tokio::time::sleep(window).await;
        let (coordinator, server) = cpu.close();
        let cores = (coordinator + server.unwrap_or(0.0)) / window.as_secs_f64();
        if cores < QUIET_CORES {
            let waited = t0.elapsed().as_secs_f64();
            if waited > 2.0 * window.as_secs_f64() {
                say(
                    S,
                    format!(
                        "{what}: the coordinator and nats-server went quiet after {waited:.1} s"
                    ),
                );
            }
            return;
        }
        if t0.elapsed() >= limit {
            say(
                S,
                format!(
                    "{what}: the coordinator and nats-server still use {cores:.2} cores after {:.0} s; measuring anyway",
                    limit.as_secs_f64()
                ),
            );
            return;
        }
    }
}

/// What one heartbeat burst measured.
struct HeartbeatBurst {
    /// From the first publish until the publisher's connection flushed.
    publish_seconds: f64,
    coordinator: Drain,
    ceiling: Drain,
    /// CPU seconds of the coordinator's runtime threads and of nats-server
    /// from the first publish until both subscribers stopped counting.
    coordinator_cpu_seconds: f64,
    server_cpu_seconds: Option<f64>,
    /// Alerts the coordinator handled meanwhile: 0 unless the heartbeats
    /// made it raise some (then the burst measured more than heartbeats).
    alerts_handled: u64,
    /// Warnings and errors the process logged meanwhile.
    logged: Since,
}

/// Once the coordinator and nats-server are quiet ([`settle`]), publish
/// `m` heartbeats of the `nodes` nodes named `prefix` and a number,
/// round-robin, as fast as one connection can (stamped when the burst
/// starts), and wait until both consumers stop counting. `what` names the
/// burst in what it says.
async fn burst(
    rig: &Rig,
    what: &str,
    prefix: &str,
    nodes: usize,
    m: u64,
    ceiling: &Progress,
) -> Result<HeartbeatBurst> {
    settle(rig, what, QUIET_LIMIT).await;
    say(
        S,
        format!("{what}: {m} heartbeats as fast as the publisher can"),
    );
    let fleet = sim::fleet(prefix, nodes, 5.0)?;
    let (publisher, coord) = (&rig.publisher, &rig.hb_watch.progress);
    let (c0, x0) = (coord.count(), ceiling.count());
    let alerts0 = rig.handled_watch.progress.count();
    let mark = logged().mark();
    let cpu = CpuWindow::open(rig.server.pid());
    let t0 = Instant::now();
    for i in 0..m as usize {
        let (subject, payload) = &fleet[i % fleet.len()];
        publisher
            .publish(subject.clone(), payload.clone())
            .await
            .ctx("publish heartbeat")?;
    }
    publisher.flush().await.ctx("flush")?;
    let publish_seconds = t0.elapsed().as_secs_f64();
    let stall = Duration::from_secs(3);
    let overall = Duration::from_secs(300);
    let (rc, rx) = tokio::join!(
        wait_count(coord, c0 + m, t0, stall, overall),
        wait_count(ceiling, x0 + m, t0, stall, overall)
    );
    let (coordinator_cpu_seconds, server_cpu_seconds) = cpu.close();
    let alerts_handled = rig.handled_watch.progress.count().saturating_sub(alerts0);
    if alerts_handled > 0 {
        say(
            S,
            format!(
                "{what}: the burst made the coordinator handle {alerts_handled} alerts: its rate is not heartbeats' alone"
            ),
        );
    }
    Ok(HeartbeatBurst {
        publish_seconds,
        coordinator: drain(m, c0, rc, t0),
        ceiling: drain(m, x0, rx, t0),
        coordinator_cpu_seconds,
        server_cpu_seconds,
        alerts_handled,
        logged: logged().since(mark),
    })
}

/// A run's server, in-process coordinator and plain clients, every
/// subscription made (and flushed) before anything is published.
struct Rig {
    server: Server,
    coordinator: InProcCoordinator,
    hb_watch: CounterWatch,
    handled_watch: CounterWatch,
    /// Commands audited (`SKOS_AUDIT.command`): alerts fully handled.
    audited_cmds: Arc<Progress>,
    ceiling: async_nats::Client,
    publisher: async_nats::Client,
    _tasks: Vec<Task>,
}

impl Rig {
    async fn start(o: &Opts) -> Result<Rig> {
        let server = Server::start(o.nats_url.as_deref())?;
        let url = server.url().to_string();
        // The streams exist before anyone consumes.
        let _setup = natsutil::bus(&url, "skos-bench-setup").await?;
        let coordinator =
            InProcCoordinator::start(coord::bench_config(&url, o.lease_seconds)).await?;
        let counters = coordinator.counters.clone();
        let hb_watch = CounterWatch::start(counters.clone(), "heartbeats.received");
        let handled_watch = CounterWatch::start(counters, "alerts.handled");
        let ceiling = natsutil::client(&url, "skos-bench-ceiling").await?;
        let observer = natsutil::client(&url, "skos-bench-observer").await?;
        let sub = observer
            .subscribe(subjects::AUDIT)
            .await
            .ctx("subscribe audit")?;
        let (audited_cmds, audit_task) = count_audited(sub, "command");
        observer.flush().await.ctx("flush")?;
        let publisher = natsutil::client(&url, "skos-bench-publisher").await?;
        Ok(Rig {
            server,
            coordinator,
            hb_watch,
            handled_watch,
            audited_cmds,
            ceiling,
            publisher,
            _tasks: vec![audit_task],
        })
    }
}

/// What one alert burst measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AlertBurst {
    pub published: u64,
    pub publish_errors: u64,
    pub publish_seconds: f64,
    /// Commands audited: alerts fully handled by the coordinator.
    pub coordinator: Drain,
    /// The coordinator's `alerts.handled` over the burst.
    pub coordinator_handled: u64,
    /// The plain pull consumer beside it.
    pub ceiling: Drain,
    pub ratio: f64,
    /// CPU seconds of the coordinator's runtime threads over the burst
    /// (from the first publish until both consumers stopped counting).
    pub coordinator_cpu_seconds: f64,
    /// CPU seconds of nats-server over the same window (`None` with
    /// `--nats-url`): it stores the publisher's alerts and serves the plain
    /// consumer too.
    pub server_cpu_seconds: Option<f64>,
    /// The longest stretch with no command audited, from the first one
    /// to the last (to the end of the wait, when not all came), in ms: a
    /// stall of the coordinator (or of the bus) shows here.
    pub longest_pause_ms: f64,
    /// Warnings and errors the process (the coordinator's included)
    /// logged over the burst.
    pub logged: Since,
}

/// The durable consumers on `SKOS_COMMANDS` now.
pub async fn command_consumers(client: &async_nats::Client) -> Result<u64> {
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js
        .get_stream(subjects::STREAM_COMMANDS)
        .await
        .ctx("get stream SKOS_COMMANDS")?;
    Ok(stream
        .info()
        .await
        .ctx("SKOS_COMMANDS info")?
        .state
        .consumer_count as u64)
}

/// Wait until the coordinator has made the command consumer of each of
/// `nodes` nodes joined since there were `before` ([`command_consumers`];
/// with `--nats-url` the stream may hold an earlier run's): it makes one
/// per node it hears from, as a fleet's agents need, and their making is
/// part of a fleet joining, not of what is measured after it.
pub async fn wait_consumers(
    section: &str,
    client: &async_nats::Client,
    before: u64,
    nodes: u64,
) -> Result<()> {
    let started = std::time::Instant::now();
    let limit = Duration::from_secs(120 + nodes / 100);
    loop {
        let made = command_consumers(client).await?.saturating_sub(before);
        if made >= nodes {
            say(
                section,
                format!(
                    "{made} command consumers made in {:.1} s",
                    started.elapsed().as_secs_f64()
                ),
            );
            return Ok(());
        }
        if started.elapsed() > limit {
            return Err(crate::error::Error::timeout(
                format!("the command consumers of {nodes} nodes ({made} made)"),
                limit,
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The coordinator's `batches.alert` and `batches.alert.<phase>_us`
/// counters ([`skos_core::counters::BatchPhase`]): where the time of its
/// alert batches went, wall-clock, phase by phase.
#[derive(Debug, Clone, Copy, Default)]
struct BatchTimes {
    batches: u64,
    /// Of those, decided while the batch before was carried out.
    overlapped: u64,
    /// Of those, whose state was written while the batch before was
    /// published, audited and acknowledged.
    state_ahead: u64,
    /// Of those, published while the batch before was audited and
    /// acknowledged.
    published_ahead: u64,
    /// Microseconds per phase, in `BatchPhase::ALL`'s order.
    micros: [u64; 5],
}

impl BatchTimes {
    fn of(counters: &skos_core::counters::Counters) -> Self {
        use skos_core::counters::{BatchPhase, Counter};
        let mut micros = [0; 5];
        for (slot, phase) in micros.iter_mut().zip(BatchPhase::ALL) {
            *slot = counters.of(Counter::BatchMicros("alert", phase));
        }
        Self {
            batches: counters.of(Counter::Batches("alert")),
            overlapped: counters.of(Counter::BatchesOverlapped("alert")),
            state_ahead: counters.of(Counter::BatchesStateAhead("alert")),
            published_ahead: counters.of(Counter::BatchesPublishedAhead("alert")),
            micros,
        }
    }

    fn since(&self, before: &Self) -> Self {
        let mut micros = self.micros;
        for (m, b) in micros.iter_mut().zip(before.micros) {
            *m = m.saturating_sub(b);
        }
        Self {
            batches: self.batches.saturating_sub(before.batches),
            overlapped: self.overlapped.saturating_sub(before.overlapped),
            state_ahead: self.state_ahead.saturating_sub(before.state_ahead),
            published_ahead: self.published_ahead.saturating_sub(before.published_ahead),
            micros,
        }
    }

    /// "decide 21 µs, state 77 µs, ..." per alert of `alerts`; none when
    /// no batch was counted.
    fn summary(&self, alerts: u64) -> Option<String> {
        if self.batches == 0 || alerts == 0 {
            return None;
        }
        let parts: Vec<String> = skos_core::counters::BatchPhase::ALL
            .iter()
            .zip(self.micros)
            .map(|(p, m)| format!("{} {:.1} µs", p.as_str(), m as f64 / alerts as f64))
            .collect();
        Some(format!(
            "{} ({} batches, {} decided while the one before was carried out, {} of them with their state written meanwhile, {} published meanwhile)",
            parts.join(", "),
            self.batches,
            self.overlapped,
            self.state_ahead,
            self.published_ahead
        ))
    }
}

/// One alert for each of nodes `first..first + n` into `SKOS_ALERTS`
/// (pipelined, 256 acks in flight), counted by the coordinator (commands
/// audited) and, at the same time, by a plain JetStream pull consumer with
/// the coordinator's consumer settings that acks each.
async fn alert_burst(
    rig: &Rig,
    prefix: &str,
    tag: &str,
    first: usize,
    n: u64,
) -> Result<AlertBurst> {
    let js = async_nats::jetstream::new(rig.ceiling.clone());
    let stream = js
        .get_stream(subjects::STREAM_ALERTS)
        .await
        .ctx("get stream SKOS_ALERTS")?;
    let ceiling_name = format!("skos-bench-ceiling-{tag}");
    let consumer: consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(ceiling_name.clone()),
            filter_subject: subjects::ALERTS.to_string(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(10),
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .ctx("create the ceiling consumer")?;
    let mut messages = consumer
        .stream()
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .ctx("pull from the ceiling consumer")?;
    let ceil_alerts = Arc::new(Progress::new());
    let p = ceil_alerts.clone();
    let _ceil_alert_task = Task::spawn(async move {
        while let Some(Ok(m)) = messages.next().await {
            let _ = m.ack().await;
            p.inc();
        }
    });
    let pjs = async_nats::jetstream::new(rig.publisher.clone());
    let cpu = CpuWindow::open(rig.server.pid());
    let (h0, a0, y0) = (
        rig.handled_watch.progress.count(),
        rig.audited_cmds.count(),
        ceil_alerts.count(),
    );
    let mark = logged().mark();
    rig.audited_cmds.watch_pauses();
    let t0 = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut publish_errors = 0u64;
    for i in first..first + n as usize {
        let node = sim::node(prefix, i)?;
        let id = format!("ingest-{tag}-{i}");
        let payload = sim::alert(&node, &id, "warning", 80.0)?;
        let msg = PublishMessage::build().payload(payload).message_id(id);
        let ack = pjs
            .send_publish(subjects::alert(&node), msg)
            .await
            .ctx("publish alert")?;
        inflight.push(std::future::IntoFuture::into_future(ack));
        while inflight.len() >= 256 {
            if let Some(Err(_)) = inflight.next().await {
                publish_errors += 1;
            }
        }
    }
    while let Some(r) = inflight.next().await {
        if r.is_err() {
            publish_errors += 1;
        }
    }
    let publish_seconds = t0.elapsed().as_secs_f64();
    let stall = Duration::from_secs(15);
    let overall = Duration::from_secs(600);
    let (ra, ry) = tokio::join!(
        wait_count(&rig.audited_cmds, a0 + n, t0, stall, overall),
        wait_count(&ceil_alerts, y0 + n, t0, stall, overall)
    );
    let (coordinator_cpu_seconds, server_cpu_seconds) = cpu.close();
    let coordinator = drain(n, a0, ra, t0);
    let ceiling = drain(n, y0, ry, t0);
    let _ = stream.delete_consumer(&ceiling_name).await;
    Ok(AlertBurst {
        published: n,
        publish_errors,
        publish_seconds,
        coordinator,
        coordinator_handled: rig.handled_watch.progress.count().saturating_sub(h0),
        ceiling,
        ratio: coordinator.rate / ceiling.rate,
        coordinator_cpu_seconds,
        server_cpu_seconds,
        longest_pause_ms: rig.audited_cmds.longest_pause(!ra.reached).as_secs_f64() * 1e3,
        logged: logged().since(mark),
    })
}

pub async fn run(o: &Opts) -> Result<SectionReport> {
    let rig = Rig::start(o).await?;
    let run = sim::run_id();
    let prefix = format!("in{run}-");
    let nodes = o.nodes.max(1);
    let counters = rig.coordinator.counters.clone();

    // The ceiling: a plain subscriber, nothing of SKOS in its path.
    let sub = rig
        .ceiling
        .subscribe(subjects::HEARTBEATS)
        .await
        .ctx("subscribe heartbeats")?;
    let (ceil_hb, _ceil_hb_task) = count_messages(sub);
    rig.ceiling.flush().await.ctx("flush")?;

    let fleet = sim::nodes(&prefix, nodes)?;
    let consumers = command_consumers(&rig.ceiling).await?;
    say(
        S,
        format!("{nodes} nodes join (one heartbeat each, audited)"),
    );
    let join_s = join_fleet(
        &rig.publisher,
        &fleet,
        &rig.hb_watch.progress,
        1_000,
        Duration::from_secs(120 + nodes as u64 / 500),
    )
    .await?;
    wait_consumers(S, &rig.ceiling, consumers, nodes as u64).await?;

    // Heartbeat burst, then (unless 0) an overload burst bigger than a
    // client's default subscription buffer.
    let m = o.heartbeats.max(nodes) as u64;
    let hb = burst(&rig, "heartbeats", &prefix, nodes, m, &ceil_hb).await?;
    let (hb_coord, hb_ceil, publish_s) = (hb.coordinator, hb.ceiling, hb.publish_seconds);
    say(
        S,
        format!(
            "heartbeats: coordinator {:.0}/s, plain subscriber {:.0}/s, lost {} / {}",
            hb_coord.rate, hb_ceil.rate, hb_coord.lost, hb_ceil.lost
        ),
    );
    let per_heartbeat = |seconds: f64| seconds * 1e6 / m as f64;
    say(
        S,
        format!(
            "heartbeats: CPU per heartbeat: coordinator {:.2} µs, nats-server {} (whole burst, plain subscriber included)",
            per_heartbeat(hb.coordinator_cpu_seconds),
            hb.server_cpu_seconds
                .map(|s| format!("{:.2} µs", per_heartbeat(s)))
                .unwrap_or_else(|| "unknown".into())
        ),
    );
    let overload = if o.overload_heartbeats > 0 {
        let m = o.overload_heartbeats as u64;
        let b = burst(&rig, "overload", &prefix, nodes, m, &ceil_hb).await?;
        let (c, x) = (b.coordinator, b.ceiling);
        say(
            S,
            format!(
                "overload: coordinator {:.0}/s, plain subscriber {:.0}/s, lost {} / {}",
                c.rate, x.rate, c.lost, x.lost
            ),
        );
        Some((m, c, x, b.alerts_handled, b.logged))
    } else {
        None
    };

    // Alert burst, one per node, beside a plain pull consumer.
    let n_alerts = o
        .ingest_alerts
        .unwrap_or(nodes)
        .clamp(1, nodes.min(MAX_ALERTS)) as u64;
    say(
        S,
        format!("{n_alerts} alerts (one per node) into SKOS_ALERTS"),
    );
    settle(&rig, "alert burst", QUIET_LIMIT).await;
    let phases0 = BatchTimes::of(&counters);
    let al = alert_burst(&rig, &prefix, &run, 0, n_alerts).await?;
    let phases = BatchTimes::of(&counters).since(&phases0);
    say(
        S,
        format!(
            "alerts: coordinator {:.0}/s, plain pull consumer {:.0}/s, lost {} / {}",
            al.coordinator.rate, al.ceiling.rate, al.coordinator.lost, al.ceiling.lost
        ),
    );
    say(
        S,
        format!(
            "alerts: CPU per alert: coordinator {:.0} µs, nats-server {} (whole burst, plain consumer included)",
            al.coordinator_cpu_seconds * 1e6 / n_alerts as f64,
            al.server_cpu_seconds
                .map(|s| format!("{:.0} µs", s * 1e6 / n_alerts as f64))
                .unwrap_or_else(|| "unknown".into())
        ),
    );
    if let Some(line) = phases.summary(n_alerts) {
        say(
            S,
            format!("alerts: where a batch's time went, per alert: {line}"),
        );
    }
    say(
        S,
        format!(
            "alerts: longest pause with no command audited, first to last: {:.1} ms",
            al.longest_pause_ms
        ),
    );
    // What went wrong while it measured: the process's warnings and
    // errors (the in-process coordinator's and the clients').
    let logged_in_bursts = [
        ("heartbeats", Some(&hb.logged)),
        ("overload", overload.as_ref().map(|o| &o.4)),
        ("alerts", Some(&al.logged)),
    ];
    for (what, l) in logged_in_bursts {
        if let Some(line) = l.and_then(Since::summary) {
            say(S, format!("{what}: {line}"));
        }
    }
    let snapshot = counters.snapshot();
    let own_server = rig.server.is_own();
    rig.coordinator.stop(Duration::from_secs(15)).await?;

    // Alert scaling: a fresh server and coordinator per size.
    let mut scale = Vec::new();
    for &n in &o.alert_scale {
        let n = n.max(1);
        say(
            S,
            format!("alert scaling: {n} nodes, {n} alerts (a fresh server and coordinator)"),
        );
        let rig = Rig::start(o).await?;
        let run = sim::run_id();
        let prefix = format!("sc{run}-");
        let fleet = sim::nodes(&prefix, n)?;
        let consumers = command_consumers(&rig.ceiling).await?;
        join_fleet(
            &rig.publisher,
            &fleet,
            &rig.hb_watch.progress,
            1_000,
            Duration::from_secs(120 + n as u64 / 500),
        )
        .await?;
        wait_consumers(S, &rig.ceiling, consumers, n as u64).await?;
        settle(&rig, "alert scaling", QUIET_LIMIT).await;
        let b = alert_burst(&rig, &prefix, &format!("sc{run}"), 0, n as u64).await?;
        let failed = rig.coordinator.counters.get("state.save_failed");
        say(
            S,
            format!(
                "alert scaling, {n} open: coordinator {:.0}/s, plain pull consumer {:.0}/s, lost {}",
                b.coordinator.rate, b.ceiling.rate, b.coordinator.lost
            ),
        );
        rig.coordinator.stop(Duration::from_secs(15)).await?;
        scale.push((n, b, failed));
    }

    let mut figures = vec![
        Figure::new(
            S,
            "node joins/s (first heartbeat, audited)",
            nodes as f64 / join_s,
            "msg/s",
        )
        .note("paced: at most 1,000 ahead of the coordinator"),
        Figure::new(
            S,
            format!("heartbeats handled/s ({m} burst)"),
            hb_coord.rate,
            "msg/s",
        )
        .beside("plain subscriber", hb_ceil.rate)
        .ratio_at_least(0.9)
        .note(if hb.alerts_handled > 0 {
            format!("the burst raised {} alerts", hb.alerts_handled)
        } else {
            "heartbeats stamped when the burst starts; no alert raised".to_string()
        }),
        {
            let cpu = Figure::new(
                S,
                format!("coordinator CPU per heartbeat ({m} burst)"),
                per_heartbeat(hb.coordinator_cpu_seconds),
                "µs",
            );
            match hb.server_cpu_seconds {
                Some(server) => cpu
                    .beside("nats-server CPU per heartbeat", per_heartbeat(server))
                    .note("the server's share includes the publisher and the plain subscriber"),
                None => cpu,
            }
        },
        Figure::new(
            S,
            format!("heartbeats lost by the coordinator ({m} burst, {nodes} nodes)"),
            hb_coord.lost as f64,
            "msgs",
        )
        .at_most(0.0),
    ];
    if let Some((m, c, x, alerts, _)) = &overload {
        figures.push(
            Figure::new(
                S,
                format!("heartbeats lost in a {m} overload burst"),
                c.lost as f64,
                "msgs",
            )
            .beside("plain subscriber lost", x.lost as f64)
            .at_most(0.0)
            .note(format!(
                "coordinator drained {:.0}/s, plain subscriber {:.0}/s; {alerts} alerts raised",
                c.rate, x.rate
            )),
        );
    }
    figures.extend([
        Figure::new(
            S,
            format!("alerts handled/s ({n_alerts} burst)"),
            al.coordinator.rate,
            "msg/s",
        )
        .beside("plain JetStream consumer", al.ceiling.rate)
        .ratio_at_least(0.5)
        .note("handled = node state saved, command published durably and audited"),
        Figure::new(
            S,
            "alerts lost by the coordinator",
            n_alerts.saturating_sub(al.coordinator_handled) as f64,
            "msgs",
        )
        .at_most(0.0),
        Figure::new(
            S,
            format!("longest pause with no command audited ({n_alerts} burst)"),
            al.longest_pause_ms,
            "ms",
        )
        .note("from the first command audited to the last (or to the end of the wait): a stall of the coordinator or the bus shows here"),
        Since::merged(logged_in_bursts.iter().filter_map(|(_, l)| *l))
            .figure(S, "during the bursts"),
    ]);
    // Where the time of an alert goes, less sensitive to the machine's
    // load than the rates: CPU per alert of each side over the burst.
    let per_alert = |seconds: f64| seconds * 1e6 / n_alerts as f64;
    let mut cpu = Figure::new(
        S,
        format!("coordinator CPU per alert ({n_alerts} burst)"),
        per_alert(al.coordinator_cpu_seconds),
        "µs",
    );
    if let Some(server) = al.server_cpu_seconds {
        cpu = cpu
            .beside("nats-server CPU per alert", per_alert(server))
            .note("the server's share includes the publisher's alerts and the plain consumer");
    }
    figures.push(cpu);
    if phases.batches > 0 {
        let total: u64 = phases.micros.iter().sum();
        figures.push(
            Figure::new(
                S,
                format!("coordinator time per alert, batch by batch ({n_alerts} burst)"),
                total as f64 / n_alerts as f64,
                "µs",
            )
            .note(format!(
                "{}; {} batches of {:.0} alerts on average",
                phases.summary(n_alerts).unwrap_or_default(),
                phases.batches,
                n_alerts as f64 / phases.batches as f64
            )),
        );
    }
    for (n, b, _) in &scale {
        figures.push(
            Figure::new(
                S,
                format!("alerts handled/s, {n} open (fresh coordinator)"),
                b.coordinator.rate,
                "msg/s",
            )
            .beside("plain JetStream consumer", b.ceiling.rate),
        );
    }
    if let (Some((n0, b0, _)), Some((n1, b1, _))) = (scale.first(), scale.last()) {
        if scale.len() > 1 {
            let normalized = b1.ratio / b0.ratio;
            figures.push(
                Figure::new(
                    S,
                    format!("per-alert rate, {n1} open alerts vs {n0}"),
                    b1.coordinator.rate,
                    "msg/s",
                )
                .beside(format!("alerts handled/s, {n0} open"), b0.coordinator.rate)
                .ratio_at_least(0.9)
                .note(format!(
                    "the issue's 'same per-alert speed', read as within 10%; as shares of the plain consumer: {:.3}× vs {:.3}× (ratio {normalized:.2})",
                    b1.ratio, b0.ratio
                )),
            );
        }
    }
    figures.push(
        Figure::new(
            S,
            "coordinator state saves failed",
            snapshot.get("state.save_failed").copied().unwrap_or(0) as f64,
            "msgs",
        )
        .derived_at_most(0.0)
        .note("each failed save leaves crash state only in memory"),
    );
    let scale_failed: u64 = scale.iter().map(|(_, _, f)| f).sum();
    if scale_failed > 0 {
        figures.push(
            Figure::new(
                S,
                "coordinator state saves failed (alert scaling runs)",
                scale_failed as f64,
                "msgs",
            )
            .derived_at_most(0.0),
        );
    }
    let scale_ceil_lost: u64 = scale.iter().map(|(_, b, _)| b.ceiling.lost).sum();
    if hb_ceil.lost > 0 || al.ceiling.lost > 0 || scale_ceil_lost > 0 {
        figures.push(Figure::new(
            S,
            "lost by the plain consumers (the bus itself)",
            (hb_ceil.lost + al.ceiling.lost + scale_ceil_lost) as f64,
            "msgs",
        ));
    }
    let data = json!({
        "nodes": nodes,
        "server": if own_server { "started for this section" } else { "external (--nats-url)" },
        "join": {"heartbeats": nodes, "seconds": join_s, "rate": nodes as f64 / join_s},
        "heartbeats": {
            "published": m,
            "publish_seconds": publish_s,
            "publish_rate": m as f64 / publish_s.max(1e-6),
            "coordinator": hb_coord,
            "ceiling": hb_ceil,
            "ratio": hb_coord.rate / hb_ceil.rate,
            "coordinator_cpu_seconds": hb.coordinator_cpu_seconds,
            "server_cpu_seconds": hb.server_cpu_seconds,
            "alerts_handled": hb.alerts_handled,
            "logged": hb.logged,
        },
        "overload": overload.map(|(m, c, x, alerts, logged)| json!({"published": m, "coordinator": c, "ceiling": x, "alerts_handled": alerts, "logged": logged})),
        "alerts": al,
        "alert_scale": scale.iter().map(|(n, b, failed)| json!({"open_alerts": n, "burst": b, "state_save_failed": failed})).collect::<Vec<_>>(),
        "counters": snapshot,
    });
    Ok(SectionReport { data, figures })
}
