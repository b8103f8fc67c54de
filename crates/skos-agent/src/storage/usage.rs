//! Mount usage from statvfs, bytes and inodes, and the fill rate.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use serde::Serialize;
use skos_core::timefmt::Timestamp;

use crate::{Error, Result};

/// The numbers statvfs gives, in the units it gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawStat {
    pub fragment_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MountUsage {
    pub mount: PathBuf,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    /// Used bytes over what non-root users can have (as `df` shows it).
    pub bytes_percent: f64,
    pub total_inodes: u64,
    pub used_inodes: u64,
    /// `None` where the filesystem has no fixed inode count (btrfs, some FUSE).
    pub inodes_percent: Option<f64>,
    /// The fuller of the two: an inode-exhausted disk is as full as a byte-full one.
    pub percent: f64,
}

/// Pure: usage from statvfs numbers.
pub fn usage_from(mount: &Path, s: RawStat) -> MountUsage {
    let frsize = s.fragment_size.max(1);
    let total = s.blocks.saturating_mul(frsize);
    let used = s
        .blocks
        .saturating_sub(s.blocks_free)
        .saturating_mul(frsize);
    let avail = s.blocks_available.saturating_mul(frsize);
    let bytes_percent = if used + avail == 0 {
        0.0
    } else {
        used as f64 * 100.0 / (used + avail) as f64
    };
    let used_inodes = s.files.saturating_sub(s.files_free);
    let inodes_percent = (s.files > 0).then(|| used_inodes as f64 * 100.0 / s.files as f64);
    MountUsage {
        mount: mount.to_path_buf(),
        total_bytes: total,
        used_bytes: used,
        available_bytes: avail,
        bytes_percent,
        total_inodes: s.files,
        used_inodes,
        inodes_percent,
        percent: bytes_percent.max(inodes_percent.unwrap_or(0.0)),
    }
}

/// statvfs of one mount point.
pub fn read(mount: &Path) -> Result<MountUsage> {
    let s = rustix::fs::statvfs(mount).map_err(|e| Error::io(mount, e.into()))?;
    Ok(usage_from(
        mount,
        RawStat {
            fragment_size: s.f_frsize,
            blocks: s.f_blocks,
            blocks_free: s.f_bfree,
            blocks_available: s.f_bavail,
            files: s.f_files,
            files_free: s.f_ffree,
        },
    ))
}

/// Bytes per second a mount fills at, over a sliding window.
#[derive(Debug, Clone, Default)]
pub struct FillRate {
    samples: VecDeque<(Timestamp, u64)>,
}

impl FillRate {
    pub fn push(&mut self, window_seconds: f64, t: Timestamp, used_bytes: u64) {
        self.samples.push_back((t, used_bytes));
        let window = skos_core::level::secs(window_seconds);
        while self.samples.len() > 2 && self.samples.front().is_some_and(|&(t0, _)| t - t0 > window)
        {
            self.samples.pop_front();
        }
    }

    /// Least-squares slope in bytes per second; `None` with fewer than two
    /// samples or no time between them.
    pub fn rate(&self) -> Option<f64> {
        let (t0, _) = *self.samples.front()?;
        let pts: Vec<(f64, f64)> = self
            .samples
            .iter()
            .map(|&(t, u)| ((t - t0).num_milliseconds() as f64 / 1000.0, u as f64))
            .collect();
        if pts.len() < 2 {
            return None;
        }
        let n = pts.len() as f64;
        let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
        let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
        let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
        if sxx <= 0.0 {
            return None;
        }
        let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        Some(sxy / sxx)
    }
}

/// Seconds until `usage` reaches `percent` at `rate` bytes/s; `None` when
/// not filling.
pub fn seconds_until(usage: &MountUsage, percent: f64, rate: Option<f64>) -> Option<f64> {
    let rate = rate.filter(|r| *r > 0.0)?;
    let capacity = (usage.used_bytes + usage.available_bytes) as f64;
    let target = capacity * percent / 100.0;
    let left = target - usage.used_bytes as f64;
    Some((left / rate).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> Timestamp {
        chrono::Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn df_style_percent_and_inodes() {
        let u = usage_from(
            Path::new("/data"),
            RawStat {
                fragment_size: 4096,
                blocks: 1000,
                blocks_free: 200,
                blocks_available: 150,
                files: 100,
                files_free: 1,
            },
        );
        assert_eq!(u.used_bytes, 800 * 4096);
        assert!((u.bytes_percent - 800.0 * 100.0 / 950.0).abs() < 1e-9);
        assert_eq!(u.inodes_percent, Some(99.0));
        assert_eq!(u.percent, 99.0, "inode exhaustion counts as full");
        let no_inodes = usage_from(
            Path::new("/x"),
            RawStat {
                fragment_size: 4096,
                blocks: 10,
                ..Default::default()
            },
        );
        assert_eq!(no_inodes.inodes_percent, None);
    }

    #[test]
    fn fill_rate_and_prediction() {
        let mut f = FillRate::default();
        assert_eq!(f.rate(), None);
        for i in 0..10 {
            f.push(300.0, t(i * 10), 1000 + (i as u64) * 500);
        }
        let r = f.rate().unwrap();
        assert!((r - 50.0).abs() < 1e-6, "{r}");
        let u = MountUsage {
            mount: "/d".into(),
            total_bytes: 10_000,
            used_bytes: 5_000,
            available_bytes: 5_000,
            bytes_percent: 50.0,
            total_inodes: 0,
            used_inodes: 0,
            inodes_percent: None,
            percent: 50.0,
        };
        assert_eq!(seconds_until(&u, 90.0, Some(50.0)), Some(80.0));
        assert_eq!(seconds_until(&u, 90.0, Some(-5.0)), None);
    }

    #[test]
    fn old_samples_leave_the_window() {
        let mut f = FillRate::default();
        f.push(60.0, t(0), 0);
        f.push(60.0, t(30), 1_000_000);
        f.push(60.0, t(100), 1_000_000);
        f.push(60.0, t(110), 1_000_000);
        assert_eq!(f.rate(), Some(0.0));
    }

    #[test]
    fn reads_a_real_mount() {
        let u = read(Path::new("/")).unwrap();
        assert!(u.total_bytes > 0);
        assert!(read(Path::new("/does/not/exist")).is_err());
    }
}
