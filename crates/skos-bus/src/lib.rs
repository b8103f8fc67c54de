//! The SKOS message bus.
//!
//! [`Bus`] is the one way the coordinator and agents talk: publish a
//! heartbeat, an alert, a command, a result; consume the feeds they need.
//! It has two transports with the same subjects and semantics:
//!
//! * [`nats`]: NATS JetStream (distributed mode): alerts, commands and
//!   results in durable streams read by durable consumers with explicit
//!   acknowledgement, heartbeats on core NATS.
//! * [`inproc`]: an in-process broker (embedded mode, `skos up`).
//!
//! [`audit`] keeps the hash-chained audit trail: a JetStream stream created
//! with deny-delete and deny-purge, or an append-only file.
//!
//! Subject names live in [`subjects`] and nowhere else.

pub mod audit;
pub mod audit_follow;
pub mod failpoint;
pub mod inproc;
pub mod lease;
pub mod nats;
pub mod state;
pub mod subjects;
pub mod trust;

use skos_core::escape::ShowPath;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use serde::Serialize;
use skos_core::chain::{ChainControl, ChainEvent};
use skos_core::{Alert, Command, CommandResult, Heartbeat, NodeName, ResultStatus};

pub use audit::{AuditLog, AuditStore};
pub use inproc::InProcBus;
pub use nats::{NatsAuth, NatsBus, NatsOptions};
pub use state::StateStore;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{subject}: {reason}")]
    Subject { subject: String, reason: String },
    /// A request nobody is subscribed to answer.
    #[error("{subject}: nobody answers")]
    NoResponders { subject: String },
    /// The server refused this credential a request's subject or the
    /// subject its answer would come back on (`reason`: the server's
    /// words).
    #[error("{subject}: the bus refused this credential: {reason}")]
    Denied { subject: String, reason: String },
    #[error("connect {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    #[error("stream {stream}, consumer {consumer}: {reason}")]
    Consumer {
        stream: String,
        consumer: String,
        reason: String,
    },
    #[error("{}: {source}", .path.escaped())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: String, reason: String },
    /// A file or directory SKOS refused to write through (a symlink, a
    /// directory others may write, a hard-linked file...), or could not.
    #[error(transparent)]
    Fs(#[from] skos_fs::Error),
    #[error("{subject}: no answer within {timeout:?}")]
    Timeout { subject: String, timeout: Duration },
    #[error("bus closed")]
    Closed,
    /// The stream read was deleted and made again while it was read (a
    /// follower of the audit trail): open it again from its start.
    #[error("stream {stream}: replaced (deleted and made again) while it was read")]
    Replaced { stream: String },
    /// A coordinator of a newer term has written: this one no longer leads.
    #[error(
        "deposed: this coordinator's term {term} is older than term {newer} in the audit trail"
    )]
    Deposed { term: u64, newer: u64 },
}

impl Error {
    pub(crate) fn subject(subject: &str, reason: impl ToString) -> Self {
        Error::Subject {
            subject: subject.to_string(),
            reason: reason.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The JetStream message id of a signed message: its id and the start of
/// its signature. The same message sent again (after a crash) signs the
/// same (Ed25519 signatures are deterministic) and is stored once; nobody
/// without the key can take the id first (a coordinator's ids are
/// predictable: a stranger's message stored under one would make the
/// server drop the coordinator's as a duplicate). Unsigned: the id alone.
fn signed_message_id(id: &str, headers: &[(String, String)]) -> String {
    match headers.iter().find(|(n, _)| n == trust::HEADER_SIGNATURE) {
        Some((_, sig)) => format!("{id}.{}", &sig[..sig.len().min(22)]),
        None => id.to_string(),
    }
}

/// The feeds a component can consume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    /// Every node's heartbeats (core, not durable).
    Heartbeats,
    /// Every alert, through the coordinator's durable consumer.
    Alerts,
    /// One node's commands, through that node's durable consumer.
    Commands(NodeName),
    /// Every command result, through the coordinator's durable consumer.
    Results,
    /// Status requests addressed to the coordinator (request/reply).
    StatusRequests,
    /// Operators' control requests addressed to the coordinator
    /// (request/reply: silences, forgetting a node).
    ControlRequests,
    /// Applications' chain steps for one node's loop breaker (core;
    /// request/reply, or fire-and-forget when there is no reply subject).
    ChainEvents(NodeName),
    /// Breaks and resets of one node's chains (core), for applications.
    ChainControl(NodeName),
}

/// A message taken from a feed. Durable feeds need [`Incoming::ack`] once
/// the message is fully handled; an unacknowledged message is delivered
/// again (after a crash, or after the ack wait).
pub struct Incoming {
    pub subject: String,
    pub payload: Bytes,
    /// NATS headers (name, value), e.g. the command signature.
    pub headers: Headers,
    pub(crate) ack: Acker,
}

pub type Headers = Vec<(String, String)>;

pub(crate) fn headers_of(map: Option<&async_nats::HeaderMap>) -> Headers {
    let Some(map) = map else {
        return Vec::new();
    };
    map.iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.as_str().to_string()))
        })
        .collect()
}

pub(crate) enum Acker {
    None,
    JetStream(Box<async_nats::jetstream::Message>),
    Reply(Replier),
    /// Told on its channel when acknowledged ([`Incoming::told_when_acked`]).
    Told(tokio::sync::oneshot::Sender<()>),
}

pub(crate) enum Replier {
    Nats {
        client: async_nats::Client,
        reply: async_nats::Subject,
    },
    InProc(tokio::sync::oneshot::Sender<Bytes>),
}

impl Incoming {
    /// A message with no headers and nothing to acknowledge or answer, as
    /// a core NATS message without a reply subject is.
    pub fn plain(subject: String, payload: Bytes) -> Self {
        Self {
            subject,
            payload,
            headers: Vec::new(),
            ack: Acker::None,
        }
    }

    /// A message like [`Incoming::plain`] whose acknowledgement is told on
    /// the receiver returned: `Ok(())` once [`Incoming::ack`] is called, an
    /// error once the message is dropped unacknowledged. For tests of when
    /// a handler acknowledges what it took.
    pub fn told_when_acked(
        subject: String,
        payload: Bytes,
    ) -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let m = Self {
            subject,
            payload,
            headers: Vec::new(),
            ack: Acker::Told(tx),
        };
        (m, rx)
    }

    /// The first value of a header, by name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The message's sequence in its stream, for a durable message
    /// (`None` for core and in-process messages).
    pub fn stream_sequence(&self) -> Option<u64> {
        match &self.ack {
            Acker::JetStream(m) => m.info().ok().map(|i| i.stream_sequence),
            Acker::None | Acker::Reply(_) | Acker::Told(_) => None,
        }
    }

    /// The node named by the subject's last token, if it is a valid name.
    pub fn subject_node(&self) -> Option<NodeName> {
        subjects::node_of(&self.subject)
    }

    /// Acknowledge a durable message (no-op for core messages).
    pub async fn ack(self) -> Result<()> {
        match self.ack {
            Acker::JetStream(m) => m
                .ack()
                .await
                .map_err(|e| Error::subject(&self.subject, format!("ack: {e}"))),
            Acker::Told(tx) => {
                let _ = tx.send(());
                Ok(())
            }
            Acker::None | Acker::Reply(_) => Ok(()),
        }
    }

    /// Tell the server this durable message is still being worked on, so
    /// it is not delivered again while a long action runs: JetStream's
    /// in-progress ack (`+WPI`), which restarts the ack wait. A no-op on the
    /// in-process bus (which never redelivers) and for core messages.
    /// Call it more often than [`nats::ACK_WAIT`] (every third of it).
    pub async fn in_progress(&self) -> Result<()> {
        match &self.ack {
            Acker::JetStream(m) => m
                .ack_with(async_nats::jetstream::AckKind::Progress)
                .await
                .map_err(|e| Error::subject(&self.subject, format!("in-progress ack: {e}"))),
            Acker::None | Acker::Reply(_) | Acker::Told(_) => Ok(()),
        }
    }

    /// Answer a request (no-op for messages that expect no answer).
    pub async fn reply(self, payload: Bytes) -> Result<()> {
        match self.ack {
            Acker::Reply(Replier::Nats { client, reply }) => client
                .publish(reply, payload)
                .await
                .map_err(|e| Error::subject(&self.subject, format!("reply: {e}"))),
            Acker::Reply(Replier::InProc(tx)) => tx.send(payload).map_err(|_| Error::Closed),
            _ => Ok(()),
        }
    }
}

pub type Subscription = BoxStream<'static, Incoming>;

/// The message id a result is published under: `{node}:{action_id}:{status}`,
/// so one execution's result is stored once (a re-sent one is dropped within
/// the stream's duplicate window) and node a's result is never taken for a
/// duplicate of node b's. Refusals (`rejected`, `expired`) add their
/// timestamp: each is a separate event and is kept.
pub fn result_message_id(result: &CommandResult) -> String {
    match result.status {
        ResultStatus::Rejected | ResultStatus::Expired => format!(
            "{}:{}:{}:{}",
            result.node,
            result.action_id,
            result.status.as_str(),
            result.timestamp.timestamp_nanos_opt().unwrap_or_default()
        ),
        _ => format!(
            "{}:{}:{}",
            result.node,
            result.action_id,
            result.status.as_str()
        ),
    }
}

/// The bus, over one of its two transports.
#[derive(Clone)]
pub enum Bus {
    InProc(InProcBus),
    Nats(NatsBus),
}

fn encode<T: Serialize>(subject: &str, value: &T) -> Result<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| Error::subject(subject, format!("encode: {e}")))
}

impl Bus {
    /// Whether the bus is connected now (an in-process bus always is). A
    /// NATS client that lost its server says so until it has reconnected.
    pub fn connected(&self) -> bool {
        match self {
            Bus::Nats(b) => {
                b.client().connection_state() == async_nats::connection::State::Connected
            }
            Bus::InProc(_) => true,
        }
    }

    /// The node key this bus signs a node's messages with (NATS only:
    /// [`NatsBus::with_node_signer`]).
    fn node_signer(&self) -> Option<&trust::Signer> {
        match self {
            Bus::Nats(b) => b.node_signer(),
            Bus::InProc(_) => None,
        }
    }

    /// The signature headers of a node's message, with a node key.
    fn node_headers(
        &self,
        kind: trust::NodeMessage,
        subject: &str,
        node: &NodeName,
        payload: &[u8],
    ) -> Result<Headers> {
        match self.node_signer() {
            Some(s) => s.sign_node(kind, subject, node.as_str(), payload),
            None => Ok(Vec::new()),
        }
    }

    /// Core, not durable. Signed with the node key, if the bus has one
    /// ([`trust::NodeMessage::Heartbeat`]).
    pub async fn publish_heartbeat(&self, hb: &Heartbeat) -> Result<()> {
        let subject = subjects::heartbeat(&hb.node);
        let payload = encode(&subject, hb)?;
        let headers =
            self.node_headers(trust::NodeMessage::Heartbeat, &subject, &hb.node, &payload)?;
        self.publish_raw_with_headers(&subject, payload, &headers)
            .await
    }

    /// A node's alert. Durable: returns once the stream has stored the
    /// alert. Signed with the node key, if the bus has one
    /// ([`trust::NodeMessage::Alert`]), and then stored under a message
    /// id that holds the start of its signature.
    pub async fn publish_alert(&self, alert: &Alert) -> Result<()> {
        let subject = subjects::alert(&alert.node);
        let payload = encode(&subject, alert)?;
        let headers =
            self.node_headers(trust::NodeMessage::Alert, &subject, &alert.node, &payload)?;
        let id = signed_message_id(&alert.alert_id, &headers);
        self.publish_durable(&subject, payload, Some(&id), &headers)
            .await
    }

    /// [`Bus::publish_alert`] for an alert the coordinator raises itself:
    /// with a signer, signed ([`trust::Signer::sign_alert`]), so a node
    /// cannot raise or clear one of the coordinator's own problems.
    pub async fn publish_alert_signed(
        &self,
        alert: &Alert,
        signer: Option<&trust::Signer>,
    ) -> Result<()> {
        let subject = subjects::alert(&alert.node);
        let payload = encode(&subject, alert)?;
        let headers = match signer {
            Some(s) => s.sign_alert(&subject, &payload)?,
            None => Vec::new(),
        };
        let id = signed_message_id(&alert.alert_id, &headers);
        self.publish_durable(&subject, payload, Some(&id), &headers)
            .await
    }

    /// Durable: returns once the stream has stored the command. The
    /// `action_id` is the message id, so a command re-sent after a
    /// coordinator crash is stored once.
    /// With a signer, the signature of the command message (the context,
    /// the subject, the node and the exact payload bytes:
    /// [`trust::command_message`]) travels in the `Skos-Signer`,
    /// `Skos-Signature` and `Skos-Signature-Context` headers.
    pub async fn send_command(
        &self,
        node: &NodeName,
        cmd: &Command,
        signer: Option<&trust::Signer>,
    ) -> Result<()> {
        let subject = subjects::command(node);
        let payload = encode(&subject, cmd)?;
        let headers = match signer {
            Some(s) => s.sign_command(&subject, node.as_str(), &payload)?,
            None => Vec::new(),
        };
        let id = signed_message_id(&cmd.action_id, &headers);
        self.publish_durable(&subject, payload, Some(&id), &headers)
            .await
    }

    /// Durable: returns once the stream has stored the result. Its message
    /// id is [`result_message_id`]: one stored result per node and execution
    /// (a result re-sent after a crash or a redelivery is dropped), every
    /// refusal kept. With a node key ([`NatsBus::with_node_signer`]) the
    /// result is signed ([`trust::NodeMessage::Result`]) and its message
    /// id followed by the start of a signature of that id
    /// ([`trust::Signer::result_message_id`]): the same for the same
    /// execution, and out of reach of anyone without the key, who could
    /// otherwise store a result under the id first and have the node's
    /// own dropped as a duplicate.
    pub async fn publish_result(&self, result: &CommandResult) -> Result<()> {
        let subject = subjects::result(&result.node);
        let payload = encode(&subject, result)?;
        let headers =
            self.node_headers(trust::NodeMessage::Result, &subject, &result.node, &payload)?;
        let id = match self.node_signer() {
            Some(s) => s.result_message_id(&subject, &result_message_id(result))?,
            None => result_message_id(result),
        };
        self.publish_durable(&subject, payload, Some(&id), &headers)
            .await
    }

    /// Publish raw bytes on a subject (tests use this to send hostile input).
    pub async fn publish_raw(&self, subject: &str, payload: Bytes) -> Result<()> {
        self.publish_raw_with_headers(subject, payload, &[]).await
    }

    /// Publish raw bytes with headers (tests use this to forge signatures).
    pub async fn publish_raw_with_headers(
        &self,
        subject: &str,
        payload: Bytes,
        headers: &[(String, String)],
    ) -> Result<()> {
        match self {
            Bus::InProc(b) => b.publish(subject, payload, None, headers),
            Bus::Nats(b) => b.publish(subject, payload, headers).await,
        }
    }

    pub(crate) async fn publish_durable(
        &self,
        subject: &str,
        payload: Bytes,
        id: Option<&str>,
        headers: &[(String, String)],
    ) -> Result<()> {
        match self {
            Bus::InProc(b) => b.publish(subject, payload, id, headers),
            Bus::Nats(b) => b.publish_durable(subject, payload, id, headers).await,
        }
    }

    /// Keep at most `max` messages of one node in each of the
    /// coordinator's durable streams (alerts, results): past it the bus
    /// drops the node's oldest. No-op in process (nothing queues there).
    pub async fn limit_per_node(&self, max: u32) -> Result<()> {
        match self {
            Bus::InProc(_) => Ok(()),
            Bus::Nats(b) => b.limit_per_node(max).await,
        }
    }

    /// Make sure `node`'s command consumer exists, filtering only
    /// `node`'s commands, so its agent need not (and, with least-privilege
    /// credentials, may not) create it. No-op in process.
    pub async fn ensure_command_consumer(&self, node: &NodeName) -> Result<()> {
        match self {
            Bus::InProc(_) => Ok(()),
            Bus::Nats(b) => b.ensure_command_consumer(node).await,
        }
    }

    /// Every [`nats::STREAMS_CHECK_EVERY`], look for SKOS streams gone or
    /// made again by another process, and set them up again
    /// ([`NatsBus::remake_missing_streams`]); the names found. Nothing in
    /// process.
    pub async fn check_streams(&self) -> Result<Vec<&'static str>> {
        match self {
            Bus::InProc(_) => Ok(Vec::new()),
            Bus::Nats(b) => b.check_streams().await,
        }
    }

    /// How many times `SKOS_COMMANDS` was found made again by this bus
    /// (gone, or another in place of the one seen): every agent's command
    /// consumer went with it. 0 in process.
    pub fn commands_remade(&self) -> u64 {
        match self {
            Bus::InProc(_) => 0,
            Bus::Nats(b) => b.commands_remade(),
        }
    }

    /// Where the coordinator's consumer of a durable feed (alerts,
    /// results) stands: (every sequence acknowledged up to, highest
    /// delivered), so messages the bus dropped before any coordinator read
    /// them can be counted; `None` in process, for other feeds, or before
    /// the feed's consumer first exists.
    pub async fn consumer_position(&self, feed: &Feed) -> Result<Option<(u64, u64)>> {
        match self {
            Bus::InProc(_) => Ok(None),
            Bus::Nats(b) => b.consumer_position(feed).await,
        }
    }

    /// Whether a durable feed's stream (alerts, results) still holds the
    /// message at `sequence`; `false` in process and for other feeds.
    pub async fn stream_holds(&self, feed: &Feed, sequence: u64) -> Result<bool> {
        match self {
            Bus::InProc(_) => Ok(false),
            Bus::Nats(b) => b.holds(feed, sequence).await,
        }
    }

    pub async fn subscribe(&self, feed: Feed) -> Result<Subscription> {
        match self {
            Bus::InProc(b) => b.subscribe(&feed),
            Bus::Nats(b) => b.subscribe(&feed).await,
        }
    }

    /// Announce a chain's break or reset to applications (core, not durable).
    pub async fn publish_chain_control(&self, ctl: &ChainControl) -> Result<()> {
        let subject = subjects::chain_control(&ctl.node);
        let payload = encode(&subject, ctl)?;
        self.publish_raw(&subject, payload).await
    }

    /// Ask `node`'s loop breaker about a step; the answer is a
    /// `ChainDecision` (JSON). Applications normally use the `skos-chain`
    /// crate or any NATS client; this is for tests and benchmarks.
    pub async fn chain_request(
        &self,
        node: &NodeName,
        event: &ChainEvent,
        timeout: Duration,
    ) -> Result<Bytes> {
        let subject = subjects::chain(node);
        let payload = encode(&subject, event)?;
        self.request_raw(&subject, payload, timeout).await
    }

    /// Report a step without waiting for an answer.
    pub async fn chain_report(&self, node: &NodeName, event: &ChainEvent) -> Result<()> {
        let subject = subjects::chain(node);
        let payload = encode(&subject, event)?;
        self.publish_raw(&subject, payload).await
    }

    /// A request with raw bytes (tests use this to send hostile input).
    pub async fn request_raw(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes> {
        match self {
            Bus::InProc(b) => b.request(subject, payload, timeout).await,
            Bus::Nats(b) => b.request(subject, payload, timeout).await,
        }
    }

    /// Ask the coordinator for its status under the default query (an
    /// empty request): the summary and the first page of nodes (JSON).
    pub async fn request_status(&self, timeout: Duration) -> Result<Bytes> {
        self.request_raw(subjects::STATUS, Bytes::new(), timeout)
            .await
    }

    /// Send the coordinator an operator's control request (the
    /// coordinator's `ControlRequest`, as JSON); the answer is its
    /// `ControlReply` (JSON).
    pub async fn request_control<Q: Serialize>(
        &self,
        request: &Q,
        timeout: Duration,
    ) -> Result<Bytes> {
        let subject = subjects::CONTROL;
        let payload = encode(subject, request)?;
        self.request_raw(subject, payload, timeout).await
    }

    /// Ask the coordinator for the status `query` selects (the
    /// coordinator's `StatusQuery`: a page of nodes, one node, problem
    /// nodes only), sent as JSON; the answer is its status or its refusal
    /// (JSON).
    pub async fn request_status_query<Q: Serialize>(
        &self,
        query: &Q,
        timeout: Duration,
    ) -> Result<Bytes> {
        let subject = subjects::STATUS;
        let payload = encode(subject, query)?;
        self.request_raw(subject, payload, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(node: &str, status: ResultStatus, nanos: i64) -> CommandResult {
        CommandResult {
            action_id: "a-1".into(),
            action_type: "throttle_50".into(),
            node: NodeName::parse(node).unwrap(),
            agent_id: format!("skos-agent-{node}"),
            status,
            message: String::new(),
            changes: Vec::new(),
            details: Default::default(),
            timestamp: chrono::DateTime::from_timestamp_nanos(nanos),
        }
    }

    #[test]
    fn result_ids_are_keyed_by_node() {
        let a = result_message_id(&result("nova", ResultStatus::Succeeded, 1));
        let b = result_message_id(&result("lyra", ResultStatus::Succeeded, 1));
        assert_eq!(a, "nova:a-1:succeeded");
        assert_eq!(b, "lyra:a-1:succeeded");
        // The same execution's result, sent again later, has the same id.
        assert_eq!(
            a,
            result_message_id(&result("nova", ResultStatus::Succeeded, 99))
        );
        assert_eq!(
            result_message_id(&result("nova", ResultStatus::Failed, 1)),
            "nova:a-1:failed"
        );
    }

    #[test]
    fn refusals_keep_their_timestamp() {
        let r1 = result_message_id(&result("nova", ResultStatus::Rejected, 5));
        let r2 = result_message_id(&result("nova", ResultStatus::Rejected, 6));
        assert_eq!(r1, "nova:a-1:rejected:5");
        assert_ne!(r1, r2);
        assert_eq!(
            result_message_id(&result("nova", ResultStatus::Expired, 7)),
            "nova:a-1:expired:7"
        );
    }
}
