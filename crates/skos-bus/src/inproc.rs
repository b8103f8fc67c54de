//! The in-process bus of embedded mode: the same subjects and wildcards as
//! NATS, delivered through channels inside one process.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use skos_core::recent::RecentIds;
use tokio::sync::{mpsc, oneshot};

use crate::{subjects, Acker, Error, Feed, Headers, Incoming, Replier, Result, Subscription};

/// How many message ids are remembered for de-duplication.
const DEDUP_WINDOW: usize = 10_000;

#[derive(Clone, Default)]
pub struct InProcBus {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    subs: Vec<(String, mpsc::UnboundedSender<Incoming>)>,
    seen: RecentIds,
    /// Durable messages published while nobody consumed their subject,
    /// handed to the first matching subscriber (as a stream would).
    parked: VecDeque<(String, Bytes, Headers)>,
    /// Subject patterns whose publishes fail ([`InProcBus::refuse`]).
    refused: Vec<String>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            subs: Vec::new(),
            seen: RecentIds::new(DEDUP_WINDOW),
            parked: VecDeque::new(),
            refused: Vec::new(),
        }
    }
}

/// Most durable messages parked while nobody listens.
const PARK_LIMIT: usize = 10_000;

impl InProcBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Make every later publish on a subject matching `pattern` (NATS
    /// wildcards) fail with [`Error::Subject`], as a bus that is down
    /// would, until [`InProcBus::accept_all`]. For tests of what a
    /// publisher does when a publish fails; nothing in SKOS calls it.
    pub fn refuse(&self, pattern: &str) {
        self.lock().refused.push(pattern.to_string());
    }

    /// Take back every [`InProcBus::refuse`]: publishes succeed again.
    pub fn accept_all(&self) {
        self.lock().refused.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn publish(
        &self,
        subject: &str,
        payload: Bytes,
        id: Option<&str>,
        headers: &[(String, String)],
    ) -> Result<()> {
        let mut inner = self.lock();
        if let Some(pattern) = inner.refused.iter().find(|p| subjects::matches(p, subject)) {
            return Err(Error::subject(
                subject,
                format!("refused: publishes on {pattern} fail"),
            ));
        }
        if let Some(id) = id {
            if !inner.seen.insert(id) {
                return Ok(());
            }
        }
        let mut delivered = false;
        inner.subs.retain(|(pattern, tx)| {
            if !subjects::matches(pattern, subject) {
                return !tx.is_closed();
            }
            let ok = tx
                .send(Incoming {
                    subject: subject.to_string(),
                    payload: payload.clone(),
                    headers: headers.to_vec(),
                    ack: Acker::None,
                })
                .is_ok();
            delivered |= ok;
            ok
        });
        if !delivered && id.is_some() {
            if inner.parked.len() >= PARK_LIMIT {
                inner.parked.pop_front();
            }
            inner
                .parked
                .push_back((subject.to_string(), payload, headers.to_vec()));
        }
        Ok(())
    }

    fn pattern(feed: &Feed) -> String {
        match feed {
            Feed::Heartbeats => subjects::HEARTBEATS.to_string(),
            Feed::Alerts => subjects::ALERTS.to_string(),
            Feed::Commands(node) => subjects::command(node),
            Feed::Results => subjects::RESULTS.to_string(),
            Feed::StatusRequests => subjects::STATUS.to_string(),
            Feed::ControlRequests => subjects::CONTROL.to_string(),
            Feed::ChainEvents(node) => subjects::chain(node),
            Feed::ChainControl(node) => subjects::chain_control(node),
        }
    }

    pub(crate) fn subscribe(&self, feed: &Feed) -> Result<Subscription> {
        let (tx, rx) = mpsc::unbounded_channel();
        let pattern = Self::pattern(feed);
        let mut inner = self.lock();
        let parked = std::mem::take(&mut inner.parked);
        for (subject, payload, headers) in parked {
            if subjects::matches(&pattern, &subject) {
                let _ = tx.send(Incoming {
                    subject,
                    payload,
                    headers,
                    ack: Acker::None,
                });
            } else {
                inner.parked.push_back((subject, payload, headers));
            }
        }
        inner.subs.push((pattern, tx));
        drop(inner);
        let mut rx = rx;
        Ok(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
    }

    pub(crate) async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes> {
        let (tx, rx) = oneshot::channel();
        let mut reply = Some(tx);
        {
            let mut inner = self.lock();
            inner.subs.retain(|(_, tx)| !tx.is_closed());
            if let Some((_, sub)) = inner
                .subs
                .iter()
                .find(|(p, _)| subjects::matches(p, subject))
            {
                if let Some(r) = reply.take() {
                    let _ = sub.send(Incoming {
                        subject: subject.to_string(),
                        payload,
                        headers: Vec::new(),
                        ack: Acker::Reply(Replier::InProc(r)),
                    });
                }
            }
        }
        if reply.is_some() {
            return Err(Error::NoResponders {
                subject: subject.to_string(),
            });
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout {
                subject: subject.to_string(),
                timeout,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Bus;
    use skos_core::NodeName;

    /// A request nobody answers says so in plain words.
    #[tokio::test]
    async fn a_request_nobody_answers_says_so() {
        let bus = InProcBus::new();
        let err = bus
            .request(
                crate::subjects::STATUS,
                Bytes::new(),
                std::time::Duration::from_secs(1),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NoResponders { .. }), "{err:?}");
        assert_eq!(err.to_string(), "skos.coordinator.status: nobody answers");
    }

    #[tokio::test]
    async fn routes_by_subject_and_dedups_by_id() {
        let bus = InProcBus::new();
        let mut nova = bus
            .subscribe(&Feed::Commands(NodeName::parse("nova").unwrap()))
            .unwrap();
        let mut all = bus.subscribe(&Feed::Alerts).unwrap();
        bus.publish("skos.command.lyra", Bytes::from_static(b"x"), None, &[])
            .unwrap();
        bus.publish(
            "skos.command.nova",
            Bytes::from_static(b"1"),
            Some("a"),
            &[],
        )
        .unwrap();
        bus.publish(
            "skos.command.nova",
            Bytes::from_static(b"1"),
            Some("a"),
            &[],
        )
        .unwrap();
        bus.publish("skos.alert.nova", Bytes::from_static(b"2"), None, &[])
            .unwrap();
        let m = nova.next().await.unwrap();
        assert_eq!(m.payload.as_ref(), b"1");
        assert_eq!(all.next().await.unwrap().payload.as_ref(), b"2");
        let none = tokio::time::timeout(Duration::from_millis(50), nova.next()).await;
        assert!(none.is_err(), "duplicate delivered");
    }

    /// A refused subject fails its publishes, naming the subject, and
    /// nothing of them is delivered, parked or remembered as seen: once
    /// accepted again, the same id goes through.
    #[tokio::test]
    async fn a_refused_publish_fails_and_leaves_nothing_behind() {
        let bus = InProcBus::new();
        let mut nova = bus
            .subscribe(&Feed::Commands(NodeName::parse("nova").unwrap()))
            .unwrap();
        bus.refuse("skos.command.>");
        let err = bus
            .publish(
                "skos.command.nova",
                Bytes::from_static(b"1"),
                Some("c1"),
                &[],
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "skos.command.nova: refused: publishes on skos.command.> fail"
        );
        bus.publish("skos.alert.nova", Bytes::from_static(b"a"), Some("a1"), &[])
            .expect("another subject is not refused");
        let none = tokio::time::timeout(Duration::from_millis(50), nova.next()).await;
        assert!(none.is_err(), "a refused publish was delivered");
        bus.accept_all();
        bus.publish(
            "skos.command.nova",
            Bytes::from_static(b"2"),
            Some("c1"),
            &[],
        )
        .expect("accepted again");
        assert_eq!(nova.next().await.unwrap().payload.as_ref(), b"2");
        let mut alerts = bus.subscribe(&Feed::Alerts).unwrap();
        assert_eq!(alerts.next().await.unwrap().payload.as_ref(), b"a");
        // Refused with nobody listening: not parked for a later subscriber.
        bus.refuse("skos.command.lyra");
        assert!(bus
            .publish(
                "skos.command.lyra",
                Bytes::from_static(b"3"),
                Some("c3"),
                &[]
            )
            .is_err());
        bus.accept_all();
        let mut lyra = bus
            .subscribe(&Feed::Commands(NodeName::parse("lyra").unwrap()))
            .unwrap();
        let none = tokio::time::timeout(Duration::from_millis(50), lyra.next()).await;
        assert!(none.is_err(), "a refused publish was parked");
    }

    #[tokio::test]
    async fn in_progress_is_a_no_op_in_process() {
        let bus = InProcBus::new();
        let mut nova = bus
            .subscribe(&Feed::Commands(NodeName::parse("nova").unwrap()))
            .unwrap();
        bus.publish(
            "skos.command.nova",
            Bytes::from_static(b"1"),
            Some("p"),
            &[],
        )
        .unwrap();
        let m = nova.next().await.unwrap();
        m.in_progress().await.unwrap();
        m.in_progress().await.unwrap();
        m.ack().await.unwrap();
    }

    #[tokio::test]
    async fn durable_messages_wait_for_their_first_subscriber() {
        let bus = InProcBus::new();
        bus.publish(
            "skos.alert.nova",
            Bytes::from_static(b"early"),
            Some("x"),
            &[],
        )
        .unwrap();
        bus.publish(
            "skos.heartbeat.nova",
            Bytes::from_static(b"core"),
            None,
            &[],
        )
        .unwrap();
        let mut alerts = bus.subscribe(&Feed::Alerts).unwrap();
        assert_eq!(alerts.next().await.unwrap().payload.as_ref(), b"early");
    }

    #[tokio::test]
    async fn request_reply() {
        let bus = Bus::InProc(InProcBus::new());
        assert!(bus.request_status(Duration::from_millis(50)).await.is_err());
        let mut reqs = bus.subscribe(Feed::StatusRequests).await.unwrap();
        tokio::spawn(async move {
            while let Some(r) = reqs.next().await {
                r.reply(Bytes::from_static(b"{}")).await.unwrap();
            }
        });
        let b = bus.request_status(Duration::from_secs(5)).await.unwrap();
        assert_eq!(b.as_ref(), b"{}");
    }
}
