//! Memory and CPU time of a process, from `/proc/<pid>/status`,
//! `/proc/<pid>/smaps_rollup` and `/proc/<pid>/stat`. The parsers are pure
//! functions over the text.

use std::time::Instant;

use serde::Serialize;

use crate::{Error, Result};

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub at: Instant,
    /// Resident set size now, kB.
    pub rss_kb: u64,
    /// Peak resident set size, kB.
    pub hwm_kb: u64,
    /// Resident anonymous memory (heap, stacks), kB.
    pub anon_kb: u64,
    /// Resident file-backed memory (the binary's code and data), kB.
    pub file_kb: u64,
    /// Proportional set size, kB: each resident page divided by the
    /// number of processes mapping it (shared libraries counted in part).
    /// `None` where `smaps_rollup` cannot be read.
    pub pss_kb: Option<u64>,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
}

/// A `Name:  123 kB` field of `/proc/<pid>/status`.
pub fn status_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
}

/// `(VmRSS, VmHWM)` in kB from the text of `/proc/<pid>/status`.
pub fn parse_status(text: &str) -> (Option<u64>, Option<u64>) {
    (status_field(text, "VmRSS"), status_field(text, "VmHWM"))
}

/// utime + stime (fields 14 and 15) from the text of `/proc/<pid>/stat`.
/// The command name (field 2) may hold spaces and parentheses, so fields
/// are counted from the last `)`.
pub fn parse_stat_cpu(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) is index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub fn clock_ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second().max(1)
}

/// Read a process now.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let at = Instant::now();
    let status_path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&status_path).map_err(|e| Error::io(&status_path, e))?;
    let stat_path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&stat_path).map_err(|e| Error::io(&stat_path, e))?;
    let (rss, hwm) = parse_status(&status);
    // Pss is in the same `Name:  123 kB` shape as the status fields.
    let pss = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| status_field(&t, "Pss"));
    let cpu = parse_stat_cpu(&stat)
        .ok_or_else(|| Error::failed(&stat_path, "cannot read utime and stime"))?;
    Ok(ProcSample {
        at,
        rss_kb: rss.ok_or_else(|| Error::failed(&status_path, "no VmRSS"))?,
        hwm_kb: hwm.ok_or_else(|| Error::failed(&status_path, "no VmHWM"))?,
        anon_kb: status_field(&status, "RssAnon").unwrap_or(0),
        file_kb: status_field(&status, "RssFile").unwrap_or(0),
        pss_kb: pss,
        cpu_ticks: cpu,
    })
}

/// What a process used over a window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Usage {
    /// VmRSS at the end of the window, MB (10^6 bytes).
    pub rss_mb: f64,
    /// VmHWM at the end of the window, MB.
    pub hwm_mb: f64,
    /// Of the RSS: anonymous (heap, stacks) and file-backed (code), MB.
    pub rss_anon_mb: f64,
    pub rss_file_mb: f64,
    /// PSS at the end of the window, MB; `None` where not readable.
    pub pss_mb: Option<f64>,
    /// CPU seconds (user + system) over the window.
    pub cpu_seconds: f64,
    pub window_seconds: f64,
    /// CPU seconds per second: 1.0 is one core fully busy.
    pub cpu_share: f64,
    /// The smallest share the kernel's tick counting can show over this
    /// window (one clock tick).
    pub cpu_share_resolution: f64,
}

pub fn usage(a: &ProcSample, b: &ProcSample) -> Usage {
    let hz = clock_ticks_per_second() as f64;
    let window = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let cpu = b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / hz;
    Usage {
        rss_mb: b.rss_kb as f64 * 1024.0 / 1e6,
        hwm_mb: b.hwm_kb.max(a.hwm_kb) as f64 * 1024.0 / 1e6,
        rss_anon_mb: b.anon_kb as f64 * 1024.0 / 1e6,
        rss_file_mb: b.file_kb as f64 * 1024.0 / 1e6,
        pss_mb: b.pss_kb.map(|kb| kb as f64 * 1024.0 / 1e6),
        cpu_seconds: cpu,
        window_seconds: window,
        cpu_share: cpu / window,
        cpu_share_resolution: 1.0 / hz / window,
    }
}

/// CPU clock ticks (utime + stime) of this process's threads named
/// `name` (`/proc/self/task/<tid>/comm`), summed: the in-process
/// coordinator's runtime threads. Threads that ended are not counted.
pub fn own_threads_cpu_ticks(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|stat| parse_stat_cpu(&stat))
        .sum()
}

/// The pid of a running process whose command line contains `needle`
/// (used to find the nats-server started for a run by its store dir).
pub fn find_pid_by_cmdline(needle: &str) -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        if pid == me {
            return None;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        cmd.contains(needle).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let text = "Name:\tskos\nVmPeak:\t  20000 kB\nVmHWM:\t    5120 kB\nVmRSS:\t    4096 kB\nRssAnon:\t    1000 kB\n";
        assert_eq!(parse_status(text), (Some(4096), Some(5120)));
        assert_eq!(status_field(text, "RssAnon"), Some(1000));
        assert_eq!(status_field(text, "RssFile"), None);
        assert_eq!(parse_status("Name: x\n"), (None, None));
        let rollup = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:  7404 kB\nPss:  5411 kB\nPss_Dirty:  1108 kB\n";
        assert_eq!(status_field(rollup, "Pss"), Some(5411));
    }

    #[test]
    fn stat_cpu_with_odd_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime ...
        let text = "1234 (sk os) (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 3 0\n";
        assert_eq!(parse_stat_cpu(text), Some(42));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn reads_itself() {
        let a = sample(std::process::id()).unwrap();
        assert!(a.rss_kb > 0 && a.hwm_kb >= a.rss_kb);
        let pss = a.pss_kb.expect("a process reads its own smaps_rollup");
        assert!(pss > 0 && pss <= a.rss_kb + 64);
        let mut b = a;
        b.cpu_ticks += clock_ticks_per_second();
        b.at = a.at + std::time::Duration::from_secs(2);
        let u = usage(&a, &b);
        assert!((u.cpu_share - 0.5).abs() < 1e-9);
        assert!((u.cpu_seconds - 1.0).abs() < 1e-9);
    }
}
