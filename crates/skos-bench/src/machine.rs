//! What the run ran on.

use serde_json::{json, Value};

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The first `model name` in the text of `/proc/cpuinfo`.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// `/proc/loadavg`'s three load averages.
pub fn load() -> Option<[f64; 3]> {
    let text = read("/proc/loadavg")?;
    let mut it = text.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

fn command(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Microseconds to create a file in a fresh directory under `dir` and
/// write one byte to it: the median of `n` files, all removed after; `None`
/// when `dir` cannot be written. Each section's nats-server keeps its store
/// under the temp dir, and creates a file for each message block and each
/// consumer: on a file system slow to allocate inodes (ext4 just after
/// many files were created and removed) every one of them stalls the
/// server, and the bus's own latency with it.
pub fn file_create_micros(dir: &std::path::Path, n: usize) -> Option<f64> {
    use std::io::Write;
    let scratch = tempfile::Builder::new()
        .prefix("skos-bench-create")
        .tempdir_in(dir)
        .ok()?;
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let at = std::time::Instant::now();
        let mut f = std::fs::File::create(scratch.path().join(format!("f{i}"))).ok()?;
        f.write_all(b"x").ok()?;
        took.push(at.elapsed().as_secs_f64() * 1e6);
    }
    took.sort_by(f64::total_cmp);
    took.get(n / 2).copied()
}

/// Files [`file_create_micros`] creates to judge the temp dir.
const CREATE_PROBES: usize = 200;

pub fn describe() -> Value {
    let mem_total_kb = read("/proc/meminfo").and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    });
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": read("/proc/cpuinfo").as_deref().and_then(cpu_model),
        "mem_total_kb": mem_total_kb,
        "free_h": command("free", &["-h"]),
        "kernel": read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()),
        "nats_server": crate::natsutil::server_version(),
        "load_at_start": load(),
        "temp_dir": std::env::temp_dir(),
        "temp_file_create_us": file_create_micros(&std::env::temp_dir(), CREATE_PROBES),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_created_in_a_writable_dir_is_timed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let us = file_create_micros(dir.path(), 5).expect("timed");
        assert!(us > 0.0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(file_create_micros(&dir.path().join("missing"), 5), None);
    }

    #[test]
    fn model_name() {
        let t = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(t).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model(""), None);
    }
}
