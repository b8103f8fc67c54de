//! Term fencing: the highest coordinator term this agent has seen.
//!
//! Every command of a coordinator that holds a term carries it
//! ([`skos_core::protocol::Command::term`]). The agent remembers the highest
//! one, in `term-<node>` in its state dir (written atomically before a
//! command of a new, higher term is carried out; in memory only without a
//! state dir), and refuses commands of a lower term, so a deposed leader
//! cannot act. Once a term has been seen, a command without one is refused
//! too; before that (embedded mode, older coordinators) it is accepted.

use skos_core::escape::ShowPath;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// What the fence says of a command's term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Carry it out; `Some(term)`: a new highest term, to record first.
    Accept(Option<u64>),
    /// Refuse it, for this reason.
    Refuse(String),
}

/// Judge a command's `term` against the highest term seen.
pub(crate) fn judge(highest: Option<u64>, term: Option<u64>) -> Verdict {
    match (highest, term) {
        (None, None) => Verdict::Accept(None),
        (Some(h), None) => Verdict::Refuse(format!(
            "command carries no term: a coordinator of term {h} has spoken"
        )),
        (Some(h), Some(t)) if t < h => Verdict::Refuse(format!(
            "stale term {t}: a coordinator of term {h} has spoken"
        )),
        (Some(h), Some(t)) if t == h => Verdict::Accept(None),
        (_, Some(t)) => Verdict::Accept(Some(t)),
    }
}

/// The highest term seen, and where it is kept.
#[derive(Debug)]
pub(crate) struct Fence {
    highest: Option<u64>,
    file: Option<PathBuf>,
}

impl Fence {
    /// Read the recorded term from `file` (missing: none seen yet). A file
    /// that cannot be read or holds no term is an error: starting without
    /// it would let a deposed coordinator act again.
    pub(crate) fn load(file: Option<PathBuf>) -> Result<Self> {
        let highest = match &file {
            Some(p) => read_term(p)?,
            None => None,
        };
        if let (Some(t), Some(p)) = (highest, &file) {
            tracing::info!(term = t, path = %p.escaped(), "highest coordinator term seen");
        }
        Ok(Self { highest, file })
    }

    /// The highest term seen.
    pub(crate) fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// A command of a new, higher `term` arrived: record it (on disk
    /// first). A failed write is logged and the term kept in memory: this
    /// process stays fenced, a restarted one would not be.
    pub(crate) fn raise(&mut self, term: u64) {
        if self.highest.is_some_and(|h| h >= term) {
            return;
        }
        if let Some(p) = &self.file {
            if let Err(e) = super::write_atomic(p, format!("{term}\n").as_bytes()) {
                tracing::error!(path = %p.escaped(), term, error = %e, "cannot record the coordinator term; kept in memory only");
            }
        }
        tracing::info!(term, previous = ?self.highest, "a coordinator of a new term has spoken");
        self.highest = Some(term);
    }
}

fn read_term(path: &Path) -> Result<Option<u64>> {
    let text = match skos_fs::read_nofollow(path)? {
        Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        None => return Ok(None),
    };
    text.trim()
        .parse::<u64>()
        .map(Some)
        .map_err(|e| Error::Parse {
            path: path.to_path_buf(),
            text: text.chars().take(64).collect(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_terms() {
        assert_eq!(judge(None, None), Verdict::Accept(None));
        assert_eq!(judge(None, Some(3)), Verdict::Accept(Some(3)));
        assert_eq!(judge(Some(3), Some(3)), Verdict::Accept(None));
        assert_eq!(judge(Some(3), Some(5)), Verdict::Accept(Some(5)));
        assert_eq!(
            judge(Some(5), Some(3)),
            Verdict::Refuse("stale term 3: a coordinator of term 5 has spoken".into())
        );
        assert_eq!(
            judge(Some(5), None),
            Verdict::Refuse("command carries no term: a coordinator of term 5 has spoken".into())
        );
        assert_eq!(judge(Some(0), Some(0)), Verdict::Accept(None));
    }

    #[test]
    fn the_term_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("term-nova");
        let mut f = Fence::load(Some(path.clone())).unwrap();
        assert_eq!(f.highest(), None);
        f.raise(4);
        f.raise(2);
        assert_eq!(f.highest(), Some(4));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4\n");
        assert_eq!(Fence::load(Some(path.clone())).unwrap().highest(), Some(4));
        // No temp file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["term-nova"]);
    }

    #[test]
    fn an_unreadable_term_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("term-nova");
        std::fs::write(&path, "seven\n").unwrap();
        assert!(matches!(Fence::load(Some(path)), Err(Error::Parse { .. })));
        let mut mem = Fence::load(None).unwrap();
        mem.raise(9);
        assert_eq!(mem.highest(), Some(9));
    }
}
