//! `emergency_cleanup`: the other actions with the emergency ages, largest
//! files first, stopping as soon as usage is under the critical level.
//!
//! 1. Usage is checked first: already under `stop_below`, nothing is done.
//! 2. Deletions, largest first across all temp and log dirs: temp files
//!    older than `temp.emergency_max_age`; compressed logs and rotated,
//!    uncompressed ones older than `logs.emergency_retention`. Usage is
//!    checked after every deletion.
//! 3. Still above: archiving, largest first across all archive dirs, of
//!    files older than `archive.emergency_older_than`, in batches (each batch
//!    one verified archive per dir, as `archive_old` writes them), usage
//!    checked after every original deleted. An archive that cannot be made
//!    (no destination, same filesystem, destination full) stops this step
//!    and says why; what the deletions freed stays reported.
//!
//! In a dry run, usage cannot fall: everything the run would consider is
//! listed (within the cap).

use std::collections::HashSet;

use skos_core::config::StorageConfig;

use super::archive::{archive_batch, choose, old_files, prepare};
use super::logs::{remove_partials, scan};
use super::temp::old_temp_files;
use super::walk::Candidate;
use super::{age, age_limit, open_roots, Deleted, Report, Run, RunCtx};
use crate::Result;

/// Most files in one emergency archive batch...
const BATCH_FILES: usize = 256;
/// ...and most bytes.
const BATCH_BYTES: u64 = 1 << 30;

/// Whether usage is under `stop_below` now (and if so, stops the run).
struct UsageCheck {
    unknown_noted: bool,
}

impl UsageCheck {
    fn under(&mut self, run: &mut Run<'_, '_>) -> bool {
        match (run.ctx.usage)() {
            Some(u) if u < run.ctx.stop_below => {
                run.stop(format!(
                    "usage {u:.1}% is under critical {}%",
                    run.ctx.stop_below
                ));
                true
            }
            Some(_) => false,
            None => {
                if !self.unknown_noted {
                    self.unknown_noted = true;
                    run.note(
                        "usage unknown: cleaning without a usage check (the cap still applies)",
                    );
                }
                false
            }
        }
    }
}

pub fn emergency_cleanup(cfg: &StorageConfig, ctx: &RunCtx) -> Result<Report> {
    let temp_age = age_limit("storage.temp.emergency_max_age", cfg.temp.emergency_max_age)?;
    let log_age = age_limit(
        "storage.logs.emergency_retention",
        cfg.logs.emergency_retention,
    )?;
    let arch_age = age_limit(
        "storage.archive.emergency_older_than",
        cfg.archive.emergency_older_than,
    )?;
    let mut run = Run::new("emergency_cleanup", ctx);
    let mut usage = UsageCheck {
        unknown_noted: false,
    };
    if usage.under(&mut run) {
        return Ok(run.finish());
    }

    // Deletions: temp and logs, largest first.
    let mut roots = open_roots(&mut run, &cfg.temp.dirs, &cfg.allowed_roots);
    let temp_count = roots.len();
    roots.extend(open_roots(&mut run, &cfg.logs.dirs, &cfg.allowed_roots));
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut candidates: Vec<(usize, Candidate)> = Vec::new();
    for (ri, (root, _)) in roots.iter_mut().enumerate() {
        let found = if ri < temp_count {
            old_temp_files(&mut run, root, temp_age)
        } else {
            let logs = scan(&mut run, root);
            remove_partials(&mut run, root, &logs.partials);
            logs.rotated
                .into_iter()
                .chain(logs.compressed)
                .filter(|c| age(ctx.now, c.mtime) > log_age)
                .collect()
        };
        for c in found {
            if seen.insert((c.dev, c.ino)) {
                candidates.push((ri, c));
            }
        }
    }
    candidates.sort_by(|(_, a), (_, b)| b.size.cmp(&a.size).then(a.mtime.cmp(&b.mtime)));
    for (ri, c) in &candidates {
        let Some((root, idx)) = roots.get_mut(*ri) else {
            continue;
        };
        match run.delete(root, c, *idx) {
            Deleted::Cap => break,
            Deleted::Yes if !ctx.dry_run && usage.under(&mut run) => break,
            _ => {}
        }
    }
    if !ctx.dry_run {
        for (root, _) in roots.iter_mut().take(temp_count) {
            root.prune_empty_dirs();
        }
    }
    drop(roots);
    if run.stopped() || cfg.archive.dirs.is_empty() {
        return Ok(run.finish());
    }

    // Archiving, largest first.
    let (dest, mut roots) = match prepare(cfg, &mut run) {
        Ok(v) => v,
        Err(e) => {
            run.stop(format!("archive step not run: {e}"));
            return Ok(run.finish());
        }
    };
    let mut files: Vec<(usize, Candidate)> = Vec::new();
    for (ri, (root, _)) in roots.iter_mut().enumerate() {
        for c in old_files(&mut run, root, arch_age) {
            if seen.insert((c.dev, c.ino)) {
                files.push((ri, c));
            }
        }
    }
    files.sort_by(|(_, a), (_, b)| b.size.cmp(&a.size).then(a.mtime.cmp(&b.mtime)));
    let mut rest = files.into_iter().peekable();
    while rest.peek().is_some() && !run.stopped() {
        let mut batch: Vec<(usize, Candidate)> = Vec::new();
        let mut bytes = 0u64;
        while let Some((_, c)) = rest.peek() {
            if !batch.is_empty()
                && (batch.len() >= BATCH_FILES || bytes.saturating_add(c.size) > BATCH_BYTES)
            {
                break;
            }
            bytes = bytes.saturating_add(c.size);
            if let Some(item) = rest.next() {
                batch.push(item);
            }
        }
        for (ri, (root, idx)) in roots.iter_mut().enumerate() {
            if run.stopped() {
                break;
            }
            let group: Vec<Candidate> = batch
                .iter()
                .filter(|(r, _)| *r == ri)
                .map(|(_, c)| c.clone())
                .collect();
            let chosen = choose(&mut run, group);
            let mut check = |run: &mut Run<'_, '_>| !run.ctx.dry_run && usage.under(run);
            if let Err(e) = archive_batch(&mut run, &dest, root, *idx, chosen, &mut check) {
                run.stop(format!("archiving stopped: {e}"));
            }
        }
    }
    Ok(run.finish())
}
