//! Shell scripts run in a process group of their own, killed whole on drop.
//!
//! Loop-breaker tests start real runaway processes (a fork-happy script, a
//! crash loop); whatever a test asserts, every process the script started
//! is gone when the guard goes out of scope: the group gets SIGKILL (which
//! also ends stopped processes) and the leader is reaped.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// One process in the group.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub pid: u32,
    pub ppid: u32,
    /// `R`, `S`, `T` (stopped), `Z`…
    pub state: char,
    pub cmdline: String,
}

pub struct ProcGroup {
    child: Child,
}

impl ProcGroup {
    /// `sh script args…` as the leader of a new process group.
    pub fn spawn_sh(script: &Path, args: &[&str]) -> ProcGroup {
        let child = Command::new("sh")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn sh");
        ProcGroup { child }
    }

    pub fn pgid(&self) -> u32 {
        self.child.id()
    }

    /// Every process of the group, read from `/proc`.
    pub fn members(&self) -> Vec<Member> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return out;
        };
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            if f.get(2).and_then(|g| g.parse::<u32>().ok()) != Some(self.pgid()) {
                continue;
            }
            let cmdline = std::fs::read(e.path().join("cmdline"))
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .replace('\0', " ")
                        .trim()
                        .to_string()
                })
                .unwrap_or_default();
            out.push(Member {
                pid,
                ppid: f.get(1).and_then(|p| p.parse().ok()).unwrap_or(0),
                state: f.first().and_then(|s| s.chars().next()).unwrap_or('?'),
                cmdline,
            });
        }
        out
    }

    /// Members that are neither dead nor zombies.
    pub fn alive(&self) -> Vec<Member> {
        self.members()
            .into_iter()
            .filter(|m| !matches!(m.state, 'Z' | 'X'))
            .collect()
    }
}

impl Drop for ProcGroup {
    fn drop(&mut self) {
        if let Ok(pgid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on the process group this guard created
            // (`process_group(0)` makes the leader's pid its id).
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}
