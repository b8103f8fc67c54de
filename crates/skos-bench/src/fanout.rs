//! What one stored message costs the bus when its stream has one filtered
//! consumer per node, as `SKOS_COMMANDS` has (each agent pulls its own
//! `skos.command.<node>`), beside the same messages into a stream with no
//! consumer: the server's own share of every command the coordinator
//! publishes, measured on the ingest section's server with as many
//! consumers as its fleet has nodes.
//!
//! On a scratch stream (`SKOS_BENCH_FANOUT`, subjects
//! `skos-bench.fanout.<node>`), deleted afterwards, so no command reaches a
//! node: first a burst with no consumer, then one consumer per node is
//! made (with the coordinator's command-consumer settings), then the same
//! burst again, so each consumer holds one message of it, as after the
//! ingest section's alert burst (one command per node, no agent to take
//! it). Only on a server this run started (its CPU is read from `/proc`).
//!
//! What this does not show: with more messages left unacknowledged per
//! consumer, the cost per message grew here (about 14, 18 and 44 µs over
//! three bursts of 10,000 into 10,000 consumers).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::error::Context;
use crate::Result;

const STREAM: &str = "SKOS_BENCH_FANOUT";
const PREFIX: &str = "skos-bench.fanout";

/// Bytes of each message: about a signed command's.
const PAYLOAD: usize = 400;

/// Publishes (and consumer creations) in flight at once.
const IN_FLIGHT: usize = 256;
const CREATING: usize = 32;

/// What the two bursts cost the server.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Fanout {
    /// Filtered consumers on the stream in the second burst.
    pub consumers: u64,
    /// Messages in each burst.
    pub messages: u64,
    /// nats-server CPU per stored message, µs: no consumer, then one per
    /// node.
    pub plain_us: f64,
    pub per_node_us: f64,
    /// Seconds to make the consumers.
    pub make_seconds: f64,
}

/// Measure on the server at `client` (pid `server_pid`): `messages`
/// stored across `nodes`' subjects, with no consumer, then with one per
/// node.
pub async fn measure(
    client: &async_nats::Client,
    server_pid: u32,
    nodes: &[String],
    messages: u64,
) -> Result<Fanout> {
    let js = jetstream::new(client.clone());
    let _ = js.delete_stream(STREAM).await;
    let s = js
        .create_stream(stream::Config {
            name: STREAM.to_string(),
            subjects: vec![format!("{PREFIX}.>")],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .ctx("create the fan-out stream")?;
    let result = async {
        let plain_us = burst(&js, server_pid, nodes, messages).await?;
        let t0 = Instant::now();
        let mut making = FuturesUnordered::new();
        for (i, node) in nodes.iter().enumerate() {
            making.push(s.create_consumer(consumer::pull::Config {
                durable_name: Some(format!("skos-bench-fanout-{i}")),
                filter_subject: format!("{PREFIX}.{node}"),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: skos_bus::nats::ACK_WAIT,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            }));
            while making.len() >= CREATING {
                if let Some(r) = making.next().await {
                    r.ctx("create a fan-out consumer")?;
                }
            }
        }
        while let Some(r) = making.next().await {
            r.ctx("create a fan-out consumer")?;
        }
        let make_seconds = t0.elapsed().as_secs_f64();
        // The consumers made, the server quiet again.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let per_node_us = burst(&js, server_pid, nodes, messages).await?;
        Ok(Fanout {
            consumers: nodes.len() as u64,
            messages,
            plain_us,
            per_node_us,
            make_seconds,
        })
    }
    .await;
    let _ = js.delete_stream(STREAM).await;
    result
}

/// Store `messages` round-robin on `nodes`' subjects, [`IN_FLIGHT`]
/// unacknowledged at most; the server's CPU per message, µs.
async fn burst(
    js: &jetstream::Context,
    server_pid: u32,
    nodes: &[String],
    messages: u64,
) -> Result<f64> {
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    let before = crate::procfs::sample(server_pid)?;
    let mut acks = FuturesUnordered::new();
    for i in 0..messages as usize {
        let node = &nodes[i % nodes.len().max(1)];
        let ack = js
            .publish(format!("{PREFIX}.{node}"), payload.clone())
            .await
            .ctx("publish to the fan-out stream")?;
        acks.push(std::future::IntoFuture::into_future(ack));
        while acks.len() >= IN_FLIGHT {
            if let Some(r) = acks.next().await {
                r.ctx("fan-out publish ack")?;
            }
        }
    }
    while let Some(r) = acks.next().await {
        r.ctx("fan-out publish ack")?;
    }
    let after = crate::procfs::sample(server_pid)?;
    let cpu = crate::procfs::usage(&before, &after).cpu_seconds;
    Ok(cpu * 1e6 / messages.max(1) as f64)
}
