//! The coordinator's copy of each node's throttle originals: the values
//! its agent reports in `metadata.throttle.originals` while throttled
//! (what they were before SKOS changed them), given back in the
//! `originals` parameter of every thermal command sent to that node, so
//! an agent that lost its data dir can still lift a throttle SKOS applied.
//!
//! A heartbeat with `metadata.throttle` replaces the copy with what it
//! reports, except that while the agent reports caps it has no record of
//! (`unexplained_count` above 0: it lost its own copy) the originals it no
//! longer reports are kept. A heartbeat that reports neither originals nor
//! such caps ends the copy (the node is no longer throttled). A heartbeat
//! without `metadata.throttle` (an agent without the thermal sentinel, or
//! an older one) changes nothing, and a node whose agent never reported
//! originals gets commands without the parameter, as before.
//!
//! A change to the copy is audited (a `node` record, `data.event`
//! `throttle_originals`), which also has the node's state written: the
//! copy survives a coordinator restart in the node's kept heartbeat
//! (`metadata.throttle.originals` of the snapshot's `nodes` entry).

use serde_json::{json, Value};
use skos_core::catalogue::{self, ThrottleOriginal, MAX_ORIGINALS};
use skos_core::protocol::{AuditEvent, Command, Heartbeat};
use skos_core::timefmt::Timestamp;
use skos_core::NodeName;

use super::{audit, Effect, Engine};

/// What a heartbeat's `metadata.throttle` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reported {
    /// The originals the agent has recorded.
    originals: Vec<ThrottleOriginal>,
    /// How many caps in force it has no record of.
    unexplained: usize,
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
    Some(Reported {
        originals,
        unexplained: unexplained_count(hb),
    })
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
        if ThrottleOriginal::find(&merged, &old.target).is_none() {
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
        if *kept == before {
            return;
        }
        tracing::info!(node = %node, originals = kept.len(), "throttle originals kept");
        let summary = if kept.is_empty() {
            format!("{node} is no longer throttled: its throttle originals are dropped")
        } else {
            format!(
                "kept {} throttle original(s) of {node}, given back in its thermal commands",
                kept.len()
            )
        };
        out.push(audit(
            AuditEvent::Node,
            now,
            Some(node),
            summary,
            json!({"event": "throttle_originals", "originals": kept}),
        ));
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
        // The agent lost its record: what it no longer reports is kept.
        merge(
            &mut kept,
            Reported {
                originals: vec![o("file:fs/cgroup/batch/cpu.max", "max 100000")],
                unexplained: 4,
            },
        );
        assert_eq!(
            kept,
            [
                o("file:fs/cgroup/batch/cpu.max", "max 100000"),
                o("cpufreq:policy0-3", "3600000")
            ]
        );
        // Its own record wins for a target it reports.
        merge(
            &mut kept,
            Reported {
                originals: vec![o("cpufreq:policy2", "2000000")],
                unexplained: 1,
            },
        );
        assert_eq!(
            kept,
            [
                o("cpufreq:policy2", "2000000"),
                o("file:fs/cgroup/batch/cpu.max", "max 100000"),
                o("cpufreq:policy0-3", "3600000")
            ]
        );
        // Nothing recorded and no cap it cannot explain: not throttled.
        merge(
            &mut kept,
            Reported {
                originals: vec![],
                unexplained: 0,
            },
        );
        assert!(kept.is_empty());
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
}
