//! The HTTP API of `skos up` through a heat cycle: a fake sysfs tree heated
//! and cooled, `/metrics` and the event stream read as it happens, on a
//! port the system chose.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use skos_testsupport::cpufreq::fake_cpufreq;
use skos_testsupport::sysfs::FakeSysfs;

const MAX: u64 = 3_600_000;
const MIN: u64 = 800_000;

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    fast_config(
        dir,
        "  actions: {warning: [throttle_10], critical: [throttle_50], emergency: [throttle_50]}\n",
    )
}

fn up(work: &std::path::Path, sys: &FakeSysfs, cfg: &std::path::Path, http: &str) -> Proc {
    let mut c = skos();
    c.arg("up")
        .arg("--config")
        .arg(cfg)
        .arg("--data-dir")
        .arg(work.join("data"))
        .arg("--http")
        .arg(http)
        .env("SKOS_SYSFS_ROOT", sys.root())
        .env("NODE_NAME", "nova");
    Proc::spawn(c, work, "skos-up")
}

#[test]
fn metrics_and_events_show_a_throttle_and_its_verification() {
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(60.0, &[58.0, 57.0]);
    fake_cpufreq(sys.root(), 4, MIN, MAX);
    let cfg = config(work.path());
    let skos_up = up(work.path(), &sys, &cfg, "127.0.0.1:0");
    let addr = http_addr(&skos_up);

    let (code, body) = http_get(addr, "/healthz", Duration::from_secs(5));
    assert_eq!(code, 200, "{body}");
    let metrics = || http_get(addr, "/metrics", Duration::from_secs(10)).1;
    wait_for(
        Duration::from_secs(30),
        "nova at 60 °C in /metrics",
        || {
            let m = metrics();
            (metric(
                &m,
                r#"skos_node_temperature_celsius{node="nova",sensor="cpu"}"#,
            ) == Some(60.0))
            .then_some(m)
        },
    );
    // Every record of this run is counted, the ones written before the
    // trail was first read (the `start` record) included.
    wait_for(
        Duration::from_secs(30),
        "the start record counted in /metrics",
        || {
            let m = metrics();
            (metric(&m, r#"skos_audit_records_total{event_type="start"}"#) == Some(1.0))
                .then_some(m)
        },
    );
    let (code, body) = http_get(addr, "/api/v1/status", Duration::from_secs(5));
    assert_eq!(code, 200, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["nodes"][0]["name"], "nova");
    assert_eq!(status["mode"], "embedded");

    // The event stream, open before the heat.
    let stream = std::thread::spawn(move || {
        http_get(
            addr,
            "/api/v1/events?types=alert,command,result,verification",
            Duration::from_secs(60),
        )
    });
    std::thread::sleep(Duration::from_millis(500));

    // Heat: 87 °C is critical -> throttle_50.
    cpu.heat(87.0);
    let m = wait_for(Duration::from_secs(30), "the throttle in /metrics", || {
        let m = metrics();
        (metric(
            &m,
            r#"skos_actions_total{action="throttle_50",outcome="succeeded"}"#,
        ) == Some(1.0))
        .then_some(m)
    });
    assert_eq!(
        metric(
            &m,
            r#"skos_open_alerts{kind="thermal",severity="critical"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"skos_nodes{status="critical"}"#),
        Some(1.0),
        "{m}"
    );
    assert!(
        metric(&m, "skos_time_to_detect_seconds_count").is_some_and(|n| n >= 1.0),
        "{m}"
    );
    let (code, body) = http_get(addr, "/api/v1/alerts", Duration::from_secs(5));
    assert_eq!(code, 200);
    let alerts: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(alerts["alerts"][0]["severity"], "critical", "{alerts}");

    // Cool: the fix is verified.
    cpu.heat(60.0);
    let m = wait_for(
        Duration::from_secs(60),
        "the verification in /metrics",
        || {
            let m = metrics();
            (metric(
                &m,
                r#"skos_verifications_total{action="throttle_50",outcome="succeeded"}"#,
            ) == Some(1.0))
            .then_some(m)
        },
    );
    let recovered = metric(&m, "skos_time_to_verified_recovery_seconds_count");
    assert_eq!(recovered, Some(1.0), "{m}");
    assert!(
        metric(&m, "skos_time_to_verified_recovery_seconds_sum").is_some_and(|s| s > 0.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            r#"skos_events_total{counter="verifications.succeeded"}"#
        ) == Some(1.0),
        "{m}"
    );
    let (code, body) = http_get(addr, "/api/v1/actions", Duration::from_secs(5));
    assert_eq!(code, 200);
    let actions: Value = serde_json::from_str(&body).unwrap();
    assert!(
        actions["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action_type"] == "throttle_50" && a["state"] == "verified"),
        "{actions}"
    );

    // The stream saw each step as it happened, in order.
    drop(skos_up);
    let (code, events) = stream.join().unwrap();
    assert_eq!(code, 200);
    let kinds: Vec<&str> = events
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    let first = |k: &str| kinds.iter().position(|e| *e == k);
    let (a, c, r, v) = (
        first("alert"),
        first("command"),
        first("result"),
        first("verification"),
    );
    assert!(
        a.is_some() && a < c && c < r && r < v,
        "alert, command, result, verification in order: {kinds:?}"
    );
}

#[test]
fn a_reachable_address_without_tls_and_a_token_is_refused_and_off_serves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let sys = FakeSysfs::new();
    let cfg = config(work.path());
    let out = run({
        let mut c = skos();
        c.arg("up")
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(work.path().join("data"))
            .args(["--http", "0.0.0.0:0"])
            .env("SKOS_SYSFS_ROOT", sys.root());
        c
    });
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve HTTP on 0.0.0.0:0") && err.contains("without TLS"),
        "{err}"
    );
    let out = run({
        let mut c = skos();
        c.arg("up")
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(work.path().join("data"))
            .args(["--http", "localhost"]);
        c
    });
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--http: \"localhost\" is not an address"),
        "{err}"
    );

    let mut p = up(work.path(), &sys, &cfg, "off");
    wait_for(Duration::from_secs(30), "skos up started", || {
        p.log_text().contains("agent started").then_some(())
    });
    assert!(!p.log_text().contains("HTTP API on"), "{}", p.log_text());
    assert!(p.sigterm().success());
}

/// Two coordinators over NATS, each serving HTTP: the standby answers
/// status with the leader's reply and says it stands by; both follow the
/// audit stream into their metrics; once the leader is gone the other one
/// leads and says so.
#[test]
fn a_standby_answers_status_from_the_leader_and_says_it_stands_by() {
    use skos_testsupport::nats::NatsServer;
    skos_testsupport::require!("nats-server", skos_testsupport::nats::nats_server_binary());
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "agent:\n  heartbeat_interval: 0.5\n  monitor_interval: 0.2\n\
coordinator:\n  heartbeat_timeout: 4\n  verify_within: 20\n  command_deadline: 30\n  leader_lease_seconds: 2\n\
thermal:\n  clear_for: 1\n  cooldown: 60\n  gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}\n  \
actions: {{warning: [throttle_10], critical: [throttle_50], emergency: [throttle_50]}}\n{}",
            trust_section(work.path())
        ),
    )
    .unwrap();
    let start = |name: &str| {
        let mut c = skos();
        c.arg("coordinator")
            .arg("--config")
            .arg(&cfg)
            .args(["--http", "127.0.0.1:0"])
            .env("NATS_URL", nats.url());
        Proc::spawn(c, work.path(), name)
    };
    let first = start("coordinator-a");
    wait_for(Duration::from_secs(30), "a leader", || {
        first.log_text().contains("elected leader").then_some(())
    });
    let mut coords = [first, start("coordinator-b")];
    let addrs: Vec<_> = coords.iter().map(http_addr).collect();
    let sys = FakeSysfs::new();
    let cpu = sys.coretemp(60.0, &[58.0]);
    fake_cpufreq(sys.root(), 2, MIN, MAX);
    let _agent = agent(&nats, &cfg, work.path(), sys.root(), "n1");

    let role = |addr| {
        let (code, head, body) = http_request(addr, "/api/v1/status", Duration::from_secs(5));
        let role = head
            .lines()
            .find_map(|l| l.strip_prefix("x-skos-role: "))
            .unwrap_or("")
            .trim()
            .to_string();
        (code, role, body)
    };
    let (code, r, body) = wait_for(
        Duration::from_secs(30),
        "n1 in the standby's status",
        || {
            let (code, r, body) = role(addrs[1]);
            body.contains("\"n1\"").then_some((code, r, body))
        },
    );
    assert_eq!((code, r.as_str()), (200, "standby"), "{body}");
    let (code, r, _) = role(addrs[0]);
    assert_eq!((code, r.as_str()), (200, "leader"));

    cpu.heat(87.0);
    for (i, addr) in addrs.iter().enumerate() {
        let m = wait_for(
            Duration::from_secs(40),
            &format!("the throttle in coordinator {i}'s /metrics"),
            || {
                let m = http_get(*addr, "/metrics", Duration::from_secs(10)).1;
                (metric(
                    &m,
                    r#"skos_actions_total{action="throttle_50",outcome="succeeded"}"#,
                ) == Some(1.0))
                .then_some(m)
            },
        );
        assert_eq!(
            metric(&m, "skos_coordinator_leader"),
            Some(if i == 0 { 1.0 } else { 0.0 }),
            "{m}"
        );
    }
    let (code, body) = http_get(
        addrs[1],
        "/api/v1/audit?after=0&limit=1000",
        Duration::from_secs(5),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"throttle_50\""), "{body}");

    // A stranger's record on the audit stream (unsigned) is left out of
    // the metrics and the event stream.
    let forged = serde_json::json!({"seq": 999_999, "prev_hash": "0", "hash": "1",
        "entry": {"event_type": "verification", "timestamp": "2026-01-01T00:00:00Z",
            "actor": "coordinator", "summary": "forged",
            "data": {"action": "forged_action", "outcome": "succeeded"}}});
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bus = skos_bus::NatsBus::connect(&skos_bus::NatsOptions::new(nats.url(), "stranger"))
            .await
            .unwrap();
        bus.jetstream()
            .publish(
                skos_bus::subjects::audit("verification"),
                serde_json::to_vec(&forged).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    });
    wait_for(
        Duration::from_secs(20),
        "the stranger's record left out",
        || {
            coords[1]
                .log_text()
                .contains("audit message not signed by a trusted key; left out")
                .then_some(())
        },
    );
    for addr in &addrs {
        let m = http_get(*addr, "/metrics", Duration::from_secs(10)).1;
        assert!(!m.contains("forged_action"), "{m}");
    }

    // The leader goes: the standby takes over and says it leads.
    coords[0].sigkill();
    wait_for(
        Duration::from_secs(30),
        "the other coordinator leads",
        || {
            let (code, r, _) = role(addrs[1]);
            (code == 200 && r == "leader").then_some(())
        },
    );
}

/// A reachable address with TLS and a token: served over HTTPS (checked
/// with curl against the test's own certificate); a token too short to
/// guard anything is refused at start.
#[test]
fn with_tls_and_a_token_a_reachable_address_is_served_over_https() {
    skos_testsupport::require!(
        "curl",
        skos_testsupport::require::program("curl", &["--version"], "curl")
    );
    skos_testsupport::require!(
        "openssl",
        skos_testsupport::require::program("openssl", &["version"], "openssl")
    );
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let mut openssl = std::process::Command::new("openssl");
    openssl
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .current_dir(dir);
    run_ok(openssl);
    let write_cfg = |token: &str| {
        std::fs::write(dir.join("token"), format!("{token}\n")).unwrap();
        fast_config(
            dir,
            &format!(
                "http:\n  listen: 0.0.0.0:0\n  token_file: {}\n  tls:\n    cert_file: {}\n    key_file: {}\n",
                dir.join("token").display(),
                dir.join("cert.pem").display(),
                dir.join("key.pem").display()
            ),
        )
    };
    let sys = FakeSysfs::new();

    let cfg = write_cfg("short");
    let out = run({
        let mut c = skos();
        c.arg("up")
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("SKOS_SYSFS_ROOT", sys.root());
        c
    });
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.token_file") && err.contains("16 or more"),
        "{err}"
    );
    let check = run({
        let mut c = skos();
        c.args(["config", "check", "--config"]).arg(&cfg);
        c
    });
    assert_eq!(check.status.code(), Some(1));
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        said.contains("http.token_file: ") && said.contains("16 or more"),
        "{said}"
    );

    let cfg = write_cfg("0123456789abcdef0123456789abcdef");
    let mut c = skos();
    c.arg("up")
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("SKOS_SYSFS_ROOT", sys.root());
    let p = Proc::spawn(c, dir, "skos-up");
    let port = http_addr(&p).port();
    assert!(
        p.log_text().contains("HTTP API on https://0.0.0.0:"),
        "{}",
        p.log_text()
    );
    let curl = |extra: &[&str]| {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(extra)
            .arg(format!("https://127.0.0.1:{port}/healthz"))
            .output()
            .unwrap()
    };
    let ok = curl(&["--cacert", dir.join("cert.pem").to_str().unwrap()]);
    assert!(
        ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains("\"ok\""),
        "{} {}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    // Without the certificate, curl does not trust it: it is TLS indeed.
    assert!(!curl(&[]).status.success());
}
