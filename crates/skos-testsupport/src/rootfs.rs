//! A throwaway Debian root standing in for another machine: what a package
//! or `skos install` is installed into, then inspected and thrown away.
//!
//! The root is `debootstrap --variant=minbase` of this machine's Debian
//! release from the mirror apt uses, with systemd (so it can also boot, in
//! a container: [`DebianRoot::tar`]), made once and kept as a tar in a
//! cache dir the test names (its `CARGO_TARGET_TMPDIR`, so it lives with
//! the build), then unpacked afresh for each test into a temp dir. Making
//! it takes a couple of minutes and needs root, `debootstrap` and the
//! mirror; [`DebianRoot::fresh`] says why when it cannot.
//!
//! Commands run in the root with `chroot`, in a mount namespace of their
//! own with `/proc` mounted (so nothing is left mounted whatever happens);
//! the network is the host's, so a process in the root reaches a
//! `nats-server` the test started on loopback.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::require::{on_path, Missing};

/// The mirror and the release: `SKOS_DEBOOTSTRAP_MIRROR` and
/// `SKOS_DEBOOTSTRAP_SUITE` when set, else the first Debian mirror in apt's
/// sources and this machine's `VERSION_CODENAME`.
pub fn mirror_and_suite() -> (String, String) {
    let mirror = std::env::var("SKOS_DEBOOTSTRAP_MIRROR")
        .ok()
        .unwrap_or_else(|| {
            let mut texts =
                vec![std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
            if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
                let mut paths: Vec<PathBuf> =
                    dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
                paths.sort();
                texts.extend(paths.iter().filter_map(|p| std::fs::read_to_string(p).ok()));
            }
            texts
                .iter()
                .flat_map(|t| t.lines())
                .filter_map(|l| {
                    let l = l.trim();
                    l.strip_prefix("URIs:")
                        .map(|u| u.split_whitespace().next().unwrap_or(""))
                        .or_else(|| {
                            l.strip_prefix("deb ")
                                .and_then(|r| r.split_whitespace().find(|w| w.contains("://")))
                        })
                })
                .find(|u| u.trim_end_matches('/').ends_with("/debian"))
                .unwrap_or("http://deb.debian.org/debian")
                .to_string()
        });
    let suite = std::env::var("SKOS_DEBOOTSTRAP_SUITE")
        .ok()
        .unwrap_or_else(|| {
            std::fs::read_to_string("/etc/os-release")
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
                .map(|s| s.trim_matches('"').to_string())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "bookworm".to_string())
        });
    (mirror, suite)
}

/// The cached tar of a minbase root with systemd in `cache`, made with
/// debootstrap when missing.
pub fn cached_tar(cache: &Path) -> Result<PathBuf, Missing> {
    crate::require::root()?;
    let (mirror, suite) = mirror_and_suite();
    let tar = cache.join(format!("debian-{suite}-minbase-systemd.tar"));
    if tar.is_file() {
        return Ok(tar);
    }
    if !on_path("debootstrap") {
        return Err(Missing(
            "debootstrap is not installed; ./test.sh installs the Debian package debootstrap"
                .into(),
        ));
    }
    std::fs::create_dir_all(cache).map_err(|e| Missing(format!("{}: {e}", cache.display())))?;
    // One debootstrap at a time: tests running at once wait for the first.
    let lock_path = cache.join("debootstrap.lock");
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| Missing(format!("{}: {e}", lock_path.display())))?;
    // SAFETY: flock on a file descriptor this function owns (released
    // when `lock` is dropped, at return).
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(Missing(format!(
            "{}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        )));
    }
    if tar.is_file() {
        return Ok(tar);
    }
    let work = tempfile::Builder::new()
        .prefix("debootstrap-")
        .tempdir_in(cache)
        .map_err(|e| Missing(format!("{}: {e}", cache.display())))?;
    let root = work.path().join("root");
    let out = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=systemd,systemd-sysv,dbus",
            &suite,
        ])
        .arg(&root)
        .arg(&mirror)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Missing(format!("cannot run debootstrap: {e}")))?;
    if !out.status.success() {
        return Err(Missing(format!(
            "debootstrap --variant=minbase {suite} from {mirror} failed ({}): {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stdout), 5)
        )));
    }
    let partial = work.path().join("root.tar");
    let status = Command::new("tar")
        .arg("--numeric-owner")
        .arg("-cf")
        .arg(&partial)
        .arg("-C")
        .arg(&root)
        .arg(".")
        .status()
        .map_err(|e| Missing(format!("cannot run tar: {e}")))?;
    if !status.success() {
        return Err(Missing(format!("tar of the debootstrap root: {status}")));
    }
    std::fs::rename(&partial, &tar).map_err(|e| Missing(format!("{}: {e}", tar.display())))?;
    Ok(tar)
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A Debian root unpacked into a temp dir; removed on drop.
pub struct DebianRoot {
    dir: tempfile::TempDir,
}

impl DebianRoot {
    /// A fresh root from the cache in `cache` (made first when missing).
    pub fn fresh(cache: &Path) -> Result<DebianRoot, Missing> {
        let tar = cached_tar(cache)?;
        let dir = tempfile::Builder::new()
            .prefix("skos-root-")
            .tempdir()
            .map_err(|e| Missing(format!("no temp dir: {e}")))?;
        let status = Command::new("tar")
            .args(["--numeric-owner", "-xpf"])
            .arg(&tar)
            .arg("-C")
            .arg(dir.path())
            .status()
            .map_err(|e| Missing(format!("cannot run tar: {e}")))?;
        if !status.success() {
            return Err(Missing(format!("unpacking {}: {status}", tar.display())));
        }
        Ok(DebianRoot { dir })
    }

    /// The root as a tar stream (for `podman import`): its files as they are
    /// now, owners kept.
    pub fn tar(&self) -> Command {
        let mut c = Command::new("tar");
        c.args(["--numeric-owner", "-C"])
            .arg(self.dir.path())
            .args(["-c", "."]);
        c
    }

    /// The root dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `rel` (an absolute path inside the root) as a path outside it.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel.trim_start_matches('/'))
    }

    /// The line of `name` in the root's colon-separated database `db`
    /// (`/etc/passwd`, `/etc/group`), if it has one. Panics when the file
    /// cannot be read (a test helper).
    pub fn entry(&self, db: &str, name: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.join(db))
            .unwrap_or_else(|e| panic!("{db} in the root: {e}"));
        let prefix = format!("{name}:");
        text.lines()
            .find(|l| l.starts_with(&prefix))
            .map(str::to_string)
    }

    /// The gid of group `name` in the root, if it has the group.
    pub fn gid(&self, name: &str) -> Option<String> {
        self.entry("/etc/group", name)
            .and_then(|l| l.split(':').nth(2).map(str::to_string))
    }

    /// A command run inside the root, as `user` (`name` or `uid:gid`) when
    /// given: `chroot` in a mount namespace of its own with `/proc`
    /// mounted (gone with the process). Each step `exec`s the next, so the
    /// child's pid is the command's own: a signal to it reaches the command.
    pub fn command(&self, user: Option<&str>, argv: &[&str]) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private"])
            .arg("sh")
            .arg("-c")
            .arg(r#"root=$1; shift; mount -t proc proc "$root/proc" && exec chroot "$@""#)
            .arg("sh")
            .arg(self.dir.path());
        if let Some(u) = user {
            c.arg(format!("--userspec={u}"));
        }
        c.arg(self.dir.path())
            .args(["/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
            .args(argv)
            .stdin(Stdio::null());
        c
    }

    /// Run `argv` as root inside the root and wait for it.
    pub fn run(&self, argv: &[&str]) -> Output {
        match self.command(None, argv).output() {
            Ok(out) => out,
            Err(e) => panic!("cannot run {argv:?} in {}: {e}", self.dir.path().display()),
        }
    }

    /// Every path in the root (relative, sorted), but those under `skip`
    /// (relative prefixes such as `var/lib/dpkg`): what a package left.
    pub fn paths(&self, skip: &[&str]) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut stack = vec![self.dir.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                let rel = p
                    .strip_prefix(self.dir.path())
                    .map(|r| r.to_string_lossy().to_string())
                    .unwrap_or_default();
                if rel == "proc" || skip.iter().any(|s| rel.starts_with(s)) {
                    continue;
                }
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(p);
                }
                out.insert(rel);
            }
        }
        out
    }
}
