//! Cycles in a chain's steps (A→B→A→B→A→B), found over step signatures.

use std::hash::{Hash, Hasher};

use crate::config::CycleRule;

/// The period of a cycle closed by the last item of `seq`: the smallest
/// `p` in `min_period..=max_period` such that the last `p * repeats` items
/// are one block of `p` items repeated, the block not itself a repetition
/// of a shorter one.
pub fn detect_cycle<T: PartialEq>(seq: &[T], rule: &CycleRule) -> Option<usize> {
    if rule.repeats < 2 {
        return None;
    }
    for p in rule.min_period.max(1)..=rule.max_period {
        let need = p.checked_mul(rule.repeats)?;
        if seq.len() < need {
            break;
        }
        let tail = &seq[seq.len() - need..];
        if !(p..need).all(|i| tail[i] == tail[i - p]) {
            continue;
        }
        let block = &tail[..p];
        let shorter = (1..p).any(|d| p % d == 0 && (d..p).all(|i| block[i] == block[i - d]));
        if !shorter {
            return Some(p);
        }
    }
    None
}
/// A step signature as kept for cycle detection: a 64-bit fingerprint, so
/// the window costs 8 bytes a step whatever the signatures' length.
pub(super) fn fingerprint(signature: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    signature.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_are_found_at_their_smallest_period() {
        let rule = CycleRule::default();
        let c = |s: &str| detect_cycle(s.as_bytes(), &rule);
        assert_eq!(c("ABABAB"), Some(2));
        assert_eq!(c("ABABA"), None);
        assert_eq!(c("xABCABCABC"), Some(3));
        assert_eq!(c("AAAAAAAAAA"), None, "period 1 is iteration, not a cycle");
        assert_eq!(c("ABABABAB"), Some(2));
        assert_eq!(c("ABCDABCDABCE"), None);
        let one = CycleRule {
            min_period: 1,
            ..rule
        };
        assert_eq!(detect_cycle(b"AAA", &one), Some(1));
        let off = CycleRule { repeats: 0, ..rule };
        assert_eq!(detect_cycle(b"ABABABAB", &off), None);
    }

    #[test]
    fn two_repeats_are_the_fewest_that_make_a_cycle() {
        let twice = CycleRule {
            repeats: 2,
            ..CycleRule::default()
        };
        assert_eq!(detect_cycle(b"ABAB", &twice), Some(2));
        assert_eq!(detect_cycle(b"ABA", &twice), None);
        let once = CycleRule {
            repeats: 1,
            ..CycleRule::default()
        };
        assert_eq!(
            detect_cycle(b"ABAB", &once),
            None,
            "one run is no repetition"
        );
    }
}
