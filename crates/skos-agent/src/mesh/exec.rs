//! Running the mesh healer's programs (`wg`, `wg-quick`, `ip`, `systemctl`,
//! a configured command): argv only, never a shell; a deadline after which
//! the program and its process group are killed; output captured and
//! stripped of anything that looks like a WireGuard key before it is
//! quoted.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::wg::redact_keys;
use crate::{Error, Result};

/// Most bytes kept of each stream.
const KEEP: usize = 64 * 1024;

/// A finished program. Its `Debug` leaves stdout out: `wg show dump`
/// prints the private key.
#[derive(Clone)]
pub struct Output {
    pub program: String,
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("program", &self.program)
            .field("status", &self.status)
            .field("timed_out", &self.timed_out)
            .field("stdout_bytes", &self.stdout.len())
            .field("stderr", &redact_keys(&self.stderr))
            .finish()
    }
}

impl Output {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }

    /// `wg-quick: exit status 1; stderr: …` with keys redacted.
    pub fn describe(&self) -> String {
        let mut s = if self.timed_out {
            format!("{}: killed after its timeout", self.program)
        } else {
            match self.status.and_then(|s| s.code()) {
                Some(c) => format!("{}: exit status {c}", self.program),
                None => format!("{}: killed by a signal", self.program),
            }
        };
        // Drop drawn boxes (wireguard-go's banner): they bury the error.
        let text: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.chars().any(|c| ('\u{2500}'..='\u{257f}').contains(&c)))
            .collect();
        let tail = tail(&text.join("\n"), 600);
        if !tail.is_empty() {
            s.push_str("; stderr: ");
            s.push_str(&redact_keys(&tail));
        }
        s
    }
}

fn tail(text: &str, max: usize) -> String {
    let t = text.trim();
    if t.len() <= max {
        return t.to_string();
    }
    let mut start = t.len() - max;
    while !t.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &t[start..])
}

fn reader(mut r: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if kept.len() < KEEP {
                        kept.extend_from_slice(&buf[..n.min(KEEP - kept.len())]);
                    }
                }
            }
        }
        let _ = tx.send(kept);
    });
    rx
}

/// Run `argv` (no shell) with a deadline. `Err` only when it cannot be
/// started; a non-zero exit or a timeout is in the [`Output`].
///
/// `LOG_LEVEL` is removed from the child's environment: wireguard-go,
/// started by wg-quick, would otherwise keep our pipes open for as long as
/// the tunnel lives.
pub fn run(argv: &[String], timeout: Duration) -> Result<Output> {
    let Some((program, args)) = argv.split_first() else {
        return Err(Error::Command {
            command: String::new(),
            reason: "empty command".into(),
        });
    };
    let mut child = Command::new(program)
        .args(args)
        .env_remove("LOG_LEVEL")
        .env_remove("WG_QUICK_USERSPACE_IMPLEMENTATION_ARGS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Command {
            command: program.clone(),
            reason: format!("cannot start: {e}"),
        })?;
    let out_rx = child.stdout.take().map(reader);
    let err_rx = child.stderr.take().map(reader);
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                kill_group(child.id());
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Command {
                    command: program.clone(),
                    reason: format!("wait failed: {e}"),
                });
            }
        }
    };
    // A daemon the program left behind may hold a pipe: wait a little for
    // the output, no more.
    let collect = |rx: Option<mpsc::Receiver<Vec<u8>>>| {
        rx.and_then(|rx| rx.recv_timeout(Duration::from_secs(1)).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    Ok(Output {
        program: program.clone(),
        status,
        timed_out,
        stdout: collect(out_rx),
        stderr: collect(err_rx),
    })
}

fn kill_group(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        if pid > 0 {
            // SAFETY: kill(2) on the process group of our own child, made
            // its leader by `process_group(0)`.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

/// An argv from string slices.
pub fn argv<S: AsRef<str>>(parts: &[S]) -> Vec<String> {
    parts.iter().map(|s| s.as_ref().to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_status_are_captured() {
        let o = run(
            &argv(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(!o.success());
        assert_eq!(o.stdout.trim(), "out");
        assert!(o.describe().contains("exit status 3"), "{}", o.describe());
        assert!(o.describe().contains("err"));
    }

    #[test]
    fn banners_are_left_out() {
        let o = run(
            &argv(&["sh", "-c", "echo '┌──┐' >&2; echo '│ hi │' >&2; echo 'Key is not the correct length' >&2; exit 1"]),
            Duration::from_secs(5),
        )
        .unwrap();
        let d = o.describe();
        assert!(d.ends_with("stderr: Key is not the correct length"), "{d}");
    }

    #[test]
    fn timeout_kills_the_group() {
        let t0 = Instant::now();
        let o = run(
            &argv(&["sh", "-c", "sleep 30 & sleep 30"]),
            Duration::from_millis(200),
        )
        .unwrap();
        assert!(o.timed_out && !o.success());
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }

    #[test]
    fn keys_in_stderr_are_redacted() {
        let key = "YK86J1JS22zRRFV7h0yOf3qlpGPEeFomPrpmctMM8FY=";
        let o = run(
            &argv(&[
                "sh",
                "-c",
                &format!("echo 'Line unrecognized: `PrivateKey={key}' >&2; exit 1"),
            ]),
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(!o.describe().contains(key), "{}", o.describe());
    }

    #[test]
    fn missing_program_is_an_error() {
        assert!(run(&argv(&["/nonexistent/skos-x"]), Duration::from_secs(1)).is_err());
        assert!(run(&[], Duration::from_secs(1)).is_err());
    }
}
