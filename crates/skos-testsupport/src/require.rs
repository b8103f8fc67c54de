//! What a test needs from the machine, checked in one place.
//!
//! Some tests need root, a tmpfs mount, `/dev/net/tun` and wireguard-go,
//! a real cgroup, a tool such as `openssl` or `systemd-analyze`, or the
//! machine's own `/proc`. Each check here returns `Ok(value)` or
//! `Err(Missing)` with the reason; [`require()`] (or the [`crate::require!`] macro)
//! turns a failed check into either
//!
//! * a **failure** with the reason, when `SKOS_TEST_REQUIRE_ALL=1` is set
//!   (as `.ci/run` does: on CI a missing prerequisite is a defect of the
//!   setup, never a silent pass), or
//! * a **skip**: the test prints `SKIP <test>: <reason>` on stderr and
//!   returns without asserting anything, for a developer's machine that
//!   lacks root or a package.
//!
//! ```no_run
//! use skos_testsupport::require;
//! use skos_testsupport::tmpfs::Tmpfs;
//!
//! fn fills_a_real_filesystem() {
//!     let fs = require!("a tmpfs mount", Tmpfs::mount("8M", None));
//!     // ... fs.path() is a real tmpfs here
//! #   let _ = fs;
//! }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The environment variable that turns every skip into a failure.
pub const REQUIRE_ALL_ENV: &str = "SKOS_TEST_REQUIRE_ALL";

/// Why a prerequisite is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing(pub String);

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Missing {
    fn from(s: String) -> Self {
        Missing(s)
    }
}

impl From<&str> for Missing {
    fn from(s: &str) -> Self {
        Missing(s.to_string())
    }
}

/// Whether `SKOS_TEST_REQUIRE_ALL` asks for every prerequisite (`1`,
/// `true` or `yes`).
pub fn require_all() -> bool {
    std::env::var(REQUIRE_ALL_ENV)
        .map(|v| matches!(v.trim(), "1" | "true" | "yes"))
        .unwrap_or(false)
}

/// The outcome of a check for the test `test` needing `what`: the value
/// when it passed; when it failed, a panic naming the reason under
/// `SKOS_TEST_REQUIRE_ALL=1`, else `None` after printing `SKIP`.
pub fn require<T, E: fmt::Display>(test: &str, what: &str, check: Result<T, E>) -> Option<T> {
    match judge(require_all(), test, what, check) {
        Judged::Run(v) => Some(v),
        Judged::Skip(line) => {
            eprintln!("{line}");
            None
        }
        Judged::Fail(why) => panic!("{why}"),
    }
}

/// What [`require`] does with a check, decided without side effects.
#[derive(Debug, PartialEq, Eq)]
enum Judged<T> {
    Run(T),
    /// The line to print before skipping.
    Skip(String),
    /// The failure message.
    Fail(String),
}

fn judge<T, E: fmt::Display>(
    require_all: bool,
    test: &str,
    what: &str,
    check: Result<T, E>,
) -> Judged<T> {
    match check {
        Ok(v) => Judged::Run(v),
        Err(why) if require_all => Judged::Fail(format!(
            "{test} needs {what}, which is missing here: {why} \
             ({REQUIRE_ALL_ENV}=1 turns this skip into a failure)"
        )),
        Err(why) => Judged::Skip(format!("SKIP {test}: needs {what}: {why}")),
    }
}

/// `require!(what, check)`: the value of a passed check, or return from
/// the calling test (skip) or panic (under `SKOS_TEST_REQUIRE_ALL=1`),
/// as [`require`] says. The test is named by its thread (libtest names
/// each test's thread after the test), else by the calling module.
#[macro_export]
macro_rules! require {
    ($what:expr, $check:expr) => {
        match $crate::require::require(&$crate::require::test_name(module_path!()), $what, $check) {
            Some(v) => v,
            None => return,
        }
    };
}

/// The running test's name: its thread's name, or `fallback` on the main
/// thread.
pub fn test_name(fallback: &str) -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => fallback.to_string(),
    }
}

/// Root (effective uid 0).
pub fn root() -> Result<(), Missing> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        Err("not running as root".into())
    }
}

/// Whether `program` is on `PATH` (or in an sbin directory).
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
                .any(|d| d.join(program).is_file())
        })
        .unwrap_or(false)
}

/// A program that must run: `program args` exits (with any status). The
/// reason names the Debian package that brings it.
pub fn program(program: &str, args: &[&str], package: &str) -> Result<(), Missing> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|_| ())
        .map_err(|e| {
            Missing(format!(
                "cannot run {program} ({e}); ./test.sh installs the Debian package {package}"
            ))
        })
}

/// The machine's own procfs at `/proc` (not a container's stand-in):
/// `/proc/self` names this process.
pub fn live_procfs() -> Result<(), Missing> {
    let me = std::fs::read_link("/proc/self")
        .ok()
        .and_then(|t| t.to_str().and_then(|s| s.parse::<u32>().ok()));
    if me == Some(std::process::id()) {
        Ok(())
    } else {
        Err("/proc is not this machine's procfs (/proc/self does not name this process)".into())
    }
}

/// Real WireGuard tunnels between network namespaces (root, iproute2,
/// wireguard-tools, wireguard-go, `/dev/net/tun`).
pub fn wireguard() -> Result<(), Missing> {
    match crate::netns::unavailable() {
        None => Ok(()),
        Some(why) => Err(Missing(why)),
    }
}

/// The name of libfaketime's preload library for threaded programs.
const LIBFAKETIME: &str = "libfaketimeMT.so.1";

/// libfaketime (the Debian package `faketime`): the preload library that
/// shifts a process's wall clock (`LD_PRELOAD`, `FAKETIME="+1h"`). Returns
/// its path once it has been seen to move the clock of a child process by
/// an hour.
pub fn faketime() -> Result<PathBuf, Missing> {
    let mut dirs = vec![
        PathBuf::from("/usr/lib/faketime"),
        PathBuf::from("/usr/local/lib/faketime"),
    ];
    // The multiarch directories (`/usr/lib/x86_64-linux-gnu/faketime`).
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        dirs.extend(entries.flatten().map(|e| e.path().join("faketime")));
    }
    let lib = dirs
        .into_iter()
        .map(|d| d.join(LIBFAKETIME))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Missing(format!(
                "{LIBFAKETIME} not found; ./test.sh installs the Debian package faketime"
            ))
        })?;
    let out = Command::new("date")
        .arg("+%s")
        .env("LD_PRELOAD", &lib)
        .env("FAKETIME", "+1h")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Missing(format!("cannot run date under {}: {e}", lib.display())))?;
    let faked: i64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| Missing(format!("date under {} printed no time", lib.display())))?;
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if (faked - real - 3600).abs() > 60 {
        return Err(Missing(format!(
            "{} does not shift the clock here (date said {faked}, now is {real})",
            lib.display()
        )));
    }
    Ok(lib)
}

/// A file or device that must exist.
pub fn path(p: &Path, why_needed: &str) -> Result<(), Missing> {
    if p.exists() {
        Ok(())
    } else {
        Err(Missing(format!(
            "{} is missing ({why_needed})",
            p.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passed_check_gives_its_value() {
        assert_eq!(require("t", "x", Ok::<u8, Missing>(7)), Some(7));
    }

    #[test]
    fn a_failed_check_skips_or_fails_as_the_environment_says() {
        let gone = || Err::<(), _>(Missing("gone".into()));
        match judge(true, "t", "a thing", gone()) {
            Judged::Fail(msg) => {
                assert!(
                    msg.contains("t needs a thing") && msg.contains("gone"),
                    "{msg}"
                );
                assert!(msg.contains(REQUIRE_ALL_ENV), "{msg}");
            }
            other => panic!("must fail under {REQUIRE_ALL_ENV}: {other:?}"),
        }
        assert_eq!(
            judge(false, "t", "a thing", gone()),
            Judged::Skip("SKIP t: needs a thing: gone".into())
        );
        assert_eq!(judge(true, "t", "x", Ok::<u8, Missing>(7)), Judged::Run(7));
    }

    /// Every skip goes through this module: a test that prints its own
    /// "skip" and returns would pass silently under
    /// `SKOS_TEST_REQUIRE_ALL=1`.
    #[test]
    fn no_test_skips_on_its_own() {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let p = entry.path();
                // Not through symlinks: fixtures hold sysfs trees whose
                // links point back up.
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if is_dir && p.file_name().is_some_and(|n| n != "target") {
                    walk(&p, out);
                } else if p.extension().is_some_and(|e| e == "rs") {
                    out.push(p);
                }
            }
        }
        let crates = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .canonicalize()
            .unwrap();
        let mut files = Vec::new();
        walk(&crates, &mut files);
        assert!(
            files.len() > 50,
            "found {} files under {}",
            files.len(),
            crates.display()
        );
        let mut offenders = Vec::new();
        for f in files
            .iter()
            .filter(|f| !f.ends_with("skos-testsupport/src/require.rs"))
        {
            let text = std::fs::read_to_string(f).unwrap();
            // Test code: integration tests, test support, and the test
            // modules of everything else (a tool may report its own skips).
            let in_tests = f.components().any(|c| c.as_os_str() == "tests")
                || f.components().any(|c| c.as_os_str() == "skos-testsupport");
            let start = if in_tests {
                0
            } else {
                match text.find("#[cfg(test)]") {
                    Some(at) => text[..at].lines().count(),
                    None => continue,
                }
            };
            for (i, line) in text.lines().enumerate().skip(start) {
                let l = line.to_lowercase();
                if l.contains("eprintln!(") && (l.contains("\"skip") || l.contains("skipped:")) {
                    offenders.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "skips outside skos_testsupport::require:\n{}",
            offenders.join("\n")
        );
    }

    #[test]
    fn program_names_the_package() {
        let err = program("skos-no-such-program", &[], "skos-pkg").unwrap_err();
        assert!(err.0.contains("skos-pkg"), "{err}");
        assert!(program("sh", &["-c", "exit 3"], "dash").is_ok());
    }
}
