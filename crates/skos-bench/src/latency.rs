//! Latency: one alert at a time (each for a different node, so no rate
//! limit or in-progress skip applies), timed from the publish to
//!
//! * the command on the bus (a core subscriber on `skos.command.>`),
//! * the command's audit entry (`SKOS_AUDIT.command`),
//! * the node's state saved (`SKOS_STATE.node_<node>`: the coordinator
//!   writes the state of the nodes an alert batch touched before it
//!   publishes the batch's commands, and acknowledges the alerts last);
//!
//! and, on the same server in the same run, the bus's own request/reply
//! round trip and a JetStream publish → ack.

use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use serde_json::{json, Value};
use skos_bus::subjects;
use tokio::sync::mpsc;

use crate::coord::{self, InProcCoordinator};
use crate::error::Context;
use crate::ingest::join_fleet;
use crate::natsutil::{self, Server};
use crate::progress::{CounterWatch, Task};
use crate::report::{Figure, SectionReport};
use crate::stats::Summary;
use crate::{say, sim, Error, Opts, Result};

const S: &str = "latency";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Command,
    Audit,
    State,
}

type Event = (Seen, String, Instant);

/// A node's state is kept under this subject prefix plus its name.
const STATE_PREFIX: &str = "SKOS_STATE.node_";

/// Forward every message of a subscription as (what, key, arrival): the
/// key is the cause of a command or audited command, the node of a state.
fn observe(mut sub: async_nats::Subscriber, what: Seen, tx: mpsc::UnboundedSender<Event>) -> Task {
    Task::spawn(async move {
        while let Some(m) = sub.next().await {
            let at = Instant::now();
            let keys: Vec<String> = match what {
                Seen::State => vec![m
                    .subject
                    .as_str()
                    .strip_prefix(STATE_PREFIX)
                    .unwrap_or_default()
                    .to_string()],
                Seen::Command => serde_json::from_slice::<Value>(&m.payload)
                    .ok()
                    .and_then(|v| v["cause"].as_str().map(str::to_owned))
                    .into_iter()
                    .collect(),
                // One record or a batch: each command record's cause.
                Seen::Audit => skos_bus::audit::records_of(&m.payload)
                    .unwrap_or_default()
                    .iter()
                    .filter(|r| r["entry"]["event_type"] == "command")
                    .filter_map(|r| r["entry"]["data"]["command"]["cause"].as_str())
                    .map(str::to_owned)
                    .collect(),
            };
            for key in keys {
                if tx.send((what, key, at)).is_err() {
                    return;
                }
            }
        }
    })
}

/// Note when this alert's command, audit entry and node state were seen.
fn take(ev: Event, id: &str, node: &str, slots: &mut [Option<Instant>; 3]) {
    match ev {
        (Seen::Command, k, at) if k == id => slots[0] = Some(at),
        (Seen::Audit, k, at) if k == id => slots[1] = Some(at),
        (Seen::State, k, at) if slots[2].is_none() && k == node => slots[2] = Some(at),
        _ => {}
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary_json(s: &Option<Summary>) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

pub async fn run(o: &Opts) -> Result<SectionReport> {
    let server = Server::start(o.nats_url.as_deref())?;
    let url = server.url().to_string();
    let run = sim::run_id();
    let prefix = format!("lat{run}-");
    let n = o.latency_alerts.max(1);
    let _setup = natsutil::bus(&url, "skos-bench-setup").await?;
    let coordinator = InProcCoordinator::start(coord::bench_config(&url, o.lease_seconds)).await?;
    let counters = coordinator.counters.clone();
    let hb_watch = CounterWatch::start(counters.clone(), "heartbeats.received");
    // What the process logs from here on (not the coordinator's start).
    let mark = crate::logged::logged().mark();

    let observer = natsutil::client(&url, "skos-bench-observer").await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for (subject, what) in [
        (subjects::COMMANDS.to_string(), Seen::Command),
        (subjects::AUDIT.to_string(), Seen::Audit),
        (subjects::STATE.to_string(), Seen::State),
    ] {
        let sub = observer
            .subscribe(subject.clone())
            .await
            .ctx(format!("subscribe {subject}"))?;
        tasks.push(observe(sub, what, tx.clone()));
    }
    observer.flush().await.ctx("flush")?;

    let publisher = natsutil::client(&url, "skos-bench-publisher").await?;
    say(S, format!("{n} nodes join"));
    let fleet = sim::nodes(&prefix, n)?;
    join_fleet(
        &publisher,
        &fleet,
        &hb_watch.progress,
        1_000,
        Duration::from_secs(120),
    )
    .await?;

    say(S, format!("{n} alerts, one at a time"));
    let js = async_nats::jetstream::new(publisher.clone());
    let (mut to_cmd, mut to_audit, mut to_ack) = (Vec::new(), Vec::new(), Vec::new());
    let mut to_state = Vec::new();
    let mut missing = 0u64;
    for i in 0..n {
        while rx.try_recv().is_ok() {}
        let node = sim::node(&prefix, i)?;
        let id = format!("latency-{run}-{i}");
        let payload = sim::alert(&node, &id, "warning", 80.0)?;
        let t0 = Instant::now();
        let ack = js
            .send_publish(
                subjects::alert(&node),
                PublishMessage::build()
                    .payload(payload)
                    .message_id(id.as_str()),
            )
            .await
            .ctx("publish alert")?;
        let acked = async {
            let r = ack.await;
            (r.is_ok(), Instant::now())
        };
        // The node's state written after the publish is the one the
        // alert changed (the node joined long before). It is written
        // before the command is published, so it has arrived by the time
        // the command and its audit entry have.
        let node_s = node.to_string();
        let mut slots = [None; 3];
        let seen = async {
            while slots[0].is_none() || slots[1].is_none() {
                match rx.recv().await {
                    Some(ev) => take(ev, &id, &node_s, &mut slots),
                    None => break,
                }
            }
        };
        let acked = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(acked, seen).0
        })
        .await
        .unwrap_or((false, t0));
        match slots {
            [Some(c), Some(a), st] => {
                to_cmd.push(ms(c - t0));
                to_audit.push(ms(a - t0));
                if let Some(st) = st {
                    to_state.push(ms(st - t0));
                }
                if acked.0 {
                    to_ack.push(ms(acked.1 - t0));
                }
            }
            _ => {
                missing += 1;
                if missing >= 10 {
                    return Err(Error::failed(
                        "latency",
                        format!("{missing} alerts got no command within 10 s"),
                    ));
                }
            }
        }
    }

    say(
        S,
        format!(
            "{} request/reply round trips on the same server",
            o.round_trips
        ),
    );
    let probe = sim::alert(&sim::node(&prefix, 0)?, "probe", "warning", 80.0)?;
    let rtt = natsutil::echo_round_trips(&url, &publisher, probe, o.round_trips).await?;
    let logged = crate::logged::logged().since(mark);
    coordinator.stop(Duration::from_secs(15)).await?;
    drop(tasks);

    let (cmd, audit, ack, rt, state) = (
        Summary::of(&to_cmd),
        Summary::of(&to_audit),
        Summary::of(&to_ack),
        Summary::of(&rtt),
        Summary::of(&to_state),
    );
    let get = |s: &Option<Summary>, f: fn(&Summary) -> f64| s.as_ref().map(f).unwrap_or(f64::NAN);
    let p50 = |s: &Summary| s.p50;
    let p99 = |s: &Summary| s.p99;
    let max = |s: &Summary| s.max;
    let figures = vec![
        Figure::new(S, "alert → command p50", get(&cmd, p50), "ms")
            .beside("bus request/reply p50", get(&rt, p50)),
        Figure::new(S, "alert → command p99", get(&cmd, p99), "ms")
            .beside("bus request/reply p99", get(&rt, p99))
            .at_most(5.0),
        Figure::new(S, "alert → command max", get(&cmd, max), "ms")
            .beside("bus request/reply max", get(&rt, max)),
        Figure::new(S, "alert → audit entry p50", get(&audit, p50), "ms")
            .beside("JetStream publish→ack p50", get(&ack, p50)),
        Figure::new(S, "alert → audit entry p99", get(&audit, p99), "ms")
            .beside("JetStream publish→ack p99", get(&ack, p99))
            .at_most(5.0)
            .note("the issue's alert → command figure includes the audit write"),
        Figure::new(S, "alert → audit entry max", get(&audit, max), "ms"),
        Figure::new(S, "alert → node state saved p99", get(&state, p99), "ms")
            .beside("JetStream publish→ack p99", get(&ack, p99))
            .note("written before the command is published"),
        Figure::new(
            S,
            "coordinator state saves failed",
            counters.get("state.save_failed") as f64,
            "msgs",
        )
        .derived_at_most(0.0)
        .note("each alert batch writes the state of the nodes it touched before its commands"),
        logged.figure(S, "while alerts were timed"),
    ];
    let data = json!({
        "alerts": n,
        "logged": logged,
        "missing": missing,
        "counters": counters.snapshot(),
        "alert_to_command_ms": summary_json(&cmd),
        "alert_to_audit_ms": summary_json(&audit),
        "alert_to_node_state_ms": summary_json(&state),
        "alert_publish_to_ack_ms": summary_json(&ack),
        "request_reply_ms": summary_json(&rt),
        "loop_breaker": "measured in the detection section, against a real agent",
    });
    Ok(SectionReport { data, figures })
}
