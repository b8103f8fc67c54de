//! The live page in a real headless browser (Debian's `chromium`, driven
//! over the DevTools protocol on a pipe): loaded once, it shows a node a
//! test heats, its throttle and the throttle's verification, without a
//! reload.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use skos_testsupport::cpufreq::fake_cpufreq;
use skos_testsupport::sysfs::FakeSysfs;

/// A pipe whose ends are numbered 10 or above (so that putting them at 3
/// and 4 in the child never lands one on the other), close-on-exec.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let high = |fd: RawFd| {
        // SAFETY: `fd` was just opened here; F_DUPFD_CLOEXEC returns a new fd.
        let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        assert!(new >= 10);
        // SAFETY: `fd` is ours and closed once.
        unsafe { libc::close(fd) };
        // SAFETY: `new` is a fresh fd owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(new) }
    };
    (high(fds[0]), high(fds[1]))
}

/// A headless browser and one page in it, spoken to over
/// `--remote-debugging-pipe` (fd 3: commands in, fd 4: answers out).
struct Browser {
    child: Child,
    to: std::fs::File,
    from: mpsc::Receiver<Value>,
    id: u64,
    session: Option<String>,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn start(program: &str) -> Browser {
        use std::os::fd::AsRawFd;
        let profile = tempfile::tempdir().unwrap();
        let (cmd_read, cmd_write) = pipe();
        let (out_read, out_write) = pipe();
        let (r, w) = (cmd_read.as_raw_fd(), out_write.as_raw_fd());
        let mut c = Command::new(program);
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only dup2 between fork and exec (async-signal-safe).
        unsafe {
            c.pre_exec(move || {
                if libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = c.spawn().unwrap();
        drop((cmd_read, out_write));
        let (tx, from) = mpsc::channel();
        let reader = std::fs::File::from(out_read);
        std::thread::spawn(move || {
            let mut r = BufReader::new(reader);
            let mut buf = Vec::new();
            while r.read_until(0, &mut buf).is_ok_and(|n| n > 0) {
                buf.pop();
                if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
                buf.clear();
            }
        });
        Browser {
            child,
            to: std::fs::File::from(cmd_write),
            from,
            id: 0,
            session: None,
            _profile: profile,
        }
    }

    /// One DevTools call (to the page once attached); its `result`.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.id += 1;
        let mut msg = json!({"id": self.id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        loop {
            let m = self
                .from
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no answer to {method}"));
            if m["id"] == self.id {
                assert!(m.get("error").is_none(), "{method}: {m}");
                return m["result"].clone();
            }
        }
    }

    /// Open `url` in a new page and speak to it from now on.
    fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({"url": url}));
        let attached = self.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        self.session = attached["sessionId"].as_str().map(str::to_string);
        assert!(self.session.is_some(), "{attached}");
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }

    /// The text of the first element `selector` matches ("" when none).
    fn text(&mut self, selector: &str) -> String {
        let sel = serde_json::to_string(selector).unwrap();
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); return e ? e.innerText : ''; }})()"
        ))
        .as_str()
        .unwrap_or_default()
        .to_string()
    }
}

fn chromium() -> Result<&'static str, String> {
    ["chromium", "chromium-browser"]
        .into_iter()
        .find(|p| skos_testsupport::require::on_path(p))
        .ok_or_else(|| "no chromium on PATH; ./test.sh installs the Debian package chromium".into())
}

#[test]
fn the_live_page_shows_a_heated_node_its_throttle_and_verification_without_a_reload() {
    let program = skos_testsupport::require!("headless chromium", chromium());
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(60.0, &[58.0, 57.0]);
    fake_cpufreq(sys.root(), 4, 800_000, 3_600_000);
    let token = work.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    let cfg = fast_config(
        work.path(),
        &format!(
            "  actions: {{warning: [throttle_10], critical: [throttle_50], emergency: [throttle_50]}}\nhttp:\n  token_file: {}\n",
            token.display()
        ),
    );
    // A workload at home on nova (busybox's HTTP server, when the machine
    // has a static busybox): the page lists where it runs.
    let web = skos_testsupport::podman::static_busybox().is_ok().then(|| {
        let www = work.path().join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), "ok\n").unwrap();
        let port = skos_testsupport::podman::free_port();
        let text = std::fs::read_to_string(&cfg).unwrap().replacen(
            "agent:\n",
            "agent:\n  antibodies: [thermal_sentinel, workloads]\n",
            1,
        ) + &format!(
            "nodes: {{nova: {{services: [web]}}}}\nworkloads:\n  web:\n    driver: process\n    command: [/bin/busybox, httpd, -f, -p, \"127.0.0.1:{port}\", -h, \"{}\"]\n    health: {{http: \"http://127.0.0.1:{port}/\"}}\n",
            www.display()
        );
        std::fs::write(&cfg, text).unwrap();
    });
    let mut c = skos();
    c.arg("up")
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(work.path().join("data"))
        .args(["--http", "127.0.0.1:0"])
        .env("SKOS_SYSFS_ROOT", sys.root())
        .env("NODE_NAME", "nova");
    let up = Proc::spawn(c, work.path(), "skos-up");
    let addr = http_addr(&up);

    let mut b = Browser::start(program);
    b.open(&format!("http://{addr}/"));
    let row = r#"#nodes tr[data-node="nova"]"#;
    wait_for(
        Duration::from_secs(30),
        "nova healthy at 60 °C on the page",
        || {
            let t = b.text(row);
            (t.contains("healthy") && t.contains("60.0")).then_some(())
        },
    );
    if web.is_some() {
        wait_for(Duration::from_secs(30), "the workload on the page", || {
            let t = b
                .text(r#"#workloads tr[data-workload="web"][data-at="nova"][data-state="placed"]"#);
            t.contains("web").then_some(())
        });
    }
    wait_for(Duration::from_secs(10), "the event stream live", || {
        (b.text("#live") == "live").then_some(())
    });
    let loaded = b.eval("performance.timeOrigin");

    cpu.heat(87.0);
    wait_for(
        Duration::from_secs(30),
        "nova critical at 87 °C on the page",
        || {
            let t = b.text(row);
            (t.contains("critical") && t.contains("87.0")).then_some(())
        },
    );
    wait_for(Duration::from_secs(30), "the throttle on the page", || {
        let t = b.text(r#"#actions tr[data-action="throttle_50"]"#);
        (!t.is_empty()).then_some(())
    });
    let alert = b.text(r#"#alerts tr[data-node="nova"]"#);
    assert!(alert.contains("critical"), "{alert}");

    cpu.heat(60.0);
    wait_for(
        Duration::from_secs(60),
        "the throttle verified on the page",
        || {
            let t = b.text(r#"#actions tr[data-action="throttle_50"][data-state="verified"]"#);
            (!t.is_empty()).then_some(())
        },
    );
    // The audit rows come from the event stream only (the page reads the
    // trail once, at load).
    let v = b.text(r#"#audit tr[data-event="verification"]"#);
    assert!(v.contains("throttle_50"), "{v}");
    // A silence shows on the page as it is added, holding.
    let out = run({
        let mut c = skos();
        c.args([
            "silence",
            "add",
            "--node",
            "nova",
            "--kind",
            "thermal",
            "--for",
            "1h",
            "--comment",
            "fan swap",
            "--by",
            "ana",
            "--json",
            "--http",
            &addr.to_string(),
            "--config",
        ])
        .arg(&cfg);
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = added["silences"][0]["id"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(30), "the silence on the page", || {
        let t = b.text(&format!(
            r#"#silences tr[data-silence="{id}"][data-holding="yes"]"#
        ));
        (t.contains("fan swap") && t.contains("holding until")).then_some(())
    });
    assert_eq!(
        b.eval("performance.timeOrigin"),
        loaded,
        "the page was reloaded"
    );
}
