//! Client for the SKOS loop breaker.
//!
//! A processing chain (an AI agent calling agents, jobs enqueueing jobs, a
//! retry loop, two services bouncing a request) asks the loop breaker of
//! its node before every step, and stops when told to:
//!
//! ```no_run
//! # async fn demo() -> Result<(), skos_chain::Error> {
//! use skos_chain::{Chain, ChainClient};
//!
//! let client = ChainClient::connect("nats://127.0.0.1:4222", "nova").await?;
//! let chain = Chain::new("order-4711")?.with_kind("llm_agent")?;
//! let root = chain.root("plan")?;
//! let d = client.ask(&root).await?;
//! if !d.allowed() {
//!     eprintln!("stopped: {} ({})", d.message, d.reason.unwrap_or_default());
//!     return Ok(());
//! }
//! let child = chain.child(&root, "call:search")?;
//! client.report(&child).await?; // fire-and-forget
//! # Ok(()) }
//! ```
//!
//! Breaks and resets are announced on the node's control subject:
//! [`ChainClient::control`] yields them, and [`Chain::apply`] resets the
//! chain's own count when its reset is announced. The wire protocol (JSON
//! over NATS request/reply) is in `docs/chain-protocol.md`; this crate is
//! one client of it, not the only one.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use serde::{Deserialize, Serialize};

/// Longest chain id, step id and signature, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest chain kind, in bytes.
pub const MAX_KIND_LEN: usize = 64;
/// Largest announcement decoded.
const MAX_CONTROL_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {value:?} is not valid: {rule}")]
    Invalid {
        what: &'static str,
        value: String,
        rule: &'static str,
    },
    #[error("connect {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{subject}: no loop breaker is listening")]
    NoResponders { subject: String },
    #[error("{subject}: no answer within {timeout:?}")]
    Timeout { subject: String, timeout: Duration },
    #[error("{subject}: {reason}")]
    Bus { subject: String, reason: String },
    #[error("{subject}: cannot read the answer: {reason}")]
    Decode { subject: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn check_id(what: &'static str, v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && v.len() <= MAX_ID_LEN
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            what,
            value: v.chars().take(40).collect(),
            rule: "1 to 128 letters, digits, '-', '_', '.' or ':'",
        })
    }
}

fn check_signature(v: &str) -> Result<()> {
    if !v.is_empty() && v.len() <= MAX_ID_LEN && v.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(Error::Invalid {
            what: "signature",
            value: v.chars().take(40).collect(),
            rule: "1 to 128 printable ASCII characters, no spaces",
        })
    }
}

fn check_kind(v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && v.len() <= MAX_KIND_LEN
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            what: "kind",
            value: v.chars().take(40).collect(),
            rule: "1 to 64 letters, digits, '_' or '-'",
        })
    }
}

fn check_node(v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && !v.chars().any(|c| {
            matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() || c.is_control()
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            what: "node",
            value: v.chars().take(40).collect(),
            rule: "one NATS subject token: no '.', '*', '>', '/', spaces",
        })
    }
}

/// A fresh step id, unique within this process and very likely across
/// processes: `<process tag>-<counter>`.
pub fn new_step_id() -> String {
    static TAG: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let tag = TAG.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        format!("{:x}", nanos ^ (u64::from(std::process::id()) << 40))
    });
    format!("{tag}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// One step of a chain: what the loop breaker is asked about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub chain_id: String,
    pub step_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_step: Option<String>,
    /// 1 for a chain's first step, one more for a step a step caused.
    pub depth: u32,
    /// The chain's count of steps, 1 for the first.
    pub iteration: u32,
    /// What kind of step (`call:search`); a repeating sequence of
    /// signatures is a cycle.
    pub signature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl Step {
    /// Check the fields the loop breaker would refuse.
    pub fn validate(&self) -> Result<()> {
        check_id("chain_id", &self.chain_id)?;
        check_id("step_id", &self.step_id)?;
        if let Some(p) = &self.parent_step {
            check_id("parent_step", p)?;
        }
        check_signature(&self.signature)?;
        if let Some(k) = &self.kind {
            check_kind(k)?;
        }
        Ok(())
    }
}

/// A chain: its id, kind and step count, to make its [`Step`]s.
#[derive(Debug)]
pub struct Chain {
    id: String,
    kind: Option<String>,
    iteration: AtomicU32,
    generation: AtomicU64,
}

impl Chain {
    pub fn new(id: &str) -> Result<Chain> {
        check_id("chain_id", id)?;
        Ok(Chain {
            id: id.to_string(),
            kind: None,
            iteration: AtomicU32::new(0),
            generation: AtomicU64::new(0),
        })
    }

    /// The chain kind whose limits apply (`loop.kinds.<kind>`).
    pub fn with_kind(mut self, kind: &str) -> Result<Chain> {
        check_kind(kind)?;
        self.kind = Some(kind.to_string());
        Ok(self)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Steps made since the chain started or was last reset.
    pub fn iteration(&self) -> u32 {
        self.iteration.load(Ordering::Relaxed)
    }

    /// Resets seen so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    fn step(&self, parent: Option<&str>, depth: u32, signature: &str) -> Result<Step> {
        check_signature(signature)?;
        Ok(Step {
            chain_id: self.id.clone(),
            step_id: new_step_id(),
            parent_step: parent.map(str::to_owned),
            depth,
            iteration: self
                .iteration
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1),
            signature: signature.to_string(),
            kind: self.kind.clone(),
        })
    }

    /// A step at depth 1 (a new root of work in this chain).
    pub fn root(&self, signature: &str) -> Result<Step> {
        self.step(None, 1, signature)
    }

    /// A step caused by `parent`, one level deeper.
    pub fn child(&self, parent: &Step, signature: &str) -> Result<Step> {
        self.step(
            Some(&parent.step_id),
            parent.depth.saturating_add(1),
            signature,
        )
    }

    /// The step after `prev`, at the same depth (a loop's next round).
    pub fn next(&self, prev: &Step, signature: &str) -> Result<Step> {
        self.step(prev.parent_step.as_deref(), prev.depth, signature)
    }

    /// Start counting again from zero (what a reset means).
    pub fn reset(&self) {
        self.iteration.store(0, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Take an announcement into account: a reset of this chain starts its
    /// count again. True when the announcement is about this chain.
    pub fn apply(&self, ctl: &Control) -> bool {
        if ctl.chain_id != self.id {
            return false;
        }
        if ctl.event == "reset" {
            self.iteration.store(0, Ordering::Relaxed);
            self.generation.store(ctl.generation, Ordering::Relaxed);
        }
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

/// The loop breaker's answer to a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    #[serde(default)]
    pub chain_id: String,
    #[serde(default)]
    pub step_id: String,
    pub decision: Verdict,
    /// Why a step was denied: `depth_exceeded`, `iterations_exceeded`,
    /// `cycle`, `rate_exceeded`, `circuit_open`, `invalid`, `capacity`…
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: String,
    /// `closed`, `open` or `half_open`.
    #[serde(default)]
    pub circuit: String,
    /// Steps allowed in the chain since its last reset, this one included.
    #[serde(default)]
    pub steps: u32,
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub retry_after_seconds: Option<f64>,
    /// Dry-run: allowed, but `reason` says it would have been denied.
    #[serde(default)]
    pub dry_run: bool,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.decision == Verdict::Allow
    }
}

/// A break or reset, announced on `skos.chainctl.<node>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Control {
    /// `circuit_open`, `half_open`, `closed` or `reset`.
    pub event: String,
    pub node: String,
    pub chain_id: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub circuit: String,
    /// `local` or `coordinator`.
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub action_id: Option<String>,
    #[serde(default)]
    pub until: Option<String>,
    #[serde(default)]
    pub timestamp: String,
}

/// Talks to one node's loop breaker over NATS.
#[derive(Clone)]
pub struct ChainClient {
    client: async_nats::Client,
    node: String,
    timeout: Duration,
}

impl ChainClient {
    /// Connect to NATS (no authentication; use [`ChainClient::new`] with
    /// your own `async_nats::Client` for anything else).
    pub async fn connect(url: &str, node: &str) -> Result<ChainClient> {
        check_node(node)?;
        let client = async_nats::connect(url).await.map_err(|e| Error::Connect {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        Self::new(client, node)
    }

    pub fn new(client: async_nats::Client, node: &str) -> Result<ChainClient> {
        check_node(node)?;
        Ok(ChainClient {
            client,
            node: node.to_string(),
            timeout: Duration::from_secs(2),
        })
    }

    /// How long [`ChainClient::ask`] waits for an answer (default 2 s).
    pub fn with_timeout(mut self, timeout: Duration) -> ChainClient {
        self.timeout = timeout;
        self
    }

    /// `skos.chain.<node>`: where steps go.
    pub fn subject(&self) -> String {
        format!("skos.chain.{}", self.node)
    }

    /// `skos.chainctl.<node>`: where breaks and resets are announced.
    pub fn control_subject(&self) -> String {
        format!("skos.chainctl.{}", self.node)
    }

    /// Ask before a step. An error (no loop breaker, timeout) is for the
    /// application to judge: fail open or closed.
    pub async fn ask(&self, step: &Step) -> Result<Decision> {
        step.validate()?;
        let subject = self.subject();
        let payload = serde_json::to_vec(step).map_err(|e| Error::Decode {
            subject: subject.clone(),
            reason: e.to_string(),
        })?;
        let reply = tokio::time::timeout(
            self.timeout,
            self.client.request(subject.clone(), payload.into()),
        )
        .await
        .map_err(|_| Error::Timeout {
            subject: subject.clone(),
            timeout: self.timeout,
        })?
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => Error::NoResponders {
                subject: subject.clone(),
            },
            async_nats::RequestErrorKind::TimedOut => Error::Timeout {
                subject: subject.clone(),
                timeout: self.timeout,
            },
            _ => Error::Bus {
                subject: subject.clone(),
                reason: e.to_string(),
            },
        })?;
        serde_json::from_slice(&reply.payload).map_err(|e| Error::Decode {
            subject,
            reason: e.to_string(),
        })
    }

    /// Report a step without waiting; a break it causes is announced on
    /// the control subject.
    pub async fn report(&self, step: &Step) -> Result<()> {
        step.validate()?;
        let subject = self.subject();
        let payload = serde_json::to_vec(step).map_err(|e| Error::Decode {
            subject: subject.clone(),
            reason: e.to_string(),
        })?;
        self.client
            .publish(subject.clone(), payload.into())
            .await
            .map_err(|e| Error::Bus {
                subject: subject.clone(),
                reason: e.to_string(),
            })?;
        self.client.flush().await.map_err(|e| Error::Bus {
            subject,
            reason: e.to_string(),
        })
    }

    /// Every break and reset announced for this node's chains, from now on.
    /// Messages that cannot be read are skipped.
    pub async fn control(&self) -> Result<BoxStream<'static, Control>> {
        let subject = self.control_subject();
        let sub = self
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| Error::Bus {
                subject,
                reason: e.to_string(),
            })?;
        Ok(sub
            .filter_map(|m| async move {
                if m.payload.len() > MAX_CONTROL_BYTES {
                    return None;
                }
                serde_json::from_slice::<Control>(&m.payload).ok()
            })
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_count_depth_and_iterations() {
        let chain = Chain::new("crawl-1").unwrap().with_kind("crawler").unwrap();
        let root = chain.root("fetch").unwrap();
        assert_eq!((root.depth, root.iteration), (1, 1));
        let child = chain.child(&root, "parse").unwrap();
        assert_eq!((child.depth, child.iteration), (2, 2));
        assert_eq!(child.parent_step.as_deref(), Some(root.step_id.as_str()));
        let next = chain.next(&child, "parse").unwrap();
        assert_eq!((next.depth, next.iteration), (2, 3));
        assert_eq!(next.parent_step, child.parent_step);
        assert_ne!(next.step_id, child.step_id);
        let ctl = Control {
            event: "reset".into(),
            node: "nova".into(),
            chain_id: "crawl-1".into(),
            reason: None,
            message: String::new(),
            generation: 1,
            circuit: "closed".into(),
            source: "coordinator".into(),
            action_id: None,
            until: None,
            timestamp: String::new(),
        };
        assert!(chain.apply(&ctl));
        assert_eq!(chain.root("fetch").unwrap().iteration, 1);
        assert_eq!(chain.generation(), 1);
        let other = Control {
            chain_id: "other".into(),
            ..ctl
        };
        assert!(!chain.apply(&other));
    }

    #[test]
    fn bad_names_are_refused_before_sending() {
        assert!(Chain::new("has space").is_err());
        assert!(Chain::new(&"x".repeat(129)).is_err());
        assert!(Chain::new("ok").unwrap().with_kind("a.b").is_err());
        assert!(Chain::new("ok").unwrap().root("two words").is_err());
        assert!(check_node("no.va").is_err());
        assert!(check_node("nova").is_ok());
        let id = new_step_id();
        assert!(check_id("step_id", &id).is_ok(), "{id}");
    }

    #[test]
    fn wire_format() {
        let chain = Chain::new("c").unwrap();
        let v = serde_json::to_value(chain.root("a").unwrap()).unwrap();
        for k in ["chain_id", "step_id", "depth", "iteration", "signature"] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert!(v.get("parent_step").is_none());
        let d: Decision = serde_json::from_str(
            r#"{"chain_id":"c","step_id":"s","decision":"deny","reason":"future_reason","circuit":"open","steps":3,"generation":0,"new_field":1}"#,
        )
        .unwrap();
        assert!(!d.allowed());
        assert_eq!(d.reason.as_deref(), Some("future_reason"));
    }
}
