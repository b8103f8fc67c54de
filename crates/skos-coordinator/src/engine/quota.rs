//! Per-node alert quota: one node's flood never delays another's alerts
//! nor fills the audit trail. Past `coordinator.max_alerts_per_node_per_minute`
//! in a minute, a node's further alerts are coalesced (counted, not
//! decided, not audited one by one) unless one raises the severity of its
//! problem; when the minute ends, one audited summary says how many were
//! coalesced and which.

use std::collections::BTreeMap;

use skos_core::level::secs;
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

/// One node's current minute.
#[derive(Debug, Clone)]
struct Window {
    start: Timestamp,
    /// Alerts seen in it (admitted or not).
    seen: u32,
    coalesced: u32,
    first: String,
    last: String,
}

/// A minute that ended with alerts coalesced.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Coalesced {
    pub(super) node: NodeName,
    pub(super) since: Timestamp,
    pub(super) seen: u32,
    pub(super) coalesced: u32,
    pub(super) first: String,
    pub(super) last: String,
}

/// The windows of nodes that sent alerts in the last minute.
#[derive(Debug, Default)]
pub(super) struct Quotas {
    windows: BTreeMap<NodeName, Window>,
}

/// The quota window, seconds.
const WINDOW: f64 = 60.0;

impl Quotas {
    /// Count an alert of `node`; whether it is within `limit` for the
    /// current minute. Over the limit it is recorded as coalesced.
    pub(super) fn admit(&mut self, node: &NodeName, id: &str, now: Timestamp, limit: u32) -> bool {
        let w = self.windows.entry(node.clone()).or_insert_with(|| Window {
            start: now,
            seen: 0,
            coalesced: 0,
            first: String::new(),
            last: String::new(),
        });
        w.seen = w.seen.saturating_add(1);
        if w.seen <= limit {
            return true;
        }
        if w.coalesced == 0 {
            w.first = id.to_string();
        }
        w.coalesced += 1;
        w.last = id.to_string();
        false
    }

    /// Undo the count of the last `admit` of an alert that was handled
    /// after all (it raised its problem's severity).
    pub(super) fn handled_anyway(&mut self, node: &NodeName) {
        if let Some(w) = self.windows.get_mut(node) {
            w.coalesced = w.coalesced.saturating_sub(1);
        }
    }

    /// End the windows a minute old: those that coalesced something, to
    /// be summed up in the audit trail.
    pub(super) fn ended(&mut self, now: Timestamp) -> Vec<Coalesced> {
        let mut out = Vec::new();
        self.windows.retain(|node, w| {
            if now - w.start < secs(WINDOW) {
                return true;
            }
            if w.coalesced > 0 {
                out.push(Coalesced {
                    node: node.clone(),
                    since: w.start,
                    seen: w.seen,
                    coalesced: w.coalesced,
                    first: std::mem::take(&mut w.first),
                    last: std::mem::take(&mut w.last),
                });
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: f64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap() + secs(s)
    }

    #[test]
    fn the_limit_is_per_node_per_minute_and_the_excess_is_summed_up_once() {
        let (a, b) = (NodeName::parse("a").unwrap(), NodeName::parse("b").unwrap());
        let mut q = Quotas::default();
        for i in 0..3 {
            assert!(
                q.admit(&a, &format!("a{i}"), t(i as f64), 3),
                "within the limit"
            );
        }
        assert!(!q.admit(&a, "a3", t(3.0), 3));
        assert!(!q.admit(&a, "a4", t(4.0), 3));
        // Another node has its own quota.
        assert!(q.admit(&b, "b0", t(4.0), 3));
        assert!(q.ended(t(59.9)).is_empty(), "the minute is not over");
        let ended = q.ended(t(60.0));
        assert_eq!(
            ended,
            vec![Coalesced {
                node: a.clone(),
                since: t(0.0),
                seen: 5,
                coalesced: 2,
                first: "a3".into(),
                last: "a4".into(),
            }]
        );
        // b's window ended too, with nothing to say; a starts afresh.
        assert!(q.ended(t(200.0)).is_empty());
        assert!(q.admit(&a, "a5", t(200.0), 3));
    }

    #[test]
    fn an_alert_handled_anyway_is_not_counted_as_coalesced() {
        let a = NodeName::parse("a").unwrap();
        let mut q = Quotas::default();
        assert!(q.admit(&a, "a0", t(0.0), 1));
        assert!(!q.admit(&a, "a1", t(1.0), 1));
        q.handled_anyway(&a);
        assert!(q.ended(t(61.0)).is_empty());
    }
}
