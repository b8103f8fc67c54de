//! Threshold levels with hysteresis and debounce.
//!
//! A level is entered when the value goes above its threshold and has held
//! there for the level's `for` duration; it is left only when the value
//! falls below `threshold - hysteresis` and has stayed there for the clear
//! duration. An unchanged level is reported again no sooner than the
//! cooldown. Time is passed in.

use chrono::Duration;

use crate::config::{LevelHold, Thresholds};
use crate::protocol::Severity;
use crate::timefmt::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelRules {
    pub thresholds: Thresholds,
    pub hysteresis: f64,
    /// Seconds a higher level must hold before it is entered.
    pub hold_up: LevelHold,
    /// Seconds a lower level must hold before it is entered.
    pub hold_down: f64,
    /// Seconds before an unchanged, non-normal level is reported again.
    pub cooldown: f64,
}

impl LevelRules {
    pub fn threshold(&self, s: Severity) -> f64 {
        match s {
            Severity::Normal => f64::NEG_INFINITY,
            Severity::Warning => self.thresholds.warning,
            Severity::Critical => self.thresholds.critical,
            Severity::Emergency => self.thresholds.emergency,
        }
    }

    fn hold_for(&self, target: Severity, current: Severity) -> f64 {
        if target < current {
            return self.hold_down;
        }
        match target {
            Severity::Normal => 0.0,
            Severity::Warning => self.hold_up.warning,
            Severity::Critical => self.hold_up.critical,
            Severity::Emergency => self.hold_up.emergency,
        }
    }

    /// The level a value indicates given the current level: up as soon as
    /// the value is above a threshold, down only past the hysteresis margin.
    pub fn target(&self, current: Severity, value: f64) -> Severity {
        let up = Severity::LEVELS
            .iter()
            .rev()
            .copied()
            .find(|&l| value > self.threshold(l))
            .unwrap_or(Severity::Normal);
        if up >= current {
            return up;
        }
        let stay = Severity::LEVELS
            .iter()
            .rev()
            .copied()
            .filter(|&l| l <= current)
            .find(|&l| !cleared(self.threshold(l), self.hysteresis, value))
            .unwrap_or(Severity::Normal);
        up.max(stay)
    }
}

/// Whether `value` has cleared a level whose threshold is `threshold`:
/// it is below `threshold - hysteresis` (at exactly that value the level
/// still holds). The one definition of "cleared" for agents and the
/// coordinator alike, so both sides agree on every reading.
pub fn cleared(threshold: f64, hysteresis: f64, value: f64) -> bool {
    value < threshold - hysteresis
}

/// Why a level is being reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Changed { from: Severity, to: Severity },
    Reminder(Severity),
}

#[derive(Debug, Clone, Default)]
pub struct LevelTracker {
    current: Option<Severity>,
    pending: Option<(Severity, Timestamp)>,
    last_report: Option<Timestamp>,
}

impl LevelTracker {
    pub fn current(&self) -> Severity {
        self.current.unwrap_or(Severity::Normal)
    }

    /// Feed one reading. Returns what to report, if anything.
    pub fn observe(&mut self, rules: &LevelRules, value: f64, now: Timestamp) -> Option<Report> {
        let current = self.current();
        let target = rules.target(current, value);
        if target == current {
            self.pending = None;
            if self.current.is_none() {
                // First reading: normal is the starting state, nothing to say.
                self.current = Some(current);
                return None;
            }
            if current != Severity::Normal {
                let due = self
                    .last_report
                    .is_none_or(|t| now - t >= secs(rules.cooldown));
                if due {
                    self.last_report = Some(now);
                    return Some(Report::Reminder(current));
                }
            }
            return None;
        }
        let since = match self.pending {
            Some((s, since)) if s == target => since,
            _ => {
                self.pending = Some((target, now));
                now
            }
        };
        if now - since >= secs(rules.hold_for(target, current)) {
            self.current = Some(target);
            self.pending = None;
            self.last_report = Some(now);
            return Some(Report::Changed {
                from: current,
                to: target,
            });
        }
        None
    }
}

pub fn secs(s: f64) -> Duration {
    // Saturated at about 300 years either way (NaN is 0): a time plus it
    // never overflows, whatever a config or a message said.
    const MAX_MS: f64 = 1e13;
    Duration::milliseconds((s * 1000.0).round().clamp(-MAX_MS, MAX_MS) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secs_saturate_so_time_arithmetic_never_overflows() {
        let now = chrono::Utc::now();
        for s in [1e300, -1e300, f64::INFINITY, f64::NAN, 1e15] {
            let d = secs(s);
            assert!(now.checked_add_signed(d).is_some(), "{s}");
        }
        assert_eq!(secs(f64::NAN), Duration::zero());
        assert_eq!(secs(1.5), Duration::milliseconds(1500));
    }
    use chrono::TimeZone;

    fn rules() -> LevelRules {
        LevelRules {
            thresholds: Thresholds {
                warning: 75.0,
                critical: 85.0,
                emergency: 95.0,
            },
            hysteresis: 3.0,
            hold_up: LevelHold::default(),
            hold_down: 0.0,
            cooldown: 300.0,
        }
    }

    fn t(s: i64) -> Timestamp {
        chrono::Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn acts_at_once_by_default_and_no_storm() {
        let r = rules();
        let mut tr = LevelTracker::default();
        assert_eq!(tr.observe(&r, 60.0, t(0)), None);
        assert_eq!(
            tr.observe(&r, 87.0, t(1)),
            Some(Report::Changed {
                from: Severity::Normal,
                to: Severity::Critical
            })
        );
        for i in 2..100 {
            assert_eq!(
                tr.observe(&r, 87.0 + (i % 3) as f64, t(i)),
                None,
                "storm at {i}"
            );
        }
        assert_eq!(
            tr.observe(&r, 87.0, t(302)),
            Some(Report::Reminder(Severity::Critical))
        );
    }

    #[test]
    fn hysteresis_holds_level_until_margin() {
        let r = rules();
        let mut tr = LevelTracker::default();
        tr.observe(&r, 86.0, t(0));
        assert_eq!(tr.observe(&r, 84.0, t(1)), None, "inside margin");
        assert_eq!(tr.observe(&r, 82.5, t(2)), None, "inside margin");
        assert_eq!(
            tr.observe(&r, 81.0, t(3)),
            Some(Report::Changed {
                from: Severity::Critical,
                to: Severity::Warning
            })
        );
        assert_eq!(
            tr.observe(&r, 60.0, t(4)),
            Some(Report::Changed {
                from: Severity::Warning,
                to: Severity::Normal
            })
        );
    }

    /// Exactly at `threshold - hysteresis` the level holds; just below, it
    /// clears. The coordinator's cool-down uses the same `cleared`.
    #[test]
    fn the_clear_level_itself_still_holds() {
        let r = rules();
        let clear = r.thresholds.warning - r.hysteresis;
        let mut tr = LevelTracker::default();
        tr.observe(&r, 60.0, t(0));
        assert!(tr.observe(&r, r.thresholds.warning + 1.0, t(1)).is_some());
        assert_eq!(tr.observe(&r, clear, t(2)), None, "at the clear level");
        assert_eq!(tr.current(), Severity::Warning);
        assert_eq!(
            tr.observe(&r, clear - 0.01, t(3)),
            Some(Report::Changed {
                from: Severity::Warning,
                to: Severity::Normal
            })
        );
        assert!(!cleared(75.0, 3.0, 72.0));
        assert!(cleared(75.0, 3.0, 71.99));
        assert!(
            !cleared(75.0, 0.0, 75.0),
            "no hysteresis: the threshold holds"
        );
    }

    /// A level is entered above its threshold, not at it.
    #[test]
    fn a_reading_at_the_threshold_is_not_above_it() {
        let r = rules();
        let mut tr = LevelTracker::default();
        tr.observe(&r, 60.0, t(0));
        assert_eq!(tr.observe(&r, r.thresholds.warning, t(1)), None);
        assert_eq!(tr.current(), Severity::Normal);
        assert!(tr.observe(&r, r.thresholds.warning + 0.1, t(2)).is_some());
    }

    /// A pending level that changes (warning, then critical) starts its
    /// own `for` wait: the time spent pending warning does not count.
    #[test]
    fn a_new_pending_level_waits_its_own_for() {
        let mut r = rules();
        r.hold_up.warning = 10.0;
        r.hold_up.critical = 10.0;
        let mut tr = LevelTracker::default();
        tr.observe(&r, 60.0, t(0));
        assert_eq!(tr.observe(&r, r.thresholds.warning + 1.0, t(1)), None);
        assert_eq!(tr.observe(&r, r.thresholds.critical + 1.0, t(8)), None);
        assert_eq!(
            tr.observe(&r, r.thresholds.critical + 1.0, t(17)),
            None,
            "7 s of critical"
        );
        assert_eq!(
            tr.observe(&r, r.thresholds.critical + 1.0, t(18)),
            Some(Report::Changed {
                from: Severity::Normal,
                to: Severity::Critical
            })
        );
    }

    #[test]
    fn for_duration_debounces_spikes() {
        let mut r = rules();
        r.hold_up.critical = 10.0;
        let mut tr = LevelTracker::default();
        tr.observe(&r, 60.0, t(0));
        assert_eq!(tr.observe(&r, 90.0, t(1)), None);
        assert_eq!(tr.observe(&r, 60.0, t(2)), None, "spike gone");
        assert_eq!(tr.observe(&r, 90.0, t(3)), None);
        assert_eq!(tr.observe(&r, 90.0, t(8)), None);
        assert_eq!(
            tr.observe(&r, 90.0, t(13)),
            Some(Report::Changed {
                from: Severity::Normal,
                to: Severity::Critical
            })
        );
    }

    #[test]
    fn clear_hold_delays_recovery() {
        let mut r = rules();
        r.hold_down = 30.0;
        let mut tr = LevelTracker::default();
        tr.observe(&r, 80.0, t(0));
        assert_eq!(tr.observe(&r, 60.0, t(1)), None);
        assert_eq!(tr.observe(&r, 60.0, t(20)), None);
        assert_eq!(
            tr.observe(&r, 60.0, t(31)),
            Some(Report::Changed {
                from: Severity::Warning,
                to: Severity::Normal
            })
        );
    }
}
