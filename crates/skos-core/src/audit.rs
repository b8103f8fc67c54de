//! The audit trail's hash chain.
//!
//! Each record carries its sequence number, the previous record's hash and
//! its own hash: `sha256(prev_hash "\n" seq "\n" canonical_json(entry))`.
//! Canonical JSON is `serde_json`'s rendering of the entry as a `Value`
//! (object keys sorted), so a record re-parsed from disk or from JetStream
//! hashes the same. Changing, removing or reordering any record breaks the
//! chain at that record.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::protocol::AuditEntry;

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
    pub entry: AuditEntry,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChainError {
    /// `index`: the record's position in what was read, from 1.
    #[error("record {index}: expected seq {expected}, found {found} (removed or reordered)")]
    Sequence {
        index: u64,
        expected: u64,
        found: u64,
    },
    #[error(
        "record seq {seq}: prev_hash does not match the previous record (removed or reordered)"
    )]
    Link { seq: u64 },
    #[error("record seq {seq}: hash does not match its content (changed)")]
    Content { seq: u64 },
    /// `index`: the record's position in what was read, from 1.
    #[error("record {index}: unreadable: {reason}")]
    Unreadable { index: u64, reason: String },
}

pub fn entry_hash(prev_hash: &str, seq: u64, entry: &AuditEntry) -> String {
    // The canonical text (what the entry's `Value` renders, keys sorted)
    // is written straight into the hash, without building the `Value` or
    // a string first ([`Canonical`]).
    hash_over(prev_hash, seq, Some(&Canonical(entry)))
}

/// The hash of a record: SHA-256 over `prev_hash`, `\n`, `seq`, `\n`,
/// then `entry`'s JSON text (nothing when there is none), as lowercase
/// hex. The text goes into the hash through a buffer on the stack (the
/// serialiser writes a quote, a key or a comma at a time). It cannot
/// fail: no maps with non-string keys, no non-finite floats reach a
/// record.
fn hash_over<T: Serialize>(prev_hash: &str, seq: u64, entry: Option<&T>) -> String {
    let mut h = chained(prev_hash, seq);
    let mut w = HashWriter {
        hash: &mut h,
        buf: [0; HASH_BUFFER],
        len: 0,
    };
    if let Some(entry) = entry {
        let _ = serde_json::to_writer(&mut w, entry);
    }
    w.drain();
    hex::encode(h.finalize())
}

/// [`hash_over`] an entry's text already rendered ([`Canonical`]).
fn hash_text(prev_hash: &str, seq: u64, text: &[u8]) -> String {
    let mut h = chained(prev_hash, seq);
    h.update(text);
    hex::encode(h.finalize())
}

/// A hash fed what every record's hash starts with: `prev_hash`, `\n`,
/// `seq`, `\n`.
fn chained(prev_hash: &str, seq: u64) -> Sha256 {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(seq.to_string().as_bytes());
    h.update(b"\n");
    h
}

/// An entry rendered as `serde_json::to_value(entry)` renders it: its
/// fields in key order (`actor`, `data`, `event_type`, `node`, `summary`,
/// `term`, `timestamp`; the optional ones left out when absent), `data` as
/// it is (its objects' keys are already sorted). A test pins it to the
/// `Value` rendering, which trails already written were hashed over.
struct Canonical<'a>(&'a AuditEntry);

impl Serialize for Canonical<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Ts<'a>(&'a crate::timefmt::Timestamp);
        impl Serialize for Ts<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                crate::timefmt::serialize(self.0, s)
            }
        }
        let e = self.0;
        let mut st = s.serialize_struct("AuditEntry", 7)?;
        st.serialize_field("actor", &e.actor)?;
        st.serialize_field("data", &e.data)?;
        st.serialize_field("event_type", &e.event_type)?;
        if let Some(node) = &e.node {
            st.serialize_field("node", node)?;
        }
        st.serialize_field("summary", &e.summary)?;
        if let Some(term) = &e.term {
            st.serialize_field("term", term)?;
        }
        st.serialize_field("timestamp", &Ts(&e.timestamp))?;
        st.end()
    }
}

/// Bytes gathered before they are fed to the hash.
const HASH_BUFFER: usize = 1024;

/// Feeds what is written into a SHA-256, gathered [`HASH_BUFFER`] bytes
/// at a time ([`HashWriter::drain`] feeds the rest).
struct HashWriter<'a> {
    hash: &'a mut Sha256,
    buf: [u8; HASH_BUFFER],
    len: usize,
}

impl HashWriter<'_> {
    fn drain(&mut self) {
        self.hash.update(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.len + buf.len() > HASH_BUFFER {
            self.drain();
        }
        if buf.len() >= HASH_BUFFER {
            self.hash.update(buf);
        } else {
            self.buf[self.len..self.len + buf.len()].copy_from_slice(buf);
            self.len += buf.len();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.drain();
        Ok(())
    }
}

/// The text of a stored record's `entry`, exactly as it stands in
/// `record` (one record's JSON text); `None` when `record` is not a JSON
/// object with an `entry`. What [`Verifier::push_stored`] hashes.
pub fn entry_text(record: &[u8]) -> Option<&str> {
    #[derive(Deserialize)]
    struct Entry<'a> {
        #[serde(borrow)]
        entry: &'a serde_json::value::RawValue,
    }
    serde_json::from_slice::<Entry>(record)
        .ok()
        .map(|e| e.entry.get())
}

/// Builds the chain: remembers the last hash and sequence number.
#[derive(Debug, Clone)]
pub struct Chain {
    next_seq: u64,
    last_hash: String,
}

impl Default for Chain {
    fn default() -> Self {
        Self {
            next_seq: 1,
            last_hash: GENESIS.to_string(),
        }
    }
}

impl Chain {
    /// Continue a chain whose last record is `last`. A chain never goes
    /// past `u64::MAX` (a record claiming it is forged: the next records
    /// repeat its seq, which `skos audit verify` names).
    pub fn resume(last: Option<&AuditRecord>) -> Self {
        match last {
            Some(r) => Self {
                next_seq: r.seq.saturating_add(1),
                last_hash: r.hash.clone(),
            },
            None => Self::default(),
        }
    }

    /// Continue a chain whose last record is `seq` with `hash` (known
    /// from a segment's seal, not from the record itself).
    pub fn after(seq: u64, hash: &str) -> Self {
        Self {
            next_seq: seq.saturating_add(1),
            last_hash: hash.to_string(),
        }
    }

    /// The hash the next record must carry as its `prev_hash`.
    pub fn last_hash(&self) -> &str {
        &self.last_hash
    }

    /// `entry` as the chain's next record, its hash over the entry's
    /// canonical text; the chain moves past it.
    pub fn seal(&mut self, entry: AuditEntry) -> AuditRecord {
        let hash = entry_hash(&self.last_hash, self.next_seq, &entry);
        self.advance(hash, entry)
    }

    /// The next record, `entry` with its `hash`; the chain moves past it.
    fn advance(&mut self, hash: String, entry: AuditEntry) -> AuditRecord {
        let record = AuditRecord {
            seq: self.next_seq,
            prev_hash: std::mem::replace(&mut self.last_hash, hash.clone()),
            hash,
            entry,
        };
        self.next_seq = self.next_seq.saturating_add(1);
        record
    }

    /// [`Chain::seal`], and the record's JSON text appended to `out`: the
    /// same record `serde_json` writes for [`AuditRecord`] (`seq`,
    /// `prev_hash`, `hash`, then `entry`), with the entry in its canonical
    /// text, the one its hash is over, so the entry is rendered once, not
    /// once for the hash and again for the record. On an error (an entry
    /// that cannot be rendered) nothing is sealed, `out` is as it was, and
    /// the entry is given back with the error.
    pub fn seal_to(
        &mut self,
        entry: AuditEntry,
        out: &mut Vec<u8>,
    ) -> Result<AuditRecord, (serde_json::Error, Box<AuditEntry>)> {
        let seq = self.next_seq;
        let start = out.len();
        let written = (|| {
            out.extend_from_slice(b"{\"seq\":");
            out.extend_from_slice(seq.to_string().as_bytes());
            out.extend_from_slice(b",\"prev_hash\":");
            serde_json::to_writer(&mut *out, &self.last_hash)?;
            // The hash's 64 hex digits are written once the entry is.
            out.extend_from_slice(b",\"hash\":\"");
            let hash_at = out.len();
            out.extend_from_slice(&[b'0'; 64]);
            out.extend_from_slice(b"\",\"entry\":");
            let text_at = out.len();
            serde_json::to_writer(&mut *out, &Canonical(&entry))?;
            let hash = hash_text(&self.last_hash, seq, &out[text_at..]);
            out[hash_at..hash_at + 64].copy_from_slice(hash.as_bytes());
            out.push(b'}');
            Ok(hash)
        })();
        match written {
            Ok(hash) => Ok(self.advance(hash, entry)),
            Err(e) => {
                out.truncate(start);
                Err((e, Box::new(entry)))
            }
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

/// Incremental verifier: feed records in order.
#[derive(Debug, Default)]
pub struct Verifier {
    chain: Option<Chain>,
    /// Records looked at.
    seen: u64,
    /// Records that verified.
    verified: u64,
}

impl Verifier {
    /// Check the next record as it was stored: its hash must be over its
    /// entry exactly as stored (a field added to a stored entry, which the
    /// typed entry would drop, is a change).
    pub fn push_value(&mut self, value: Value) -> Result<(), ChainError> {
        self.push_stored(value, None)
    }

    /// [`Verifier::push_value`], given also the record's text as it was
    /// stored (`value` is that text parsed). A record whose entry, as its
    /// `Value` renders, does not hash to the record's hash is judged by its
    /// entry's text as it stands ([`entry_text`]): that verifies it
    /// whatever a parser made of the floats in it (a float read back a unit
    /// in the last place off renders differently). Only then is the text
    /// read again.
    pub fn push_stored(&mut self, value: Value, record: Option<&[u8]>) -> Result<(), ChainError> {
        let stored = value.get("entry").cloned();
        let parsed: AuditRecord =
            serde_json::from_value(value).map_err(|e| ChainError::Unreadable {
                index: self.seen + 1,
                reason: e.to_string(),
            })?;
        self.push_checked(&parsed, |r| {
            let rendered = hash_over(&r.prev_hash, r.seq, stored.as_ref());
            if rendered == r.hash {
                return rendered;
            }
            record
                .and_then(entry_text)
                .map(|text| hash_text(&r.prev_hash, r.seq, text.as_bytes()))
                .unwrap_or(rendered)
        })
    }

    pub fn push(&mut self, record: &AuditRecord) -> Result<(), ChainError> {
        self.push_checked(record, |r| entry_hash(&r.prev_hash, r.seq, &r.entry))
    }

    /// [`Verifier::push`], with the record's content hashed by `hash`.
    fn push_checked(
        &mut self,
        record: &AuditRecord,
        hash: impl FnOnce(&AuditRecord) -> String,
    ) -> Result<(), ChainError> {
        let chain = self.chain.get_or_insert_with(Chain::default);
        self.seen += 1;
        let index = self.seen;
        if record.seq != chain.next_seq {
            return Err(ChainError::Sequence {
                index,
                expected: chain.next_seq,
                found: record.seq,
            });
        }
        if record.prev_hash != chain.last_hash {
            return Err(ChainError::Link { seq: record.seq });
        }
        if hash(record) != record.hash {
            return Err(ChainError::Content { seq: record.seq });
        }
        *chain = Chain::resume(Some(record));
        self.verified += 1;
        Ok(())
    }

    /// Go on after a break: the next record must follow `record` (the one
    /// that broke the chain, now taken as it is), so one change is reported
    /// once and what follows it is still checked.
    pub fn resume_after(&mut self, record: &AuditRecord) {
        self.chain = Some(Chain::resume(Some(record)));
    }

    /// Go on as if record `seq` with `hash` had verified: the start of a
    /// trail whose older records aged out, anchored on the first record
    /// left (the caller judges whether the records before it were
    /// removed by policy).
    pub fn resume_at(&mut self, seq: u64, hash: &str) {
        self.chain = Some(Chain::after(seq, hash));
    }

    /// The seq the next record must carry (1 before any record).
    pub fn next_seq(&self) -> u64 {
        self.chain.as_ref().map_or(1, Chain::next_seq)
    }

    /// The hash of the last record taken (the genesis hash before any).
    pub fn last_hash(&self) -> &str {
        self.chain.as_ref().map_or(GENESIS, Chain::last_hash)
    }

    /// How many records verified (the one that broke the chain is not
    /// counted).
    pub fn verified(&self) -> u64 {
        self.verified
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn entry(n: u32) -> AuditEntry {
        AuditEntry::new(
            crate::protocol::AuditEvent::Alert,
            chrono::Utc
                .timestamp_opt(1_700_000_000 + i64::from(n), 0)
                .unwrap(),
            None,
            "coordinator",
            format!("event {n}"),
            serde_json::json!({"n": n, "t": 87.5}),
        )
    }

    fn chain(n: u32) -> Vec<AuditRecord> {
        let mut c = Chain::default();
        (0..n).map(|i| c.seal(entry(i))).collect()
    }

    fn verify(records: &[AuditRecord]) -> Result<(), ChainError> {
        let mut v = Verifier::default();
        for r in records {
            // Through JSON text, as stored.
            let text = serde_json::to_string(r).unwrap();
            v.push_value(serde_json::from_str(&text).unwrap())?;
        }
        Ok(())
    }

    #[test]
    fn intact_chain_verifies() {
        verify(&chain(10)).unwrap();
    }

    /// The hash is over the entry's canonical text as the Value renders
    /// it (written into the hash as it is rendered): pinned here, so
    /// trails already written still verify.
    #[test]
    fn the_hash_is_over_the_canonical_text() {
        let e = entry(3);
        let canonical = serde_json::to_value(&e).unwrap().to_string();
        let mut h = Sha256::new();
        h.update(format!("{GENESIS}\n7\n{canonical}").as_bytes());
        assert_eq!(entry_hash(GENESIS, 7, &e), hex::encode(h.finalize()));
    }

    /// The same over entries whose text crosses the hash's buffer: one
    /// piece longer than the buffer, pieces that fill it exactly, and
    /// many small ones around its edge.
    #[test]
    fn the_hash_is_over_the_canonical_text_of_entries_longer_than_its_buffer() {
        let sizes = [
            0,
            1,
            HASH_BUFFER - 40,
            HASH_BUFFER - 1,
            HASH_BUFFER,
            3 * HASH_BUFFER + 7,
        ];
        for (i, n) in sizes.into_iter().enumerate() {
            let mut e = entry(i as u32);
            let keys: serde_json::Map<String, serde_json::Value> = (0..n / 16 + 1)
                .map(|k| (format!("k{k:04}"), serde_json::json!(k)))
                .collect();
            e.data = serde_json::json!({
                "escaped": "é\"x".repeat(n / 3 + 1),
                "keys": keys,
                "n": n,
                "plain": "x".repeat(n),
            });
            let canonical = serde_json::to_value(&e).unwrap().to_string();
            let mut h = Sha256::new();
            h.update(format!("{GENESIS}\n{i}\n{canonical}").as_bytes());
            assert_eq!(
                entry_hash(GENESIS, i as u64, &e),
                hex::encode(h.finalize()),
                "data of about {n} bytes"
            );
        }
    }

    /// Records longer than the hash's buffer verify as stored (through
    /// JSON text, the verifier's own path), and a byte changed past the
    /// buffer's first fill is caught.
    #[test]
    fn records_longer_than_the_hash_buffer_verify_and_a_late_change_is_caught() {
        let mut c = Chain::default();
        let records: Vec<AuditRecord> = [10, HASH_BUFFER - 1, HASH_BUFFER, 5 * HASH_BUFFER + 3]
            .into_iter()
            .enumerate()
            .map(|(i, n)| {
                let mut e = entry(i as u32);
                e.data = serde_json::json!({"text": "ä\"y".repeat(n / 3 + 1), "n": n});
                c.seal(e)
            })
            .collect();
        verify(&records).unwrap();
        let mut forged = records.clone();
        let text = forged[3].entry.data["text"].as_str().unwrap().to_string();
        let at = text.len() - 5;
        forged[3].entry.data["text"] =
            serde_json::Value::String(format!("{}z{}", &text[..at], &text[at + 1..]));
        match verify(&forged) {
            Err(ChainError::Content { seq: 4 }) => {}
            other => {
                panic!("expected a changed content at seq 4 (the fourth record), got {other:?}")
            }
        }
    }

    /// The canonical text written without a `Value` is byte for byte the
    /// `Value`'s, whatever the entry holds: optional fields present or
    /// not, escapes, unicode, nested data, numbers of every kind.
    #[test]
    fn the_direct_rendering_is_the_values() {
        let node = crate::NodeName::parse("nova").unwrap();
        let datas = [
            serde_json::json!(null),
            serde_json::json!({}),
            serde_json::json!({"z": 1, "a": [1.5, -2, 3e300, u64::MAX], "m": {"y": "\n\u{1b}\"", "b": true}}),
            serde_json::json!(["é", "😀", "\\", {"k": null}]),
            serde_json::json!(0.1),
        ];
        for (i, data) in datas.into_iter().enumerate() {
            for (node, term) in [(None, None), (Some(&node), Some(7)), (None, Some(0))] {
                let mut e = AuditEntry::new(
                    crate::protocol::AuditEvent::Command,
                    chrono::Utc
                        .timestamp_opt(1_700_000_000 + i as i64, 123_456_789)
                        .unwrap(),
                    node,
                    "coordinator \"x\"",
                    format!("sent\tthrottle {i} ünï"),
                    data.clone(),
                );
                e.term = term;
                let want = serde_json::to_value(&e).unwrap().to_string();
                let got = serde_json::to_string(&Canonical(&e)).unwrap();
                assert_eq!(got, want);
            }
        }
    }

    /// A record sealed with its text written ([`Chain::seal_to`]) is the
    /// record [`Chain::seal`] makes, its text reads back as that record,
    /// and a trail of such texts verifies: entries with and without their
    /// optional fields, escapes, and text longer than the hash's buffer.
    #[test]
    fn sealing_with_the_text_is_sealing_then_rendering() {
        let node = crate::NodeName::parse("nova").unwrap();
        let mut by_text = Chain::default();
        let mut plain = Chain::default();
        let mut verifier = Verifier::default();
        for i in 0..6u32 {
            let mut e = entry(i);
            if i % 2 == 1 {
                e.node = Some(node.clone());
                e.term = Some(u64::from(i));
            }
            e.data = serde_json::json!({"z": i, "a": "\"é\n".repeat(i as usize * 300), "m": {"b": [1.5, null]}});
            let mut out = b"[".to_vec();
            let record = by_text.seal_to(e.clone(), &mut out).unwrap();
            assert_eq!(out[0], b'[', "what was in the buffer stays");
            assert_eq!(record, plain.seal(e));
            let read: AuditRecord = serde_json::from_slice(&out[1..]).unwrap();
            assert_eq!(read, record);
            verifier
                .push_value(serde_json::from_slice(&out[1..]).unwrap())
                .unwrap();
        }
        assert_eq!(by_text.last_hash(), plain.last_hash());
        assert_eq!(by_text.next_seq(), 7);
    }

    /// Entries holding floats at full precision (a percentage computed
    /// from counters, an averaged reading) verify as stored: their text
    /// parses back to the same float, which renders to the same text, the
    /// one the hash is over. Parsed only approximately, about one such
    /// float in five came back a unit in the last place off, and an intact
    /// trail failed to verify.
    #[test]
    fn floats_at_full_precision_verify_as_stored() {
        let mut values = vec![
            10059.572680154533,
            30031.507059462838,
            -1.603964615428183e143,
            1.5860846119992697e-265,
            0.1 + 0.2,
            100.0 / 3.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
        ];
        // And bit patterns spread over the whole range (xorshift).
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        while values.len() < 4000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = f64::from_bits(x);
            if f.is_finite() {
                values.push(f);
            }
        }
        let mut c = Chain::default();
        let mut v = Verifier::default();
        for (i, f) in values.into_iter().enumerate() {
            let mut e = entry(i as u32);
            e.data = serde_json::json!({"value": f, "percent": f / 7.0});
            let mut text = Vec::new();
            c.seal_to(e, &mut text).unwrap();
            if let Err(err) = v.push_value(serde_json::from_slice(&text).unwrap()) {
                panic!("{f:e} stored as {}: {err}", String::from_utf8_lossy(&text));
            }
        }
    }

    /// A record is verified from its entry's stored text, whatever the
    /// parser made of the floats in it: here the parsed float is a unit in
    /// the last place off (what a parser without exact float reading
    /// returned for about one float in five), and only the stored text
    /// still verifies it. A record stored in another form than it was
    /// hashed over (spaced out) verifies as its `Value` renders; a changed
    /// text verifies neither way.
    #[test]
    fn a_record_is_verified_from_its_entry_as_stored() {
        let mut c = Chain::default();
        let mut e = entry(1);
        e.data = serde_json::json!({"percent": 10059.572680154533_f64});
        let mut text = Vec::new();
        c.seal_to(e, &mut text).unwrap();
        let stored = entry_text(&text).unwrap();
        assert!(stored.contains("10059.572680154533"), "{stored}");
        let mut off: Value = serde_json::from_slice(&text).unwrap();
        off["entry"]["data"]["percent"] =
            Value::from(f64::from_bits(10059.572680154533_f64.to_bits() - 1));
        assert!(matches!(
            Verifier::default().push_value(off.clone()),
            Err(ChainError::Content { seq: 1 })
        ));
        Verifier::default().push_stored(off, Some(&text)).unwrap();

        // Spaced out: the stored text is not what was hashed; its value is.
        let value: Value = serde_json::from_slice(&text).unwrap();
        let spaced = serde_json::to_vec_pretty(&value).unwrap();
        let mut v = Verifier::default();
        v.push_stored(value, Some(&spaced)).unwrap();
        assert_eq!(v.verified(), 1);

        // Changed: neither the text nor its value is what was hashed.
        let changed = String::from_utf8(text)
            .unwrap()
            .replace("10059.57", "10059.58");
        let value: Value = serde_json::from_str(&changed).unwrap();
        assert!(matches!(
            Verifier::default().push_stored(value, Some(changed.as_bytes())),
            Err(ChainError::Content { seq: 1 })
        ));
        assert_eq!(entry_text(b"not json"), None);
        assert_eq!(entry_text(b"{\"seq\": 1}"), None);
    }

    /// A field added to a stored entry is a change, though the typed
    /// entry would not hold it.
    #[test]
    fn a_field_added_to_a_stored_entry_is_a_change() {
        let records = chain(3);
        let mut v = Verifier::default();
        let mut values: Vec<Value> = records
            .iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect();
        values[1]["entry"]["approved_by"] = Value::from("mallory");
        v.push_value(values[0].clone()).unwrap();
        assert_eq!(
            v.push_value(values[1].clone()),
            Err(ChainError::Content { seq: 2 })
        );
    }

    #[test]
    fn changed_removed_reordered_are_caught() {
        let mut changed = chain(5);
        changed[2].entry.summary = "nothing happened".into();
        assert_eq!(verify(&changed), Err(ChainError::Content { seq: 3 }));

        let mut removed = chain(5);
        removed.remove(2);
        assert!(matches!(verify(&removed), Err(ChainError::Sequence { .. })));

        let mut reordered = chain(5);
        reordered.swap(1, 2);
        assert!(verify(&reordered).is_err());

        // Removing a record and renumbering the rest still breaks the links.
        let mut renumbered = chain(5);
        renumbered.remove(2);
        for (i, r) in renumbered.iter_mut().enumerate() {
            r.seq = i as u64 + 1;
        }
        assert!(verify(&renumbered).is_err());
    }

    #[test]
    fn resume_continues_chain() {
        let mut records = chain(3);
        let mut c = Chain::resume(records.last());
        assert_eq!(c.next_seq(), 4);
        assert_eq!(Chain::default().next_seq(), 1);
        records.push(c.seal(entry(99)));
        assert_eq!(c.next_seq(), 5);
        verify(&records).unwrap();
    }

    /// `verified` counts the records that verified, and an error names the
    /// position (from 1) of the record that broke the chain.
    #[test]
    fn the_verifier_counts_and_points_at_the_bad_record() {
        let records = chain(4);
        let mut v = Verifier::default();
        for r in &records {
            v.push(r).unwrap();
        }
        assert_eq!(v.verified(), 4);

        let mut removed = chain(4);
        removed.remove(2);
        let mut v = Verifier::default();
        v.push(&removed[0]).unwrap();
        v.push(&removed[1]).unwrap();
        match v.push(&removed[2]) {
            Err(ChainError::Sequence { index, .. }) => assert_eq!(index, 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(v.verified(), 2, "the bad record is not counted");
        let mut v = Verifier::default();
        v.push(&records[0]).unwrap();
        match v.push_value(serde_json::json!({"not": "a record"})) {
            Err(ChainError::Unreadable { index, .. }) => assert_eq!(index, 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(v.verified(), 1);
    }
}
