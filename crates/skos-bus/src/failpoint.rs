//! Kill points: a test hook for crash-safety tests.
//!
//! [`hit`] marks a point between two steps of the coordinator's work (the
//! engine decided, the state is written, the effects are published, the
//! audit records are written; `alert.persisted_ahead`: a batch's state is
//! written while the batch before it is not yet published;
//! `alert.published_ahead`: a batch's effects are published while the batch
//! before it is not yet audited) or of an audit file's rotation
//! (`audit.segment_written`, `audit.sealed`: after the segment is in place,
//! after its seal is recorded). When the environment variable
//! `SKOS_FAILPOINT` names that point, the process aborts there, as
//! abruptly as a SIGKILL, after logging which point fired:
//!
//! * `SKOS_FAILPOINT=alert.persisted`: at the first time the point is hit;
//! * `SKOS_FAILPOINT=alert.persisted:3`: at its third hit;
//! * `SKOS_FAILPOINT=panic@alert.persisted`: panics there instead (a bug in
//!   a task), to test that a panic ends the process.
//!
//! The variable is read once, at the first hit. Unset (or naming another
//! point) it is inert: a hit costs one comparison. A value that is not a
//! name with an optional positive count is ignored, with a warning.
//!
//! [`stall`] marks a point where a test may make the coordinator wait, so
//! that an interleaving the machine's speed would otherwise decide happens
//! every time (`alert.appending`: a batch told the next one it published
//! and is about to append its audit records; `alert.publishing`: a batch's
//! state is written and its effects are about to be published).
//! `SKOS_FAILPOINT_STALL=alert.appending=300,alert.publishing=50` makes
//! each pass through those points wait that many milliseconds. Unset it
//! costs one check; an entry that is not `<name>=<ms>` is ignored, with a
//! warning.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable naming the point to abort at.
pub const ENV: &str = "SKOS_FAILPOINT";

/// The environment variable naming the points to wait at, and how long.
pub const STALL_ENV: &str = "SKOS_FAILPOINT_STALL";

/// A point to abort at: its name and on which hit (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The point's name, as passed to [`hit`].
    pub name: String,
    /// Abort on this hit of the point (the first is 1).
    pub nth: u64,
    /// Panic there instead of aborting.
    pub panic: bool,
}

/// Why a `SKOS_FAILPOINT` value names no point.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Nothing before the `:`.
    #[error("no point name")]
    NoName,
    /// The count after the `:` is not a positive integer.
    #[error("hit count {0:?} is not a positive integer")]
    BadCount(String),
    /// The name holds characters no point's name has (letters, digits,
    /// `.`, `_`, `-` only).
    #[error("point name {0:?} holds characters no point's name has")]
    BadName(String),
}

/// Parse `<name>` or `<name>:<n>` (`n` ≥ 1; default 1). Surrounding
/// whitespace is ignored.
pub fn parse(value: &str) -> Result<Spec, SpecError> {
    let value = value.trim();
    let (panic, value) = match value.strip_prefix("panic@") {
        Some(rest) => (true, rest.trim()),
        None => (false, value),
    };
    let (name, nth) = match value.rsplit_once(':') {
        Some((name, n)) => {
            let nth = n
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| SpecError::BadCount(n.to_string()))?;
            (name.trim(), nth)
        }
        None => (value, 1),
    };
    if name.is_empty() {
        return Err(SpecError::NoName);
    }
    if !point_name(name) {
        return Err(SpecError::BadName(name.to_string()));
    }
    Ok(Spec {
        name: name.to_string(),
        nth,
        panic,
    })
}

struct Armed {
    spec: Spec,
    hits: AtomicU64,
}

impl Armed {
    /// Count a hit of `name`; true when it is the hit to abort at.
    fn fires(&self, name: &str) -> bool {
        name == self.spec.name && self.hits.fetch_add(1, Ordering::SeqCst) + 1 == self.spec.nth
    }
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let value = env_text(ENV)?;
            if value.trim().is_empty() {
                return None;
            }
            match parse(&value) {
                Ok(spec) => {
                    tracing::warn!(point = %spec.name, hit = spec.nth, "{ENV} armed: the process will abort there");
                    Some(Armed {
                        spec,
                        hits: AtomicU64::new(0),
                    })
                }
                Err(e) => {
                    tracing::warn!(value = ?value, error = %e, "{ENV} ignored");
                    None
                }
            }
        })
        .as_ref()
}

/// A kill point: aborts the process (`std::process::abort`) when
/// `SKOS_FAILPOINT` names `name` and this is the hit it counts to; does
/// nothing otherwise.
pub fn hit(name: &'static str) {
    let Some(armed) = armed() else {
        return;
    };
    if armed.fires(name) {
        tracing::error!(
            point = name,
            hit = armed.spec.nth,
            "{ENV}: aborting at this point"
        );
        if armed.spec.panic {
            panic!("{ENV}: panicking at {name} (hit {})", armed.spec.nth);
        }
        eprintln!("{ENV}: aborting at {name} (hit {})", armed.spec.nth);
        std::process::abort();
    }
}

/// Parse `SKOS_FAILPOINT_STALL`: comma-separated `<name>=<ms>` entries
/// (whitespace ignored, empty entries skipped). The entries that are not
/// of that shape come back apart, as written, with the waits of the rest.
pub fn parse_stalls(value: &str) -> (BTreeMap<String, Duration>, Vec<String>) {
    let mut stalls = BTreeMap::new();
    let mut bad = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let parsed = entry.split_once('=').and_then(|(name, ms)| {
            let name = name.trim();
            let ms = ms.trim().parse::<u64>().ok()?;
            point_name(name).then(|| (name.to_string(), Duration::from_millis(ms)))
        });
        match parsed {
            Some((name, wait)) => {
                stalls.insert(name, wait);
            }
            None => bad.push(entry.to_string()),
        }
    }
    (stalls, bad)
}

/// Whether `name` can name a point: letters, digits, `.`, `_` and `-`
/// (as every point's name is), so that no name puts control characters
/// in the log.
fn point_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The environment variable `var`, as text; `None` when unset. One that
/// is not UTF-8 is warned about, and read with its bad bytes replaced (so
/// its other entries still count).
fn env_text(var: &str) -> Option<String> {
    let raw = std::env::var_os(var)?;
    Some(match raw.into_string() {
        Ok(text) => text,
        Err(raw) => {
            tracing::warn!(value = ?raw, "{var} is not UTF-8: its bad bytes are read as U+FFFD");
            raw.to_string_lossy().into_owned()
        }
    })
}

fn stalls() -> &'static BTreeMap<String, Duration> {
    static STALLS: OnceLock<BTreeMap<String, Duration>> = OnceLock::new();
    STALLS.get_or_init(|| {
        let Some(value) = env_text(STALL_ENV) else {
            return BTreeMap::new();
        };
        let (stalls, bad) = parse_stalls(&value);
        for entry in bad {
            tracing::warn!(entry = ?entry, "{STALL_ENV} entry ignored: not <point>=<milliseconds>");
        }
        for (point, wait) in &stalls {
            tracing::warn!(point = %point, wait_ms = wait.as_millis(), "{STALL_ENV} armed: each pass waits there");
        }
        stalls
    })
}

/// A point to wait at: waits as long as `SKOS_FAILPOINT_STALL` says for
/// `name` (without blocking the runtime's thread); returns at once
/// otherwise.
pub async fn stall(name: &'static str) {
    if let Some(wait) = stalls().get(name) {
        tokio::time::sleep(*wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalls_name_a_point_and_milliseconds() {
        let (stalls, bad) =
            parse_stalls(" alert.appending=300, ,alert.publishing = 5,x,=3,y=z,w=-1");
        assert_eq!(
            stalls.into_iter().collect::<Vec<_>>(),
            vec![
                ("alert.appending".to_string(), Duration::from_millis(300)),
                ("alert.publishing".to_string(), Duration::from_millis(5)),
            ]
        );
        assert_eq!(bad, ["x", "=3", "y=z", "w=-1"]);
        assert_eq!(parse_stalls(""), (BTreeMap::new(), vec![]));
        // Names no point has (a control character would reach the log).
        let (stalls, bad) =
            parse_stalls("\u{1b}[31mRED=1,a\u{0}b=2,\u{1f600}=3,ok.one=4,\u{fffd}=5");
        assert_eq!(stalls.keys().collect::<Vec<_>>(), ["ok.one"]);
        assert_eq!(bad.len(), 4);
        assert_eq!(
            parse("\u{1b}[31mRED:2"),
            Err(SpecError::BadName("\u{1b}[31mRED".into()))
        );
    }

    #[test]
    fn a_name_alone_fires_on_the_first_hit() {
        assert_eq!(
            parse("alert.persisted"),
            Ok(Spec {
                name: "alert.persisted".into(),
                nth: 1,
                panic: false
            })
        );
        assert!(parse("panic@alert.persisted:2")
            .is_ok_and(|s| s.panic && s.nth == 2 && s.name == "alert.persisted"));
        assert_eq!(parse("  tick.persisted \n").unwrap().name, "tick.persisted");
    }

    #[test]
    fn a_count_picks_the_nth_hit() {
        assert_eq!(
            parse("result.audited:3"),
            Ok(Spec {
                name: "result.audited".into(),
                nth: 3,
                panic: false
            })
        );
        assert_eq!(parse("a: 2").unwrap().nth, 2);
    }

    #[test]
    fn bad_values_name_no_point() {
        assert_eq!(parse(""), Err(SpecError::NoName));
        assert_eq!(parse(":2"), Err(SpecError::NoName));
        assert_eq!(parse("a:0"), Err(SpecError::BadCount("0".into())));
        assert_eq!(parse("a:"), Err(SpecError::BadCount("".into())));
        assert_eq!(parse("a:-1"), Err(SpecError::BadCount("-1".into())));
        assert_eq!(parse("a:x"), Err(SpecError::BadCount("x".into())));
    }

    #[test]
    fn only_the_named_point_counts_and_fires_once() {
        let armed = Armed {
            spec: parse("alert.audited:2").unwrap(),
            hits: AtomicU64::new(0),
        };
        assert!(!armed.fires("alert.persisted"));
        assert!(!armed.fires("alert.audited"));
        assert!(!armed.fires("result.audited"));
        assert!(armed.fires("alert.audited"));
        assert!(!armed.fires("alert.audited"));
    }
}
