//! The lean `skos-agent` binary (what nodes run) and the static builds of
//! `dist/build-static.sh`: the same agent as `skos agent`, with every
//! antibody, against a real nats-server and coordinator; static binaries
//! that need nothing from the machine, not even a dynamic loader.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use skos_core::catalogue::Executor;
use skos_testsupport::cpufreq::{fake_cpufreq, read_khz};
use skos_testsupport::nats::NatsServer;
use skos_testsupport::require;
use skos_testsupport::sysfs::FakeSysfs;

const MAX: u64 = 3_600_000;
const MIN: u64 = 800_000;

fn lean() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_skos-agent"));
    for v in [
        "NATS_URL",
        "SKOS_CONFIG",
        "NODE_NAME",
        "SKOS_DATA_DIR",
        "SKOS_SYSFS_ROOT",
        "RUST_LOG",
    ] {
        c.env_remove(v);
    }
    c.env("LOG_LEVEL", "DEBUG");
    c
}

/// Every antibody this build carries, as the config names them.
fn every_antibody() -> String {
    Executor::ALL
        .into_iter()
        .filter(|e| e.built())
        .map(Executor::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn lean_agent_has_the_agents_flags_and_nothing_else() {
    let help = run({
        let mut c = lean();
        c.arg("--help");
        c
    });
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in ["--config", "--data-dir", "SKOS_CONFIG", "--version"] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
    // The operator's commands are the full binary's.
    let status = run({
        let mut c = lean();
        c.arg("status");
        c
    });
    assert!(!status.status.success());
    let version = run({
        let mut c = lean();
        c.arg("--version");
        c
    });
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("skos-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn lean_agent_with_every_antibody_is_throttled_by_the_coordinator() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(60.0, &[55.0]);
    fake_cpufreq(sys.root(), 2, MIN, MAX);
    let watched = work.path().join("watched");
    std::fs::create_dir(&watched).unwrap();
    let cfg = work.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "agent:\n  heartbeat_interval: 0.5\n  monitor_interval: 0.2\n  antibodies: [{}]\n\
storage:\n  mounts: [{}]\n\
coordinator:\n  heartbeat_timeout: 30\n  verify_within: 5\n  command_deadline: 30\n\
thermal:\n  clear_for: 1\n  cooldown: 60\n  gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}\n{}",
            every_antibody(),
            watched.display(),
            trust_section(work.path())
        ),
    )
    .unwrap();
    let _coord = coordinator(&nats, &cfg, work.path(), "coordinator");
    let mut c = lean();
    c.arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(work.path().join("agent-nova"))
        .env("NATS_URL", nats.url())
        .env("NODE_NAME", "nova")
        .env("SKOS_SYSFS_ROOT", sys.root());
    let mut agent = Proc::spawn(c, work.path(), "skos-agent-nova");
    wait_for(
        Duration::from_secs(30),
        "nova online via NATS status",
        || status(&nats).filter(|s| node(s, "nova").is_some_and(|n| n["status"] != "offline")),
    );
    let log = agent.log_text();
    assert!(
        !log.contains("not available in this build"),
        "every antibody runs in skos-agent:\n{log}"
    );

    cpu.heat(87.0);
    wait_for(Duration::from_secs(30), "scaling_max_freq at 50 %", || {
        (0..2)
            .all(|p| read_khz(sys.root(), p) == MAX / 2)
            .then_some(())
    });
    wait_for(Duration::from_secs(30), "the result audited", || {
        audit_events(&audit(&nats), "result")
            .iter()
            .any(|e| result_is(e, "throttle_50", "succeeded"))
            .then_some(())
    });
    assert!(agent.sigterm().success(), "{}", agent.log_text());
}

/// Where `dist/build-static.sh all` leaves its binaries, `(skos,
/// skos-agent)`: both in SKOS_STATIC_DIR when set, else
/// `<target>/x86_64-unknown-linux-gnu/{dist,dist-agent}` of this build's
/// target dir.
fn static_binaries() -> (PathBuf, PathBuf) {
    if let Some(d) = std::env::var_os("SKOS_STATIC_DIR") {
        let d = PathBuf::from(d);
        return (d.join("skos"), d.join("skos-agent"));
    }
    let skos = Path::new(env!("CARGO_BIN_EXE_skos"));
    let target = skos
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
        .join("x86_64-unknown-linux-gnu");
    (
        target.join("dist").join("skos"),
        target.join("dist-agent").join("skos-agent"),
    )
}

/// The program headers' types of a 64-bit little-endian ELF file.
fn program_header_types(elf: &[u8]) -> Vec<u32> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not 64-bit");
    assert_eq!(elf[5], 1, "not little-endian");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count)
        .map(|i| {
            let o = phoff + i * size;
            u32::from_le_bytes(elf[o..o + 4].try_into().unwrap())
        })
        .collect()
}

const PT_INTERP: u32 = 3;

/// `chroot` (coreutils), which lives in an sbin directory not on every
/// user's PATH.
fn chroot() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("chroot"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("chroot"))
}

#[test]
fn static_binaries_need_no_loader_and_resolve_names_from_etc_hosts() {
    let (skos, agent) = static_binaries();
    // Built by dist/build-static.sh (./test.sh builds both), not by the
    // test: skipped when absent, failed instead under
    // SKOS_TEST_REQUIRE_ALL=1.
    let built = if skos.is_file() && agent.is_file() {
        Ok(())
    } else {
        Err(skos_testsupport::require::Missing(format!(
            "{} or {} not built (run `dist/build-static.sh all`, or set SKOS_STATIC_DIR)",
            skos.display(),
            agent.display()
        )))
    };
    if skos_testsupport::require::require(
        "static_binaries_need_no_loader_and_resolve_names_from_etc_hosts",
        "the static binaries",
        built,
    )
    .is_none()
    {
        return;
    }
    for bin in [&skos, &agent] {
        let types = program_header_types(&std::fs::read(bin).unwrap());
        assert!(!types.is_empty());
        assert!(
            !types.contains(&PT_INTERP),
            "{} asks for a dynamic loader",
            bin.display()
        );
    }
    // A FROM scratch image, as a chroot: the binary, /etc/hosts and the
    // two random devices every container runtime gives (a static binary
    // reads its seeds there); no libc, no loader, no NSS modules, no /proc.
    require!("root (chroot, mknod)", skos_testsupport::require::root());
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    std::fs::create_dir(root.path().join("dev")).unwrap();
    for (name, minor) in [("random", 8), ("urandom", 9)] {
        let made = Command::new("mknod")
            .args(["-m", "444"])
            .arg(root.path().join("dev").join(name))
            .args(["c", "1", &minor.to_string()])
            .status()
            .unwrap();
        assert!(made.success(), "mknod /dev/{name}");
    }
    std::fs::write(
        root.path().join("etc/hosts"),
        "127.0.0.1 nats-box.skos.test\n",
    )
    .unwrap();
    for bin in [&skos, &agent] {
        std::fs::copy(bin, root.path().join(bin.file_name().unwrap())).unwrap();
    }
    let version = run({
        let mut c = Command::new(chroot());
        c.arg(root.path()).args(["/skos", "--version"]).env_clear();
        c
    });
    assert!(
        version.status.success(),
        "{}",
        String::from_utf8_lossy(&version.stderr)
    );
    // The agent reaches a server by a name only the chroot's /etc/hosts
    // knows.
    let nats = NatsServer::start();
    let port = nats.port();
    let work = tempfile::tempdir().unwrap();
    let mut c = Command::new(chroot());
    c.arg(root.path())
        .arg("/skos-agent")
        .env_clear()
        .env("NATS_URL", format!("nats://nats-box.skos.test:{port}"))
        .env("NODE_NAME", "scratch")
        .env("SKOS_DATA_DIR", "/data")
        .env("LOG_LEVEL", "DEBUG");
    let agent = Proc::spawn(c, work.path(), "static-agent");
    wait_for(Duration::from_secs(30), "connected to NATS by name", || {
        agent.log_text().contains("connected to NATS").then_some(())
    });
    let log = agent.log_text();
    assert!(
        log.contains("nats-box.skos.test"),
        "the log names the server:\n{log}"
    );
}

#[test]
fn a_rust_log_that_does_not_parse_is_refused_with_its_value() {
    // The node key file is missing, so an agent that took the bad RUST_LOG
    // silently would stop there, on another error, without NATS.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "node:\n  name: nova\ntrust:\n  node_key_file: /nonexistent/nova.nk\n",
    )
    .unwrap();
    for mut cmd in [lean(), {
        let mut c = skos();
        c.arg("agent");
        c
    }] {
        cmd.arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("NATS_URL", "nats://127.0.0.1:1")
            .env("RUST_LOG", "skos=verbose");
        let out = run(cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("RUST_LOG=\"skos=verbose\""), "{stderr}");
        assert!(
            !stderr.contains("nova.nk"),
            "refused before starting: {stderr}"
        );
    }
}
