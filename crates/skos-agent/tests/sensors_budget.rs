//! Every sensor source has its own time budget: a slow or hung source
//! (one hwmon device, the thermal zones, a tool) costs its own readings
//! only. The reads are slowed or blocked behind the sensors' file-reader
//! seam, as a driver waiting on its bus does. GPU tools are off: the real
//! machine's NVML, `nvidia-smi` and `sensors` are never consulted.

mod common;
use common::{fixture, no_tools};
use skos_agent::sensors::{
    hottest, ProblemKind, Reading, Role, Scan, SensorKind, Sensors, TroubleKind,
};
use skos_agent::thermal::ThermalSentinel;
use skos_testsupport::sysfs::FakeSysfs;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The `slow` problems of a scan: (where, chip).
fn slow(scan: &Scan) -> Vec<(String, Option<String>)> {
    scan.problems
        .iter()
        .filter_map(|p| match &p.what {
            ProblemKind::Slow { chip, .. } => Some((p.at.clone(), chip.clone())),
            _ => None,
        })
        .collect()
}

/// Blocks the calling thread until `release` is set (at most a minute).
fn block_until(release: &AtomicBool) {
    let end = Instant::now() + Duration::from_secs(60);
    while !release.load(Ordering::SeqCst) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
}

// --- 09: 23 slow 1-Wire probes beside the CPU --------------------------------

/// Field case 09: a Raspberry Pi with 23 DS18B20 probes, each `temp1_input`
/// read taking ~0.95 s (rules.json), one after another as the kernel's w1
/// bus master serialises them; node_exporter took 22 s for them. `skos
/// sensors` must give the CPU reading promptly and say which probes are
/// slow.
#[test]
fn field_09_slow_1wire_probes_cost_their_own_sources_only() {
    let root = fixture("09-w1-ds18b20-slow-reads/sys");
    let sensors = Sensors::new(&root, no_tools()).with_file_reader(slow_bus_reader(&root));

    let started = Instant::now();
    let scan = sensors.scan();
    let took = started.elapsed();

    // The default budget of a sysfs source is 2 s; reading the probes in
    // turn took 22 s.
    assert!(
        took < Duration::from_millis(3500),
        "skos sensors took {took:?}: it waited for the slow probes"
    );
    assert_eq!(hottest(&scan.readings, SensorKind::Cpu), Some(52.0));
    let cpu: Vec<&Reading> = scan.readings.iter().filter(|r| r.counts_as_cpu()).collect();
    assert_eq!(cpu.len(), 1, "{cpu:#?}");
    assert_eq!(
        (cpu[0].label.as_str(), cpu[0].role, cpu[0].crit, cpu[0].max),
        ("Package id 0", Role::Package, Some(100.0), Some(80.0))
    );
    // Every probe is either read (in time) or named slow, with its chip.
    let probes: Vec<&Reading> = scan
        .readings
        .iter()
        .filter(|r| r.chip == "w1_slave_temp")
        .collect();
    let slow = slow(&scan);
    eprintln!(
        "scan took {took:?}: {} probes read, {} named slow",
        probes.len(),
        slow.len()
    );
    assert_eq!(probes.len() + slow.len(), 23, "{probes:#?}\n{slow:#?}");
    assert!(slow.len() >= 20, "at most two probes fit in 2 s: {slow:#?}");
    for (at, chip) in &slow {
        assert!(
            at.starts_with(&root.join("class/hwmon/hwmon").display().to_string()),
            "{at}"
        );
        assert_eq!(chip.as_deref(), Some("w1_slave_temp"), "{at}");
    }
    for p in probes {
        assert!((20.0..23.0).contains(&p.celsius), "{p:#?}");
        assert_eq!((p.kind, p.role), (SensorKind::Other, Role::Other));
    }
}

/// The delays of field case 09's rules.json, by canonical path under
/// `root`, served one at a time as on one w1 bus.
fn slow_bus_reader(root: &Path) -> impl Fn(&Path) -> std::io::Result<String> + Send + Sync {
    let canon_root = canonical(root);
    let rules: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("09-w1-ds18b20-slow-reads/rules.json"))
            .unwrap_or_else(|e| panic!("rules.json: {e}")),
    )
    .unwrap_or_else(|e| panic!("rules.json: {e}"));
    let delays: HashMap<PathBuf, Duration> = rules["delay_ms"]
        .as_object()
        .unwrap_or_else(|| panic!("delay_ms in {rules}"))
        .iter()
        .map(|(rel, ms)| {
            let ms = ms.as_u64().unwrap_or_else(|| panic!("{rel}: {ms}"));
            (canon_root.join(rel), Duration::from_millis(ms))
        })
        .collect();
    assert_eq!(delays.len(), 23, "one slow file per probe");
    let bus = Arc::new(Mutex::new(()));
    move |p: &Path| {
        if let Some(delay) = delays.get(p) {
            let _bus = bus.lock().unwrap_or_else(|e| e.into_inner());
            std::thread::sleep(*delay);
        }
        std::fs::read_to_string(p)
    }
}

/// Field case 09 through the thermal sentinel as the agent drives it: a
/// look every monitor interval never waits for the probes, the CPU at
/// 97 °C is alerted as soon as its reading arrives, the probes that do
/// answer (late) are used with their age, and the slow ones are named.
#[test]
fn field_09_the_sentinel_never_waits_for_slow_probes_and_alerts_on_time() {
    let fake = FakeSysfs::from_fixture(&fixture("09-w1-ds18b20-slow-reads/sys"));
    let mut cfg = skos_core::config::Config::from_yaml(
        "agent: {monitor_interval: 0.5}\n\
thermal:\n  gpu: {nvml: false, nvidia_smi: false, lm_sensors: false}\n  sources: {max_age: 30}\n",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    cfg.sysfs_root = fake.root().to_path_buf();
    let sensors = Sensors::configured(&cfg).with_file_reader(slow_bus_reader(fake.root()));
    let mut sentinel = ThermalSentinel::new(&cfg, None).with_sensors(sensors);

    let started = Instant::now();
    assert!(sentinel.look(chrono::Utc::now()).is_empty());
    let first = started.elapsed();
    assert!(first < Duration::from_millis(1200), "first look {first:?}");
    assert_eq!(sentinel.cpu_temp(), Some(52.0));

    // Four seconds of looks every 0.5 s, as the agent loop does.
    let mut slowest = Duration::ZERO;
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        assert!(sentinel.look(chrono::Utc::now()).is_empty());
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(100),
        "a look took {slowest:?}"
    );

    // 97 °C: the look after it asks the CPU again, and its reading is
    // judged as soon as it arrives (the runtime calls `judge` on
    // `arrivals`; here every 10 ms).
    fake.write_file(
        "devices/platform/coretemp.0/hwmon/hwmon0/temp1_input",
        "97000\n",
    );
    let heated = Instant::now();
    let mut alerts = sentinel.look(chrono::Utc::now());
    while alerts.is_empty() && heated.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
        alerts = sentinel.judge(chrono::Utc::now());
    }
    let late = heated.elapsed();
    eprintln!("first look {first:?}, slowest look {slowest:?}, alert {late:?} after 97 °C");
    assert!(
        late < Duration::from_millis(500),
        "alerted {late:?} after the heat"
    );
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].severity, skos_core::protocol::Severity::Emergency);
    assert_eq!(alerts[0].details["temperature"], 97.0);
    assert!(alerts[0].details["age_seconds"]
        .as_f64()
        .is_some_and(|a| a < 0.5));

    // The probes that answered by now are used; the others are named slow.
    let probes = sentinel
        .readings()
        .iter()
        .filter(|r| r.chip == "w1_slave_temp")
        .count();
    let slow: Vec<_> = sentinel
        .troubles()
        .iter()
        .filter(|t| t.problem == TroubleKind::Slow)
        .collect();
    assert!(probes >= 3, "{probes} probes answered in ~5 s");
    assert!(slow.len() >= 15, "{:#?}", sentinel.troubles());
    assert!(slow
        .iter()
        .all(|t| t.chip.as_deref() == Some("w1_slave_temp")));
}

// --- A read that hangs ---------------------------------------------------------

/// A probe whose read never returns (a w1 bus that stopped answering):
/// the scan returns within the source's budget with the CPU, names the
/// probe slow, and later passes neither ask it again (no thread piles up
/// behind it) nor wait for it.
#[test]
fn a_read_that_hangs_holds_one_thread_and_is_not_asked_again() {
    let fake = FakeSysfs::new();
    let cpu = fake.coretemp(60.0, &[]);
    let probe = fake.w1_probe("0316a2795bff", 21.5);
    let hung = canonical(&probe.input_path(1));
    let release = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let (r, c) = (release.clone(), calls.clone());
    let sensors = Sensors::new(fake.root(), no_tools())
        .with_budgets(Duration::from_millis(300), Duration::from_secs(15))
        .with_file_reader(move |p: &Path| {
            if p == hung {
                c.fetch_add(1, Ordering::SeqCst);
                block_until(&r);
            }
            std::fs::read_to_string(p)
        });

    let started = Instant::now();
    let scan = sensors.scan();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(hottest(&scan.readings, SensorKind::Cpu), Some(60.0));
    assert_eq!(
        slow(&scan),
        [(
            probe.class_path().display().to_string(),
            Some("w1_slave_temp".to_string())
        )]
    );

    // The agent's way: ask, then look without waiting.
    for c in [61.0, 62.0, 63.0, 64.0, 65.0] {
        cpu.set_temp(1, c);
        let started = Instant::now();
        sensors.request();
        sensors.settle(Duration::from_secs(5));
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "a pass waited {:?} for the hung probe",
            started.elapsed()
        );
        let now = sensors.current(Duration::from_secs(30));
        assert_eq!(hottest(&now.readings, SensorKind::Cpu), Some(c));
        assert_eq!(now.troubles.len(), 1, "{:#?}", now.troubles);
        let t = &now.troubles[0];
        assert_eq!(
            t.source,
            probe.class_path().file_name().unwrap().to_string_lossy()
        );
        assert_eq!(
            (t.problem, t.count, t.chip.as_deref()),
            (TroubleKind::Slow, 1, Some("w1_slave_temp")),
            "{t:#?}"
        );
        assert!(t.reading_for_seconds.is_some_and(|s| s > 0.3), "{t:#?}");
        assert_eq!(t.last_good_seconds, None, "it never answered");
        assert!(t.message.contains("0.3 s"), "{t:#?}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the hung probe was asked once"
    );
    release.store(true, Ordering::SeqCst);
}

/// A source's last good readings are used, with their age, while it is
/// slow, and no longer once they are older than the bound; once the
/// source answers in time again its trouble is cleared.
#[test]
fn last_good_readings_are_used_with_their_age_until_too_old() {
    let fake = FakeSysfs::new();
    fake.coretemp(55.0, &[]);
    let probe = fake.w1_probe("0316a2795bff", 21.5);
    let probe_file = canonical(&probe.input_path(1));
    let hang = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let (h, r) = (hang.clone(), release.clone());
    let sensors = Sensors::new(fake.root(), no_tools())
        .with_budgets(Duration::from_millis(200), Duration::from_secs(15))
        .with_file_reader(move |p: &Path| {
            if p == probe_file && h.load(Ordering::SeqCst) {
                block_until(&r);
            }
            std::fs::read_to_string(p)
        });
    let max_age = Duration::from_millis(1500);
    let probe_reading = |readings: &[Reading]| {
        readings
            .iter()
            .find(|r| r.chip == "w1_slave_temp")
            .map(|r| r.celsius)
    };

    sensors.scan();
    let fresh = sensors.current(max_age);
    assert_eq!(probe_reading(&fresh.readings), Some(21.5));
    assert!(fresh.troubles.is_empty(), "{:#?}", fresh.troubles);
    assert_eq!(fresh.ages.len(), fresh.readings.len());
    assert!(fresh.ages.iter().all(|a| *a < 0.5), "{:?}", fresh.ages);

    // The probe hangs: its last reading is still current for a while.
    hang.store(true, Ordering::SeqCst);
    let hung_at = Instant::now();
    sensors.request();
    sensors.settle(Duration::from_secs(5));
    let held = sensors.current(max_age);
    assert_eq!(
        probe_reading(&held.readings),
        Some(21.5),
        "last good value used"
    );
    let i = held
        .readings
        .iter()
        .position(|r| r.chip == "w1_slave_temp")
        .unwrap_or_default();
    assert!(held.ages[i] >= 0.2 && held.ages[i] < 1.5, "{:?}", held.ages);
    assert_eq!(held.troubles.len(), 1);
    assert_eq!(held.troubles[0].problem, TroubleKind::Slow);

    // Older than the bound: not current any more; the CPU still is.
    std::thread::sleep(max_age.saturating_sub(hung_at.elapsed()) + Duration::from_millis(300));
    sensors.request();
    sensors.settle(Duration::from_secs(5));
    let stale = sensors.current(max_age);
    assert_eq!(
        probe_reading(&stale.readings),
        None,
        "{:#?}",
        stale.readings
    );
    assert_eq!(hottest(&stale.readings, SensorKind::Cpu), Some(55.0));
    let t = &stale.troubles[0];
    assert!(t.last_good_seconds.is_some_and(|s| s > 1.5), "{t:#?}");
    assert_eq!(t.count, 1, "one read, still hanging: {t:#?}");

    // The read returns (late: still slow), then a read in time clears it.
    hang.store(false, Ordering::SeqCst);
    release.store(true, Ordering::SeqCst);
    let end = Instant::now() + Duration::from_secs(5);
    while probe_reading(&sensors.current(max_age).readings).is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let late = sensors.current(max_age);
    assert_eq!(probe_reading(&late.readings), Some(21.5));
    assert_eq!(late.troubles.len(), 1, "a late answer is still slow");
    sensors.request();
    sensors.settle(Duration::from_secs(5));
    let back = sensors.current(max_age);
    assert!(back.troubles.is_empty(), "{:#?}", back.troubles);
    assert_eq!(probe_reading(&back.readings), Some(21.5));
}

/// A source that answers with problems and no reading is failing: counted
/// read after read since its first failure, with what went wrong, until
/// it gives a reading again.
#[test]
fn a_failing_source_is_counted_since_its_first_failure() {
    let fake = FakeSysfs::new();
    fake.coretemp(50.0, &[]);
    let nvme = fake.nvme(38.85);
    let input = canonical(&nvme.input_path(1));
    let broken = Arc::new(AtomicBool::new(true));
    let b = broken.clone();
    let sensors = Sensors::new(fake.root(), no_tools()).with_file_reader(move |p: &Path| {
        if p == input && b.load(Ordering::SeqCst) {
            // EIO, as a failing drive answers.
            return Err(std::io::Error::from_raw_os_error(5));
        }
        std::fs::read_to_string(p)
    });
    let mut since = None;
    for n in 1..=3u32 {
        sensors.scan();
        let now = sensors.current(Duration::from_secs(30));
        assert_eq!(now.troubles.len(), 1, "{:#?}", now.troubles);
        let t = &now.troubles[0];
        assert_eq!(
            (t.problem, t.count, t.chip.as_deref()),
            (TroubleKind::Failing, n, Some("nvme"))
        );
        assert!(t.message.contains("Input/output error"), "{t:#?}");
        assert_eq!(
            *since.get_or_insert(t.since),
            t.since,
            "since its first failure"
        );
        assert_eq!(hottest(&now.readings, SensorKind::Cpu), Some(50.0));
    }
    broken.store(false, Ordering::SeqCst);
    let scan = sensors.scan();
    assert!(
        scan.readings
            .iter()
            .any(|r| r.chip == "nvme" && r.celsius == 38.85),
        "{scan:#?}"
    );
    assert!(sensors.current(Duration::from_secs(30)).troubles.is_empty());
}
