//! `skos install`: put this binary, the systemd units, a config, the `skos`
//! system user and the data dirs on a machine, the same layout the units
//! in `dist/systemd/` expect; `--uninstall` takes them away again.
//!
//! Every step compares what is there with what should be and changes only
//! what differs, so a second run changes nothing and says so. Nothing an
//! operator wrote is replaced: an existing `/etc/skos/config.yaml` is kept
//! as it is, and `--uninstall` keeps the config, the data dirs and the user
//! unless `--purge` is given.
//!
//! `--root DIR` does all of it inside DIR (a chroot, an image being built,
//! a mounted disk): the paths are taken under DIR, the user is added with
//! `useradd --root DIR`, and systemd is not asked to reload or start
//! anything. On the running system (`/`), systemd is told to reload its
//! units when it runs (`/run/systemd/system` exists), and `--enable`
//! enables and starts the named units.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use skos_core::escape::ShowPath;

/// Where the binary goes: the path the units' `ExecStart` names.
pub const BINARY: &str = "usr/local/bin/skos";
/// Where the lean agent binary goes, when a unit runs it and it is at hand.
pub const AGENT_BINARY: &str = "usr/local/bin/skos-agent";
/// Where the units go (the administrator's unit dir).
pub const UNIT_DIR: &str = "etc/systemd/system";
/// The config the units point at (`SKOS_CONFIG`).
pub const CONFIG: &str = "etc/skos/config.yaml";
/// The coordinator's data dir (`StateDirectory=skos`), owned by `skos`.
pub const COORDINATOR_DATA: &str = "var/lib/skos";
/// The agent's data dir (`StateDirectory=skos-agent`), owned by root.
pub const AGENT_DATA: &str = "var/lib/skos-agent";
/// The system user the coordinator runs as.
pub const USER: &str = "skos";
/// Where it is noted that the `skos` user was made here (by `skos install`
/// or the package), in root's data dir: a purge takes only such a user.
pub const MADE_USER: &str = "var/lib/skos-agent/.made-user";

/// The shipped units, by file name.
pub const UNITS: [(&str, &str); 2] = [
    (
        "skos-coordinator.service",
        include_str!("../../../dist/systemd/skos-coordinator.service"),
    ),
    (
        "skos-agent.service",
        include_str!("../../../dist/systemd/skos-agent.service"),
    ),
];

/// The example config, installed when there is none.
pub const EXAMPLE_CONFIG: &str = include_str!("../../../config.example.yaml");

/// A unit `--enable` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// `skos-coordinator.service`.
    Coordinator,
    /// `skos-agent.service`.
    Agent,
}

impl Role {
    /// The unit's file name.
    pub fn unit(self) -> &'static str {
        match self {
            Role::Coordinator => "skos-coordinator.service",
            Role::Agent => "skos-agent.service",
        }
    }
}

/// What `skos install` was asked to do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The root everything goes under (`/` for this machine).
    pub root: PathBuf,
    /// The binary to install (this one, when not given).
    pub binary: PathBuf,
    /// The lean agent binary, for a unit that runs `skos-agent`; without
    /// it, such a unit runs `skos agent` from [`Plan::binary`].
    pub agent_binary: Option<PathBuf>,
    /// A config to install instead of the example (only where there is none).
    pub config: Option<PathBuf>,
    /// Units to enable and start (only on `/`, with systemd running).
    pub enable: Vec<Role>,
}

/// Why a step failed: each names the path or the command.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file or dir could not be read, written, moved or removed.
    #[error("{path}: {source}")]
    Io {
        /// The path, escaped for printing.
        path: String,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A command (useradd, userdel, systemctl) could not run or failed.
    #[error("{command} failed: {detail}")]
    Command {
        /// The command line, as run.
        command: String,
        /// Its exit status and what it printed on stderr.
        detail: String,
    },
    /// `/etc/passwd` under the root has no `skos` user after adding it.
    #[error("{path}: no user {USER} after useradd")]
    NoUser {
        /// The passwd file.
        path: String,
    },
    /// A path is there but is not what the step may take over.
    #[error("{path}: {why}")]
    Refused {
        /// The path, escaped for printing.
        path: String,
        /// What is wrong with it and what to do.
        why: String,
    },
    /// Installing needs root (files under /usr and /etc, a system user).
    #[error("skos install needs root (uid 0); run it with sudo")]
    NotRoot,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.escaped().to_string(),
        source,
    }
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Created or replaced.
    Installed,
    /// Already as it should be.
    Unchanged,
    /// Taken away.
    Removed,
    /// Not there to take away, or kept on purpose.
    Kept,
}

/// One line of the report: a change to one thing (a path, the user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What was changed.
    pub change: Change,
    /// The path or the user, as printed.
    pub what: String,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = match self.change {
            Change::Installed => "installed",
            Change::Unchanged => "unchanged",
            Change::Removed => "removed  ",
            Change::Kept => "kept     ",
        };
        write!(f, "{word} {}", self.what)
    }
}

/// A unit's text as installed: where it runs the lean agent binary
/// (`/usr/local/bin/skos-agent`) and none is installed, `skos agent` from
/// the full binary instead (the same agent). A pure function.
pub fn unit_text(text: &str, with_agent_binary: bool) -> String {
    let lean = format!("ExecStart=/{AGENT_BINARY}");
    if with_agent_binary {
        return text.to_string();
    }
    text.lines()
        .map(|line| match line.strip_prefix(lean.as_str()) {
            Some(rest) => format!("ExecStart=/{BINARY} agent{rest}"),
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + if text.ends_with('\n') { "\n" } else { "" }
}

/// Whether a group file's text (`name:x:gid:members`) has `name`. A pure
/// parser.
pub fn group_exists(group: &str, name: &str) -> bool {
    group
        .lines()
        .any(|line| line.split(':').next() == Some(name))
}

/// A user's uid and gid from a passwd file's text (`name:x:uid:gid:...`),
/// or `None` when it has no such user. A pure parser.
pub fn passwd_ids(passwd: &str, user: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == user).then_some(())?;
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

struct Installer {
    root: PathBuf,
    steps: Vec<Step>,
}

impl Installer {
    fn at(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn shown(rel: &str) -> String {
        format!("/{rel}")
    }

    fn note(&mut self, change: Change, what: String) {
        self.steps.push(Step { change, what });
    }

    /// Write `bytes` to `rel` with `mode` (through a temp file in the same
    /// dir and a rename) unless it already holds them with that mode.
    fn file(&mut self, rel: &str, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
        let path = self.at(rel);
        // A link is replaced by the file (the rename below), never
        // followed: what it points at is left as it is.
        if let Ok(meta) = fs::symlink_metadata(&path) {
            if meta.is_file() && meta.mode() & 0o7777 == mode && same_content(&path, bytes)? {
                self.note(Change::Unchanged, Self::shown(rel));
                return Ok(());
            }
        }
        let dir = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let tmp = dir.join(format!(
            ".{}.skos-install",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("new")
        ));
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        self.note(Change::Installed, Self::shown(rel));
        Ok(())
    }

    /// Make `rel` a dir owned by `uid:gid` with `mode`, fixing owner and
    /// mode of one that exists. One that is not a dir (a link, a file) or
    /// that another user owns (neither root nor `uid`) is refused: it is
    /// not followed, and what another user put in it is not handed over.
    fn dir(&mut self, rel: &str, uid: u32, gid: u32, mode: u32) -> Result<(), InstallError> {
        let path = self.at(rel);
        let before = fs::symlink_metadata(&path).ok();
        if let Some(meta) = &before {
            if !meta.is_dir() {
                return Err(InstallError::Refused {
                    path: path.escaped().to_string(),
                    why: "not a dir (a link or a file); remove it and run again".into(),
                });
            }
            if meta.uid() != 0 && meta.uid() != uid {
                return Err(InstallError::Refused {
                    path: path.escaped().to_string(),
                    why: format!(
                        "owned by uid {}, not root or {USER}; remove it or chown it and run again",
                        meta.uid()
                    ),
                });
            }
            if meta.uid() == uid && meta.gid() == gid && meta.mode() & 0o7777 == mode {
                self.note(Change::Unchanged, Self::shown(rel));
                return Ok(());
            }
        }
        if before.is_none() {
            fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(io_err(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err(&path))?;
        self.note(Change::Installed, Self::shown(rel));
        Ok(())
    }

    fn passwd(&self) -> Result<String, InstallError> {
        let path = self.at("etc/passwd");
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The `skos` system user and group (added with `useradd` when missing,
    /// in a `skos` group already there if there is one): no login, home the
    /// coordinator's data dir. Returns its ids and whether it was added.
    fn user(&mut self) -> Result<(u32, u32, bool), InstallError> {
        if let Some((uid, gid)) = passwd_ids(&self.passwd()?, USER) {
            self.note(Change::Unchanged, format!("user {USER}"));
            return Ok((uid, gid, false));
        }
        let group_path = self.at("etc/group");
        let groups = match fs::read_to_string(&group_path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err(&group_path)(e)),
        };
        let mut cmd = Command::new("useradd");
        if self.root != Path::new("/") {
            cmd.arg("--root").arg(&self.root);
        }
        // useradd --user-group refuses a group name already taken.
        if group_exists(&groups, USER) {
            cmd.args(["--gid", USER]);
        } else {
            cmd.arg("--user-group");
        }
        cmd.args([
            "--system",
            "--no-create-home",
            "--home-dir",
            "/var/lib/skos",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "SKOS coordinator",
            USER,
        ]);
        run(cmd)?;
        let ids = passwd_ids(&self.passwd()?, USER).ok_or_else(|| InstallError::NoUser {
            path: self.at("etc/passwd").escaped().to_string(),
        })?;
        self.note(Change::Installed, format!("user {USER}"));
        Ok((ids.0, ids.1, true))
    }

    fn remove_file(&mut self, rel: &str) -> Result<(), InstallError> {
        let path = self.at(rel);
        match fs::remove_file(&path) {
            Ok(()) => self.note(Change::Removed, Self::shown(rel)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        Ok(())
    }

    fn remove_tree(&mut self, rel: &str) -> Result<(), InstallError> {
        let path = self.at(rel);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&path)(e)),
            Ok(_) => {}
        }
        fs::remove_dir_all(&path).map_err(io_err(&path))?;
        self.note(Change::Removed, Self::shown(rel));
        Ok(())
    }

    /// Remove `rel` if it is an empty dir.
    fn remove_empty_dir(&mut self, rel: &str) {
        if fs::remove_dir(self.at(rel)).is_ok() {
            self.note(Change::Removed, Self::shown(rel));
        }
    }
}

fn same_content(path: &Path, bytes: &[u8]) -> Result<bool, InstallError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    if len != bytes.len() as u64 {
        return Ok(false);
    }
    let mut have = Vec::with_capacity(bytes.len());
    f.read_to_end(&mut have).map_err(io_err(path))?;
    Ok(have == bytes)
}

fn run(mut cmd: Command) -> Result<(), InstallError> {
    let line = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| InstallError::Command {
            command: line.clone(),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(InstallError::Command {
        command: line,
        detail: format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}

/// Whether systemd runs this machine (its runtime dir exists).
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) -> Result<(), InstallError> {
    let mut cmd = Command::new("systemctl");
    cmd.args(args);
    run(cmd)
}

/// The root as an absolute path without `.`, `..` or links (`useradd
/// --root` takes only absolute paths, and `/` must be recognised however
/// it is spelt).
fn resolve_root(root: &Path) -> Result<PathBuf, InstallError> {
    fs::canonicalize(root).map_err(io_err(root))
}

fn check_root() -> Result<(), InstallError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(InstallError::NotRoot);
    }
    Ok(())
}

/// Install (or bring up to date) everything under `plan.root`. Returns
/// each step with what it changed.
///
/// # Errors
/// The first step that fails, with its path or command; the steps before
/// it stay done (running again finishes the rest).
pub fn install(plan: &Plan) -> Result<Vec<Step>, InstallError> {
    check_root()?;
    let root = resolve_root(&plan.root)?;
    let mut i = Installer {
        root: root.clone(),
        steps: Vec::new(),
    };
    let binary = fs::read(&plan.binary).map_err(io_err(&plan.binary))?;
    i.file(BINARY, &binary, 0o755)?;
    let lean_unit = UNITS
        .iter()
        .any(|(_, text)| text.contains(&format!("ExecStart=/{AGENT_BINARY}")));
    let agent_binary = plan.agent_binary.as_ref().filter(|_| lean_unit);
    if let Some(path) = agent_binary {
        let bytes = fs::read(path).map_err(io_err(path))?;
        i.file(AGENT_BINARY, &bytes, 0o755)?;
    }
    for (name, text) in UNITS {
        let text = unit_text(text, agent_binary.is_some());
        i.file(&format!("{UNIT_DIR}/{name}"), text.as_bytes(), 0o644)?;
    }
    let (uid, gid, made_user) = i.user()?;
    i.dir("etc/skos", 0, gid, 0o750)?;
    let config = i.at(CONFIG);
    if fs::symlink_metadata(&config).is_ok() {
        i.note(Change::Kept, Installer::shown(CONFIG));
    } else {
        let text = match &plan.config {
            Some(p) => fs::read(p).map_err(io_err(p))?,
            None => EXAMPLE_CONFIG.as_bytes().to_vec(),
        };
        // Readable by the coordinator's group, written by root only.
        i.file(CONFIG, &text, 0o640)?;
        std::os::unix::fs::lchown(&config, Some(0), Some(gid)).map_err(io_err(&config))?;
    }
    i.dir(COORDINATOR_DATA, uid, gid, 0o700)?;
    i.dir(AGENT_DATA, 0, 0, 0o700)?;
    if made_user {
        let marker = i.at(MADE_USER);
        fs::write(&marker, b"").map_err(io_err(&marker))?;
    }
    if root == Path::new("/") && systemd_running() {
        systemctl(&["daemon-reload"])?;
        for role in &plan.enable {
            systemctl(&["enable", "--now", role.unit()])?;
            i.note(
                Change::Installed,
                format!("enabled and started {}", role.unit()),
            );
        }
    } else {
        // Said, not left to be assumed: nothing was enabled.
        let why = if root == Path::new("/") {
            "systemd does not run this machine"
        } else {
            "--root is not /"
        };
        for role in &plan.enable {
            i.note(Change::Kept, format!("{} not enabled: {why}", role.unit()));
        }
    }
    Ok(i.steps)
}

/// Take away what [`install`] put under `root`: the units (stopped and
/// disabled first when systemd runs `/`) and the binary; with `purge`,
/// also the config, the data dirs and the user (only one that `skos
/// install` or the package made: [`MADE_USER`]). Returns each step.
///
/// # Errors
/// The first step that fails, with its path or command.
pub fn uninstall(root: &Path, purge: bool) -> Result<Vec<Step>, InstallError> {
    check_root()?;
    let root = &resolve_root(root)?;
    let mut i = Installer {
        root: root.to_path_buf(),
        steps: Vec::new(),
    };
    let live = root == Path::new("/") && systemd_running();
    for (name, _) in UNITS {
        if live && i.at(&format!("{UNIT_DIR}/{name}")).exists() {
            systemctl(&["disable", "--now", name])?;
        }
        i.remove_file(&format!("{UNIT_DIR}/{name}"))?;
    }
    if live {
        systemctl(&["daemon-reload"])?;
    }
    i.remove_file(BINARY)?;
    i.remove_file(AGENT_BINARY)?;
    if !purge {
        for kept in [CONFIG, COORDINATOR_DATA, AGENT_DATA] {
            if i.at(kept).exists() {
                i.note(Change::Kept, Installer::shown(kept));
            }
        }
        if passwd_ids(&i.passwd()?, USER).is_some() {
            i.note(Change::Kept, format!("user {USER}"));
        }
        return Ok(i.steps);
    }
    // The user goes only if it was made here: one the machine had stays.
    let made_user = fs::symlink_metadata(i.at(MADE_USER)).is_ok_and(|m| m.is_file());
    i.remove_file(CONFIG)?;
    i.remove_empty_dir("etc/skos");
    i.remove_tree(COORDINATOR_DATA)?;
    i.remove_tree(AGENT_DATA)?;
    if passwd_ids(&i.passwd()?, USER).is_some() && !made_user {
        i.note(Change::Kept, format!("user {USER}"));
    } else if passwd_ids(&i.passwd()?, USER).is_some() {
        let mut cmd = Command::new("userdel");
        if root != Path::new("/") {
            cmd.arg("--root").arg(root);
        }
        cmd.arg(USER);
        run(cmd)?;
        i.note(Change::Removed, format!("user {USER}"));
    }
    Ok(i.steps)
}

/// `skos install`: run [`install`] or [`uninstall`] and print each step.
pub fn command(plan: &Plan, uninstall_it: bool, purge: bool) -> anyhow::Result<ExitCode> {
    let steps = if uninstall_it {
        uninstall(&plan.root, purge)?
    } else {
        install(plan)?
    };
    let mut out = io::stdout().lock();
    for step in &steps {
        writeln!(out, "{step}")?;
    }
    if !uninstall_it && plan.enable.is_empty() {
        writeln!(
            out,
            "next: edit /{CONFIG} (node.name, nats.url), then \
             systemctl enable --now skos-agent (and skos-coordinator where it runs)"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_ids_finds_the_user_and_only_it() {
        let text = "root:x:0:0:root:/root:/bin/bash\nskosx:x:5:5::/:/bin/false\n\
                    skos:x:999:998:SKOS coordinator:/var/lib/skos:/usr/sbin/nologin\n";
        assert_eq!(passwd_ids(text, "skos"), Some((999, 998)));
        assert_eq!(passwd_ids(text, "root"), Some((0, 0)));
        assert_eq!(passwd_ids(text, "nobody"), None);
        assert_eq!(passwd_ids("skos:x:notanumber:1::/:\n", "skos"), None);
        let group = "root:x:0:\nskosx:x:5:\nskos:x:998:\n";
        assert!(group_exists(group, "skos") && group_exists(group, "root"));
        assert!(!group_exists(group, "sko") && !group_exists("", "skos"));
    }

    #[test]
    fn the_units_run_the_installed_binary_with_the_installed_paths() {
        for (name, text) in UNITS {
            let text = unit_text(text, false);
            assert!(
                text.contains(&format!("ExecStart=/{BINARY} ")),
                "{name}: ExecStart"
            );
            assert!(text.contains(&format!("SKOS_CONFIG=/{CONFIG}")), "{name}");
        }
        assert!(UNITS[0]
            .1
            .contains(&format!("SKOS_DATA_DIR=/{COORDINATOR_DATA}")));
        assert!(UNITS[0].1.contains(&format!("User={USER}")));
        assert!(UNITS[1].1.contains(&format!("SKOS_DATA_DIR=/{AGENT_DATA}")));
    }

    #[test]
    fn a_unit_running_the_lean_agent_runs_skos_agent_without_it() {
        let unit = "[Service]\nExecStart=/usr/local/bin/skos-agent --flag\nRestart=on-failure\n";
        assert_eq!(unit_text(unit, true), unit);
        assert_eq!(
            unit_text(unit, false),
            "[Service]\nExecStart=/usr/local/bin/skos agent --flag\nRestart=on-failure\n"
        );
        let full = "ExecStart=/usr/local/bin/skos agent\n";
        assert_eq!(unit_text(full, false), full);
    }
}
