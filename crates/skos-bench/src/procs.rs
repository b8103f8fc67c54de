//! Child processes (`skos coordinator`, `skos agent`, `skos up`), each
//! killed on drop, with its output kept in a log file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Where the `skos` binary is: `--skos-bin`, then `SKOS_BIN`, then next to
/// this harness's own executable (`target/<profile>/skos`), so a release
/// harness drives a release `skos`.
pub fn skos_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(Error::Missing(format!(
                "--skos-bin {}: no such file",
                p.display()
            )))
        };
    }
    if let Some(p) = std::env::var_os("SKOS_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Missing(format!(
                "SKOS_BIN={}: no such file",
                p.display()
            )))
        };
    }
    let exe = std::env::current_exe().map_err(|e| Error::failed("current_exe", e))?;
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join("skos"));
        // Integration tests run from target/<profile>/deps.
        if dir.file_name().is_some_and(|n| n == "deps") {
            if let Some(up) = dir.parent() {
                candidates.push(up.join("skos"));
            }
        }
    }
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let profile = exe
            .parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "release".into());
        let flag = if profile == "release" {
            " --release"
        } else {
            ""
        };
        Error::Missing(format!(
            "the skos binary is missing (looked for {}): build it first with `cargo build{flag} -p skos`, or pass --skos-bin PATH",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// Where the lean agent binary is: `--agent-bin`, then `SKOS_AGENT_BIN`,
/// then `skos-agent` beside `skos_bin`. `Ok(None)` when none is there (the
/// caller measures `skos agent` instead and says so).
///
/// # Errors
/// [`Error::Missing`] when an explicit path names no file.
pub fn agent_binary(explicit: Option<&Path>, skos_bin: &Path) -> Result<Option<PathBuf>> {
    let named = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("SKOS_AGENT_BIN").map(PathBuf::from));
    if let Some(p) = named {
        return if p.is_file() {
            Ok(Some(p))
        } else {
            Err(Error::Missing(format!(
                "the agent binary {}: no such file",
                p.display()
            )))
        };
    }
    Ok(skos_bin
        .parent()
        .map(|d| d.join("skos-agent"))
        .filter(|p| p.is_file()))
}

/// An executable named `name` on PATH or in the sbin directories (which
/// are not on every user's PATH).
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A `skos` command with the caller's SKOS environment removed, so only
/// what the harness sets applies.
pub fn skos_command(bin: &Path) -> Command {
    let mut c = Command::new(bin);
    scrub_env(&mut c);
    c
}

/// Remove the caller's SKOS environment from `c` (a `skos` command, or
/// one that runs it, such as `ip netns exec`).
pub fn scrub_env(c: &mut Command) {
    for var in [
        "NATS_URL",
        "SKOS_CONFIG",
        "NODE_NAME",
        "SKOS_DATA_DIR",
        "SKOS_SYSFS_ROOT",
        "SKOS_PROC_ROOT",
        "RUST_LOG",
        "LOG_LEVEL",
        "HEARTBEAT_TIMEOUT",
        "HEARTBEAT_INTERVAL",
        "MONITOR_INTERVAL",
        "WARNING_TEMP",
        "CRITICAL_TEMP",
        "EMERGENCY_TEMP",
    ] {
        c.env_remove(var);
    }
}

/// A running child: SIGKILLed and reaped on drop.
pub struct Proc {
    child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log_dir: &Path, name: &str) -> Result<Proc> {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).map_err(|e| Error::io(&log, e))?;
        let err = file.try_clone().map_err(|e| Error::io(&log, e))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::failed(format!("start {name} ({:?})", cmd.get_program()), e))?;
        Ok(Proc {
            child,
            name: name.to_string(),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Fail with the end of its log if it has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if self.alive() {
            Ok(())
        } else {
            Err(Error::failed(
                format!("{} exited", self.name),
                format!("log tail:\n{}", self.log_tail(30)),
            ))
        }
    }

    /// SIGKILL now; returns when it was sent.
    pub fn sigkill(&mut self) -> Instant {
        let at = Instant::now();
        let _ = self.child.kill();
        let _ = self.child.wait();
        at
    }

    /// SIGTERM, then wait up to `timeout`; SIGKILL if it did not stop.
    /// Returns whether it exited by itself, successfully.
    pub async fn sigterm(&mut self, timeout: Duration) -> bool {
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                _ => {
                    self.sigkill();
                    return false;
                }
            }
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `skos keys generate` where this `skos` has it: the `trust:` section that
/// makes the coordinator sign commands and agents accept them. Empty when
/// the binary predates command signing.
pub fn trust_section(bin: &Path, dir: &Path) -> String {
    let key = dir.join("coordinator.nk");
    let out = skos_command(bin)
        .args(["keys", "generate", "--out"])
        .arg(&key)
        .stdin(Stdio::null())
        .output();
    let Ok(out) = out else {
        return String::new();
    };
    if !out.status.success() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&out.stdout);
    match text
        .split_whitespace()
        .find(|w| w.len() == 56 && w.starts_with('U'))
    {
        Some(public) => format!(
            "trust:\n  signing_key_file: {}\n  coordinator_keys: [{public}]\n",
            key.display()
        ),
        None => String::new(),
    }
}
