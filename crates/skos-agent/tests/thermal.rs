//! The thermal sentinel's levels on a fake sysfs: hysteresis with readings
//! that sit between the clear level and the threshold, the `for` hold, and
//! the cooldown of reminders. Time is passed in as `now`; nothing sleeps.
//! GPU tools are off: the real machine's NVML, `nvidia-smi` and `sensors`
//! are never consulted.

use chrono::TimeZone;
use skos_agent::thermal::ThermalSentinel;
use skos_core::config::Config;
use skos_core::level::secs;
use skos_core::protocol::{Alert, AlertKind, Severity};
use skos_core::timefmt::Timestamp;
use skos_testsupport::sysfs::{FakeSysfs, HwmonHandle};

/// warning 75, critical 85, emergency 95, hysteresis 3 (so the clear levels
/// are 72 and 82), cooldown 300 s, plus `extra` under `thermal:`.
fn sentinel(fake: &FakeSysfs, extra: &str) -> ThermalSentinel {
    let text = format!(
        "thermal:
  thresholds: {{warning: 75, critical: 85, emergency: 95}}
  hysteresis: 3
  cooldown: 300
  gpu: {{nvml: false, nvidia_smi: false, lm_sensors: false}}
{extra}"
    );
    let mut cfg = Config::from_yaml(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    cfg.sysfs_root = fake.root().to_path_buf();
    ThermalSentinel::new(&cfg, None)
}

/// A CPU package at 60 °C with two cores a little cooler; the whole CPU
/// heats and cools together ([`HwmonHandle::heat`]).
fn machine() -> (FakeSysfs, HwmonHandle) {
    let fake = FakeSysfs::new();
    let cpu = fake.coretemp(60.0, &[58.0, 57.0]);
    (fake, cpu)
}

fn t(s: f64) -> Timestamp {
    chrono::Utc.timestamp_opt(1_700_000_000, 0).unwrap() + secs(s)
}

/// What an alert says, in short: (severity, previous severity, reminder).
type Said = (Severity, Severity, bool);

fn said(a: &Alert) -> Said {
    let previous: Severity = serde_json::from_value(a.details["previous_severity"].clone())
        .unwrap_or_else(|e| panic!("previous_severity in {a:?}: {e}"));
    let reminder = a.details["reminder"]
        .as_bool()
        .unwrap_or_else(|| panic!("reminder flag in {a:?}"));
    (a.severity, previous, reminder)
}

/// Heats the CPU (package at `c`), senses at `at` and returns what was said.
fn at(s: &mut ThermalSentinel, cpu: &HwmonHandle, c: f64, at: f64) -> Vec<Said> {
    cpu.heat(c);
    let alerts = s.sense(t(at));
    assert_eq!(s.cpu_temp(), Some(c), "the sentinel read what was written");
    for a in &alerts {
        assert_eq!(a.kind, AlertKind::Thermal);
        assert_eq!(a.details["sensor"], "cpu", "{a:?}");
        assert_eq!(a.details["temperature"], c, "{a:?}");
        assert_eq!(a.timestamp, t(at));
    }
    alerts.iter().map(said).collect()
}

use Severity::{Critical, Normal, Warning};

#[test]
fn warning_holds_between_the_clear_level_and_the_threshold() {
    let (fake, cpu) = machine();
    let mut s = sentinel(&fake, "");
    assert_eq!(at(&mut s, &cpu, 60.0, 0.0), []);
    assert_eq!(at(&mut s, &cpu, 76.0, 1.0), [(Warning, Normal, false)]);
    // Below the threshold (75) but above the clear level (72): still
    // warning, so no normal alert, and no reminder before the cooldown.
    for (i, c) in [74.0, 73.0, 72.5, 72.1, 73.0, 74.9].into_iter().enumerate() {
        assert_eq!(
            at(&mut s, &cpu, c, 2.0 + i as f64),
            [],
            "{c} °C is inside the hysteresis band"
        );
    }
    assert_eq!(at(&mut s, &cpu, 73.0, 300.9), [], "before the cooldown");
    // The cooldown since the warning was raised (t = 1) is over: the level
    // is reported again, and it is still warning.
    assert_eq!(at(&mut s, &cpu, 73.0, 301.0), [(Warning, Warning, true)]);
    assert_eq!(at(&mut s, &cpu, 73.5, 302.0), [], "reminded just now");
    // Past the clear level: back to normal, once.
    assert_eq!(at(&mut s, &cpu, 71.5, 303.0), [(Normal, Warning, false)]);
    assert_eq!(at(&mut s, &cpu, 71.5, 304.0), []);
    assert_eq!(at(&mut s, &cpu, 74.0, 305.0), [], "normal needs 75 to rise");
    assert_eq!(at(&mut s, &cpu, 74.0, 1000.0), [], "no reminder of normal");
}

#[test]
fn critical_holds_between_its_clear_level_and_its_threshold() {
    let (fake, cpu) = machine();
    let mut s = sentinel(&fake, "");
    at(&mut s, &cpu, 60.0, 0.0);
    assert_eq!(at(&mut s, &cpu, 86.0, 1.0), [(Critical, Normal, false)]);
    // Below critical (85), above its clear level (82): still critical,
    // not a step down to warning.
    for (i, c) in [84.0, 83.0, 82.5, 84.9].into_iter().enumerate() {
        assert_eq!(
            at(&mut s, &cpu, c, 2.0 + i as f64),
            [],
            "{c} °C is inside the critical hysteresis band"
        );
    }
    assert_eq!(at(&mut s, &cpu, 84.0, 301.0), [(Critical, Critical, true)]);
    // Past 82: warning (75 < 81.5), then the warning band holds in turn.
    assert_eq!(at(&mut s, &cpu, 81.5, 302.0), [(Warning, Critical, false)]);
    assert_eq!(
        at(&mut s, &cpu, 84.0, 303.0),
        [],
        "warning needs 85 to rise"
    );
    assert_eq!(at(&mut s, &cpu, 73.0, 304.0), [], "inside the warning band");
    assert_eq!(at(&mut s, &cpu, 71.5, 305.0), [(Normal, Warning, false)]);
}

#[test]
fn critical_can_drop_straight_to_normal_past_both_clear_levels() {
    let (fake, cpu) = machine();
    let mut s = sentinel(&fake, "");
    at(&mut s, &cpu, 60.0, 0.0);
    assert_eq!(at(&mut s, &cpu, 90.0, 1.0), [(Critical, Normal, false)]);
    assert_eq!(at(&mut s, &cpu, 71.9, 2.0), [(Normal, Critical, false)]);
}

#[test]
fn for_warning_holds_the_warning_back_until_it_lasted_that_long() {
    let (fake, cpu) = machine();
    let mut s = sentinel(&fake, "  for: {warning: 5}\n");
    assert_eq!(at(&mut s, &cpu, 60.0, 0.0), []);
    // A spike shorter than 5 s raises nothing.
    assert_eq!(at(&mut s, &cpu, 76.0, 1.0), []);
    assert_eq!(at(&mut s, &cpu, 77.0, 4.0), []);
    assert_eq!(at(&mut s, &cpu, 76.0, 5.999), []);
    assert_eq!(at(&mut s, &cpu, 70.0, 6.5), [], "the spike is over");
    // Above warning again: the hold starts over (7 s after the first
    // spike began is not 5 s of this one).
    assert_eq!(at(&mut s, &cpu, 76.0, 7.0), []);
    assert_eq!(at(&mut s, &cpu, 76.0, 8.0), []);
    assert_eq!(at(&mut s, &cpu, 76.0, 11.999), []);
    assert_eq!(at(&mut s, &cpu, 76.0, 12.0), [(Warning, Normal, false)]);
    assert_eq!(at(&mut s, &cpu, 76.0, 13.0), [], "raised once");
    // Going down is not held: past the clear level, normal at once.
    assert_eq!(at(&mut s, &cpu, 71.0, 14.0), [(Normal, Warning, false)]);
}

#[test]
fn for_critical_holds_critical_back_and_warning_is_not_said_meanwhile() {
    let (fake, cpu) = machine();
    let mut s = sentinel(&fake, "  for: {warning: 5, critical: 10}\n");
    assert_eq!(at(&mut s, &cpu, 60.0, 0.0), []);
    assert_eq!(at(&mut s, &cpu, 90.0, 1.0), []);
    assert_eq!(
        at(&mut s, &cpu, 90.0, 6.0),
        [],
        "5 s is warning's hold, not critical's"
    );
    assert_eq!(at(&mut s, &cpu, 90.0, 10.999), []);
    assert_eq!(at(&mut s, &cpu, 90.0, 11.0), [(Critical, Normal, false)]);
    assert_eq!(at(&mut s, &cpu, 90.0, 12.0), []);
}

#[test]
fn without_for_a_single_reading_above_warning_is_enough() {
    let (fake, cpu) = machine();
    let mut s = sentinel(&fake, "");
    at(&mut s, &cpu, 60.0, 0.0);
    assert_eq!(at(&mut s, &cpu, 75.001, 0.1), [(Warning, Normal, false)]);
}
