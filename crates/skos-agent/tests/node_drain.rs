//! `node_drain` and `node_undrain` run the configured orchestrator
//! commands for real: a script that writes its argv to a file, one that
//! fails with output, one that outlives its timeout.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::json;
use skos_agent::antibody::{Antibody, Execution};
use skos_agent::workloads::Workloads;
use skos_agent::Outcome;
use skos_core::config::Config;
use skos_core::protocol::{Command, ResultStatus};
use skos_core::NodeName;

fn nova() -> NodeName {
    NodeName::parse("nova").unwrap()
}

fn command(action: &str, params: serde_json::Value) -> Command {
    Command {
        action_id: format!("{action}-1"),
        action_type: action.into(),
        parameters: params.as_object().cloned().unwrap_or_default(),
        timestamp: chrono::Utc::now(),
        node: Some(nova()),
        deadline: Some(chrono::Utc::now() + chrono::Duration::seconds(60)),
        cause: None,
        problem: None,
        term: None,
        level: None,
    }
}

/// Execute as the runtime does: a background job runs here, to its end.
fn run(w: &mut Workloads, action: &str, params: serde_json::Value) -> Outcome {
    match w.execute(&command(action, params)) {
        Execution::Done(o) => o,
        Execution::Background(job) => job(),
    }
}

fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_string()
}

fn antibody(dir: &Path) -> Workloads {
    let record = script(
        dir,
        "record",
        &format!(
            "printf '%s\\n' \"$@\" > {}/argv-$1; echo \"$1 of $2 asked\"",
            dir.display()
        ),
    );
    let fail = script(
        dir,
        "fail",
        "echo first line; echo \"cannot reach the API server\" >&2; exit 3",
    );
    let hang = script(dir, "hang", "sleep 30");
    let yaml = format!(
        "agent: {{antibodies: [workloads]}}
nodes:
  nova:
    orchestrator: {{drain: [{record}, drain, \"{{node}}\", --ignore-daemonsets], undrain: [{record}, undrain, \"node={{node}}\"]}}
  lyra:
    orchestrator: {{drain: [{fail}, \"{{node}}\"], undrain: [{hang}], timeout_seconds: 0.5}}
  athena: {{}}
"
    );
    let mut cfg = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e:?}"));
    cfg.node.name = nova();
    Workloads::new(&cfg, None)
}

#[test]
fn a_drain_and_an_undrain_run_the_nodes_commands() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = antibody(dir.path());

    let o = run(&mut w, "node_drain", json!({"node": "nova"}));
    assert_eq!(o.status, ResultStatus::Succeeded, "{}", o.message);
    let argv = std::fs::read_to_string(dir.path().join("argv-drain")).unwrap();
    assert_eq!(
        argv, "drain\nnova\n--ignore-daemonsets\n",
        "{{node}} replaced, no shell"
    );
    assert_eq!(o.details["node"], json!("nova"));
    assert_eq!(o.details["command"], json!("drain"));
    assert_eq!(o.details["exit_status"], json!(0));
    assert_eq!(o.details["output"], json!("drain of nova asked"));

    let o = run(&mut w, "node_undrain", json!({"node": "nova"}));
    assert_eq!(o.status, ResultStatus::Succeeded, "{}", o.message);
    let argv = std::fs::read_to_string(dir.path().join("argv-undrain")).unwrap();
    assert_eq!(argv, "undrain\nnode=nova\n");
}

#[test]
fn a_failing_command_fails_with_its_status_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = antibody(dir.path());
    // Run here for lyra, as on a spare while lyra is offline.
    let o = run(&mut w, "node_drain", json!({"node": "lyra"}));
    assert_eq!(o.status, ResultStatus::Failed);
    assert!(o.message.contains("exit status 3"), "{}", o.message);
    assert!(
        o.message.contains("cannot reach the API server"),
        "{}",
        o.message
    );
    assert_eq!(o.details["exit_status"], json!(3));
    assert_eq!(o.details["timed_out"], json!(false));
}

#[test]
fn a_command_past_its_timeout_is_killed_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = antibody(dir.path());
    let o = run(&mut w, "node_undrain", json!({"node": "lyra"}));
    assert_eq!(o.status, ResultStatus::Failed);
    assert!(
        o.message.contains("timeout_seconds (0.5 s)"),
        "{}",
        o.message
    );
    assert_eq!(o.details["timed_out"], json!(true));
}

#[test]
fn a_node_without_orchestrator_commands_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = antibody(dir.path());
    let o = run(&mut w, "node_drain", json!({"node": "athena"}));
    assert_eq!(o.status, ResultStatus::Rejected);
    assert!(
        o.message.contains("nodes.athena.orchestrator"),
        "{}",
        o.message
    );
    let o = run(&mut w, "node_drain", json!({}));
    assert_eq!(o.status, ResultStatus::Rejected);
    assert!(o.message.contains("parameter node"), "{}", o.message);
}
