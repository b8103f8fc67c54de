//! Silences and maintenance windows: what an operator tells the
//! coordinator not to act on, for a while.
//!
//! A silence names a node and, optionally, narrows it to a kind of problem
//! (`thermal`), one problem (`thermal:cpu`) or one action (`throttle_50`);
//! it holds from its `start` to its `end`, with a comment and who made it.
//! While one holds, alerts it matches are still recorded and decided, but
//! every action it matches is skipped as `silenced` (never sent). When it
//! ends or is expired, the problems it held are decided again.
//!
//! A recurring silence (a maintenance window for planned work) holds only
//! inside its windows: each begins at an occurrence of a 5-field cron
//! pattern (minute, hour, day of month, month, day of week; in UTC; `#n`
//! for the n-th weekday of the month, as in `0 2 * * SUN#1`, the first
//! Sunday at 02:00) and lasts its window's length; the series runs from
//! its start to its end (a year when none is given). The problems a window
//! held are decided again when it closes.
//!
//! Pure: the time is always a parameter.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::events::ProblemKey;
use crate::protocol::AlertKind;
use crate::timefmt::{self, Timestamp};
use crate::{catalogue, NodeName};

/// Longest comment kept, in characters.
pub const MAX_COMMENT_CHARS: usize = 500;
/// Longest `by` (who made or expired a silence), in characters.
pub const MAX_BY_CHARS: usize = 64;
/// Longest silence, in seconds (a year): a silence is for a while, a
/// problem never acted on belongs in the config.
pub const MAX_SECONDS: i64 = 366 * 24 * 3600;
/// Most silences kept per node; one more is refused.
pub const MAX_PER_NODE: usize = 64;
/// Longest window of a recurring silence, in seconds (31 days).
pub const MAX_WINDOW_SECONDS: i64 = 31 * 24 * 3600;

/// What is wrong with a silence asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SilenceError {
    #[error("comment: say why (a comment is required, at most {MAX_COMMENT_CHARS} characters)")]
    Comment,
    #[error("by: say who (1 to {MAX_BY_CHARS} printable characters, no spaces)")]
    By,
    #[error("kind {0:?}: not a kind of problem (thermal, storage, mesh, loop, heartbeat_missing, circuit, clock_skew, audit)")]
    Kind(String),
    #[error("problem {problem:?}: {reason}")]
    Problem { problem: String, reason: String },
    #[error("action {0:?}: not a known action")]
    Action(String),
    #[error("give either an end or a duration, not both and not neither")]
    EndOrDuration,
    #[error("the end ({end}) is not after the start ({start})")]
    EndBeforeStart { start: String, end: String },
    #[error("the end ({0}) has passed")]
    EndPassed(String),
    #[error("longer than a year ({0} s): a problem never acted on belongs in the config")]
    TooLong(i64),
    #[error("node {node} already has {MAX_PER_NODE} silences: expire some first")]
    TooMany { node: NodeName },
    #[error("no silence {0}")]
    Unknown(String),
    #[error("silence {0} exists already")]
    Exists(String),
    #[error("every {pattern:?}: {reason} (5 fields in UTC: minute hour day-of-month month day-of-week, e.g. \"0 2 * * SUN#1\")")]
    Every { pattern: String, reason: String },
    #[error("a recurring silence needs the length of each window (a duration)")]
    WindowLength,
    #[error("each window may last at most 31 days ({0} s asked)")]
    WindowTooLong(i64),
}

/// A silence asked for: what `skos silence add` and `POST
/// /api/v1/silences` send. Exactly one of `end` and `duration_seconds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceSpec {
    pub node: NodeName,
    /// A kind of problem (`thermal`, `storage`, ...); any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// One problem (`thermal:cpu`, `storage:/srv`); any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// One action (`throttle_50`); any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// When it starts holding; now when absent.
    #[serde(
        default,
        with = "timefmt::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub start: Option<Timestamp>,
    /// When it stops holding.
    #[serde(
        default,
        with = "timefmt::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub end: Option<Timestamp>,
    /// How long it holds from its start, in seconds; with `every`, how long
    /// each window lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<u64>,
    /// Recurring windows: a 5-field cron pattern in UTC (`0 2 * * SUN#1`).
    /// `end` is then when the series ends (a year after its start when
    /// absent), `duration_seconds` each window's length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// Why (required).
    pub comment: String,
    /// Who made it (required).
    pub by: String,
}

/// A silence the coordinator keeps (in its node's saved state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    /// `s-` and 12 hex digits, derived from what it says and when it was made.
    pub id: String,
    pub node: NodeName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<AlertKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<ProblemKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(with = "timefmt")]
    pub start: Timestamp,
    #[serde(with = "timefmt")]
    pub end: Timestamp,
    pub comment: String,
    pub by: String,
    #[serde(with = "timefmt")]
    pub created: Timestamp,
    /// For a recurring silence, its windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<Every>,
    /// Problems whose actions it held: decided again when it ends (for a
    /// recurring silence, when its window closes).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub held: BTreeSet<ProblemKey>,
}

/// The windows of a recurring silence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Every {
    /// A 5-field cron pattern, in UTC.
    pub cron: String,
    /// How long each window lasts, in seconds.
    pub window_seconds: i64,
}

/// `pattern` read as 5 cron fields (no seconds, no year).
fn parse_cron(pattern: &str) -> Result<croner::Cron, SilenceError> {
    use croner::parser::{CronParser, Seconds, Year};
    let bad = |reason: String| SilenceError::Every {
        pattern: pattern.to_string(),
        reason,
    };
    if pattern.split_whitespace().count() != 5 {
        return Err(bad("not 5 fields".into()));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(pattern)
        .map_err(|e| bad(e.to_string()))
}

impl Every {
    /// The window holding at `now`, as (start, end), if any.
    pub fn window_at(&self, now: Timestamp) -> Option<(Timestamp, Timestamp)> {
        let cron = parse_cron(&self.cron).ok()?;
        let len = chrono::Duration::seconds(self.window_seconds);
        // The first occurrence after now - len: holding when it has begun.
        let begun = cron.find_next_occurrence(&(now - len), false).ok()?;
        (begun <= now).then_some((begun, begun + len))
    }

    /// When the next window after `now` begins.
    pub fn next_after(&self, now: Timestamp) -> Option<Timestamp> {
        parse_cron(&self.cron)
            .ok()?
            .find_next_occurrence(&now, false)
            .ok()
    }
}

/// Every kind a silence may name: the kinds a problem can have.
const KINDS: [AlertKind; 8] = [
    AlertKind::Thermal,
    AlertKind::Storage,
    AlertKind::Mesh,
    AlertKind::Loop,
    AlertKind::HeartbeatMissing,
    AlertKind::Circuit,
    AlertKind::ClockSkew,
    AlertKind::Audit,
];

/// The kind `name` spells.
pub fn parse_kind(name: &str) -> Result<AlertKind, SilenceError> {
    KINDS
        .into_iter()
        .find(|k| k.as_str() == name)
        .ok_or_else(|| SilenceError::Kind(name.to_string()))
}

/// Whether `by` is a name: printable, no spaces, not too long.
pub fn valid_by(by: &str) -> bool {
    !by.is_empty()
        && by.chars().count() <= MAX_BY_CHARS
        && by.chars().all(|c| !c.is_whitespace() && !c.is_control())
}

impl SilenceSpec {
    /// The silence this asks for, made at `now`; what is wrong with it
    /// otherwise.
    pub fn build(&self, now: Timestamp) -> Result<Silence, SilenceError> {
        let comment = self.comment.trim();
        if comment.is_empty()
            || comment.chars().count() > MAX_COMMENT_CHARS
            || comment.chars().any(|c| c.is_control() && c != '\n')
        {
            return Err(SilenceError::Comment);
        }
        if !valid_by(&self.by) {
            return Err(SilenceError::By);
        }
        let kind = self.kind.as_deref().map(parse_kind).transpose()?;
        let problem = match self.problem.as_deref() {
            None => None,
            Some(p) => Some(parse_problem(p, kind.as_ref())?),
        };
        if let Some(a) = &self.action {
            if !catalogue::is_known(a) {
                return Err(SilenceError::Action(a.clone()));
            }
        }
        let start = self.start.unwrap_or(now);
        let seconds = |d: u64| i64::try_from(d).map_err(|_| SilenceError::TooLong(i64::MAX));
        let (end, every) = match &self.every {
            Some(pattern) => {
                parse_cron(pattern)?;
                let window = seconds(self.duration_seconds.ok_or(SilenceError::WindowLength)?)?;
                if window <= 0 {
                    return Err(SilenceError::WindowLength);
                }
                if window > MAX_WINDOW_SECONDS {
                    return Err(SilenceError::WindowTooLong(window));
                }
                let every = Every {
                    cron: pattern.split_whitespace().collect::<Vec<_>>().join(" "),
                    window_seconds: window,
                };
                let end = self
                    .end
                    .unwrap_or(start + chrono::Duration::seconds(MAX_SECONDS));
                (end, Some(every))
            }
            None => (self.one_off_end(start)?, None),
        };
        if end <= start {
            return Err(SilenceError::EndBeforeStart {
                start: timefmt::format(&start),
                end: timefmt::format(&end),
            });
        }
        if end <= now {
            return Err(SilenceError::EndPassed(timefmt::format(&end)));
        }
        let length = (end - start).num_seconds();
        if length > MAX_SECONDS {
            return Err(SilenceError::TooLong(length));
        }
        let mut s = Silence {
            id: String::new(),
            node: self.node.clone(),
            kind,
            problem,
            action: self.action.clone(),
            start,
            end,
            comment: comment.to_string(),
            by: self.by.clone(),
            created: now,
            every,
            held: BTreeSet::new(),
        };
        s.id = s.derive_id();
        Ok(s)
    }

    /// The end of a silence that does not recur: its `end`, or its start
    /// plus its duration (exactly one of them).
    fn one_off_end(&self, start: Timestamp) -> Result<Timestamp, SilenceError> {
        match (self.end, self.duration_seconds) {
            (Some(end), None) => Ok(end),
            (None, Some(d)) => {
                let d = i64::try_from(d).map_err(|_| SilenceError::TooLong(i64::MAX))?;
                if d > MAX_SECONDS {
                    return Err(SilenceError::TooLong(d));
                }
                Ok(start + chrono::Duration::seconds(d))
            }
            _ => Err(SilenceError::EndOrDuration),
        }
    }
}

/// A problem as a silence may name it: `<kind>` or `<kind>:<sensor>`, of a
/// known kind, and of `kind` when both are given.
fn parse_problem(text: &str, kind: Option<&AlertKind>) -> Result<ProblemKey, SilenceError> {
    let bad = |reason: &str| SilenceError::Problem {
        problem: text.to_string(),
        reason: reason.to_string(),
    };
    if text.is_empty() || text.len() > 256 || text.chars().any(char::is_control) {
        return Err(bad("not a problem (kind or kind:sensor, e.g. thermal:cpu)"));
    }
    let (head, sensor) = match text.split_once(':') {
        Some((h, s)) => (h, Some(s)),
        None => (text, None),
    };
    let of = parse_kind(head).map_err(|_| bad("its kind is not a kind of problem"))?;
    if kind.is_some_and(|k| *k != of) {
        return Err(bad("its kind is not the --kind given"));
    }
    if sensor.is_some_and(str::is_empty) {
        return Err(bad("nothing after the colon"));
    }
    Ok(ProblemKey::new(&of, sensor))
}

impl Silence {
    fn derive_id(&self) -> String {
        let mut h = Sha256::new();
        let parts = [
            self.node.as_str().to_string(),
            self.kind
                .as_ref()
                .map(|k| k.as_str())
                .unwrap_or("")
                .to_string(),
            self.problem
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            self.action.clone().unwrap_or_default(),
            timefmt::format(&self.start),
            timefmt::format(&self.end),
            self.comment.clone(),
            self.by.clone(),
            self.created.timestamp_nanos_opt().unwrap_or(0).to_string(),
            self.every
                .as_ref()
                .map(|e| format!("{} {}", e.cron, e.window_seconds))
                .unwrap_or_default(),
        ];
        for p in parts {
            h.update(p.as_bytes());
            h.update([0u8]);
        }
        format!("s-{}", &hex::encode(h.finalize())[..12])
    }

    /// Whether it holds at `now`: from its start, until its end, and for a
    /// recurring silence inside one of its windows.
    pub fn holds_at(&self, now: Timestamp) -> bool {
        self.start <= now
            && now < self.end
            && self
                .every
                .as_ref()
                .is_none_or(|e| e.window_at(now).is_some())
    }

    /// When it stops holding, seen at `now`: the end of the window holding
    /// (recurring), else its end.
    pub fn holds_until(&self, now: Timestamp) -> Timestamp {
        match self.every.as_ref().and_then(|e| e.window_at(now)) {
            Some((_, end)) => end.min(self.end),
            None => self.end,
        }
    }

    /// When it next begins to hold after `now` (none once it has ended).
    pub fn next_start(&self, now: Timestamp) -> Option<Timestamp> {
        let next = match &self.every {
            None => self.start,
            Some(e) if self.start > now && e.window_at(self.start).is_some() => self.start,
            Some(e) => e.next_after(now.max(self.start))?,
        };
        (next > now && next < self.end).then_some(next)
    }

    /// Whether it has ended at `now`.
    pub fn ended_at(&self, now: Timestamp) -> bool {
        now >= self.end
    }

    /// Whether it covers `action` for `problem` (of `kind`) on `node`,
    /// whatever the time.
    pub fn covers(
        &self,
        node: &NodeName,
        kind: &AlertKind,
        problem: &ProblemKey,
        action: &str,
    ) -> bool {
        self.node == *node
            && self.kind.as_ref().is_none_or(|k| k == kind)
            && self.problem.as_ref().is_none_or(|p| p == problem)
            && self.action.as_deref().is_none_or(|a| a == action)
    }

    /// What it covers, in words (`thermal:cpu on nova`, `every action on nova`).
    pub fn scope(&self) -> String {
        let mut what = Vec::new();
        if let Some(a) = &self.action {
            what.push(a.clone());
        }
        match (&self.problem, &self.kind) {
            (Some(p), _) => what.push(format!("for {p}")),
            (None, Some(k)) => what.push(format!("for {} problems", k.as_str())),
            (None, None) => {}
        }
        let scope = if what.is_empty() {
            format!("every action on {}", self.node)
        } else {
            format!("{} on {}", what.join(" "), self.node)
        };
        match &self.every {
            Some(e) => format!(
                "{scope}, windows `{}` (UTC) of {} s",
                e.cron, e.window_seconds
            ),
            None => scope,
        }
    }

    /// When it holds, in words, seen at `now`.
    pub fn when(&self, now: Timestamp) -> String {
        if self.holds_at(now) {
            return format!("holding until {}", timefmt::format(&self.holds_until(now)));
        }
        match (self.next_start(now), &self.every) {
            (Some(t), None) => format!(
                "from {} to {}",
                timefmt::format(&t),
                timefmt::format(&self.end)
            ),
            (Some(t), Some(_)) => format!(
                "next window from {} (the series ends {})",
                timefmt::format(&t),
                timefmt::format(&self.end)
            ),
            (None, _) => format!("ended {}", timefmt::format(&self.end)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        timefmt::parse(s).unwrap()
    }

    fn spec() -> SilenceSpec {
        SilenceSpec {
            node: NodeName::parse("nova").unwrap(),
            kind: None,
            problem: None,
            action: None,
            start: None,
            end: None,
            duration_seconds: Some(3600),
            every: None,
            comment: "replacing the fan".into(),
            by: "ana".into(),
        }
    }

    #[test]
    fn a_duration_runs_from_the_start_and_the_id_is_stable() {
        let now = t("2026-01-01T10:00:00Z");
        let s = spec().build(now).unwrap();
        assert_eq!(s.start, now);
        assert_eq!(s.end, t("2026-01-01T11:00:00Z"));
        assert!(s.id.starts_with("s-") && s.id.len() == 14, "{}", s.id);
        assert_eq!(s.id, spec().build(now).unwrap().id);
        assert!(s.holds_at(now));
        assert!(!s.holds_at(t("2026-01-01T11:00:00Z")));
        assert!(s.ended_at(t("2026-01-01T11:00:00Z")));
    }

    #[test]
    fn a_later_start_holds_only_from_then() {
        let now = t("2026-01-01T10:00:00Z");
        let mut sp = spec();
        sp.start = Some(t("2026-01-02T02:00:00Z"));
        sp.duration_seconds = Some(4 * 3600);
        let s = sp.build(now).unwrap();
        assert!(!s.holds_at(now));
        assert!(s.holds_at(t("2026-01-02T03:00:00Z")));
        assert!(!s.holds_at(t("2026-01-02T06:00:00Z")));
    }

    #[test]
    fn it_covers_only_what_it_names() {
        let now = t("2026-01-01T10:00:00Z");
        let nova = NodeName::parse("nova").unwrap();
        let lyra = NodeName::parse("lyra").unwrap();
        let cpu = ProblemKey::new(&AlertKind::Thermal, Some("cpu"));
        let srv = ProblemKey::new(&AlertKind::Storage, Some("/srv"));
        let all = spec().build(now).unwrap();
        assert!(all.covers(&nova, &AlertKind::Thermal, &cpu, "throttle_50"));
        assert!(!all.covers(&lyra, &AlertKind::Thermal, &cpu, "throttle_50"));

        let mut sp = spec();
        sp.kind = Some("thermal".into());
        let thermal = sp.build(now).unwrap();
        assert!(thermal.covers(&nova, &AlertKind::Thermal, &cpu, "throttle_50"));
        assert!(!thermal.covers(&nova, &AlertKind::Storage, &srv, "cleanup_temp"));

        let mut sp = spec();
        sp.problem = Some("thermal:cpu".into());
        sp.action = Some("throttle_50".into());
        let one = sp.build(now).unwrap();
        assert!(one.covers(&nova, &AlertKind::Thermal, &cpu, "throttle_50"));
        assert!(!one.covers(&nova, &AlertKind::Thermal, &cpu, "alert_human"));
        assert_eq!(one.scope(), "throttle_50 for thermal:cpu on nova");
    }

    #[test]
    fn bad_silences_are_refused_saying_why() {
        let now = t("2026-01-01T10:00:00Z");
        let refused = |f: &dyn Fn(&mut SilenceSpec)| {
            let mut s = spec();
            f(&mut s);
            s.build(now).unwrap_err()
        };
        assert_eq!(refused(&|s| s.comment = "  ".into()), SilenceError::Comment);
        assert_eq!(refused(&|s| s.by = "a b".into()), SilenceError::By);
        assert_eq!(
            refused(&|s| s.kind = Some("heat".into())),
            SilenceError::Kind("heat".into())
        );
        assert!(matches!(
            refused(&|s| {
                s.kind = Some("storage".into());
                s.problem = Some("thermal:cpu".into());
            }),
            SilenceError::Problem { .. }
        ));
        assert!(matches!(
            refused(&|s| s.problem = Some("thermal:".into())),
            SilenceError::Problem { .. }
        ));
        assert_eq!(
            refused(&|s| s.action = Some("rm_rf".into())),
            SilenceError::Action("rm_rf".into())
        );
        assert_eq!(
            refused(&|s| s.end = Some(t("2026-01-01T12:00:00Z"))),
            SilenceError::EndOrDuration
        );
        assert_eq!(
            refused(&|s| s.duration_seconds = None),
            SilenceError::EndOrDuration
        );
        assert!(matches!(
            refused(&|s| {
                s.duration_seconds = None;
                s.end = Some(t("2026-01-01T09:00:00Z"));
                s.start = Some(t("2026-01-01T08:00:00Z"));
            }),
            SilenceError::EndPassed(_)
        ));
        assert!(matches!(
            refused(&|s| s.duration_seconds = Some(0)),
            SilenceError::EndBeforeStart { .. }
        ));
        assert!(matches!(
            refused(&|s| s.duration_seconds = Some(400 * 24 * 3600)),
            SilenceError::TooLong(_)
        ));
    }

    #[test]
    fn a_recurring_window_holds_inside_its_windows_only() {
        // 2026-03-01 is a Sunday: the first Sunday of March.
        let now = t("2026-02-20T12:00:00Z");
        let mut sp = spec();
        sp.every = Some("0 2 * * SUN#1".into());
        sp.duration_seconds = Some(4 * 3600);
        let s = sp.build(now).unwrap();
        assert_eq!(s.end, now + chrono::Duration::seconds(MAX_SECONDS));
        assert!(!s.holds_at(now));
        assert_eq!(s.next_start(now), Some(t("2026-03-01T02:00:00Z")));
        assert!(!s.holds_at(t("2026-03-01T01:59:59Z")));
        assert!(s.holds_at(t("2026-03-01T02:00:00Z")));
        assert!(s.holds_at(t("2026-03-01T05:59:59Z")));
        assert_eq!(
            s.holds_until(t("2026-03-01T03:00:00Z")),
            t("2026-03-01T06:00:00Z")
        );
        assert!(!s.holds_at(t("2026-03-01T06:00:00Z")));
        assert!(!s.holds_at(t("2026-03-08T03:00:00Z")), "the second Sunday");
        assert!(
            s.holds_at(t("2026-04-05T03:00:00Z")),
            "April's first Sunday"
        );
        assert!(s
            .when(t("2026-03-01T03:00:00Z"))
            .starts_with("holding until"));
        assert!(s.when(now).starts_with("next window from 2026-03-01T02:00"));
    }

    #[test]
    fn a_bad_recurrence_is_refused() {
        let now = t("2026-01-01T10:00:00Z");
        let mut sp = spec();
        sp.every = Some("0 2 * *".into());
        assert!(matches!(sp.build(now), Err(SilenceError::Every { .. })));
        sp.every = Some("0 25 * * *".into());
        assert!(matches!(sp.build(now), Err(SilenceError::Every { .. })));
        sp.every = Some("0 0 2 * * *".into());
        assert!(matches!(sp.build(now), Err(SilenceError::Every { .. })));
        sp.every = Some("0 2 * * *".into());
        sp.duration_seconds = None;
        assert_eq!(sp.build(now), Err(SilenceError::WindowLength));
        sp.duration_seconds = Some(40 * 24 * 3600);
        assert!(matches!(sp.build(now), Err(SilenceError::WindowTooLong(_))));
    }

    #[test]
    fn a_spec_with_an_unknown_field_is_refused() {
        let err = serde_json::from_str::<SilenceSpec>(
            r#"{"node":"nova","comment":"x","by":"y","duration_seconds":60,"nodes":"all"}"#,
        );
        assert!(err.is_err());
    }
}
