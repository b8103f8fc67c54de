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

/// What one sensing pass raised, with the event: (severity, event) where
/// event is `details.event` or "level".
fn raised(s: &mut ThermalSentinel, cpu: &HwmonHandle, c: f64, secs: f64) -> Vec<Alert> {
    cpu.heat(c);
    let alerts = s.sense(t(secs));
    assert_eq!(s.cpu_temp(), Some(c), "the sentinel read what was written");
    alerts
}

fn event(a: &Alert) -> &str {
    a.details
        .get("event")
        .and_then(|e| e.as_str())
        .unwrap_or("level")
}

/// A CPU heating steadily, one reading every 5 s, 1 °C each (0.2 °C/s),
/// from 60 °C: with the default early warning (fitted over 120 s, trusted
/// from 6 readings, r² 0.8, 0.01 °C/s, horizon 300 s) a `predicted`
/// warning comes while the CPU is still below warning, once; the level
/// alerts follow as before.
#[test]
fn a_steady_rise_raises_predicted_before_warning() {
    let (fake, cpu) = machine();
    let mut s = sentinel(&fake, "");
    let mut said: Vec<(f64, Severity, String, Alert)> = Vec::new();
    for i in 0..=30 {
        let c = 60.0 + i as f64;
        for a in raised(&mut s, &cpu, c, 5.0 * i as f64) {
            said.push((c, a.severity, event(&a).to_string(), a));
        }
    }
    let summary: Vec<(f64, Severity, &str)> = said
        .iter()
        .map(|(c, sev, e, _)| (*c, *sev, e.as_str()))
        .collect();
    // Six readings (60..=65 °C) make the first trusted trend: critical
    // (85 °C) is 100 s away, within the horizon.
    assert_eq!(
        summary,
        [
            (65.0, Warning, "predicted"),
            (76.0, Warning, "level"),
            (86.0, Critical, "level")
        ],
        "{said:#?}"
    );
    let p = &said[0].3;
    assert_eq!(p.kind, AlertKind::Thermal);
    assert_eq!(p.details["sensor"], "cpu");
    assert_eq!(p.details["temperature"], 65.0);
    assert_eq!(p.details["threshold"], 85.0, "the level it will reach");
    assert_eq!(p.details["previous_severity"], "normal");
    assert_eq!(p.details["reminder"], false);
    // Readings are stamped when read: a few microseconds of the machine's
    // own timing ride on the 5 s steps.
    let slope = p.details["trend_celsius_per_second"].as_f64().unwrap();
    assert!((slope - 0.2).abs() < 1e-4, "{p:?}");
    let eta = p.details["seconds_to_critical"].as_f64().unwrap();
    assert!((eta - 100.0).abs() < 0.05, "{p:?}");
    assert_eq!(p.details["trend_samples"], 6);
    assert!(p.message.contains("will reach critical"), "{}", p.message);
    assert!(p.alert_id.ends_with("-predicted"), "{}", p.alert_id);
    // The level alerts carry the trend too.
    let w = &said[1].3;
    assert!(w.details["seconds_to_critical"].as_f64().is_some(), "{w:?}");
}

/// The horizon bounds the warning: with 22 s, the same rise is predicted
/// only once critical is that close (81 °C, after the level warning).
#[test]
fn the_horizon_bounds_how_early_the_warning_comes() {
    let (fake, cpu) = machine();
    let mut s = sentinel(&fake, "  predict: {horizon_seconds: 22}\n");
    let mut said = Vec::new();
    for i in 0..=30 {
        let c = 60.0 + i as f64;
        for a in raised(&mut s, &cpu, c, 5.0 * i as f64) {
            said.push((c, a.severity, event(&a).to_string()));
        }
    }
    assert_eq!(
        said,
        [
            (76.0, Warning, "level".to_string()),
            (81.0, Warning, "predicted".to_string()),
            (86.0, Critical, "level".to_string())
        ]
    );
}

/// Ten minutes of a flat temperature with ±1.5 °C of noise (a fan
/// cycling, a busy core): the fitted line explains little of it, no
/// prediction.
#[test]
fn a_noisy_flat_series_raises_no_prediction() {
    let (fake, cpu) = machine();
    let mut s = sentinel(&fake, "");
    // A fixed pseudo-random sequence in [-1.5, 1.5].
    let mut x: u32 = 12345;
    for i in 0..120 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let noise = ((x >> 16) % 301) as f64 / 100.0 - 1.5;
        let c = 68.0 + noise;
        let alerts = raised(&mut s, &cpu, c, 5.0 * i as f64);
        assert!(alerts.is_empty(), "at {i}: {c} °C: {alerts:?}");
    }
}

/// One reading far above the rest and back: the line through the window
/// barely rises and does not explain the readings, no prediction (and no
/// level alert: the spike stays below warning).
#[test]
fn a_single_spike_raises_no_prediction() {
    let (fake, cpu) = machine();
    let mut s = sentinel(&fake, "");
    for i in 0..24 {
        assert!(raised(&mut s, &cpu, 60.0, 5.0 * i as f64).is_empty());
    }
    let spike = raised(&mut s, &cpu, 74.0, 120.0);
    assert!(spike.is_empty(), "{spike:?}");
    for i in 25..50 {
        let alerts = raised(&mut s, &cpu, 60.0, 5.0 * i as f64);
        assert!(alerts.is_empty(), "{alerts:?}");
    }
}

/// `thermal.predict.enabled: false`: the rise raises its level alerts only.
#[test]
fn the_early_warning_can_be_turned_off() {
    let (fake, cpu) = machine();
    let mut s = sentinel(&fake, "  predict: {enabled: false}\n");
    let mut said = Vec::new();
    for i in 0..=30 {
        let c = 60.0 + i as f64;
        for a in raised(&mut s, &cpu, c, 5.0 * i as f64) {
            said.push((c, a.severity, event(&a).to_string()));
        }
    }
    assert_eq!(
        said,
        [
            (76.0, Warning, "level".to_string()),
            (86.0, Critical, "level".to_string())
        ]
    );
}

/// A rise predicted, then ended (the CPU cools back), then a new rise:
/// predicted again, once per rise; each prediction raised below warning
/// is withdrawn once its rise stopped short (one `normal` alert, so the
/// early warning and the throttle that answered it do not stay open).
#[test]
fn each_rise_is_predicted_once() {
    let (fake, cpu) = machine();
    let mut s = sentinel(&fake, "");
    let mut said: Vec<(f64, Severity, String)> = Vec::new();
    let mut clock = 0.0;
    let mut step = |s: &mut ThermalSentinel, c: f64, said: &mut Vec<(f64, Severity, String)>| {
        for a in raised(s, &cpu, c, clock) {
            said.push((c, a.severity, event(&a).to_string()));
        }
        clock += 5.0;
    };
    for i in 0..10 {
        step(&mut s, 60.0 + i as f64, &mut said);
    }
    assert_eq!(said, [(65.0, Warning, "predicted".to_string())]);
    // Cooling back to 60 for two minutes: the trend falls, the rise ended
    // short of warning: withdrawn, once, and nothing predicted.
    for i in 0..30 {
        step(&mut s, (69.0 - i as f64).max(60.0), &mut said);
    }
    assert_eq!(said.len(), 2, "{said:?}");
    assert_eq!(
        (said[1].1, said[1].2.as_str()),
        (Normal, "prediction_withdrawn"),
        "{said:?}"
    );
    // The new rise, up to 74 °C (below warning): once the window holds
    // enough of it to trust, predicted again, once.
    for i in 0..15 {
        step(&mut s, 60.0 + i as f64, &mut said);
    }
    let predicted: Vec<f64> = said
        .iter()
        .filter(|(_, _, e)| e == "predicted")
        .map(|(c, _, _)| *c)
        .collect();
    assert_eq!(predicted.len(), 2, "{said:?}");
}

/// A prediction raised below warning, then the CPU levels off at 72 °C
/// (below warning): the flat window no longer reaches critical, so the
/// early warning is withdrawn once.
#[test]
fn a_rise_that_levels_off_withdraws_its_prediction() {
    let (fake, cpu) = machine();
    let mut s = sentinel(&fake, "");
    let mut said: Vec<(f64, Severity, String, Alert)> = Vec::new();
    let mut clock = 0.0;
    let mut push = |s: &mut ThermalSentinel, c: f64, said: &mut Vec<_>| {
        for a in raised(s, &cpu, c, clock) {
            said.push((c, a.severity, event(&a).to_string(), a));
        }
        clock += 5.0;
    };
    for i in 0..=12 {
        push(&mut s, 60.0 + i as f64, &mut said);
    }
    for _ in 0..60 {
        push(&mut s, 72.0, &mut said);
    }
    let summary: Vec<(Severity, &str)> = said.iter().map(|(_, s, e, _)| (*s, e.as_str())).collect();
    assert_eq!(
        summary,
        [(Warning, "predicted"), (Normal, "prediction_withdrawn")],
        "{said:#?}"
    );
    let w = &said[1].3;
    assert_eq!(w.details["sensor"], "cpu");
    assert_eq!(w.details["previous_severity"], "warning");
    assert!(w.alert_id.ends_with("-withdrawn"), "{}", w.alert_id);
    assert!(w.message.contains("withdrawn"), "{}", w.message);
}

/// The check before acting: `thermal:cpu` is still there while the
/// hottest CPU reading has not cleared the command's level (below it by
/// the hysteresis), gone after; a problem the sentinel has no reading for
/// is unknown (the command runs).
#[test]
fn the_precondition_follows_the_reading_and_the_hysteresis() {
    use skos_agent::antibody::Precondition;
    let (fake, cpu) = machine();
    let mut s = sentinel(&fake, "");
    raised(&mut s, &cpu, 80.0, 0.0);
    assert_eq!(s.precondition("thermal:cpu", 75.0), Precondition::Holds);
    raised(&mut s, &cpu, 73.0, 5.0);
    assert_eq!(
        s.precondition("thermal:cpu", 75.0),
        Precondition::Holds,
        "73 °C is inside the hysteresis band of 75"
    );
    raised(&mut s, &cpu, 70.0, 10.0);
    match s.precondition("thermal:cpu", 75.0) {
        Precondition::Gone { reading, source } => {
            assert_eq!(reading, 70.0);
            assert!(source.ends_with("temp1_input"), "{source}");
        }
        other => panic!("70 °C cleared 75: {other:?}"),
    }
    assert_eq!(
        s.precondition("thermal:cpu", 60.0),
        Precondition::Holds,
        "still at a lower level"
    );
    assert_eq!(s.precondition("thermal:gpu", 75.0), Precondition::Unknown);
    assert_eq!(s.precondition("storage:/", 75.0), Precondition::Unknown);
}

/// A steady rise toward critical read through a noisy sensor (±2.5 °C): the
/// fit's R² wanders around `min_r2` from reading to reading, but the
/// rise never stops short, so the early warning is raised once and not
/// withdrawn and raised again on the noise.
#[test]
fn a_noisy_rise_is_predicted_once_and_not_withdrawn_on_the_noise() {
    let (fake, cpu) = machine();
    let mut s = sentinel(&fake, "");
    let mut said: Vec<(f64, Severity, String)> = Vec::new();
    // 0.08 °C/s (0.4 °C a reading) from 60 °C, kept below warning (75).
    let noise = [
        -0.65, 0.76, 0.82, 2.18, -0.34, -0.51, -1.9, -0.06, -1.17, -1.87, -2.44, -0.43, 1.5, 0.76,
        2.21, -0.21, -0.61, 0.01, 1.57, 2.09, -1.73, 0.12, -1.97, -1.23, -0.18, 1.55, 1.02, 1.46,
        -1.36, 0.98, 2.46, 0.22, -1.25, -0.39, -1.71, -1.6,
    ];
    for (i, n) in noise.iter().enumerate() {
        let c = ((60.0 + 0.4 * i as f64 + n) * 100.0).round() / 100.0;
        for a in raised(&mut s, &cpu, c, 5.0 * i as f64) {
            said.push((c, a.severity, event(&a).to_string()));
        }
    }
    let events: Vec<&str> = said.iter().map(|(_, _, e)| e.as_str()).collect();
    assert_eq!(events, ["predicted"], "{said:?}");
}

/// `for.warning` holds an early warning back as it holds the level one: a
/// steep, steady climb (0.5 °C every 0.2 s, a trusted trend from its sixth
/// reading), still below warning, is predicted only once the trend has
/// reached critical within the horizon for the 4 s hold.
#[test]
fn a_prediction_waits_for_the_warning_hold_too() {
    let (fake, cpu) = machine();
    let mut s = sentinel(&fake, "  for: {warning: 4}\n");
    let mut said = Vec::new();
    for i in 0..35 {
        let at = 0.2 * f64::from(i);
        let c = (60.0 + 0.5 * f64::from(i)).min(74.0);
        for a in raised(&mut s, &cpu, c, at) {
            said.push((at, a.severity, event(&a).to_string()));
        }
    }
    assert!(
        said.iter().all(|(at, _, _)| *at >= 4.0),
        "raised before the 4 s hold: {said:?}"
    );
    assert_eq!(
        said.first().map(|(_, s, e)| (*s, e.as_str())),
        Some((Warning, "predicted")),
        "{said:?}"
    );
}
