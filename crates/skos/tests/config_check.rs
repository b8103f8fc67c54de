//! The seed's own `config.yaml` passes `skos config check`, which says
//! each value SKOS does not apply as the seed did; `skos up` logs the same
//! warnings when it starts.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{run, skos, wait_for, Proc};

fn seed_file() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../skos-core/tests/fixtures/seed-config.yaml"
    ))
}

/// The warnings the seed's file draws, by key.
const WARNED: [&str; 4] = [
    "nats.max_reconnects",
    "agents.loop_breaker",
    "agents.mesh_healer",
    "agents.storage_watcher",
];

#[test]
fn the_seed_config_passes_config_check_with_its_warnings_said() {
    let seed = seed_file();
    let out = run({
        let mut c = skos();
        c.args(["config", "check", "--config"]).arg(&seed);
        c
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains(": warning: ")).collect();
    assert_eq!(warnings.len(), WARNED.len(), "{text}");
    for (line, key) in warnings.iter().zip(WARNED) {
        let want = format!("{}: warning: {key}: ", seed.display());
        assert!(line.starts_with(&want), "{line:?} is not {want:?}...");
    }
    // The seed's audit retention is applied (audit.retention_days): no
    // warning about it.
    assert!(!text.contains("audit_retention_days"), "{text}");
    let ok = text.lines().last().unwrap_or_default();
    assert!(ok.starts_with("OK: "), "{text}");
    assert!(ok.contains("4 warning(s) above"), "{text}");
}

#[test]
fn a_seed_key_given_twice_with_two_values_fails_config_check_naming_both() {
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("config.yaml");
    let text = std::fs::read_to_string(seed_file()).unwrap().replace(
        "  max_chain_depth: 10\n",
        "  max_chain_depth: 10\n  max_depth: 12\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let out = run({
        let mut c = skos();
        c.args(["config", "check", "--config"]).arg(&cfg);
        c
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("loop.max_chain_depth: 10 differs from loop.max_depth (12)"),
        "{text}"
    );
}

#[test]
fn skos_up_logs_the_seed_configs_warnings_at_start() {
    let work = tempfile::tempdir().unwrap();
    let mut up = Proc::spawn(
        {
            let mut c = skos();
            c.args(["up", "--http", "off", "--config"])
                .arg(seed_file())
                .arg("--data-dir")
                .arg(work.path().join("data"));
            c
        },
        work.path(),
        "up",
    );
    let log = wait_for(Duration::from_secs(30), "the config warnings", || {
        let log = up.log_text();
        WARNED
            .iter()
            .all(|k| log.contains(&format!("key={k}")))
            .then_some(log)
    });
    let line = log
        .lines()
        .find(|l| l.contains("key=nats.max_reconnects"))
        .unwrap_or_default();
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("SKOS keeps reconnecting"), "{line}");
    up.sigterm();
}
