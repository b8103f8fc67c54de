//! A real container engine per test: Podman's Docker-compatible API
//! (`podman system service`) on a socket in a temp dir, with its own
//! storage there, and images built `FROM scratch` with the static
//! `/bin/busybox` (no registry is reached). Every container and image is
//! removed, and the service stopped, on drop.
//!
//! What works on machines without Docker's daemon or a registry (Debian's
//! podman 4.3): the `runc` runtime, `default_ulimits = []`, the `vfs`
//! storage driver, and `--network host` for the containers.
//!
//! ```no_run
//! use skos_testsupport::podman::Podman;
//! use skos_testsupport::require;
//!
//! fn runs_a_container() {
//!     let engine = require!("podman", Podman::start());
//!     let image = engine.busybox_image("web", &[("www/index.html", "ok\n")]).unwrap();
//!     // engine.docker_host() for the Docker Engine API, image for its name
//! #   let _ = image;
//! }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::require::{on_path, Missing};

/// The static busybox that test images are built from.
pub const BUSYBOX: &str = "/bin/busybox";

/// A running `podman system service` with storage of its own.
pub struct Podman {
    dir: tempfile::TempDir,
    service: Child,
    socket: PathBuf,
    /// The network namespace the service runs in, if not this process's.
    netns: Option<String>,
}

/// What this machine needs for [`Podman::start`]: podman, runc and the
/// static busybox, each named with the package that brings it.
pub fn available() -> Result<(), Missing> {
    for (tool, package) in [("podman", "podman"), ("runc", "runc")] {
        if !on_path(tool) {
            return Err(Missing(format!(
                "{tool} is not installed; ./test.sh installs the Debian package {package}"
            )));
        }
    }
    static_busybox()
}

/// The static busybox at [`BUSYBOX`] (a dynamically linked one cannot
/// run in an image `FROM scratch`).
pub fn static_busybox() -> Result<(), Missing> {
    let bytes = std::fs::read(BUSYBOX).map_err(|e| {
        Missing(format!(
            "{BUSYBOX}: {e}; ./test.sh installs the Debian package busybox-static"
        ))
    })?;
    if has_interpreter(&bytes) {
        return Err(Missing(format!(
            "{BUSYBOX} is dynamically linked; ./test.sh installs the Debian package busybox-static"
        )));
    }
    Ok(())
}

impl Podman {
    /// Start the service on `<tempdir>/podman.sock`, waiting (at most a
    /// minute) until it answers.
    pub fn start() -> Result<Podman, Missing> {
        Self::start_in(None)
    }

    /// [`Podman::start`], the service (and so every container it runs
    /// with `--network host`) inside the network namespace `netns`.
    pub fn start_in_netns(netns: &str) -> Result<Podman, Missing> {
        Self::start_in(Some(netns.to_string()))
    }

    fn start_in(netns: Option<String>) -> Result<Podman, Missing> {
        available()?;
        let dir = tempfile::Builder::new()
            .prefix("skos-podman-")
            .tempdir()
            .map_err(|e| Missing(format!("no temp dir: {e}")))?;
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n[engine]\nruntime = \"runc\"\n",
        )
        .map_err(|e| Missing(format!("containers.conf: {e}")))?;
        let socket = dir.path().join("podman.sock");
        let log = std::fs::File::create(dir.path().join("service.log"))
            .map_err(|e| Missing(format!("service log: {e}")))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Missing(format!("service log: {e}")))?;
        let mut cmd = podman_command(dir.path(), netns.as_deref());
        let service = cmd
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| Missing(format!("cannot run podman system service: {e}")))?;
        let mut engine = Podman {
            dir,
            service,
            socket,
            netns,
        };
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if engine.answers() {
                return Ok(engine);
            }
            if let Ok(Some(status)) = engine.service.try_wait() {
                return Err(Missing(format!(
                    "podman system service exited ({status}): {}",
                    engine.service_log()
                )));
            }
            if Instant::now() >= until {
                return Err(Missing(format!(
                    "podman system service did not answer within a minute: {}",
                    engine.service_log()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the API answers `GET /version`.
    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.socket) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"GET /version HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut head = [0u8; 12];
        s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
    }

    /// What the service logged.
    pub fn service_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }

    /// The API's address for a Docker client (`unix:///tmp/.../podman.sock`).
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// `podman` with this engine's storage and configuration.
    pub fn podman(&self) -> Command {
        podman_command(self.dir.path(), self.netns.as_deref())
    }

    /// Build `localhost/skos-test-<name>` `FROM scratch`: `/bin/busybox`
    /// and `files` (path in the image, content). Returns the image's name.
    pub fn busybox_image(&self, name: &str, files: &[(&str, &str)]) -> Result<String, String> {
        let ctx = self.dir.path().join(format!("image-{name}"));
        std::fs::create_dir_all(&ctx).map_err(|e| format!("{}: {e}", ctx.display()))?;
        std::fs::copy(BUSYBOX, ctx.join("busybox")).map_err(|e| format!("{BUSYBOX}: {e}"))?;
        let mut containerfile = String::from("FROM scratch\nCOPY busybox /bin/busybox\n");
        for (i, (path, content)) in files.iter().enumerate() {
            let local = format!("file{i}");
            std::fs::write(ctx.join(&local), content).map_err(|e| format!("{local}: {e}"))?;
            containerfile.push_str(&format!("COPY {local} /{}\n", path.trim_start_matches('/')));
        }
        containerfile.push_str("CMD [\"/bin/busybox\", \"sleep\", \"3600\"]\n");
        std::fs::write(ctx.join("Containerfile"), containerfile)
            .map_err(|e| format!("Containerfile: {e}"))?;
        let image = format!("localhost/skos-test-{name}");
        let out = self
            .podman()
            .args(["build", "-q", "-t", &image])
            .arg(&ctx)
            .output()
            .map_err(|e| format!("podman build: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "podman build {image}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(image)
    }

    /// A shell script running `podman` with this engine's storage and
    /// configuration, for tools that take a podman command
    /// (`podman-compose --podman-path`, `PODMAN=`). Written once into the
    /// engine's dir; removed with it.
    pub fn wrapper(&self) -> Result<PathBuf, String> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join("podman-wrapper");
        if !path.exists() {
            let cmd = self.podman();
            let mut line = String::from("#!/bin/sh\n");
            for (k, v) in cmd.get_envs() {
                if let Some(v) = v {
                    line.push_str(&format!(
                        "export {}='{}'\n",
                        k.to_string_lossy(),
                        v.to_string_lossy()
                    ));
                }
            }
            line.push_str("exec");
            for part in std::iter::once(cmd.get_program()).chain(cmd.get_args()) {
                line.push_str(&format!(" '{}'", part.to_string_lossy()));
            }
            line.push_str(" \"$@\"\n");
            std::fs::write(&path, line).map_err(|e| format!("{}: {e}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(path)
    }

    /// `podman inspect --format {{.State.Status}} <container>`: the
    /// engine's own word on a container, or `None` when there is none.
    pub fn container_status(&self, container: &str) -> Option<String> {
        let out = self
            .podman()
            .args([
                "inspect",
                "--type",
                "container",
                "--format",
                "{{.State.Status}}",
                container,
            ])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// Whether the file at `path` is a statically linked ELF64 executable
/// (one that can run in an image `FROM scratch`).
pub fn is_static(path: &Path) -> Result<(), Missing> {
    let bytes = std::fs::read(path).map_err(|e| Missing(format!("{}: {e}", path.display())))?;
    if has_interpreter(&bytes) {
        return Err(Missing(format!(
            "{} is dynamically linked (or not an executable)",
            path.display()
        )));
    }
    Ok(())
}

/// Whether an ELF64 little-endian executable names a program
/// interpreter (a `PT_INTERP` program header): it is dynamically linked.
/// Anything else reads as having one.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return true;
    }
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return true;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return true;
    };
    (0..count).any(|i| {
        let at = phoff + i * size;
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .is_none_or(|t| t == PT_INTERP)
    })
}

/// `podman` over the storage, run dir and configuration under `dir`.
fn podman_command(dir: &Path, netns: Option<&str>) -> Command {
    let mut cmd = match netns {
        // nsenter, not `ip netns exec`: that also gives the command a
        // mount namespace whose /sys hides the cgroup mounts runc needs.
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/var/run/netns/{ns}")).arg("podman");
            c
        }
        None => Command::new("podman"),
    };
    cmd.env("CONTAINERS_CONF", dir.join("containers.conf"))
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ]);
    cmd
}

impl Drop for Podman {
    fn drop(&mut self) {
        let quiet = |mut c: Command| {
            let _ = c
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        let mut rm = self.podman();
        rm.args(["rm", "--all", "--force", "--time", "0"]);
        quiet(rm);
        let mut rmi = self.podman();
        rmi.args(["rmi", "--all", "--force"]);
        quiet(rmi);
        let _ = self.service.kill();
        let _ = self.service.wait();
    }
}

/// A loopback TCP port free a moment ago (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_names_its_interpreter() {
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(has_interpreter(&sh), "/bin/sh is dynamically linked");
        assert!(has_interpreter(b"#!/bin/sh\n"));
        assert!(has_interpreter(b""));
    }
}
