//! Helpers for the end-to-end tests: run the real `skos` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use skos_testsupport::nats::NatsServer;

pub fn skos() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_skos"));
    c.env_remove("NATS_URL")
        .env_remove("SKOS_CONFIG")
        .env_remove("NODE_NAME")
        .env_remove("SKOS_DATA_DIR")
        .env_remove("SKOS_SYSFS_ROOT")
        .env_remove("RUST_LOG")
        .env("LOG_LEVEL", "DEBUG");
    c
}

/// A running `skos` process: killed on drop, its log kept in a file that
/// is printed if the test fails.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log_dir: &Path, name: &str) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Proc {
            child,
            log,
            name: name.into(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop on SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

fn unsafe_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} -----\n{}",
                self.name,
                tail(&self.log_text(), 150)
            );
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Poll `f` until it returns Some, or panic with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn run(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

/// Run `cmd` (standard input closed), which must succeed: the panic says
/// which program failed and what it printed on stderr.
pub fn run_ok(cmd: Command) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A config tuned for fast tests: short intervals, no external GPU tools.
pub fn fast_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    let text = format!(
        "agent:\n  heartbeat_interval: 0.5\n  monitor_interval: 0.2\n\
coordinator:\n  heartbeat_timeout: 2\n  verify_within: 5\n  command_deadline: 30\n\
thermal:\n  clear_for: 1\n  cooldown: 60\n  gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}\n{extra}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Whether an audit record is a `result` of `action` with `status`.
pub fn result_is(record: &Value, action: &str, status: &str) -> bool {
    let r = &record["entry"]["data"]["result"];
    record["entry"]["event_type"] == "result" && r["action_type"] == action && r["status"] == status
}

pub fn audit_events(records: &[Value], event: &str) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["entry"]["event_type"] == event)
        .cloned()
        .collect()
}

/// A fresh coordinator key (`skos keys generate`): the `trust:` section that
/// makes the coordinator sign and the agents trust it.
pub fn trust_section(dir: &Path) -> String {
    let key = dir.join("coordinator.nk");
    let out = run({
        let mut c = skos();
        c.args(["keys", "generate", "--out"]).arg(&key);
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
    format!(
        "trust:\n  signing_key_file: {}\n  coordinator_keys: [{public}]\n",
        key.display()
    )
}

// --- Distributed mode: `skos coordinator` and `skos agent` on a test's own
// nats-server, and what `skos status` and `skos audit tail` say over it.

/// `skos coordinator` on `nats`, its log named `name`.
pub fn coordinator(nats: &NatsServer, cfg: &Path, work: &Path, name: &str) -> Proc {
    let mut c = skos();
    c.arg("coordinator")
        .arg("--config")
        .arg(cfg)
        .env("NATS_URL", nats.url());
    Proc::spawn(c, work, name)
}

pub fn agent(nats: &NatsServer, cfg: &Path, work: &Path, sys: &Path, node: &str) -> Proc {
    agent_logged(nats, cfg, work, sys, node, &format!("agent-{node}"))
}

/// [`agent`], its log named `log` (a restarted agent can keep a log of its
/// own).
pub fn agent_logged(
    nats: &NatsServer,
    cfg: &Path,
    work: &Path,
    sys: &Path,
    node: &str,
    log: &str,
) -> Proc {
    let mut c = skos();
    c.arg("agent")
        .arg("--config")
        .arg(cfg)
        .arg("--data-dir")
        .arg(work.join(format!("agent-{node}")))
        .env("NATS_URL", nats.url())
        .env("NODE_NAME", node)
        .env("SKOS_SYSFS_ROOT", sys);
    Proc::spawn(c, work, log)
}

pub fn status(nats: &NatsServer) -> Option<Value> {
    let out = run({
        let mut c = skos();
        c.args(["status", "--json"]).env("NATS_URL", nats.url());
        c
    });
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

pub fn node<'a>(s: &'a Value, name: &str) -> Option<&'a Value> {
    s["nodes"].as_array()?.iter().find(|n| n["name"] == name)
}

/// How many records audit each command, by action id.
pub fn audited_commands(records: &[Value]) -> std::collections::BTreeMap<String, usize> {
    let mut commands = std::collections::BTreeMap::new();
    for c in audit_events(records, "command") {
        let id = c["entry"]["data"]["command"]["action_id"]
            .as_str()
            .unwrap()
            .to_string();
        *commands.entry(id).or_default() += 1;
    }
    commands
}

/// `skos audit verify` on `nats` passes.
pub fn assert_trail_verifies(nats: &NatsServer) {
    let out = run({
        let mut c = skos();
        c.args(["audit", "verify"]).env("NATS_URL", nats.url());
        c
    });
    assert!(
        out.status.success(),
        "audit verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The audit trail on `nats`, as `skos audit tail` prints it (empty
/// until the coordinator has created the stream).
pub fn audit(nats: &NatsServer) -> Vec<Value> {
    let out = run({
        let mut c = skos();
        c.args(["audit", "tail", "--json", "-n", "1000000"])
            .env("NATS_URL", nats.url());
        c
    });
    if !out.status.success()
        && String::from_utf8_lossy(&out.stderr).contains("stream SKOS_AUDIT does not exist")
    {
        return Vec::new();
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out)
}

// --- Filesystems, as `df` counts them.

/// Percent of `p`'s filesystem used, as `df` counts it.
pub fn percent(p: &Path) -> f64 {
    let s = df(p);
    s.0 * 100.0 / (s.0 + s.1)
}

/// (used, available) bytes, as `df` counts them.
pub fn df(p: &Path) -> (f64, f64) {
    let out = std::process::Command::new("df")
        .arg("-B1")
        .arg("--output=used,avail")
        .arg(p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<f64> = text
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    (nums[0], nums[1])
}

// --- The HTTP API of `skos up` / `skos coordinator`.

/// The address `skos` says it serves HTTP on (`--http 127.0.0.1:0` lets
/// the system choose a free port), read from its log.
pub fn http_addr(p: &Proc) -> std::net::SocketAddr {
    wait_for(
        Duration::from_secs(30),
        "the HTTP address in the log",
        || {
            p.log_text().lines().find_map(|l| {
                l.split_once("HTTP API on http://")
                    .or_else(|| l.split_once("HTTP API on https://"))
                    .and_then(|(_, rest)| rest.split('/').next())
                    .and_then(|a| a.parse().ok())
            })
        },
    )
}

/// One plain HTTP/1.1 GET: the status code and the body (dechunked), or
/// what came within `wait` for a stream.
pub fn http_get(addr: std::net::SocketAddr, path: &str, wait: Duration) -> (u16, String) {
    let (code, _, body) = http_request(addr, path, wait);
    (code, body)
}

/// [`http_get`] with the response's head (status line and headers).
pub fn http_request(
    addr: std::net::SocketAddr,
    path: &str,
    wait: Duration,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, String::new(), String::new());
    };
    s.set_read_timeout(Some(wait)).unwrap();
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    );
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (code, head.to_string(), body)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            out.push_str(&after[..n.min(after.len())]);
            break;
        }
        out.push_str(&after[..n]);
        rest = after.get(n + 2..).unwrap_or("");
    }
    out
}

/// The value of the sample `series` (`name{labels}` as written) in a
/// `/metrics` text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

// --- The statically linked binary the package and the images are made of.

/// The statically linked `skos` (what `./test.sh` builds with
/// `dist/build-static.sh`): `SKOS_STATIC_BIN`, else the newest of this
/// target dir's `x86_64-unknown-linux-gnu/{dist,release,debug}/skos` that is
/// static.
pub fn static_skos() -> Result<PathBuf, skos_testsupport::require::Missing> {
    use skos_testsupport::require::Missing;
    if let Some(p) = std::env::var_os("SKOS_STATIC_BIN") {
        let p = PathBuf::from(p);
        skos_testsupport::podman::is_static(&p)?;
        return Ok(p);
    }
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    ["dist", "release", "debug"]
        .iter()
        .map(|profile| {
            target
                .join("x86_64-unknown-linux-gnu")
                .join(profile)
                .join("skos")
        })
        .filter(|p| skos_testsupport::podman::is_static(p).is_ok())
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .ok_or_else(|| {
            Missing(format!(
                "no statically linked skos: set SKOS_STATIC_BIN or build one with \
                 dist/build-static.sh (./test.sh does) into {}",
                target.display()
            ))
        })
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `dist/build-deb.sh BINARY OUT` with the package version `version`: the
/// path of the `.deb`.
pub fn build_deb(binary: &Path, out: &Path, version: &str) -> PathBuf {
    let mut build = Command::new(repo().join("dist/build-deb.sh"));
    build
        .arg(binary)
        .arg(out)
        .env("SKOS_DEB_VERSION", version)
        .env("SKOS_DEB_COMPRESSION", "gzip");
    let run = run_ok(build);
    PathBuf::from(String::from_utf8_lossy(&run.stdout).trim())
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
