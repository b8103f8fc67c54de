//! The audit trail followed as it is written: every record appended after
//! start (and a backfill of the last [`RING`] before it) is kept in a
//! bounded ring for the audit pages, sent to the open event streams, and
//! counted into the metrics derived from the trail ([`crate::metrics::Derived`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use skos_bus::audit_follow::{AuditFollower, AuditSource};
use tokio::sync::broadcast;

use crate::metrics::Derived;

/// Records kept in memory for the pages and event streams.
pub const RING: usize = 2000;

/// Records an event stream may fall behind before it is told it lagged.
const BROADCAST: usize = 1024;

/// One record as the feed carries it: its sequence number, event type and
/// JSON text (serialized once, sent to every stream).
#[derive(Debug, Clone)]
pub struct Record {
    /// The record's `seq` in the hash chain.
    pub seq: u64,
    /// `entry.event_type` (`alert`, `decision`, `command`…).
    pub event_type: String,
    /// The whole record, as JSON.
    pub json: Arc<str>,
}

impl Record {
    fn of(v: &Value) -> Option<Self> {
        let seq = v["seq"].as_u64()?;
        Some(Self {
            seq,
            event_type: v["entry"]["event_type"]
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
            json: serde_json::to_string(v).ok()?.into(),
        })
    }
}

/// The followed trail.
#[derive(Clone)]
pub struct Feed {
    ring: Arc<Mutex<VecDeque<Record>>>,
    tx: broadcast::Sender<Record>,
    /// The metrics derived from the trail.
    pub derived: Derived,
    /// Where the records come from.
    pub source: AuditSource,
}

impl Feed {
    /// Start following `source` on a task of its own (it reopens the trail
    /// after an error, a second later).
    pub fn start(source: AuditSource) -> Self {
        let (tx, _) = broadcast::channel(BROADCAST);
        let feed = Self {
            ring: Arc::new(Mutex::new(VecDeque::with_capacity(RING))),
            tx,
            derived: Derived::default(),
            source,
        };
        let f = feed.clone();
        tokio::spawn(async move { f.follow().await });
        feed
    }

    async fn follow(self) {
        let mut said = false;
        loop {
            match AuditFollower::open(&self.source, RING as u64).await {
                Ok((mut follower, recent)) => {
                    said = false;
                    for v in &recent {
                        self.take(v, false);
                    }
                    loop {
                        match follower.next().await {
                            Ok(records) => {
                                for v in &records {
                                    self.take(v, true);
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "audit trail no longer followed; reopening");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    if !said {
                        tracing::warn!(error = %e, "audit trail not readable yet; retrying");
                        said = true;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Keep a record not seen before; `live`: it was just written (sent
    /// to the streams and counted), not read back at start.
    fn take(&self, v: &Value, live: bool) {
        let Some(r) = Record::of(v) else {
            return;
        };
        {
            let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            if ring.back().is_some_and(|last| last.seq >= r.seq) {
                // Read twice (backfill and follower overlap, or a reopen).
                return;
            }
            if ring.len() == RING {
                ring.pop_front();
            }
            ring.push_back(r.clone());
        }
        if live {
            self.derived.observe(v);
            // No stream open is no error.
            let _ = self.tx.send(r);
        }
    }

    /// A receiver of the records written from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Record> {
        self.tx.subscribe()
    }

    /// The records after `after` that the ring holds, at most `limit`,
    /// oldest first; `covered`: whether the ring holds every record after
    /// `after` (else older ones must be read from the trail).
    pub fn after(&self, after: u64, limit: usize) -> (Vec<Record>, bool) {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let covered = ring
            .front()
            .is_none_or(|f| f.seq <= after.saturating_add(1));
        let out = ring
            .iter()
            .filter(|r| r.seq > after)
            .take(limit)
            .cloned()
            .collect();
        (out, covered)
    }

    /// The last `n` records held, oldest first.
    pub fn tail(&self, n: usize) -> Vec<Record> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter()
            .skip(ring.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// The oldest record held, when any.
    pub fn oldest(&self) -> Option<u64> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.front().map(|r| r.seq)
    }
}
