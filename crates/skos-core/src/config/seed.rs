//! The seed's names for keys SKOS spells otherwise. Before the sections
//! are read, each seed key found in the file is moved to the SKOS key it
//! means ([`SEED_KEYS`]); a file that gives both with different values is
//! refused at the seed key, naming the other. Problems found later with a
//! moved value are named by the seed key the file used.

use serde_yaml_ng::{Mapping, Value};

use super::{issue, ConfigIssue};

/// One seed key: where it is in the file, and the SKOS key it sets.
#[derive(Debug, Clone, Copy)]
pub struct SeedKey {
    /// Its dotted path in the seed's file (`loop.max_chain_depth`).
    pub seed: &'static str,
    /// The SKOS key it sets, or `Err(why)` for a seed key SKOS has no
    /// place for (refused, saying why).
    pub skos: Result<&'static str, &'static str>,
}

const fn to(seed: &'static str, skos: &'static str) -> SeedKey {
    SeedKey {
        seed,
        skos: Ok(skos),
    }
}

/// Every seed key SKOS reads under another name.
pub const SEED_KEYS: &[SeedKey] = &[
    to("general.log_level", "log_level"),
    to("thermal.cooldown_seconds", "thermal.cooldown"),
    to(
        "agents.thermal_sentinel.alert_cooldown_seconds",
        "thermal.cooldown",
    ),
    to(
        "agents.storage_watcher.alert_cooldown_seconds",
        "storage.cooldown",
    ),
    to("agents.mesh_healer.alert_cooldown_seconds", "mesh.cooldown"),
    SeedKey {
        seed: "agents.loop_breaker.alert_cooldown_seconds",
        skos: Err("the loop breaker alerts once per broken limit and holds the chain's circuit open for loop.cool_off_seconds; it has no alert cooldown"),
    },
    SeedKey {
        seed: "agents.workloads.alert_cooldown_seconds",
        skos: Err("workloads raise no alerts of their own, so there is no alert cooldown to set"),
    },
    to("storage.paths_to_monitor", "storage.mounts"),
    to("loop.max_chain_depth", "loop.max_depth"),
];

/// A seed key that was moved: problems at `skos` (or below it) are
/// reported at `seed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub seed: &'static str,
    pub skos: &'static str,
}

/// Move every seed key of [`SEED_KEYS`] found in `root` to its SKOS key.
/// Returns the moves made; conflicts and refused keys go to `issues`.
pub fn move_seed_keys(root: &mut Mapping, issues: &mut Vec<ConfigIssue>) -> Vec<Moved> {
    let mut moved: Vec<Moved> = Vec::new();
    for key in SEED_KEYS {
        let Some(value) = take(root, key.seed) else {
            continue;
        };
        let skos = match key.skos {
            Ok(skos) => skos,
            Err(why) => {
                issues.push(issue(key.seed, why));
                continue;
            }
        };
        match get(root, skos) {
            Some(there) if same(there, &value) => {}
            Some(there) => {
                // Say who set the value already there: the file's SKOS key
                // or another seed key moved before.
                let by = moved
                    .iter()
                    .find(|m| m.skos == skos)
                    .map_or(skos, |m| m.seed);
                issues.push(issue(
                    key.seed,
                    format!(
                        "{} differs from {by} ({}); both set {skos}: give one, or the same value",
                        show(&value),
                        show(there)
                    ),
                ));
                continue;
            }
            None => {
                if !put(root, skos, value) {
                    // A section that is not a mapping: its own reading says so.
                    continue;
                }
            }
        }
        moved.push(Moved {
            seed: key.seed,
            skos,
        });
    }
    moved
}

/// Name each issue at or below a moved value's SKOS key by the seed key
/// the file used.
pub fn rename_issues(issues: &mut [ConfigIssue], moved: &[Moved]) {
    for i in issues.iter_mut() {
        for m in moved {
            if let Some(rest) = i.path.strip_prefix(m.skos) {
                if rest.is_empty() || rest.starts_with(['.', '[']) {
                    i.path = format!("{}{rest}", m.seed);
                    break;
                }
            }
        }
    }
}

/// Whether `path` (dotted) is given in `root`.
pub fn given(root: &Mapping, path: &str) -> bool {
    get(root, path).is_some()
}

fn get<'a>(root: &'a Mapping, path: &str) -> Option<&'a Value> {
    let (parents, last) = split(path);
    let mut map = root;
    for p in parents {
        map = map.get(p)?.as_mapping()?;
    }
    map.get(last)
}

fn take(root: &mut Mapping, path: &str) -> Option<Value> {
    let (parents, last) = split(path);
    let mut map = root;
    for p in parents {
        map = map.get_mut(p)?.as_mapping_mut()?;
    }
    map.remove(last)
}

/// Set `path` to `value`, making the mappings on the way; false when a
/// value on the way is not a mapping.
fn put(root: &mut Mapping, path: &str, value: Value) -> bool {
    let (parents, last) = split(path);
    let mut map = root;
    for p in parents {
        let next = map
            .entry(Value::from(p))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        match next.as_mapping_mut() {
            Some(m) => map = m,
            None => return false,
        }
    }
    map.insert(Value::from(last), value);
    true
}

fn split(path: &str) -> (Vec<&str>, &str) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    (parts, last)
}

/// The same value: numbers by value (`60` and `60.0`), log levels and
/// other words without regard to case, anything else exactly.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::String(x), Value::String(y)) => x.eq_ignore_ascii_case(y),
        _ => a == b,
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => n.to_string(),
        other => serde_yaml_ng::to_string(other)
            .map(|s| s.trim_end().replace('\n', " "))
            .unwrap_or_else(|_| "a value".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn errors(text: &str) -> Vec<String> {
        Config::from_yaml(text)
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_seed_key_sets_the_skos_key_it_means() {
        let cfg = Config::from_yaml(
            "general: {log_level: WARNING}\nthermal: {cooldown_seconds: 60}\n\
storage: {paths_to_monitor: [/var/log, /data]}\nloop: {max_chain_depth: 7}\n\
agents: {storage_watcher: {alert_cooldown_seconds: 45}, mesh_healer: {alert_cooldown_seconds: 9}}\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(cfg.log_level, "WARNING");
        assert_eq!(cfg.thermal.cooldown, 60.0);
        assert_eq!(
            cfg.storage.mounts,
            [
                std::path::PathBuf::from("/var/log"),
                std::path::PathBuf::from("/data")
            ]
        );
        assert_eq!(cfg.loop_.max_depth, 7);
        assert_eq!(cfg.storage.cooldown, 45.0);
        assert_eq!(cfg.mesh.cooldown, 9.0);
    }

    #[test]
    fn both_names_may_be_given_with_one_value() {
        let cfg = Config::from_yaml(
            "log_level: info\ngeneral: {log_level: INFO}\nloop: {max_depth: 7, max_chain_depth: 7.0}\n\
thermal: {cooldown: 60, cooldown_seconds: 60}\nagents: {thermal_sentinel: {alert_cooldown_seconds: 60}}\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(cfg.loop_.max_depth, 7);
        assert_eq!(cfg.thermal.cooldown, 60.0);
    }

    #[test]
    fn two_names_with_two_values_are_refused_naming_both() {
        assert_eq!(
            errors("loop: {max_depth: 10, max_chain_depth: 5}\n"),
            ["loop.max_chain_depth: 5 differs from loop.max_depth (10); both set loop.max_depth: give one, or the same value"]
        );
        assert_eq!(
            errors("thermal: {cooldown_seconds: 60}\nagents: {thermal_sentinel: {alert_cooldown_seconds: 30}}\n"),
            ["agents.thermal_sentinel.alert_cooldown_seconds: 30 differs from thermal.cooldown_seconds (60); both set thermal.cooldown: give one, or the same value"]
        );
        assert_eq!(
            errors("log_level: DEBUG\ngeneral: {log_level: ERROR}\n"),
            ["general.log_level: \"ERROR\" differs from log_level (\"DEBUG\"); both set log_level: give one, or the same value"]
        );
    }

    #[test]
    fn a_moved_value_is_judged_under_the_seed_key() {
        let said = errors("loop: {max_chain_depth: 0}\ngeneral: {log_level: LOUD}\nstorage: {paths_to_monitor: [/, data]}\nthermal: {cooldown_seconds: soon}\n");
        assert_eq!(
            said,
            [
                "thermal.cooldown_seconds: invalid type: string \"soon\", expected a number",
                "general.log_level: \"LOUD\" is not one of TRACE, DEBUG, INFO, WARNING, ERROR",
                "storage.paths_to_monitor[1]: data must be absolute",
                "loop.max_chain_depth: must be at least 1",
            ]
        );
    }

    #[test]
    fn a_seed_key_without_a_place_in_skos_is_refused_saying_why() {
        let said = errors("agents: {loop_breaker: {alert_cooldown_seconds: 5}}\n");
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with("agents.loop_breaker.alert_cooldown_seconds: the loop breaker alerts once per broken limit"),
            "{said:?}"
        );
    }
}
