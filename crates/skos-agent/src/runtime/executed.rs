//! The executed action ids: what makes a command run at most once, and what
//! answers a command delivered again with the outcome it really had.
//!
//! Each id is kept until its window ends (its command's deadline, or the
//! replay window) and with its outcome once known. With a state dir the
//! record is an append-only file, `executed-<node>.log`, one line per
//! event:
//!
//! ```text
//! action_id<TAB>until                          started (outcome unknown)
//! action_id<TAB>until<TAB>status<TAB>message   finished
//! ```
//!
//! The message is escaped (`\\`, `\t`, `\n`, `\r`) so a line stays a line.
//! Logs of older versions (`action_id<TAB>until`, or a bare `action_id`)
//! still load; their outcome is unknown. A later line for an id replaces
//! what an earlier one said. Ids past their window are dropped from memory
//! while the agent runs ([`Executed::prune`]), and the file is rewritten
//! without them (temp file, fsync, rename) once more than half of its lines
//! are stale.

use skos_core::escape::ShowPath;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use skos_core::protocol::ResultStatus;

use crate::Outcome;

/// The longest message kept for an outcome, in bytes.
const MAX_MESSAGE: usize = 4096;

/// What is known of an executed action.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum State {
    /// Started by this process and not finished yet: its job will answer.
    Running,
    /// Finished, with its outcome.
    Done {
        status: ResultStatus,
        message: String,
    },
    /// Started, outcome unknown: the agent stopped while it ran, or the
    /// record comes from an older version.
    Unknown,
}

/// One executed action id.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    /// Unix seconds until which its command could still be delivered.
    pub until: i64,
    pub state: State,
    /// Lines of the file that speak of it.
    lines: usize,
}

/// One line of the file, parsed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Line {
    pub id: String,
    pub until: i64,
    pub outcome: Option<(ResultStatus, String)>,
}

/// What a file's text holds, as of `now`.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Loaded {
    pub entries: HashMap<String, Entry>,
    /// Lines in the text.
    pub lines: usize,
    /// Lines that speak of no remembered id (past their window, unreadable).
    pub stale: usize,
}

/// The executed ids, in memory and (with a state dir) on disk.
#[derive(Debug)]
pub(crate) struct Executed {
    entries: HashMap<String, Entry>,
    file: Option<PathBuf>,
    /// Lines in the file.
    lines: usize,
    /// Of those, lines about ids no longer remembered.
    stale: usize,
}

impl Executed {
    /// Load the record from `file` (missing: empty), dropping ids past their
    /// window. `None` keeps it in memory only.
    pub(crate) fn load(file: Option<PathBuf>, now: i64) -> Self {
        let loaded = match file.as_deref().map(skos_fs::read_nofollow) {
            Some(Ok(Some(bytes))) => load(&String::from_utf8_lossy(&bytes), now),
            Some(Err(e)) => {
                if let Some(p) = &file {
                    tracing::warn!(path = %p.escaped(), error = %e, "cannot read the executed action ids; starting without them");
                }
                Loaded::default()
            }
            _ => Loaded::default(),
        };
        let mut executed = Self {
            entries: loaded.entries,
            file,
            lines: loaded.lines,
            stale: loaded.stale,
        };
        executed.compact_if_stale();
        executed
    }

    /// What is known of `id`, if it was executed within its window.
    pub(crate) fn get(&self, id: &str) -> Option<&State> {
        self.entries.get(id).map(|e| &e.state)
    }

    /// How many ids are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// An action starts: remember it (on disk first) until `until`.
    pub(crate) fn begin(&mut self, id: &str, until: i64) {
        let written = self.append(&render_line(id, until, None));
        let entry = self.entries.entry(id.to_string()).or_insert(Entry {
            until,
            state: State::Running,
            lines: 0,
        });
        entry.until = until;
        entry.state = State::Running;
        entry.lines += usize::from(written);
    }

    /// An action finished: keep its outcome (on disk first) for a command
    /// delivered again.
    pub(crate) fn finish(&mut self, id: &str, outcome: &Outcome) {
        let Some(until) = self.entries.get(id).map(|e| e.until) else {
            tracing::warn!(action_id = %id, "finished action was not recorded as started");
            return;
        };
        let message = truncate(&outcome.message, MAX_MESSAGE).to_string();
        let written = self.append(&render_line(
            id,
            until,
            Some((outcome.status, message.as_str())),
        ));
        if let Some(entry) = self.entries.get_mut(id) {
            entry.state = State::Done {
                status: outcome.status,
                message,
            };
            entry.lines += usize::from(written);
        }
    }

    /// Forget ids past their window (never a running one: its job still
    /// answers), and rewrite the file when more than half of it is stale.
    /// Returns how many were forgotten.
    pub(crate) fn prune(&mut self, now: i64) -> usize {
        let (dropped, lines) = prune(&mut self.entries, now);
        self.stale += lines;
        if dropped > 0 {
            tracing::debug!(
                dropped,
                remembered = self.entries.len(),
                "executed action ids past their window forgotten"
            );
        }
        self.compact_if_stale();
        dropped
    }

    fn compact_if_stale(&mut self) {
        if !should_compact(self.lines, self.stale) {
            return;
        }
        let Some(path) = self.file.clone() else {
            return;
        };
        let text = render(&self.entries);
        match super::write_atomic(&path, text.as_bytes()) {
            Ok(()) => {
                tracing::info!(path = %path.escaped(), lines_before = self.lines, lines = self.entries.len(), "executed action ids compacted");
                self.lines = self.entries.len();
                self.stale = 0;
                for e in self.entries.values_mut() {
                    e.lines = 1;
                }
            }
            Err(e) => {
                tracing::warn!(path = %path.escaped(), error = %e, "cannot compact the executed action ids; kept as they are");
            }
        }
    }

    /// Append a line to the file (fsynced); whether it was written.
    fn append(&mut self, line: &str) -> bool {
        let Some(p) = &self.file else {
            return false;
        };
        match append_line(p, line) {
            Ok(()) => {
                self.lines += 1;
                true
            }
            Err(e) => {
                tracing::warn!(path = %p.escaped(), error = %e, "cannot record executed action id");
                false
            }
        }
    }
}

/// Appends through the private state dir's handle, never through a
/// symlink, to a file created 0600 ([`skos_fs::append_private`]).
fn append_line(path: &Path, line: &str) -> skos_fs::Result<()> {
    let mut f = skos_fs::append_private(path)?;
    writeln!(f, "{line}")
        .and_then(|()| f.sync_data())
        .map_err(|source| skos_fs::Error::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Parse one line; `None` for an empty or unreadable one. A bare id (the
/// oldest format) or an unreadable time is kept for ever.
pub(crate) fn parse_line(line: &str) -> Option<Line> {
    let mut cols = line.splitn(4, '\t');
    let id = cols.next().filter(|id| !id.is_empty())?;
    let until = cols
        .next()
        .map_or(i64::MAX, |t| t.trim().parse().unwrap_or(i64::MAX));
    let outcome = match (cols.next(), cols.next()) {
        (Some(status), Some(message)) => Some((parse_status(status)?, unescape(message))),
        (Some(_), None) => return None,
        _ => None,
    };
    Some(Line {
        id: id.to_string(),
        until,
        outcome,
    })
}

/// The record a file's text holds as of `now`: later lines for an id
/// replace what earlier ones said; ids past their window are left out.
pub(crate) fn load(text: &str, now: i64) -> Loaded {
    let mut out = Loaded::default();
    for raw in text.lines() {
        out.lines += 1;
        let Some(line) = parse_line(raw) else {
            out.stale += 1;
            continue;
        };
        let entry = out.entries.entry(line.id).or_insert(Entry {
            until: line.until,
            state: State::Unknown,
            lines: 0,
        });
        entry.until = line.until;
        entry.lines += 1;
        if let Some((status, message)) = line.outcome {
            entry.state = State::Done { status, message };
        }
    }
    // Nothing loaded is running: its job died with the process before.
    let (_, lines) = prune(&mut out.entries, now);
    out.stale += lines;
    out
}

/// Drop entries whose window ended before `now`, except running ones.
/// Returns (entries dropped, their lines in the file).
pub(crate) fn prune(entries: &mut HashMap<String, Entry>, now: i64) -> (usize, usize) {
    let mut dropped = 0;
    let mut lines = 0;
    entries.retain(|_, e| {
        let keep = e.until >= now || e.state == State::Running;
        if !keep {
            dropped += 1;
            lines += e.lines;
        }
        keep
    });
    (dropped, lines)
}

/// Whether a file of `lines` lines, `stale` of them about forgotten ids,
/// should be rewritten: when more than half of it is stale.
pub(crate) fn should_compact(lines: usize, stale: usize) -> bool {
    stale > 0 && stale.saturating_mul(2) > lines
}

/// The compacted file: one line per remembered id, sorted by id.
pub(crate) fn render(entries: &HashMap<String, Entry>) -> String {
    let mut ids: Vec<&String> = entries.keys().collect();
    ids.sort();
    let mut text = String::new();
    for id in ids {
        let Some(e) = entries.get(id) else { continue };
        let outcome = match &e.state {
            State::Done { status, message } => Some((*status, message.as_str())),
            State::Running | State::Unknown => None,
        };
        text.push_str(&render_line(id, e.until, outcome));
        text.push('\n');
    }
    text
}

fn render_line(id: &str, until: i64, outcome: Option<(ResultStatus, &str)>) -> String {
    match outcome {
        Some((status, message)) => {
            format!("{id}\t{until}\t{}\t{}", status.as_str(), escape(message))
        }
        None => format!("{id}\t{until}"),
    }
}

fn parse_status(s: &str) -> Option<ResultStatus> {
    ResultStatus::ALL.into_iter().find(|st| st.as_str() == s)
}

/// `\`, tab, newline and carriage return as two-character escapes.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// The inverse of [`escape`]; an unknown escape is kept as it is.
pub(crate) fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// At most `max` bytes of `s`, cut on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(status: ResultStatus, message: &str) -> State {
        State::Done {
            status,
            message: message.into(),
        }
    }

    #[test]
    fn parses_every_format() {
        assert_eq!(
            parse_line("a\t100"),
            Some(Line {
                id: "a".into(),
                until: 100,
                outcome: None
            })
        );
        assert_eq!(
            parse_line("a\t100\tsucceeded\tcapped at 50 %\\n2 policies"),
            Some(Line {
                id: "a".into(),
                until: 100,
                outcome: Some((ResultStatus::Succeeded, "capped at 50 %\n2 policies".into()))
            })
        );
        // The oldest format: a bare id, kept for ever.
        assert_eq!(parse_line("legacy").map(|l| l.until), Some(i64::MAX));
        assert_eq!(parse_line("x\tnot-a-time").map(|l| l.until), Some(i64::MAX));
        assert_eq!(parse_line(""), None);
        assert_eq!(
            parse_line("a\t1\tsucceeded"),
            None,
            "a status without message"
        );
        assert_eq!(parse_line("a\t1\tmaybe\tmsg"), None, "an unknown status");
        assert_eq!(
            parse_line("a\t1\tfailed\t").and_then(|l| l.outcome),
            Some((ResultStatus::Failed, String::new()))
        );
    }

    #[test]
    fn escapes_round_trip() {
        for s in ["", "plain", "a\tb\nc\rd\\e", "\\n is not a newline", "é\t€"] {
            assert_eq!(unescape(&escape(s)), s);
            assert!(!escape(s).contains(['\t', '\n', '\r']));
        }
        assert_eq!(unescape("odd \\q and end \\"), "odd \\q and end \\");
    }

    #[test]
    fn later_lines_win_and_old_windows_are_dropped() {
        let text = "a\t100\nb\t50\nlegacy\n\nc\t100\na\t100\tfailed\tno cpufreq\nd\t40\td\tx\n";
        let l = load(text, 60);
        assert_eq!(l.lines, 7);
        assert_eq!(
            l.entries["a"].state,
            done(ResultStatus::Failed, "no cpufreq")
        );
        assert_eq!(l.entries["c"].state, State::Unknown);
        assert_eq!(l.entries["legacy"].state, State::Unknown);
        assert!(!l.entries.contains_key("b"));
        assert_eq!(l.entries.len(), 3);
        // b (1 line), the empty line, the unreadable d line.
        assert_eq!(l.stale, 3);
    }

    #[test]
    fn prune_keeps_running_and_live_ids() {
        let mut m = HashMap::new();
        let e = |until, state| Entry {
            until,
            state,
            lines: 2,
        };
        m.insert("old".to_string(), e(10, done(ResultStatus::Succeeded, "")));
        m.insert("old-unknown".to_string(), e(10, State::Unknown));
        m.insert("running".to_string(), e(10, State::Running));
        m.insert("live".to_string(), e(100, done(ResultStatus::Failed, "")));
        assert_eq!(prune(&mut m, 50), (2, 4));
        let mut left: Vec<_> = m.keys().cloned().collect();
        left.sort();
        assert_eq!(left, ["live", "running"]);
        assert_eq!(prune(&mut m, 50), (0, 0));
    }

    #[test]
    fn compacts_when_more_than_half_is_stale() {
        assert!(!should_compact(0, 0));
        assert!(!should_compact(10, 0));
        assert!(!should_compact(10, 5));
        assert!(should_compact(10, 6));
        assert!(should_compact(1, 1));
    }

    #[test]
    fn render_then_load_is_the_same_record() {
        let l = load(
            "b\t100\tsucceeded\tok\tall\na\t90\nc\t100\nc\t100\trejected\tno\n",
            0,
        );
        let text = render(&l.entries);
        assert_eq!(
            text,
            "a\t90\nb\t100\tsucceeded\tok\\tall\nc\t100\trejected\tno\n"
        );
        let again = load(&text, 0);
        for (id, e) in &l.entries {
            assert_eq!(again.entries[id].state, e.state);
            assert_eq!(again.entries[id].until, e.until);
        }
        assert_eq!(again.stale, 0);
    }

    #[test]
    fn the_file_is_kept_and_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("executed-nova.log");
        let mut x = Executed::load(Some(path.clone()), 0);
        x.begin("a", 100);
        x.begin("b", 20);
        x.finish("a", &Outcome::new(ResultStatus::Succeeded, "done\tfine"));
        x.finish("b", &Outcome::new(ResultStatus::Failed, "no"));
        x.begin("c", 20);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 5);
        let again = Executed::load(Some(path.clone()), 0);
        assert_eq!(
            again.get("a"),
            Some(&done(ResultStatus::Succeeded, "done\tfine"))
        );
        assert_eq!(again.get("b"), Some(&done(ResultStatus::Failed, "no")));
        // c was running when "the agent stopped": its outcome is unknown.
        assert_eq!(again.get("c"), Some(&State::Unknown));

        // b's window ends: 2 of 5 lines stale, no rewrite yet.
        assert_eq!(x.prune(30), 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 5);
        assert_eq!(x.get("c"), Some(&State::Running), "running ids stay");
        x.finish("c", &Outcome::new(ResultStatus::Succeeded, "ok"));
        // c ends too: 4 of 6 lines stale, rewritten with a alone.
        assert_eq!(x.prune(30), 1);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "a\t100\tsucceeded\tdone\\tfine\n"
        );
        assert_eq!(x.len(), 1);
        x.begin("d", 200);
        let again = Executed::load(Some(path), 0);
        assert_eq!(again.len(), 2);
        assert_eq!(again.get("d"), Some(&State::Unknown));
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let s = "é".repeat(MAX_MESSAGE);
        let t = truncate(&s, MAX_MESSAGE + 1);
        assert_eq!(t.len(), MAX_MESSAGE);
        assert_eq!(truncate("short", 10), "short");
    }
}
