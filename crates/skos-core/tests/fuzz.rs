//! Property-based fuzzing of every parser in the core: whatever the input,
//! a clear error or a valid value, never a panic. Bounded (proptest's case
//! count), so it runs with the rest of the suite.

use proptest::prelude::*;
use serde_json::Value;
use skos_core::config::Config;
use skos_core::protocol::{
    decode, Alert, Command, CommandResult, Heartbeat, DEFAULT_MAX_MESSAGE_BYTES,
};
use skos_core::NodeName;

/// Arbitrary JSON, nested a few levels, with the field names our messages use.
fn json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("agent_id".to_string()),
        Just("agent_type".to_string()),
        Just("node".to_string()),
        Just("timestamp".to_string()),
        Just("cpu_temp".to_string()),
        Just("type".to_string()),
        Just("severity".to_string()),
        Just("details".to_string()),
        Just("action_id".to_string()),
        Just("action_type".to_string()),
        Just("parameters".to_string()),
        Just("deadline".to_string()),
        Just("status".to_string()),
        "[a-z_]{1,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        ".{0,40}".prop_map(Value::String),
        Just(Value::String("2024-01-01T00:00:00Z".into())),
        Just(Value::String("nova".into())),
        Just(Value::String("critical".into())),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..10)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn all_messages(bytes: &[u8]) {
    let l = DEFAULT_MAX_MESSAGE_BYTES;
    if let Ok(h) = decode::<Heartbeat>(bytes, l) {
        let _ = h.validate();
    }
    if let Ok(mut a) = decode::<Alert>(bytes, l) {
        let _ = a.validate();
        a.ensure_id();
        assert!(!a.alert_id.is_empty());
        let _ = a.problem();
    }
    if let Ok(c) = decode::<Command>(bytes, l) {
        let _ = c.validate();
        let _ = skos_core::catalogue::validate_parameters(&c.action_type, &c.parameters);
    }
    let _ = decode::<CommandResult>(bytes, l);
}

proptest! {
    #[test]
    fn messages_from_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        all_messages(&bytes);
    }

    #[test]
    fn messages_from_arbitrary_json(v in json()) {
        all_messages(v.to_string().as_bytes());
    }

    #[test]
    fn config_from_arbitrary_text(text in ".{0,300}") {
        let _ = Config::from_yaml(&text);
    }

    #[test]
    fn config_from_arbitrary_yaml_shapes(v in json()) {
        // JSON is YAML: arbitrary structures under known section names.
        let doc = serde_json::json!({"thermal": v.clone(), "storage": v.clone(), "coordinator": v.clone(), "trust": v});
        let _ = Config::from_yaml(&doc.to_string());
    }

    #[test]
    fn node_names(name in ".{0,200}") {
        if let Ok(n) = NodeName::parse(&name) {
            prop_assert!(!n.as_str().contains(['.', '*', '>', ' ', '/']));
            prop_assert!(!n.as_str().chars().any(char::is_control));
        }
    }

    #[test]
    fn timestamps(text in ".{0,40}") {
        let _ = skos_core::timefmt::parse(&text);
    }
}

mod chains {
    use super::*;
    use skos_core::chain::{ChainEvent, ChainTable};
    use skos_core::config::LoopConfig;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Chain events from arbitrary JSON: rejected or judged, never a panic.
        #[test]
        fn chain_events_from_arbitrary_json(v in json()) {
            let _ = decode::<ChainEvent>(v.to_string().as_bytes(), DEFAULT_MAX_MESSAGE_BYTES).map(|e| e.validate());
        }

        /// Any sequence of valid-looking steps keeps the table within its bounds.
        #[test]
        fn chain_table_stays_bounded(steps in prop::collection::vec(("[a-c]{1,2}", "[A-D]", 0u32..30, 0u32..200), 1..200)) {
            let cfg = LoopConfig { max_chains: 8, ..LoopConfig::default() };
            let mut table = ChainTable::new(&cfg);
            let t0 = chrono::Utc::now();
            for (i, (chain, sig, depth, iteration)) in steps.into_iter().enumerate() {
                let ev: ChainEvent = match serde_json::from_value(serde_json::json!({
                    "chain_id": chain, "step_id": format!("s{i}"), "depth": depth,
                    "iteration": iteration, "signature": sig,
                })) {
                    Ok(ev) => ev,
                    Err(_) => continue,
                };
                if ev.validate().is_err() {
                    continue;
                }
                let _ = table.step(&ev, t0 + chrono::Duration::milliseconds(i as i64));
            }
            prop_assert!(table.len() <= 8);
        }
    }
}
