//! The coordinator's copy of each node's throttle originals: the values
//! its agent reports in `metadata.throttle.originals` while throttled
//! (what they were before SKOS changed them), given back in the
//! `originals` parameter of every thermal command sent to that node, so
//! an agent that lost its data dir can still lift a throttle SKOS applied.
//!
//! A heartbeat with `metadata.throttle` replaces the copy with what it
//! reports, except that an original it no longer reports is kept while
//! its target is among the caps the agent reports having no record of
//! (`metadata.throttle.unexplained`: it lost its own copy); any other old
//! entry is dropped. A heartbeat that reports neither originals nor such
//! caps ends the copy (the node is no longer throttled), and so does one
//! whose recorded level (`metadata.throttle.level`) is 0 with no such
//! caps, whatever originals it lists. A heartbeat without
//! `metadata.throttle` (an agent without the thermal sentinel, or an older
//! one) changes nothing, and a node whose agent never reported originals
//! gets commands without the parameter, as before.
//!
//! A change to the copy is audited (a `node` record, `data.event`
//! `throttle_originals`), which also has the node's state written: the
//! copy survives a coordinator restart in the node's kept heartbeat
//! (`metadata.throttle.originals` of the snapshot's `nodes` entry). At most
//! one such record per node per [`AUDIT_EVERY`]: a change within it
//! updates the copy but is only counted (`data.suppressed` of the next
//! record, written with the first heartbeat after it ends).

use serde_json::{json, Value};
use skos_core::catalogue::{self, ThrottleOriginal, MAX_ORIGINALS};
use skos_core::protocol::{AuditEvent, Command, Heartbeat};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use super::{audit, Effect, Engine};

/// At most one `throttle_originals` audit record per node this often, in
/// seconds: the audit stream cannot be pruned.
pub(super) const AUDIT_EVERY: i64 = 60;

/// What a heartbeat's `metadata.throttle` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reported {
    /// The originals the agent has recorded.
    originals: Vec<ThrottleOriginal>,
    /// How many caps in force it has no record of.
    unexplained: usize,
    /// The targets of those caps, as listed (at most the agent's
    /// `MAX_REPORTED_CAPS` entries).
    unexplained_targets: Vec<String>,
}

/// What `hb` reports of its throttle; `None` without `metadata.throttle`
/// or with originals that are not a well-formed list (logged).
pub(super) fn reported(hb: &Heartbeat) -> Option<Reported> {
    let throttle = hb.metadata.get("throttle")?;
    let originals = match throttle.get("originals") {
        None | Some(Value::Null) => Vec::new(),
        Some(list) => match ThrottleOriginal::parse_list(list) {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(node = %hb.node, error = %e, "heartbeat's throttle originals refused; the coordinator's copy is kept as it was");
                return None;
            }
        },
    };
    let unexplained = unexplained_count(hb);
    // Nothing recorded and nothing unexplained: not throttled, whatever
    // originals it lists.
    let originals = if recorded_level(hb) == Some(0) && unexplained == 0 {
        Vec::new()
    } else {
        originals
    };
    Some(Reported {
        originals,
        unexplained,
        unexplained_targets: unexplained_targets(hb),
    })
}

/// The level SKOS applied and recorded (`metadata.throttle.level`), as
/// opposed to the heartbeat's `throttle_level`, which unexplained caps
/// raise; `None` without it.
pub(super) fn recorded_level(hb: &Heartbeat) -> Option<u8> {
    let level = hb.metadata.get("throttle")?.get("level")?.as_u64()?;
    Some(u8::try_from(level).unwrap_or(u8::MAX))
}

/// The targets of the caps in force the agent of `hb` has no record of
/// (`metadata.throttle.unexplained[].target`, those well formed).
pub(super) fn unexplained_targets(hb: &Heartbeat) -> Vec<String> {
    hb.metadata
        .get("throttle")
        .and_then(|t| t.get("unexplained"))
        .and_then(Value::as_array)
        .map(|caps| {
            caps.iter()
                .filter_map(|c| c.get("target")?.as_str())
                .filter(|t| ThrottleOriginal::target_ok(t))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether two wire targets name the same target, or cpufreq policy
/// ranges that share a policy.
fn same_target(a: &str, b: &str) -> bool {
    let one = |t: &str| {
        [ThrottleOriginal {
            target: t.to_string(),
            value: String::new(),
        }]
    };
    ThrottleOriginal::find(&one(a), b).is_some() || ThrottleOriginal::find(&one(b), a).is_some()
}

/// Whether `kept` holds an original for one of `unexplained`: a cap SKOS
/// set whose record the agent lost, which a reset with the copy lifts.
pub(super) fn explains_any(kept: &[ThrottleOriginal], unexplained: &[String]) -> bool {
    unexplained
        .iter()
        .any(|u| kept.iter().any(|o| same_target(&o.target, u)))
}

/// How many caps in force the agent of `hb` has no record of
/// (`metadata.throttle.unexplained_count`, else the length of
/// `metadata.throttle.unexplained`; 0 without either).
pub(super) fn unexplained_count(hb: &Heartbeat) -> usize {
    let Some(throttle) = hb.metadata.get("throttle") else {
        return 0;
    };
    throttle
        .get("unexplained_count")
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
        .or_else(|| throttle.get("unexplained")?.as_array().map(Vec::len))
        .unwrap_or(0)
}

/// `kept` after a heartbeat that reported `r` (see the module docs).
pub(super) fn merge(kept: &mut Vec<ThrottleOriginal>, r: Reported) {
    if r.unexplained == 0 {
        *kept = r.originals;
        return;
    }
    let mut merged = r.originals;
    for old in kept.drain(..) {
        if merged.len() >= MAX_ORIGINALS {
            break;
        }
        let still_capped = r
            .unexplained_targets
            .iter()
            .any(|t| same_target(&old.target, t));
        if still_capped && ThrottleOriginal::find(&merged, &old.target).is_none() {
            merged.push(old);
        }
    }
    *kept = merged;
}

/// The kept originals as a heartbeat's `metadata.throttle`, for the
/// snapshot's copy of the node's heartbeat; `None` when there are none.
pub(super) fn as_metadata(kept: &[ThrottleOriginal]) -> Option<Value> {
    (!kept.is_empty()).then(|| json!({ "originals": kept }))
}

/// Whether `action` is one of the thermal sentinel's, which take
/// [`catalogue::ORIGINALS`].
fn takes_originals(action: &str) -> bool {
    catalogue::spec(action).is_some_and(|spec| {
        spec.params
            .iter()
            .any(|(name, _)| *name == catalogue::ORIGINALS)
    })
}

impl Engine {
    /// Update `node`'s copy of its throttle originals from `hb`; a
    /// change is audited (so the node's state is written with it).
    pub(super) fn keep_throttle_originals(
        &mut self,
        node: &NodeName,
        hb: &Heartbeat,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let Some(r) = reported(hb) else {
            return;
        };
        let Some(state) = self.nodes.get_mut(node) else {
            return;
        };
        let before = state.throttle_originals.clone();
        merge(&mut state.throttle_originals, r);
        let kept = &state.throttle_originals;
        let changed = *kept != before;
        let due = state
            .originals_audited_at
            .is_none_or(|at| now - at >= chrono::Duration::seconds(AUDIT_EVERY));
        if changed && !due {
            state.originals_suppressed = state.originals_suppressed.saturating_add(1);
            return;
        }
        if !due || (!changed && state.originals_suppressed == 0) {
            return;
        }
        let suppressed = std::mem::take(&mut state.originals_suppressed);
        state.originals_audited_at = Some(now);
        tracing::info!(node = %node, originals = kept.len(), suppressed, "throttle originals kept");
        let summary = if kept.is_empty() {
            format!("{node} is no longer throttled: its throttle originals are dropped")
        } else {
            format!(
                "kept {} throttle original(s) of {node}, given back in its thermal commands",
                kept.len()
            )
        };
        let mut data = json!({"event": "throttle_originals", "originals": kept});
        if suppressed > 0 {
            data["suppressed"] = json!(suppressed);
        }
        out.push(audit(AuditEvent::Node, now, Some(node), summary, data));
    }

    /// Give `node`'s originals back in `cmd` when it is a thermal command
    /// and there are any.
    pub(super) fn give_back_originals(&self, node: &NodeName, cmd: &mut Command) {
        if !takes_originals(&cmd.action_type) {
            return;
        }
        let Some(kept) = self
            .nodes
            .get(node)
            .map(|s| &s.throttle_originals)
            .filter(|k| !k.is_empty())
        else {
            return;
        };
        cmd.parameters
            .insert(catalogue::ORIGINALS.to_string(), json!(kept));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use skos_core::config::Config;
    use skos_core::counters::Counters;
    use skos_core::protocol::{AlertKind, Severity};
    use skos_core::timefmt::Timestamp;

    use crate::engine::{Effect, EngineSnapshot};

    fn t(s: i64) -> Timestamp {
        chrono::Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn nova() -> NodeName {
        NodeName::parse("nova").unwrap()
    }

    fn o(target: &str, value: &str) -> ThrottleOriginal {
        ThrottleOriginal {
            target: target.into(),
            value: value.into(),
        }
    }

    /// A heartbeat at `at` s, `cpu` °C, throttle level `level`, with
    /// `throttle` as its `metadata.throttle` (none when `Null`).
    fn hb(at: i64, cpu: f64, level: u8, throttle: Value) -> Heartbeat {
        let mut metadata = serde_json::Map::new();
        if !throttle.is_null() {
            metadata.insert("throttle".into(), throttle);
        }
        Heartbeat {
            agent_id: "thermal-sentinel-nova".into(),
            agent_type: "thermal_sentinel".into(),
            node: nova(),
            timestamp: t(at),
            cpu_temp: Some(cpu),
            gpu_temp: None,
            storage_percent: None,
            interval_seconds: Some(1.0),
            throttle_level: Some(level),
            metadata,
            workloads: Vec::new(),
        }
    }

    fn commands(effects: &[Effect]) -> Vec<Command> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Command(_, c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    fn engine() -> Engine {
        let mut cfg = Config::default();
        cfg.thermal.clear_for = 1.0;
        Engine::new(cfg, Counters::default(), "test")
    }

    fn kept(e: &Engine) -> Vec<ThrottleOriginal> {
        e.nodes
            .get(&nova())
            .map(|s| s.throttle_originals.clone())
            .unwrap_or_default()
    }

    #[test]
    fn a_report_replaces_the_copy_unless_the_agent_lost_its_own() {
        let mut kept = vec![o("cpufreq:policy0-3", "3600000")];
        // The agent lost its record: what it no longer reports is kept
        // while its target is still capped and unexplained.
        merge(
            &mut kept,
            Reported {
                originals: vec![o("file:fs/cgroup/batch/cpu.max", "max 100000")],
                unexplained: 4,
                unexplained_targets: vec!["cpufreq:policy0-3".into()],
            },
        );
        assert_eq!(
            kept,
            [
                o("file:fs/cgroup/batch/cpu.max", "max 100000"),
                o("cpufreq:policy0-3", "3600000")
            ]
        );
        // Its own record wins for a target it reports; an old entry whose
        // target it no longer reports unexplained is dropped.
        merge(
            &mut kept,
            Reported {
                originals: vec![o("cpufreq:policy2", "2000000")],
                unexplained: 2,
                unexplained_targets: vec!["cpufreq:policy0-1".into()],
            },
        );
        assert_eq!(
            kept,
            [
                o("cpufreq:policy2", "2000000"),
                o("cpufreq:policy0-3", "3600000")
            ]
        );
        // Nothing recorded and no cap it cannot explain: not throttled.
        merge(
            &mut kept,
            Reported {
                originals: vec![],
                unexplained: 0,
                unexplained_targets: vec![],
            },
        );
        assert!(kept.is_empty());
    }

    /// An old original is kept only while its target is among the caps
    /// the agent reports unexplained: one for a target that is no longer
    /// capped (or never was) goes, even while other caps are unexplained.
    #[test]
    fn an_old_original_goes_once_its_target_is_no_longer_unexplained() {
        let mut kept = vec![
            o("cpufreq:policy0-3", "800000"),
            o("gpu:GPU-1234", "700000"),
        ];
        merge(
            &mut kept,
            Reported {
                originals: vec![],
                unexplained: 1,
                unexplained_targets: vec!["gpu:GPU-1234".into()],
            },
        );
        assert_eq!(kept, [o("gpu:GPU-1234", "700000")]);
        // A count without a list keeps nothing old.
        merge(
            &mut kept,
            Reported {
                originals: vec![],
                unexplained: 3,
                unexplained_targets: vec![],
            },
        );
        assert!(kept.is_empty());
    }

    /// A cap SKOS did not set (an operator's GPU power limit) on a cool
    /// node raises the heartbeat's `throttle_level` but is no throttle of
    /// SKOS's: no reset is ever sent for it, and the status still shows
    /// it.
    #[test]
    fn a_foreign_cap_on_a_cool_node_sends_no_reset() {
        let mut e = engine();
        let foreign = json!({
            "level": 0,
            "originals": [],
            "unexplained": [{"target": "gpu:GPU-1234", "path": "nvml:GPU-1234:power_limit_mw", "value": "490000", "full": "700000", "percent": 30}],
            "unexplained_count": 1,
        });
        let mut sent = Vec::new();
        for at in 0..200 {
            sent.extend(commands(
                &e.on_heartbeat(hb(at, 45.0, 30, foreign.clone()), t(at)),
            ));
            sent.extend(commands(&e.tick(t(at))));
        }
        assert!(sent.is_empty(), "{sent:?}");
        assert!(kept(&e).is_empty());
        let status = e.status(t(200));
        assert_eq!(status.nodes[0].unexplained_caps, 1);
        assert_eq!(status.nodes[0].throttle_level, Some(30));

        // A throttle SKOS recorded is still lifted once cool.
        let ours = json!({
            "level": 50,
            "originals": [{"target": "cpufreq:policy0-3", "value": "3600000"}],
            "unexplained": foreign["unexplained"],
            "unexplained_count": 1,
        });
        for at in 200..204 {
            sent.extend(commands(
                &e.on_heartbeat(hb(at, 45.0, 50, ours.clone()), t(at)),
            ));
        }
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].action_type, "reset_throttle");
    }

    /// A node whose originals alternate between two lists gets at most
    /// one audit record a minute; the copy follows every heartbeat, and
    /// the next record counts the changes left unaudited.
    #[test]
    fn originals_churn_is_audited_at_most_once_a_minute() {
        let mut e = engine();
        let a = json!([{"target": "cpufreq:policy0-3", "value": "3600000"}]);
        let b = json!([{"target": "cpufreq:policy0-3", "value": "3500000"}]);
        e.on_heartbeat(hb(0, 87.0, 0, Value::Null), t(0));
        let mut records = Vec::new();
        for at in 1..=121 {
            let list = if at % 2 == 0 { &b } else { &a };
            let fx = e.on_heartbeat(
                hb(at, 87.0, 50, json!({"level": 50, "originals": list})),
                t(at),
            );
            records.extend(fx.into_iter().filter_map(|f| match f {
                Effect::Audit(a) if a.data["event"] == "throttle_originals" => Some(a.data),
                _ => None,
            }));
            let want = if at % 2 == 0 { "3500000" } else { "3600000" };
            assert_eq!(kept(&e), [o("cpufreq:policy0-3", want)]);
        }
        assert_eq!(records.len(), 3, "{records:?}");
        assert!(records[0].get("suppressed").is_none(), "{records:?}");
        assert_eq!(records[1]["suppressed"], 59);
        assert_eq!(records[2]["suppressed"], 59);

        // A change left unaudited is written with the first heartbeat
        // after the minute, even when nothing changes then.
        e.on_heartbeat(
            hb(122, 87.0, 50, json!({"level": 50, "originals": b})),
            t(122),
        );
        let fx = e.on_heartbeat(
            hb(181, 87.0, 50, json!({"level": 50, "originals": b})),
            t(181),
        );
        let flushed: Vec<&Value> = fx
            .iter()
            .filter_map(|f| match f {
                Effect::Audit(a) if a.data["event"] == "throttle_originals" => Some(&a.data),
                _ => None,
            })
            .collect();
        assert_eq!(
            flushed,
            [&json!({"event": "throttle_originals", "originals": b, "suppressed": 1})]
        );
    }

    /// Originals from a heartbeat whose recorded level is 0 with no
    /// unexplained cap are not kept: the node is not throttled.
    #[test]
    fn originals_of_an_unthrottled_node_are_ignored() {
        let mut e = engine();
        let fx = e.on_heartbeat(
            hb(
                0,
                45.0,
                0,
                json!({"level": 0, "originals": [{"target": "cpufreq:policy0", "value": "800000"}], "unexplained": []}),
            ),
            t(0),
        );
        assert!(kept(&e).is_empty());
        assert!(
            !fx.iter()
                .any(|f| matches!(f, Effect::Audit(a) if a.data["event"] == "throttle_originals")),
            "{fx:?}"
        );
    }

    #[test]
    fn bad_or_missing_reports_change_nothing() {
        assert_eq!(reported(&hb(0, 50.0, 0, Value::Null)), None);
        let bad = json!({"originals": [{"target": "file:../../etc/shadow", "value": "x"}]});
        assert_eq!(reported(&hb(0, 50.0, 0, bad)), None);
        let r = reported(&hb(
            0,
            50.0,
            0,
            json!({"level": 0, "originals": [], "unexplained": [{}, {}], "unexplained_count": 9}),
        ))
        .unwrap();
        assert_eq!(r.unexplained, 9);
    }

    /// The agent throttles and reports its originals; it restarts with its
    /// data dir lost and reports the cap as unexplained (throttle level
    /// 50, no originals). The coordinator still has the copy, and the
    /// reset it sends once the node is cool carries it; the copy also
    /// survives a coordinator restart. Once the agent reports nothing, the
    /// copy is gone and commands carry no originals.
    #[test]
    fn the_reset_after_a_lost_data_dir_carries_the_copy() {
        let mut e = engine();
        let copy = json!([{"target": "cpufreq:policy0-3", "value": "3600000"}]);
        let throttled = json!({"level": 50, "originals": copy, "unexplained": []});
        e.on_heartbeat(hb(0, 87.0, 0, Value::Null), t(0));
        let fx = e.on_heartbeat(hb(1, 87.0, 50, throttled.clone()), t(1));
        assert_eq!(kept(&e), [o("cpufreq:policy0-3", "3600000")]);
        // Audited, so the service writes the node's state with it.
        let audited: Vec<&Value> = fx
            .iter()
            .filter_map(|f| match f {
                Effect::Audit(a) if a.data["event"] == "throttle_originals" => Some(&a.data),
                _ => None,
            })
            .collect();
        assert_eq!(
            audited,
            [&json!({"event": "throttle_originals", "originals": copy})]
        );
        // The same again: nothing to audit.
        let fx = e.on_heartbeat(hb(1, 87.0, 50, throttled), t(1));
        assert!(fx.is_empty(), "{fx:?}");

        // A coordinator restart in between: the node's snapshot keeps it.
        let snap: EngineSnapshot =
            serde_json::from_value(serde_json::to_value(e.node_snapshot(&nova())).unwrap())
                .unwrap();
        let mut e = engine();
        e.restore(snap, t(1));
        assert_eq!(kept(&e), [o("cpufreq:policy0-3", "3600000")]);

        // The agent is back without its data dir, cool.
        let lost = json!({
            "level": 0,
            "originals": [],
            "unexplained": [{"target": "cpufreq:policy0-3", "value": "1800000", "full": "3600000", "percent": 50, "path": "x"}],
            "unexplained_count": 4,
        });
        let mut sent = Vec::new();
        for at in 2..6 {
            sent.extend(commands(
                &e.on_heartbeat(hb(at, 45.0, 50, lost.clone()), t(at)),
            ));
        }
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].action_type, "reset_throttle");
        assert_eq!(sent[0].parameters[catalogue::ORIGINALS], copy);
        assert!(
            catalogue::validate_parameters("reset_throttle", &sent[0].parameters).is_ok(),
            "{sent:?}"
        );
        let status = e.status(t(6));
        assert_eq!(status.nodes[0].unexplained_caps, 4);
        assert_eq!(status.nodes[0].throttle_level, Some(50));

        // Lifted: nothing to keep any more.
        e.on_heartbeat(
            hb(
                7,
                45.0,
                0,
                json!({"level": 0, "originals": [], "unexplained": []}),
            ),
            t(7),
        );
        assert!(kept(&e).is_empty());
        let fx = e.on_alert(
            skos_core::protocol::Alert {
                alert_id: "a1".into(),
                agent_id: "thermal-sentinel-nova".into(),
                kind: AlertKind::Thermal,
                severity: Severity::Critical,
                node: nova(),
                message: "hot".into(),
                details: json!({"sensor": "cpu", "temperature": 87.0})
                    .as_object()
                    .cloned()
                    .unwrap(),
                timestamp: t(8),
            },
            t(8),
        );
        let cmds = commands(&fx);
        assert_eq!(cmds[0].action_type, "throttle_50");
        assert!(cmds[0].parameters.is_empty(), "{cmds:?}");
    }

    /// A throttle decided while the coordinator holds a copy carries it,
    /// so the agent does not take a cap for an original; other actions
    /// never do.
    #[test]
    fn thermal_commands_carry_the_copy_others_do_not() {
        let mut e = engine();
        e.on_heartbeat(
            hb(
                0,
                70.0,
                10,
                json!({"level": 10, "originals": [{"target": "cpufreq:policy0", "value": "3600000"}]}),
            ),
            t(0),
        );
        let mut cmd = Command {
            action_id: "x".into(),
            action_type: "throttle_100".into(),
            parameters: Default::default(),
            timestamp: t(0),
            node: Some(nova()),
            deadline: None,
            cause: None,
            problem: None,
            term: None,
            level: None,
        };
        e.give_back_originals(&nova(), &mut cmd);
        assert_eq!(
            cmd.parameters[catalogue::ORIGINALS],
            json!([{"target": "cpufreq:policy0", "value": "3600000"}])
        );
        cmd.action_type = "cleanup_temp".into();
        cmd.parameters.clear();
        e.give_back_originals(&nova(), &mut cmd);
        assert!(cmd.parameters.is_empty());
    }

    /// The copy holds one range for all four policies (as the agent
    /// compacts them); the agent, back without its data dir, lists the
    /// cap it has no record of per policy. `cpufreq:policy2` lies within
    /// `cpufreq:policy0-3`: the copy still explains the cap, is kept, and
    /// the reset sent once the node is cool carries it. Found by mutation
    /// testing: matching only when each target holds the other's first
    /// policy dropped the copy and never lifted the cap.
    #[test]
    fn a_copy_for_a_range_explains_a_cap_on_one_of_its_policies() {
        let mut e = engine();
        let copy = json!([{"target": "cpufreq:policy0-3", "value": "3600000"}]);
        e.on_heartbeat(hb(0, 87.0, 0, Value::Null), t(0));
        e.on_heartbeat(
            hb(
                1,
                87.0,
                50,
                json!({"level": 50, "originals": copy, "unexplained": []}),
            ),
            t(1),
        );
        let lost = json!({
            "level": 0,
            "originals": [],
            "unexplained": [{"target": "cpufreq:policy2", "value": "1800000", "full": "3600000", "percent": 50, "path": "x"}],
            "unexplained_count": 1,
        });
        let mut sent = Vec::new();
        for at in 2..6 {
            sent.extend(commands(
                &e.on_heartbeat(hb(at, 45.0, 50, lost.clone()), t(at)),
            ));
            assert_eq!(kept(&e), [o("cpufreq:policy0-3", "3600000")]);
        }
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].action_type, "reset_throttle");
        assert_eq!(sent[0].parameters[catalogue::ORIGINALS], copy);
    }
}
