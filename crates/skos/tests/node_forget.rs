//! `skos node forget` end to end, over a real nats-server: a node that
//! left the fleet is forgotten (and stays forgotten after the
//! coordinator restarts), a node still heard from is refused unless
//! forced, and the forgetting is audited with who asked.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use skos_testsupport::nats::NatsServer;
use skos_testsupport::sysfs::FakeSysfs;

fn forget(nats: &NatsServer, cfg: &Path, args: &[&str]) -> (bool, String) {
    let out = run({
        let mut c = skos();
        c.args(["node", "forget"])
            .args(args)
            .args(["--by", "ana", "--config"])
            .arg(cfg)
            .env("NATS_URL", nats.url());
        c
    });
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_node_that_left_is_forgotten_and_one_still_heard_is_refused() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = fast_config(work.path(), "");
    let nova_sys = FakeSysfs::new();
    nova_sys.coretemp(50.0, &[]);
    let lyra_sys = FakeSysfs::new();
    lyra_sys.coretemp(50.0, &[]);
    let mut coord = coordinator(&nats, &cfg, work.path(), "coordinator");
    let _nova = agent(&nats, &cfg, work.path(), nova_sys.root(), "nova");
    let mut lyra = agent(&nats, &cfg, work.path(), lyra_sys.root(), "lyra");
    wait_for(Duration::from_secs(60), "both nodes healthy", || {
        status(&nats).filter(|s| {
            ["nova", "lyra"]
                .iter()
                .all(|n| node(s, n).is_some_and(|n| n["status"] == "healthy"))
        })
    });

    // lyra leaves: offline after heartbeat_timeout.
    lyra.sigkill();
    wait_for(Duration::from_secs(30), "lyra offline", || {
        status(&nats).filter(|s| node(s, "lyra").is_some_and(|n| n["status"] == "offline"))
    });
    let (ok, said) = forget(&nats, &cfg, &["nova"]);
    assert!(!ok && said.contains("has not left"), "{said}");
    let (ok, said) = forget(&nats, &cfg, &["athena"]);
    assert!(!ok && said.contains("nothing is kept"), "{said}");
    let (ok, said) = forget(&nats, &cfg, &["lyra"]);
    assert!(ok, "{said}");
    assert!(said.contains("lyra forgotten"), "{said}");
    let s = status(&nats).unwrap();
    assert!(node(&s, "lyra").is_none(), "{s}");
    assert!(node(&s, "nova").is_some());
    let records = audit(&nats);
    let forgotten: Vec<_> = audit_events(&records, "node")
        .into_iter()
        .filter(|r| r["entry"]["data"]["event"] == "forgotten")
        .collect();
    assert_eq!(forgotten.len(), 1);
    assert_eq!(forgotten[0]["entry"]["actor"], "ana");
    assert_eq!(forgotten[0]["entry"]["node"], "lyra");

    // Its saved state went too: a restarted coordinator does not know it.
    coord.sigterm();
    let _coord = coordinator(&nats, &cfg, work.path(), "coordinator-2");
    let s = wait_for(Duration::from_secs(60), "the new leader hears nova", || {
        status(&nats).filter(|s| node(s, "nova").is_some_and(|n| n["status"] == "healthy"))
    });
    assert!(node(&s, "lyra").is_none(), "{s}");

    // A node still heard from is forgotten only when forced, and comes
    // back with its next heartbeat.
    let (ok, said) = forget(&nats, &cfg, &["nova", "--force"]);
    assert!(ok, "{said}");
    wait_for(Duration::from_secs(30), "nova back", || {
        status(&nats).filter(|s| node(s, "nova").is_some())
    });
}

/// A silence lives in the coordinator's saved state: a new coordinator
/// (a restart, or a standby taking over) still holds it, and the
/// operator's CLI reaches it over NATS.
#[test]
fn a_silence_survives_the_coordinator_restarting() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = fast_config(work.path(), "");
    let sys = FakeSysfs::new();
    sys.coretemp(50.0, &[]);
    let mut coord = coordinator(&nats, &cfg, work.path(), "coordinator");
    let _nova = agent(&nats, &cfg, work.path(), sys.root(), "nova");
    wait_for(Duration::from_secs(60), "nova healthy", || {
        status(&nats).filter(|s| node(s, "nova").is_some_and(|n| n["status"] == "healthy"))
    });
    let silence = |args: &[&str]| {
        let out = run({
            let mut c = skos();
            c.arg("silence")
                .args(args)
                .args(["--json", "--by", "ana", "--config"])
                .arg(&cfg)
                .env("NATS_URL", nats.url());
            c
        });
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let added = silence(&[
        "add",
        "--node",
        "nova",
        "--every",
        "0 2 * * SUN#1",
        "--for",
        "4h",
        "--start",
        "2090-01-01T00:00:00Z",
        "--comment",
        "patching",
    ]);
    let id = added["silences"][0]["id"].clone();
    coord.sigterm();
    let _coord = coordinator(&nats, &cfg, work.path(), "coordinator-2");
    let listed = wait_for(Duration::from_secs(60), "the new leader answers", || {
        status(&nats).map(|_| silence(&["list"]))
    });
    assert_eq!(listed["silences"][0]["id"], id, "{listed}");
    assert_eq!(listed["silences"][0]["every"]["cron"], "0 2 * * SUN#1");
    let s = status(&nats).unwrap();
    assert_eq!(s["silences"][0]["id"], id);
    assert_eq!(s["silences"][0]["holding"], false, "{s}");
}
