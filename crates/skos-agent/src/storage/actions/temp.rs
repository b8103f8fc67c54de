//! `cleanup_temp`: regular files older than `temp.max_age` in `temp.dirs`
//! are deleted, oldest first in each dir; directories that were old and that
//! the deletions left empty go too (never a configured dir itself).

use std::time::Duration;

use skos_core::config::StorageConfig;

use super::walk::{Candidate, Root};
use super::{age, age_limit, open_roots, Deleted, Report, Run, RunCtx};
use crate::Result;

pub fn cleanup_temp(cfg: &StorageConfig, ctx: &RunCtx) -> Result<Report> {
    let max_age = age_limit("storage.temp.max_age", cfg.temp.max_age)?;
    let mut run = Run::new("cleanup_temp", ctx);
    let mut roots = open_roots(&mut run, &cfg.temp.dirs, &cfg.allowed_roots);
    for (root, idx) in roots.iter_mut() {
        if run.stopped() {
            break;
        }
        let mut old = old_temp_files(&mut run, root, max_age);
        old.sort_by_key(|c| c.mtime);
        for c in &old {
            if run.delete(root, c, *idx) == Deleted::Cap {
                break;
            }
        }
        if !ctx.dry_run {
            root.prune_empty_dirs();
        }
    }
    Ok(run.finish())
}

/// Regular files in one temp root older than `max_age`.
pub(crate) fn old_temp_files(
    run: &mut Run<'_, '_>,
    root: &mut Root,
    max_age: Duration,
) -> Vec<Candidate> {
    let now = run.ctx.now;
    let mut out = Vec::new();
    root.walk(run, Some(max_age), |_, c| {
        if age(now, c.mtime) > max_age {
            out.push(c);
        }
    });
    out
}
