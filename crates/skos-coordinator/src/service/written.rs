//! Audit entries the trail already holds, so one about to be written again
//! (after an append whose outcome is unknown, or kept with the state across
//! a stop) is not written twice.
//!
//! Entries are matched as parsed, without the term they were written under,
//! and floats match within [`FLOAT_ULPS`] units in the last place: an entry
//! read back from the trail or from saved state by a parser that reads
//! floats approximately is still the same entry. Matching does not depend
//! on how exactly floats are parsed.

use std::collections::HashMap;

use serde_json::Value;
use skos_core::protocol::AuditEntry;

/// How many units in the last place two floats of one entry may be apart
/// and still match: an approximate parse is off by at most one, and an
/// entry kept with the state may have been read back twice.
const FLOAT_ULPS: u64 = 4;

/// Entries already in the trail, by their shape ([`shape_key`]).
#[derive(Debug, Default)]
pub(super) struct Written(HashMap<String, Vec<Value>>);

impl Written {
    /// Remember `entry`, a stored record's `entry` as read.
    pub(super) fn insert(&mut self, entry: &Value) {
        let entry = without_term(entry);
        self.0.entry(shape_key(&entry)).or_default().push(entry);
    }

    /// Whether `entry` is one already remembered. An entry that cannot be
    /// rendered is not (it is written, and fails there, visibly).
    pub(super) fn contains(&self, entry: &AuditEntry) -> bool {
        let Ok(entry) = serde_json::to_value(entry) else {
            return false;
        };
        let entry = without_term(&entry);
        self.0
            .get(&shape_key(&entry))
            .is_some_and(|seen| seen.iter().any(|w| same(w, &entry)))
    }
}

/// `entry` without its `term` (stamped when it is written).
fn without_term(entry: &Value) -> Value {
    let mut e = entry.clone();
    if let Some(o) = e.as_object_mut() {
        o.remove("term");
    }
    e
}

/// `entry` rendered with every float left out (written `0`): entries that
/// may match have the same key.
fn shape_key(entry: &Value) -> String {
    fn mask(v: &Value) -> Value {
        match v {
            Value::Number(n) if n.is_f64() => Value::from(0),
            Value::Array(a) => Value::Array(a.iter().map(mask).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), mask(v))).collect())
            }
            other => other.clone(),
        }
    }
    mask(entry).to_string()
}

/// `a` and `b` are the same, floats within [`FLOAT_ULPS`].
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(fx), Some(fy)) if x.is_f64() && y.is_f64() => ulps_apart(fx, fy) <= FLOAT_ULPS,
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// How many representable doubles lie between `a` and `b` (`u64::MAX`
/// when their signs differ and they are not both zero).
fn ulps_apart(a: f64, b: f64) -> u64 {
    if a == b {
        return 0;
    }
    if a.is_sign_negative() != b.is_sign_negative() {
        return u64::MAX;
    }
    a.to_bits().abs_diff(b.to_bits())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn entry(data: Value) -> AuditEntry {
        AuditEntry::new(
            skos_core::AuditEvent::Alert,
            chrono::Utc.timestamp_opt(1_700_000_000, 5).unwrap(),
            None,
            "coordinator",
            "cpu hot",
            data,
        )
    }

    /// A written entry read back with its floats a unit in the last place
    /// off, and under a term, is still the entry; one with another value,
    /// another float or another field is not.
    #[test]
    fn an_entry_read_back_approximately_is_the_entry_written() {
        let exact = 10059.572680154533_f64;
        let off = f64::from_bits(exact.to_bits() + 1);
        let e = entry(json!({"percent": exact, "readings": [1.5, 2], "n": 3}));
        let mut stored = serde_json::to_value(&e).unwrap();
        stored["data"]["percent"] = json!(off);
        stored["term"] = json!(7);
        let mut written = Written::default();
        written.insert(&stored);
        assert!(written.contains(&e));

        for other in [
            json!({"percent": exact, "readings": [1.5, 2], "n": 4}),
            json!({"percent": exact * 1.0001, "readings": [1.5, 2], "n": 3}),
            json!({"percent": exact, "readings": [1.5, 2.0], "n": 3}),
            json!({"percent": exact, "readings": [1.5, 2], "n": 3, "x": null}),
            json!({"percent": -exact, "readings": [1.5, 2], "n": 3}),
        ] {
            assert!(!written.contains(&entry(other.clone())), "{other}");
        }
    }

    #[test]
    fn floats_are_compared_by_their_place_among_doubles() {
        assert_eq!(ulps_apart(1.0, 1.0), 0);
        assert_eq!(ulps_apart(0.0, -0.0), 0);
        assert_eq!(ulps_apart(1.0, f64::from_bits(1.0f64.to_bits() + 3)), 3);
        assert_eq!(ulps_apart(-1.0, 1.0), u64::MAX);
        assert!(ulps_apart(1.0, 1.000_000_1) > FLOAT_ULPS);
    }
}
