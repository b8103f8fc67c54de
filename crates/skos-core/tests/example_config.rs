//! `config.example.yaml` documents every configuration key: it loads, and
//! every key of the configuration (every section, every field, recursively
//! through mappings) appears in it. Adding a key or a section without
//! documenting it there fails here.

use std::collections::BTreeSet;

use serde_json::Value;
use skos_core::config::Config;

fn example_text() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config.example.yaml");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Key paths (`thermal.thresholds.warning`) of every mapping in `v`.
/// Maps keyed by user-chosen names (healing-table rows, groups) are
/// entered through their values only when those are mappings of fields.
fn key_paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Value::Object(m) = v {
        for (k, child) in m {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            out.insert(path.clone());
            key_paths(child, &path, out);
        }
    }
}

/// A line that names a key, commented out or not: (indent, key, what
/// follows the colon). A commented key's indent is the column of its `#`
/// plus the spaces beyond the first after it (`  #   ca_file:` is nested
/// under `  # tls:`).
fn key_line(line: &str) -> Option<(usize, &str, &str)> {
    let lead = line.len() - line.trim_start().len();
    let mut body = line.trim_start();
    let mut indent = lead;
    if let Some(after) = body.strip_prefix('#') {
        let spaces = after.len() - after.trim_start().len();
        indent = lead + spaces.saturating_sub(1);
        body = after.trim_start();
    }
    let body = body.strip_prefix("- ").unwrap_or(body);
    let (key, rest) = body.split_once(':')?;
    let key = key.trim();
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    plain.then_some((indent, key, rest))
}

#[test]
fn the_example_loads() {
    match Config::from_yaml(&example_text()) {
        Ok(cfg) => assert!(
            cfg.warnings().is_empty(),
            "config.example.yaml draws warnings: {:#?}",
            cfg.warnings()
        ),
        Err(issues) => panic!("config.example.yaml does not load: {issues:#?}"),
    }
}

#[test]
fn the_example_names_every_key() {
    let defaults = serde_json::to_value(Config::default()).unwrap();
    let mut wanted = BTreeSet::new();
    key_paths(&defaults, "", &mut wanted);
    // The default healing-table rows are values, not keys to document
    // one by one: their table is.
    wanted.retain(|k| !k.starts_with("mesh.actions.") && !k.starts_with("loop.actions."));

    // Every key, commented out or not, as `key:` at its indentation.
    let text = example_text();
    let mut documented = BTreeSet::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    for line in text.lines() {
        let Some((indent, key, rest)) = key_line(line) else {
            continue;
        };
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let path = stack
            .iter()
            .map(|(_, k)| k.as_str())
            .chain([key])
            .collect::<Vec<_>>()
            .join(".");
        // A flow mapping on the same line: `thresholds: {warning: 80, ...}`.
        if let Some(inner) = rest.trim_start().strip_prefix('{') {
            let inner = inner.split('}').next().unwrap_or("");
            for part in inner.split(',') {
                if let Some((k, _)) = part.split_once(':') {
                    documented.insert(format!("{path}.{}", k.trim()));
                }
            }
        }
        documented.insert(path);
        stack.push((indent, key.to_string()));
    }
    let missing: Vec<&String> = wanted.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "config.example.yaml does not document {} key(s):\n  {}",
        missing.len(),
        missing
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}
