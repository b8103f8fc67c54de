//! Who may order a node to act: commands are signed by the coordinator with
//! an Ed25519 key in NATS's nkeys format, and agents check the signature.
//!
//! The signature travels in NATS headers over the exact payload bytes, so
//! the command JSON itself stays in the seed's format (the seed's agents,
//! which ignore headers, can still read it):
//!
//! * `Skos-Signer`: the signer's public key (`U...`),
//! * `Skos-Signature`: base64url (no padding) of the Ed25519 signature,
//! * `Skos-Signature-Context`: [`COMMAND_CONTEXT`].
//!
//! What is signed is not the payload alone but a labelled message
//! ([`command_message`]): the context, the subject, the target node and the
//! payload. A signature made for anything else (a NATS login signs the
//! server's nonce, whatever the server chose, with its nkey) or for another
//! node's command cannot pass. The key that signs commands must not be a
//! NATS login key as well, nor may agents trust one ([`key_conflicts`]): a
//! hostile server could send a labelled command as its nonce.

use skos_core::escape::ShowPath;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use nkeys::KeyPair;

use crate::{Error, Result};

pub const HEADER_SIGNER: &str = "Skos-Signer";
pub const HEADER_SIGNATURE: &str = "Skos-Signature";
pub const HEADER_CONTEXT: &str = "Skos-Signature-Context";

/// The purpose a command signature is made for, first in what is signed.
pub const COMMAND_CONTEXT: &str = "skos-command-v1";

/// The context of an audit message's signature (see [`audit_message`]).
pub const AUDIT_CONTEXT: &str = "skos-audit-v1";

/// What an audit message's signature covers: [`AUDIT_CONTEXT`], the subject
/// it is published on, its stream sequence (where it is stored: the writer
/// knows it, publishing with the expected last sequence), and the sequence
/// number and hash of the last record it holds, separated by NUL bytes. The
/// records' hash chain binds every record up to that one, so the signature
/// vouches for the whole trail up to it; the stream sequence makes a copy
/// published again elsewhere in the stream (a replay) fail; the context
/// keeps it from ever passing as a command's.
pub fn audit_message(subject: &str, stream_seq: u64, last_seq: u64, last_hash: &str) -> Vec<u8> {
    let (at, seq) = (stream_seq.to_string(), last_seq.to_string());
    let mut m = Vec::with_capacity(AUDIT_CONTEXT.len() + subject.len() + at.len() + seq.len() + 68);
    for part in [AUDIT_CONTEXT, subject, &at, &seq] {
        m.extend_from_slice(part.as_bytes());
        m.push(0);
    }
    m.extend_from_slice(last_hash.as_bytes());
    m
}

/// The context of the signature on an alert the coordinator raises itself
/// (see [`alert_message`]).
pub const ALERT_CONTEXT: &str = "skos-alert-v1";

/// What a coordinator's own alert's signature covers: [`ALERT_CONTEXT`],
/// the subject and the payload, separated by NUL bytes.
pub fn alert_message(subject: &str, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(ALERT_CONTEXT.len() + subject.len() + payload.len() + 2);
    for part in [ALERT_CONTEXT, subject] {
        m.extend_from_slice(part.as_bytes());
        m.push(0);
    }
    m.extend_from_slice(payload);
    m
}

/// The context of a coordinator state record's signature (see
/// [`state_message`]).
pub const STATE_CONTEXT: &str = "skos-state-v1";

/// What a state record's signature covers: [`STATE_CONTEXT`], the key it
/// is stored under and its bytes, separated by NUL bytes (a key holds
/// none).
pub fn state_message(key: &str, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(STATE_CONTEXT.len() + key.len() + payload.len() + 2);
    for part in [STATE_CONTEXT, key] {
        m.extend_from_slice(part.as_bytes());
        m.push(0);
    }
    m.extend_from_slice(payload);
    m
}

/// What a node signs: its heartbeats, its alerts and its command results,
/// each under a context of its own (first in what is signed), so that no
/// signature made for one kind of message, nor a coordinator's, passes as
/// another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeMessage {
    Heartbeat,
    Alert,
    Result,
}

/// The context of a node's heartbeat signature.
pub const HEARTBEAT_CONTEXT: &str = "skos-heartbeat-v1";
/// The context of a node's alert signature (a coordinator's own alerts
/// use [`ALERT_CONTEXT`]).
pub const NODE_ALERT_CONTEXT: &str = "skos-node-alert-v1";
/// The context of a node's command result signature.
pub const RESULT_CONTEXT: &str = "skos-result-v1";
/// The context of the signature whose start a signed result's message id
/// carries ([`result_id_message`]).
pub const RESULT_ID_CONTEXT: &str = "skos-result-id-v1";

impl NodeMessage {
    /// The context its signature is made for.
    pub fn context(self) -> &'static str {
        match self {
            NodeMessage::Heartbeat => HEARTBEAT_CONTEXT,
            NodeMessage::Alert => NODE_ALERT_CONTEXT,
            NodeMessage::Result => RESULT_CONTEXT,
        }
    }

    /// How it is named in logs, audit records and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeMessage::Heartbeat => "heartbeat",
            NodeMessage::Alert => "alert",
            NodeMessage::Result => "result",
        }
    }
}

/// What a node's message signature covers: the kind's context, the
/// subject it is published on, the node it speaks for and the payload
/// bytes, separated by NUL bytes (as [`command_message`]).
pub fn node_message(kind: NodeMessage, subject: &str, node: &str, payload: &[u8]) -> Vec<u8> {
    labelled(&[kind.context(), subject, node], payload)
}

/// What the signature in a signed result's message id covers:
/// [`RESULT_ID_CONTEXT`], the subject and the result's id
/// ([`crate::result_message_id`]). It depends on the id alone, so the same
/// execution's result sent again (with another timestamp) is stored under
/// the same message id and de-duplicated; nobody without the node's key
/// can compute it, so nobody can take that message id first.
pub fn result_id_message(subject: &str, id: &str) -> Vec<u8> {
    labelled(&[RESULT_ID_CONTEXT, subject], id.as_bytes())
}

/// `parts`, each followed by a NUL byte, then `payload`.
fn labelled(parts: &[&str], payload: &[u8]) -> Vec<u8> {
    let mut m =
        Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum::<usize>() + payload.len());
    for part in parts {
        m.extend_from_slice(part.as_bytes());
        m.push(0);
    }
    m.extend_from_slice(payload);
    m
}

/// The context of an ordered state record's seal (see
/// [`state_message_ordered`]).
pub const STATE_ORDERED_CONTEXT: &str = "skos-state-v2";

/// Where a sealed state record stands among the writes of its key: the
/// writing coordinator's term (0 without an election) and its clock when
/// it wrote, in milliseconds since the Unix epoch. Ordered by term, then
/// time. Signed with the record, so a record written back later (a
/// rollback) still says when it was first written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SealOrder {
    pub term: u64,
    pub at_ms: i64,
}

/// What an ordered state record's seal covers: [`STATE_ORDERED_CONTEXT`],
/// the key it is stored under, the term and the time of the write, and
/// its bytes, separated by NUL bytes.
pub fn state_message_ordered(key: &str, order: SealOrder, payload: &[u8]) -> Vec<u8> {
    labelled(
        &[
            STATE_ORDERED_CONTEXT,
            key,
            &order.term.to_string(),
            &order.at_ms.to_string(),
        ],
        payload,
    )
}

/// What a command's signature covers: [`COMMAND_CONTEXT`], the subject it
/// is published on, the node it is for and the payload bytes, separated by
/// NUL bytes (which neither a subject nor a node name may hold).
pub fn command_message(subject: &str, node: &str, payload: &[u8]) -> Vec<u8> {
    let mut m =
        Vec::with_capacity(COMMAND_CONTEXT.len() + subject.len() + node.len() + payload.len() + 3);
    for part in [
        COMMAND_CONTEXT.as_bytes(),
        subject.as_bytes(),
        node.as_bytes(),
    ] {
        m.extend_from_slice(part);
        m.push(0);
    }
    m.extend_from_slice(payload);
    m
}

/// The public keys of every user nkeys seed (`SU...`) in a file: an nkey
/// seed file, or a `.creds` file, whose seed block holds one. Every such
/// line counts, so a note above the seed cannot hide it.
fn login_keys_in(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("SU"))
        .filter_map(|l| KeyPair::from_seed(l).ok())
        .map(|k| k.public_key())
        .collect())
}

/// One way a node's keys would let a NATS server obtain a command
/// signature, with the config key to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyConflict {
    /// The config key at fault (`trust.signing_key_file`,
    /// `trust.coordinator_keys`).
    pub key: &'static str,
    pub message: String,
}

/// What is wrong with a config's keys. A NATS server signs its login
/// nonce, whatever it chose, with the login key: a signing key that is
/// also a login key (`nats.nkey_seed_file`, `nats.creds_file`), or a login
/// key that agents trust as a coordinator key, lets it obtain a command
/// signature. Reading a login file fails with its path.
pub fn key_conflicts(
    signer: Option<&Signer>,
    login_files: &[&Path],
    coordinator_keys: &[String],
) -> Result<Vec<KeyConflict>> {
    let mut out = Vec::new();
    for path in login_files {
        for login in login_keys_in(path)? {
            if signer.is_some_and(|s| s.public_key() == login) {
                out.push(KeyConflict {
                    key: "trust.signing_key_file",
                    message: format!(
                        "holds the same key as the NATS login key in {}: a NATS server signs its login nonce with that key, so it could obtain a command signature; generate a new signing key (`skos keys generate`) and take this key out of every agent's trust.coordinator_keys",
                        path.escaped()
                    ),
                });
            }
            if coordinator_keys.iter().any(|k| k.trim() == login) {
                out.push(KeyConflict {
                    key: "trust.coordinator_keys",
                    message: format!(
                        "lists {login}, the NATS login key in {}: a key that has been a login key must never be trusted to sign commands (a NATS server could have obtained its signature); remove it",
                        path.escaped()
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// What is wrong with a node's own key (`trust.node_key_file`): the same
/// as a NATS login key of the node's (a NATS server signs its login
/// nonce, whatever it chose, with that key, so it could obtain the node's
/// signature on a message of its choosing). Reading a login file fails
/// with its path.
pub fn node_key_conflicts(node: &Signer, login_files: &[&Path]) -> Result<Vec<KeyConflict>> {
    let mut out = Vec::new();
    for path in login_files {
        if login_keys_in(path)?.contains(&node.public_key()) {
            out.push(KeyConflict {
                key: "trust.node_key_file",
                message: format!(
                    "holds the same key as the NATS login key in {}: a NATS server signs its login nonce with that key, so it could obtain this node's signature; generate a node key of its own (`skos keys generate`) and put its public key in the coordinator's trust.node_keys",
                    path.escaped()
                ),
            });
        }
    }
    Ok(out)
}

/// Why a command's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("unsigned (signatures are required)")]
    Unsigned,
    #[error("signed by unknown key {0}")]
    UnknownSigner(String),
    #[error("bad signature from {0}")]
    BadSignature(String),
    #[error("malformed signature header: {0}")]
    Malformed(String),
    #[error("signature made for {0:?}, not for a command (a coordinator older than this agent, or a signature taken for another purpose)")]
    WrongContext(String),
    #[error("signature made for {0:?}, not for the audit trail")]
    NotAudit(String),
    #[error("node {0} has no key in trust.node_keys and node signatures are required")]
    NoNodeKey(String),
}

/// How a sealed state record begins ([`Signer::seal_state`]).
const STATE_SEAL: &str = "SKOSSIG1 ";

/// How an ordered sealed state record begins
/// ([`Signer::seal_state_ordered`]).
const STATE_SEAL_ORDERED: &str = "SKOSSIG2 ";

/// A state record's payload with its seal line taken off, unchecked (a
/// record without one is returned as it is): for a reader that does not
/// judge the seal ([`Verifier::open_state`] does).
pub fn sealed_payload(record: &[u8]) -> &[u8] {
    if !record.starts_with(STATE_SEAL.as_bytes())
        && !record.starts_with(STATE_SEAL_ORDERED.as_bytes())
    {
        return record;
    }
    record
        .iter()
        .position(|&b| b == b'\n')
        .map_or(&[][..], |n| &record[n + 1..])
}

/// The coordinator's signing key.
pub struct Signer {
    key: KeyPair,
}

impl Signer {
    /// A fresh key that lives as long as the process (embedded mode).
    pub fn ephemeral() -> Self {
        Self {
            key: KeyPair::new_user(),
        }
    }

    /// Read a seed file written by `skos keys generate`.
    pub fn from_seed_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let seed = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("SU"))
            .ok_or_else(|| Error::Corrupt {
                path: path.escaped().to_string(),
                reason: "no nkeys user seed (a line starting with 'SU') in the file".into(),
            })?;
        let key = KeyPair::from_seed(seed).map_err(|e| Error::Corrupt {
            path: path.escaped().to_string(),
            reason: format!("not a valid nkeys seed: {e}"),
        })?;
        Ok(Self { key })
    }

    /// A new key: (seed, public key). The seed is secret.
    pub fn generate() -> Result<(String, String)> {
        let key = KeyPair::new_user();
        let seed = key.seed().map_err(|e| Error::Corrupt {
            path: "new key".into(),
            reason: e.to_string(),
        })?;
        Ok((seed, key.public_key()))
    }

    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// The headers of a command published on `subject` for `node`: the
    /// signer, the signature of [`command_message`] and the context.
    pub fn sign_command(
        &self,
        subject: &str,
        node: &str,
        payload: &[u8],
    ) -> Result<Vec<(String, String)>> {
        let (signer, signature) = self.sign(&command_message(subject, node, payload))?;
        Ok(vec![
            (HEADER_SIGNER.to_string(), signer),
            (HEADER_SIGNATURE.to_string(), signature),
            (HEADER_CONTEXT.to_string(), COMMAND_CONTEXT.to_string()),
        ])
    }

    /// The headers of an audit message published on `subject` whose last
    /// record is `last_seq` with `last_hash`: the signer, the signature of
    /// [`audit_message`] and [`AUDIT_CONTEXT`].
    pub fn sign_audit(
        &self,
        subject: &str,
        stream_seq: u64,
        last_seq: u64,
        last_hash: &str,
    ) -> Result<Vec<(String, String)>> {
        let (signer, signature) =
            self.sign(&audit_message(subject, stream_seq, last_seq, last_hash))?;
        Ok(vec![
            (HEADER_SIGNER.to_string(), signer),
            (HEADER_SIGNATURE.to_string(), signature),
            (HEADER_CONTEXT.to_string(), AUDIT_CONTEXT.to_string()),
        ])
    }

    /// The headers of an alert the coordinator raises itself, published on
    /// `subject`: the signer, the signature of [`alert_message`] and
    /// [`ALERT_CONTEXT`].
    pub fn sign_alert(&self, subject: &str, payload: &[u8]) -> Result<Vec<(String, String)>> {
        let (signer, signature) = self.sign(&alert_message(subject, payload))?;
        Ok(vec![
            (HEADER_SIGNER.to_string(), signer),
            (HEADER_SIGNATURE.to_string(), signature),
            (HEADER_CONTEXT.to_string(), ALERT_CONTEXT.to_string()),
        ])
    }

    /// A state record stored under `key`, sealed: `SKOSSIG1 <signer>
    /// <signature>\n` followed by `payload`, the signature over
    /// [`state_message`] (read back by [`Verifier::open_state`]).
    pub fn seal_state(&self, key: &str, payload: &[u8]) -> Result<Vec<u8>> {
        let (signer, signature) = self.sign(&state_message(key, payload))?;
        let mut out = Vec::with_capacity(payload.len() + signer.len() + signature.len() + 11);
        out.extend_from_slice(STATE_SEAL.as_bytes());
        out.extend_from_slice(signer.as_bytes());
        out.push(b' ');
        out.extend_from_slice(signature.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(payload);
        Ok(out)
    }

    /// The headers of a node's message of `kind` published on `subject`
    /// for `node`: the signer, the signature of [`node_message`] and the
    /// kind's context.
    pub fn sign_node(
        &self,
        kind: NodeMessage,
        subject: &str,
        node: &str,
        payload: &[u8],
    ) -> Result<Vec<(String, String)>> {
        let (signer, signature) = self.sign(&node_message(kind, subject, node, payload))?;
        Ok(vec![
            (HEADER_SIGNER.to_string(), signer),
            (HEADER_SIGNATURE.to_string(), signature),
            (HEADER_CONTEXT.to_string(), kind.context().to_string()),
        ])
    }

    /// The message id of a signed result whose id is `id`, published on
    /// `subject`: `<id>.<start of the signature of [`result_id_message`]>`.
    pub fn result_message_id(&self, subject: &str, id: &str) -> Result<String> {
        let (_, sig) = self.sign(&result_id_message(subject, id))?;
        Ok(format!("{id}.{}", &sig[..sig.len().min(22)]))
    }

    /// A state record stored under `key`, sealed with its place among the
    /// key's writes: `SKOSSIG2 <signer> <signature> <term> <at_ms>\n`
    /// followed by `payload`, the signature over
    /// [`state_message_ordered`] (read back by
    /// [`Verifier::open_state_ordered`]). An empty payload stands for a
    /// removed key, sealed as well: a removal is told apart from a wipe.
    pub fn seal_state_ordered(
        &self,
        key: &str,
        order: SealOrder,
        payload: &[u8],
    ) -> Result<Vec<u8>> {
        let (signer, signature) = self.sign(&state_message_ordered(key, order, payload))?;
        let line = format!(
            "{STATE_SEAL_ORDERED}{signer} {signature} {} {}\n",
            order.term, order.at_ms
        );
        let mut out = Vec::with_capacity(line.len() + payload.len());
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(payload);
        Ok(out)
    }

    /// The two header values for a message (what [`Signer::sign_command`]
    /// signs; anything else signed with a command key is a hazard).
    pub fn sign(&self, payload: &[u8]) -> Result<(String, String)> {
        let sig = self.key.sign(payload).map_err(|e| Error::Corrupt {
            path: "signing key".into(),
            reason: e.to_string(),
        })?;
        Ok((self.key.public_key(), URL_SAFE_NO_PAD.encode(sig)))
    }
}

/// The signature headers a command came with.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommandHeaders<'a> {
    pub signer: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub context: Option<&'a str>,
}

/// The agent's side: the coordinator keys it trusts (several, so keys can
/// be rotated) and whether unsigned commands are refused.
pub struct Verifier {
    keys: Vec<KeyPair>,
    required: bool,
}

impl Verifier {
    /// `keys` are public keys; an invalid one is an error naming it.
    pub fn new(keys: &[String], required: bool) -> Result<Self> {
        let keys = keys
            .iter()
            .map(|k| {
                KeyPair::from_public_key(k.trim()).map_err(|e| Error::Corrupt {
                    path: "trust.coordinator_keys".into(),
                    reason: format!("{k:?} is not a public key: {e}"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { keys, required })
    }

    pub fn required(&self) -> bool {
        self.required
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Check a command that arrived on `subject` for `node` against its
    /// headers: its signature must be over [`command_message`] with
    /// [`COMMAND_CONTEXT`]. `Ok(None)`: unsigned but signatures are not
    /// required. `Ok(Some(signer))`: a trusted signature.
    pub fn check_command(
        &self,
        subject: &str,
        node: &str,
        payload: &[u8],
        headers: &CommandHeaders<'_>,
    ) -> Result<Option<String>, TrustError> {
        if headers.signer.is_some() || headers.signature.is_some() {
            match headers.context.map(str::trim) {
                Some(COMMAND_CONTEXT) => {}
                Some(other) => {
                    return Err(TrustError::WrongContext(other.chars().take(64).collect()))
                }
                None => return Err(TrustError::WrongContext("nothing".into())),
            }
        }
        self.check(
            &command_message(subject, node, payload),
            headers.signer,
            headers.signature,
        )
    }

    /// Check an audit message published on `subject` whose last record is
    /// `last_seq` with `last_hash` against its headers: signed over
    /// [`audit_message`] with [`AUDIT_CONTEXT`] by a trusted key.
    /// `Ok(None)`: unsigned but signatures are not required.
    pub fn check_audit(
        &self,
        subject: &str,
        stream_seq: u64,
        last_seq: u64,
        last_hash: &str,
        headers: &CommandHeaders<'_>,
    ) -> Result<Option<String>, TrustError> {
        if headers.signer.is_some() || headers.signature.is_some() {
            match headers.context.map(str::trim) {
                Some(AUDIT_CONTEXT) => {}
                other => {
                    return Err(TrustError::NotAudit(
                        other.unwrap_or("nothing").chars().take(64).collect(),
                    ))
                }
            }
        }
        self.check(
            &audit_message(subject, stream_seq, last_seq, last_hash),
            headers.signer,
            headers.signature,
        )
    }

    /// Check an alert that claims to be a coordinator's own, published on
    /// `subject`, against its headers.
    pub fn check_alert(
        &self,
        subject: &str,
        payload: &[u8],
        headers: &CommandHeaders<'_>,
    ) -> Result<Option<String>, TrustError> {
        if headers.context.map(str::trim) != Some(ALERT_CONTEXT)
            && (headers.signer.is_some() || headers.signature.is_some())
        {
            return Err(TrustError::WrongContext(
                headers
                    .context
                    .unwrap_or("nothing")
                    .chars()
                    .take(64)
                    .collect(),
            ));
        }
        self.check(
            &alert_message(subject, payload),
            headers.signer,
            headers.signature,
        )
    }

    /// The payload of a state record sealed by [`Signer::seal_state`]
    /// under `key` by a trusted key; an error says why it is not.
    pub fn open_state<'a>(&self, key: &str, sealed: &'a [u8]) -> Result<&'a [u8], TrustError> {
        let rest = sealed
            .strip_prefix(STATE_SEAL.as_bytes())
            .ok_or(TrustError::Unsigned)?;
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .filter(|&n| n <= 300)
            .ok_or_else(|| TrustError::Malformed("state seal line".into()))?;
        let line = std::str::from_utf8(&rest[..end])
            .map_err(|_| TrustError::Malformed("state seal line is not text".into()))?;
        let (signer, signature) = line
            .split_once(' ')
            .ok_or_else(|| TrustError::Malformed("state seal line".into()))?;
        let payload = &rest[end + 1..];
        self.check(&state_message(key, payload), Some(signer), Some(signature))?;
        Ok(payload)
    }

    /// [`Verifier::open_state`], for a record sealed with its order
    /// ([`Signer::seal_state_ordered`]) or without (an earlier version's
    /// seal: `None`): the payload and where the record stands.
    pub fn open_state_ordered<'a>(
        &self,
        key: &str,
        sealed: &'a [u8],
    ) -> Result<(&'a [u8], Option<SealOrder>), TrustError> {
        let Some(rest) = sealed.strip_prefix(STATE_SEAL_ORDERED.as_bytes()) else {
            return self.open_state(key, sealed).map(|p| (p, None));
        };
        let bad = || TrustError::Malformed("state seal line".into());
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .filter(|&n| n <= 300)
            .ok_or_else(bad)?;
        let line = std::str::from_utf8(&rest[..end])
            .map_err(|_| TrustError::Malformed("state seal line is not text".into()))?;
        let mut parts = line.split(' ');
        let (Some(signer), Some(signature), Some(term), Some(at_ms), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        let order = SealOrder {
            term: term.parse().map_err(|_| bad())?,
            at_ms: at_ms.parse().map_err(|_| bad())?,
        };
        let payload = &rest[end + 1..];
        self.check(
            &state_message_ordered(key, order, payload),
            Some(signer),
            Some(signature),
        )?;
        Ok((payload, Some(order)))
    }

    /// Check a message against its signature headers. `Ok(None)`: unsigned
    /// but signatures are not required. `Ok(Some(signer))`: a trusted
    /// signature.
    pub fn check(
        &self,
        payload: &[u8],
        signer: Option<&str>,
        signature: Option<&str>,
    ) -> Result<Option<String>, TrustError> {
        let (signer, signature) = match (signer, signature) {
            (Some(a), Some(b)) => (a.trim(), b.trim()),
            (None, None) if !self.required => return Ok(None),
            (None, None) => return Err(TrustError::Unsigned),
            _ => {
                return Err(TrustError::Malformed(
                    "one of the two signature headers is missing".into(),
                ))
            }
        };
        if signer.len() > 64 || signature.len() > 200 {
            return Err(TrustError::Malformed("header too long".into()));
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.public_key() == signer)
            .ok_or_else(|| TrustError::UnknownSigner(signer.to_string()))?;
        let sig = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|e| TrustError::Malformed(format!("signature is not base64url: {e}")))?;
        key.verify(payload, &sig)
            .map_err(|_| TrustError::BadSignature(signer.to_string()))?;
        Ok(Some(signer.to_string()))
    }
}

/// The coordinator's side of nodes' signatures: each node's public key
/// (`trust.node_keys`), and whether a message from a node without one is
/// refused (`trust.require_node_signatures`).
pub struct NodeVerifier {
    keys: std::collections::HashMap<String, KeyPair>,
    required: bool,
}

impl NodeVerifier {
    /// `keys`: node name → public key (`U...`); an invalid key is an error
    /// naming its node.
    pub fn new(keys: &std::collections::BTreeMap<String, String>, required: bool) -> Result<Self> {
        let keys = keys
            .iter()
            .map(|(node, k)| {
                KeyPair::from_public_key(k.trim())
                    .map(|key| (node.clone(), key))
                    .map_err(|e| Error::Corrupt {
                        path: format!("trust.node_keys.{node}"),
                        reason: format!("{k:?} is not a public key: {e}"),
                    })
            })
            .collect::<Result<_>>()?;
        Ok(Self { keys, required })
    }

    pub fn required(&self) -> bool {
        self.required
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Whether `node` has a key: its messages must then be signed with it.
    pub fn has_key(&self, node: &str) -> bool {
        self.keys.contains_key(node)
    }

    /// Check a message of `kind` published on `subject` that speaks for
    /// `node`: with a key for `node`, it must be signed with that key over
    /// [`node_message`] under the kind's context. `Ok(None)`: `node` has no
    /// key and signatures are not required (taken as it is, signed or
    /// not). `Ok(Some(signer))`: signed by the node's key.
    pub fn check(
        &self,
        kind: NodeMessage,
        subject: &str,
        node: &str,
        payload: &[u8],
        headers: &CommandHeaders<'_>,
    ) -> Result<Option<String>, TrustError> {
        let Some(key) = self.keys.get(node) else {
            return if self.required {
                Err(TrustError::NoNodeKey(node.chars().take(64).collect()))
            } else {
                Ok(None)
            };
        };
        let (signer, signature) = match (headers.signer, headers.signature) {
            (Some(a), Some(b)) => (a.trim(), b.trim()),
            (None, None) => return Err(TrustError::Unsigned),
            _ => {
                return Err(TrustError::Malformed(
                    "one of the two signature headers is missing".into(),
                ))
            }
        };
        match headers.context.map(str::trim) {
            Some(c) if c == kind.context() => {}
            other => {
                return Err(TrustError::WrongContext(
                    other.unwrap_or("nothing").chars().take(64).collect(),
                ))
            }
        }
        if signer.len() > 64 || signature.len() > 200 {
            return Err(TrustError::Malformed("header too long".into()));
        }
        if key.public_key() != signer {
            return Err(TrustError::UnknownSigner(signer.to_string()));
        }
        let sig = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|e| TrustError::Malformed(format!("signature is not base64url: {e}")))?;
        key.verify(&node_message(kind, subject, node, payload), &sig)
            .map_err(|_| TrustError::BadSignature(signer.to_string()))?;
        Ok(Some(signer.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An audit signature passes only as one, over its own subject, seq
    /// and hash; a command signature never passes as an audit one, nor the
    /// reverse.
    #[test]
    fn audit_signatures_are_bound_to_their_purpose() {
        let s = Signer::ephemeral();
        let v = Verifier::new(&[s.public_key()], true).unwrap();
        let h = "ab".repeat(32);
        let headers = s.sign_audit("SKOS_AUDIT.batch", 40, 7, &h).unwrap();
        let get = |k: &str| {
            headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        let hs = CommandHeaders {
            signer: get(HEADER_SIGNER),
            signature: get(HEADER_SIGNATURE),
            context: get(HEADER_CONTEXT),
        };
        assert!(v
            .check_audit("SKOS_AUDIT.batch", 40, 7, &h, &hs)
            .unwrap()
            .is_some());
        assert!(v.check_audit("SKOS_AUDIT.batch", 40, 8, &h, &hs).is_err());
        assert!(v.check_audit("SKOS_AUDIT.alert", 40, 7, &h, &hs).is_err());
        // The same message stored elsewhere in the stream (a replay).
        assert!(v.check_audit("SKOS_AUDIT.batch", 41, 7, &h, &hs).is_err());
        assert!(v
            .check_audit("SKOS_AUDIT.batch", 40, 7, &"cd".repeat(32), &hs)
            .is_err());
        // Never a command.
        assert!(matches!(
            v.check_command("skos.command.n1", "n1", b"{}", &hs),
            Err(TrustError::WrongContext(_))
        ));
        let cmd = s.sign_command("skos.command.n1", "n1", b"{}").unwrap();
        let get = |k: &str| cmd.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let hc = CommandHeaders {
            signer: get(HEADER_SIGNER),
            signature: get(HEADER_SIGNATURE),
            context: get(HEADER_CONTEXT),
        };
        assert!(matches!(
            v.check_audit("SKOS_AUDIT.batch", 40, 7, &h, &hc),
            Err(TrustError::NotAudit(_))
        ));
        // Unsigned: refused when required.
        assert_eq!(
            v.check_audit("SKOS_AUDIT.batch", 40, 7, &h, &CommandHeaders::default()),
            Err(TrustError::Unsigned)
        );
    }

    /// A sealed state record opens only under its own key, unchanged, by a
    /// trusted signer; anything else is refused.
    #[test]
    fn state_records_are_sealed_to_their_key() {
        let s = Signer::ephemeral();
        let v = Verifier::new(&[s.public_key()], true).unwrap();
        let sealed = s.seal_state("node_n1", b"{\"a\":1}").unwrap();
        assert_eq!(v.open_state("node_n1", &sealed).unwrap(), b"{\"a\":1}");
        assert!(v.open_state("node_n2", &sealed).is_err(), "another key");
        let mut changed = sealed.clone();
        *changed.last_mut().unwrap() = b'0';
        assert!(v.open_state("node_n1", &changed).is_err(), "changed");
        assert_eq!(
            v.open_state("node_n1", b"{\"a\":1}"),
            Err(TrustError::Unsigned)
        );
        let stranger = Signer::ephemeral().seal_state("node_n1", b"{}").unwrap();
        assert!(matches!(
            v.open_state("node_n1", &stranger),
            Err(TrustError::UnknownSigner(_))
        ));
        assert!(v.open_state("node_n1", b"SKOSSIG1 garbage").is_err());
    }

    /// A node's signature passes only for its own node, kind and subject,
    /// and only with the node's own key; a node without a key is taken
    /// unsigned unless node signatures are required.
    #[test]
    fn node_signatures_are_bound_to_their_node_kind_and_key() {
        let nova = Signer::ephemeral();
        let keys = std::collections::BTreeMap::from([("nova".to_string(), nova.public_key())]);
        let v = NodeVerifier::new(&keys, false).unwrap();
        let p = br#"{"node":"nova"}"#;
        let s = "skos.alert.nova";
        let h = nova.sign_node(NodeMessage::Alert, s, "nova", p).unwrap();
        assert_eq!(
            v.check(NodeMessage::Alert, s, "nova", p, &headers(&h)),
            Ok(Some(nova.public_key()))
        );
        // Another kind, subject or node; a changed payload.
        assert!(v
            .check(NodeMessage::Heartbeat, s, "nova", p, &headers(&h))
            .is_err());
        let mut as_result = headers(&h);
        as_result.context = Some(RESULT_CONTEXT);
        assert!(matches!(
            v.check(NodeMessage::Result, s, "nova", p, &as_result),
            Err(TrustError::BadSignature(_))
        ));
        assert!(v
            .check(
                NodeMessage::Alert,
                "skos.alert.lyra",
                "nova",
                p,
                &headers(&h)
            )
            .is_err());
        assert!(v
            .check(NodeMessage::Alert, s, "nova", b"{}", &headers(&h))
            .is_err());
        // Unsigned, or signed by another key, for a keyed node.
        assert_eq!(
            v.check(NodeMessage::Alert, s, "nova", p, &CommandHeaders::default()),
            Err(TrustError::Unsigned)
        );
        let stranger = Signer::ephemeral();
        let hs = stranger
            .sign_node(NodeMessage::Alert, s, "nova", p)
            .unwrap();
        assert!(matches!(
            v.check(NodeMessage::Alert, s, "nova", p, &headers(&hs)),
            Err(TrustError::UnknownSigner(_))
        ));
        // A coordinator's alert signature is not a node's.
        let ha = nova.sign_alert(s, p).unwrap();
        assert!(matches!(
            v.check(NodeMessage::Alert, s, "nova", p, &headers(&ha)),
            Err(TrustError::WrongContext(_))
        ));
        // A node without a key: taken unsigned, unless required.
        assert_eq!(
            v.check(
                NodeMessage::Heartbeat,
                "skos.heartbeat.lyra",
                "lyra",
                p,
                &CommandHeaders::default()
            ),
            Ok(None)
        );
        let strict = NodeVerifier::new(&keys, true).unwrap();
        assert_eq!(
            strict.check(
                NodeMessage::Heartbeat,
                "skos.heartbeat.lyra",
                "lyra",
                p,
                &CommandHeaders::default()
            ),
            Err(TrustError::NoNodeKey("lyra".into()))
        );
        let bad = std::collections::BTreeMap::from([("nova".to_string(), "nope".to_string())]);
        assert!(NodeVerifier::new(&bad, false).is_err());
        // A result's message id is the same for the same id whatever the
        // payload, and another for another id or subject.
        let a = nova
            .result_message_id("skos.result.nova", "nova:a-1:succeeded")
            .unwrap();
        assert_eq!(
            a,
            nova.result_message_id("skos.result.nova", "nova:a-1:succeeded")
                .unwrap()
        );
        assert!(a.starts_with("nova:a-1:succeeded."));
        assert_ne!(
            a,
            nova.result_message_id("skos.result.nova", "nova:a-1:failed")
                .unwrap()
        );
        assert_ne!(
            a,
            stranger
                .result_message_id("skos.result.nova", "nova:a-1:succeeded")
                .unwrap()
        );
    }

    /// An ordered seal opens under its key with its order; changing the
    /// order (to pass an old record for a new one), the key or the bytes
    /// breaks it; an earlier version's seal still opens, without an order.
    #[test]
    fn ordered_state_seals_carry_their_order() {
        let s = Signer::ephemeral();
        let v = Verifier::new(&[s.public_key()], true).unwrap();
        let order = SealOrder {
            term: 3,
            at_ms: 1_700_000_000_123,
        };
        let sealed = s
            .seal_state_ordered("node_n1", order, b"{\"a\":1}")
            .unwrap();
        assert_eq!(
            v.open_state_ordered("node_n1", &sealed).unwrap(),
            (&b"{\"a\":1}"[..], Some(order))
        );
        assert_eq!(sealed_payload(&sealed), b"{\"a\":1}");
        assert!(v.open_state_ordered("node_n2", &sealed).is_err());
        let text = String::from_utf8(sealed.clone()).unwrap();
        let later = text.replace(" 1700000000123\n", " 1800000000123\n");
        assert_ne!(later, text);
        assert!(matches!(
            v.open_state_ordered("node_n1", later.as_bytes()),
            Err(TrustError::BadSignature(_))
        ));
        let newer_term = text.replace(" 3 1700000000123\n", " 4 1700000000123\n");
        assert!(v
            .open_state_ordered("node_n1", newer_term.as_bytes())
            .is_err());
        assert!(v
            .open_state_ordered("node_n1", text.replace(" 3 ", " x ").as_bytes())
            .is_err());
        // A removal, sealed.
        let gone = s.seal_state_ordered("node_n1", order, b"").unwrap();
        assert_eq!(
            v.open_state_ordered("node_n1", &gone).unwrap(),
            (&b""[..], Some(order))
        );
        // An earlier version's seal: no order.
        let old = s.seal_state("node_n1", b"{}").unwrap();
        assert_eq!(
            v.open_state_ordered("node_n1", &old).unwrap(),
            (&b"{}"[..], None)
        );
        assert!(SealOrder { term: 4, at_ms: 0 } > order);
    }

    #[test]
    fn sign_and_verify() {
        let s = Signer::ephemeral();
        let other = Signer::ephemeral();
        let v = Verifier::new(&[other.public_key(), s.public_key()], true).unwrap();
        let payload = br#"{"action_id":"a","action_type":"throttle_10"}"#;
        let (who, sig) = s.sign(payload).unwrap();
        assert_eq!(
            v.check(payload, Some(&who), Some(&sig)).unwrap(),
            Some(who.clone())
        );
        // One byte changed.
        let mut evil = payload.to_vec();
        evil[20] = b'X';
        assert_eq!(
            v.check(&evil, Some(&who), Some(&sig)),
            Err(TrustError::BadSignature(who.clone()))
        );
        // Unknown signer.
        let stranger = Signer::ephemeral();
        let (sk, ss) = stranger.sign(payload).unwrap();
        assert!(matches!(
            v.check(payload, Some(&sk), Some(&ss)),
            Err(TrustError::UnknownSigner(_))
        ));
        // A trusted signer's name with a stranger's signature.
        assert!(matches!(
            v.check(payload, Some(&who), Some(&ss)),
            Err(TrustError::BadSignature(_))
        ));
        // Unsigned.
        assert_eq!(v.check(payload, None, None), Err(TrustError::Unsigned));
        assert!(matches!(
            v.check(payload, Some(&who), None),
            Err(TrustError::Malformed(_))
        ));
        assert!(matches!(
            v.check(payload, Some(&who), Some("!!!")),
            Err(TrustError::Malformed(_))
        ));
        let lax = Verifier::new(&[], false).unwrap();
        assert_eq!(lax.check(payload, None, None), Ok(None));
    }

    fn headers(h: &[(String, String)]) -> CommandHeaders<'_> {
        let get = |name: &str| h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        CommandHeaders {
            signer: get(HEADER_SIGNER),
            signature: get(HEADER_SIGNATURE),
            context: get(HEADER_CONTEXT),
        }
    }

    #[test]
    fn command_signatures_are_bound_to_their_purpose_subject_and_node() {
        let s = Signer::ephemeral();
        let v = Verifier::new(&[s.public_key()], true).unwrap();
        let payload = br#"{"action_id":"a","action_type":"throttle_100","node":"b"}"#;
        let h = s.sign_command("skos.command.b", "b", payload).unwrap();
        let who = s.public_key();
        assert_eq!(
            v.check_command("skos.command.b", "b", payload, &headers(&h)),
            Ok(Some(who.clone()))
        );
        // The same signature on another node's subject, or for another node.
        assert_eq!(
            v.check_command("skos.command.a", "b", payload, &headers(&h)),
            Err(TrustError::BadSignature(who.clone()))
        );
        assert_eq!(
            v.check_command("skos.command.b", "a", payload, &headers(&h)),
            Err(TrustError::BadSignature(who.clone()))
        );
        // A signature over the bare payload (what an nkey login gives a
        // server that chose it as its nonce), with or without the context.
        let (signer, bare) = s.sign(payload).unwrap();
        let mut forged = CommandHeaders {
            signer: Some(&signer),
            signature: Some(&bare),
            context: None,
        };
        assert!(matches!(
            v.check_command("skos.command.b", "b", payload, &forged),
            Err(TrustError::WrongContext(_))
        ));
        forged.context = Some(COMMAND_CONTEXT);
        assert_eq!(
            v.check_command("skos.command.b", "b", payload, &forged),
            Err(TrustError::BadSignature(who.clone()))
        );
        // Another context, or none, with a good signature.
        let mut other = headers(&h);
        other.context = Some("nats-login");
        assert_eq!(
            v.check_command("skos.command.b", "b", payload, &other),
            Err(TrustError::WrongContext("nats-login".into()))
        );
        // Unsigned: refused when required, passed through when not.
        let none = CommandHeaders::default();
        assert_eq!(
            v.check_command("skos.command.b", "b", payload, &none),
            Err(TrustError::Unsigned)
        );
        let lax = Verifier::new(&[], false).unwrap();
        assert_eq!(
            lax.check_command("skos.command.b", "b", payload, &none),
            Ok(None)
        );
        // Parts cannot slide into each other.
        assert_ne!(
            command_message("skos.command.b", "b", b"x"),
            command_message("skos.command.", "bb", b"x")
        );
    }

    #[test]
    fn a_login_key_that_signs_or_is_trusted_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let (seed, public) = Signer::generate().unwrap();
        let login = dir.path().join("login.nk");
        std::fs::write(&login, format!("{seed}\n")).unwrap();
        // A note line starting with SU above the seed does not hide it.
        let creds = dir.path().join("node.creds");
        std::fs::write(
            &creds,
            format!(
                "SUPPORT: ops@example.org\n-----BEGIN NATS USER JWT-----\neyJ0eXAi\n------END NATS USER JWT------\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
            ),
        )
        .unwrap();
        let signing = dir.path().join("signing.nk");
        std::fs::write(&signing, format!("{seed}\n")).unwrap();
        let same = Signer::from_seed_file(&signing).unwrap();
        for file in [&login, &creds] {
            let found = key_conflicts(Some(&same), &[file], &[]).unwrap();
            assert_eq!(found.len(), 1, "{file:?}: {found:?}");
            assert_eq!(found[0].key, "trust.signing_key_file");
            assert!(found[0].message.contains(&file.display().to_string()));
        }
        // A login key that agents trust (an old signing key kept while
        // rotating) is found too.
        let own = Signer::ephemeral();
        let found = key_conflicts(Some(&own), &[&login], &[own.public_key(), public]).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key, "trust.coordinator_keys");
        assert!(
            key_conflicts(Some(&own), &[&login, &creds], &[own.public_key()])
                .unwrap()
                .is_empty()
        );
        assert!(key_conflicts(None, &[&dir.path().join("missing.nk")], &[]).is_err());
    }

    #[test]
    fn seed_file_round_trip_and_bad_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (seed, public) = Signer::generate().unwrap();
        let path = dir.path().join("coordinator.nk");
        std::fs::write(&path, format!("{seed}\n")).unwrap();
        assert_eq!(Signer::from_seed_file(&path).unwrap().public_key(), public);
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(Signer::from_seed_file(&path).is_err());
        assert!(Verifier::new(&["not-a-key".into()], true).is_err());
        assert!(Verifier::new(&[public], true).is_ok());
    }
}

#[cfg(test)]
mod sealed_state_probes {
    use super::*;

    #[test]
    fn a_sealed_record_opens_only_as_sealed_under_its_key() {
        let s = Signer::ephemeral();
        let v = Verifier::new(&[s.public_key()], true).unwrap();
        let sealed = s.seal_state("node_a", b"{\"x\":1}").unwrap();
        assert_eq!(v.open_state("node_a", &sealed).unwrap(), b"{\"x\":1}");
        // Another key.
        assert!(v.open_state("node_b", &sealed).is_err());
        // Trailing bytes.
        let mut t = sealed.clone();
        t.extend_from_slice(b" ");
        assert!(v.open_state("node_a", &t).is_err());
        // A seal line past 300 bytes.
        let mut long = b"SKOSSIG1 ".to_vec();
        long.extend(std::iter::repeat_n(b'A', 320));
        long.extend_from_slice(b"\n{}");
        assert!(v.open_state("node_a", &long).is_err());
        // A sealed empty payload opens only under its key.
        let empty = s.seal_state("node_a", b"").unwrap();
        assert_eq!(v.open_state("node_a", &empty).unwrap(), b"");
        assert!(v.open_state("carried", &empty).is_err());
        // Another signer's seal.
        let other = Signer::ephemeral().seal_state("node_a", b"{}").unwrap();
        assert!(v.open_state("node_a", &other).is_err());
    }
}
