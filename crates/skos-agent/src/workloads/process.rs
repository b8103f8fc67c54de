//! The process driver: the configured argv, started in a session (and
//! process group) of its own with its output appended to
//! `<state_dir>/workloads/<name>.log`, stopped with its stop signal sent
//! to the group, then SIGKILL after `stop_timeout_seconds`.
//!
//! What was started is recorded in `<state_dir>/workloads/<name>.pid` as
//! the pid and the process's start time (field 22 of `/proc/<pid>/stat`,
//! clock ticks since boot): a restarted agent finds the process it started
//! rather than starting a second copy, and never signals a process that
//! merely reuses the pid. Without a state dir the record is kept in memory.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skos_core::config::{StopSignal, WorkloadSpec};
use skos_core::{WorkloadName, WorkloadState};

use super::error::WorkloadError;
use super::Seen;

/// How often a stop looks whether the process is gone.
const POLL: Duration = Duration::from_millis(50);
/// How long a SIGKILL is given to take effect.
const AFTER_KILL: Duration = Duration::from_secs(5);

/// A process named by its pid and start time, so a reused pid is never
/// taken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcId {
    pub pid: i32,
    /// Clock ticks after boot at which it started.
    pub start: u64,
}

impl ProcId {
    /// `"<pid> <start>"`, as in the pid file.
    pub fn render(&self) -> String {
        format!("{} {}\n", self.pid, self.start)
    }

    /// A pid file's content, if it holds one.
    pub fn parse(text: &str) -> Option<ProcId> {
        let mut it = text.split_whitespace();
        let pid = it.next()?.parse::<i32>().ok().filter(|p| *p > 1)?;
        let start = it.next()?.parse().ok()?;
        it.next().is_none().then_some(ProcId { pid, start })
    }
}

/// What `/proc/<pid>/stat` says of a process: its state letter, process
/// group and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub pgrp: i32,
    pub start: u64,
}

/// Parse `/proc/<pid>/stat` (the command name in parentheses may hold
/// anything, so fields are counted after the last `)`).
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 3.. of proc(5): state is 3, pgrp 5, starttime 22.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

fn read_stat(proc_root: &Path, pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(&text)
}

/// Where records of started processes are kept: files under the state
/// dir, or memory.
#[derive(Debug, Clone)]
pub enum Records {
    Dir(PathBuf),
    Memory(Arc<Mutex<BTreeMap<WorkloadName, ProcId>>>),
}

impl Records {
    /// Files in `<state_dir>/workloads/`, or memory without a state dir.
    pub fn new(state_dir: Option<&Path>) -> Records {
        match state_dir {
            Some(d) => Records::Dir(d.join("workloads")),
            None => Records::Memory(Default::default()),
        }
    }

    fn pid_file(dir: &Path, name: &WorkloadName) -> PathBuf {
        dir.join(format!("{name}.pid"))
    }

    /// The log a process workload writes to (`None` in memory: its output
    /// is discarded).
    pub fn log_file(&self, name: &WorkloadName) -> Option<PathBuf> {
        match self {
            Records::Dir(d) => Some(d.join(format!("{name}.log"))),
            Records::Memory(_) => None,
        }
    }

    fn load(&self, name: &WorkloadName) -> Result<Option<ProcId>, WorkloadError> {
        match self {
            Records::Dir(d) => {
                let path = Self::pid_file(d, name);
                Ok(skos_fs::read_nofollow(&path)?
                    .and_then(|b| ProcId::parse(&String::from_utf8_lossy(&b))))
            }
            Records::Memory(m) => Ok(lock(m).get(name).copied()),
        }
    }

    fn save(&self, name: &WorkloadName, id: ProcId) -> Result<(), WorkloadError> {
        match self {
            Records::Dir(d) => {
                skos_fs::write_private(&Self::pid_file(d, name), id.render().as_bytes())?
            }
            Records::Memory(m) => {
                lock(m).insert(name.clone(), id);
            }
        }
        Ok(())
    }

    fn clear(&self, name: &WorkloadName) -> Result<(), WorkloadError> {
        match self {
            Records::Dir(d) => {
                skos_fs::remove_private(&Self::pid_file(d, name))?;
            }
            Records::Memory(m) => {
                lock(m).remove(name);
            }
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One process workload.
#[derive(Debug, Clone)]
pub struct ProcessDriver {
    pub name: WorkloadName,
    pub argv: Vec<String>,
    pub signal: StopSignal,
    pub stop_timeout: Duration,
    pub proc_root: PathBuf,
    pub records: Records,
}

/// The signal's number.
pub fn signal_number(s: StopSignal) -> i32 {
    match s {
        StopSignal::Term => libc::SIGTERM,
        StopSignal::Int => libc::SIGINT,
        StopSignal::Quit => libc::SIGQUIT,
        StopSignal::Hup => libc::SIGHUP,
        StopSignal::Kill => libc::SIGKILL,
        StopSignal::Usr1 => libc::SIGUSR1,
        StopSignal::Usr2 => libc::SIGUSR2,
    }
}

impl ProcessDriver {
    pub fn new(
        name: &WorkloadName,
        spec: &WorkloadSpec,
        proc_root: &Path,
        records: Records,
    ) -> Self {
        ProcessDriver {
            name: name.clone(),
            argv: spec.command.clone(),
            signal: spec.stop_signal,
            stop_timeout: Duration::from_secs_f64(spec.stop_timeout_seconds),
            proc_root: proc_root.to_path_buf(),
            records,
        }
    }

    /// The recorded process, if it still runs (same start time, not a
    /// zombie).
    fn alive(&self) -> Result<Option<(ProcId, Stat)>, WorkloadError> {
        let Some(id) = self.records.load(&self.name)? else {
            return Ok(None);
        };
        Ok(self.running(id).map(|st| (id, st)))
    }

    fn running(&self, id: ProcId) -> Option<Stat> {
        read_stat(&self.proc_root, id.pid)
            .filter(|st| st.start == id.start && !matches!(st.state, 'Z' | 'X' | 'x'))
    }

    pub fn observe(&self) -> Seen {
        match self.alive() {
            Ok(Some((id, _))) => Seen::new(WorkloadState::Running, format!("pid {}", id.pid)),
            Ok(None) => Seen::new(WorkloadState::Stopped, "not running"),
            Err(e) => Seen::new(WorkloadState::Unknown, e.to_string()),
        }
    }

    /// Start it unless the recorded process still runs. Returns what was
    /// done.
    pub fn start(&self) -> Result<String, WorkloadError> {
        if let Some((id, _)) = self.alive()? {
            return Ok(format!("already running as pid {}", id.pid));
        }
        let (program, args) = self
            .argv
            .split_first()
            .ok_or_else(|| WorkloadError::Spawn {
                workload: self.name.clone(),
                program: String::new(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "no command configured",
                ),
            })?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null());
        match self.records.log_file(&self.name) {
            Some(log) => {
                let out = skos_fs::append_private(&log)?;
                let err = out.try_clone().map_err(|e| WorkloadError::io(&log, e))?;
                cmd.stdout(out).stderr(err);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        // SAFETY: setsid is async-signal-safe and touches no memory of the
        // parent; it makes the child a session and process-group leader,
        // so the whole group can be signalled and it outlives the agent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| WorkloadError::Spawn {
            workload: self.name.clone(),
            program: program.clone(),
            source,
        })?;
        let pid = child.id() as i32;
        // Reaped when it exits, so it never lingers as a zombie of ours.
        let reaper = std::thread::Builder::new()
            .name(format!("skos-reap-{pid}"))
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = child.wait();
            });
        if let Err(e) = reaper {
            tracing::warn!(workload = %self.name, pid, error = %e, "no thread to reap the process; it stays a zombie once it exits");
        }
        let start = read_stat(&self.proc_root, pid).map(|s| s.start);
        let Some(start) = start else {
            return Ok(format!("pid {pid} exited at once"));
        };
        let id = ProcId { pid, start };
        if let Err(e) = self.records.save(&self.name, id) {
            // Unrecorded, it could not be found again: not left running.
            let _ = self.signal_group(id, libc::SIGKILL);
            return Err(e);
        }
        tracing::info!(workload = %self.name, pid, "process workload started");
        Ok(format!("started as pid {pid}"))
    }

    /// Send `sig` to its process group (or to it alone when it is not
    /// its group's leader), after checking it is still the process
    /// recorded.
    fn signal_group(&self, id: ProcId, sig: i32) -> Result<(), WorkloadError> {
        let Some(st) = self.running(id) else {
            return Ok(());
        };
        let target = if st.pgrp == id.pid { -id.pid } else { id.pid };
        // SAFETY: kill has no memory effects; the target was checked to be
        // the recorded process (pid and start time) just before.
        let rc = unsafe { libc::kill(target, sig) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(WorkloadError::Signal {
                    workload: self.name.clone(),
                    pid: id.pid,
                    source: e,
                });
            }
        }
        Ok(())
    }

    fn wait_gone(&self, id: ProcId, within: Duration) -> bool {
        let until = Instant::now() + within;
        loop {
            if self.running(id).is_none() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Stop it: its stop signal, then SIGKILL after the stop timeout.
    /// Returns what was done.
    pub fn stop(&self) -> Result<String, WorkloadError> {
        let Some((id, _)) = self.alive()? else {
            self.records.clear(&self.name)?;
            return Ok("not running".into());
        };
        self.signal_group(id, signal_number(self.signal))?;
        let how = if self.wait_gone(id, self.stop_timeout) {
            format!("pid {} stopped by {}", id.pid, self.signal.as_str())
        } else {
            self.signal_group(id, libc::SIGKILL)?;
            if !self.wait_gone(id, AFTER_KILL) {
                return Err(WorkloadError::Unkillable {
                    workload: self.name.clone(),
                    what: format!("pid {}", id.pid),
                });
            }
            format!(
                "pid {} killed (SIGKILL) after {} did not stop it within {} s",
                id.pid,
                self.signal.as_str(),
                self.stop_timeout.as_secs_f64()
            )
        };
        // What it forked into its group goes with it.
        let _ = kill_rest_of_group(id.pid);
        self.records.clear(&self.name)?;
        tracing::info!(workload = %self.name, pid = id.pid, "process workload stopped");
        Ok(how)
    }
}

/// SIGKILL to what is left of a process group whose leader is gone.
fn kill_rest_of_group(pgid: i32) -> i32 {
    // SAFETY: kill has no memory effects; a group id is only reused once
    // every member is gone, and its leader was ours.
    unsafe { libc::kill(-pgid, libc::SIGKILL) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let text = "4242 (a) b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100 18446744073709551615\n";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                state: 'S',
                pgrp: 4242,
                start: 987654
            })
        );
        assert_eq!(parse_stat("12 (x) R 1"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn pid_files_hold_pid_and_start_time() {
        let id = ProcId {
            pid: 77,
            start: 12345,
        };
        assert_eq!(ProcId::parse(&id.render()), Some(id));
        for bad in ["", "77", "77 x", "1 5", "-3 5", "77 5 9"] {
            assert_eq!(ProcId::parse(bad), None, "{bad:?}");
        }
    }
}
