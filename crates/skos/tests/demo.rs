//! `skos demo`: the whole loop on a sandbox it makes and removes.

mod common;

use common::*;

#[test]
fn the_demo_runs_every_step_labelled_and_leaves_nothing_behind() {
    // Its own temp dir, so what the demo leaves behind would be seen.
    let tmp = tempfile::Builder::new()
        .prefix("skos-demo-test-")
        .tempdir_in("/tmp")
        .unwrap();
    let out = run({
        let mut c = skos();
        c.args(["demo", "--pace", "0"]).env("TMPDIR", tmp.path());
        c
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    for line in stdout.lines() {
        assert!(
            line.starts_with("[demo] "),
            "an unlabelled line: {line:?}\n{stdout}"
        );
    }
    for line in stderr.lines() {
        assert!(
            line.starts_with("[demo] "),
            "an unlabelled line: {line:?}\n{stderr}"
        );
    }
    for step in [
        "1. heat",
        "sent throttle_50 to demo",
        "throttled: scaling_max_freq now 1800000 kHz",
        "2. cool",
        "verified: the temperature fell",
        "restored: scaling_max_freq back to 3600000 kHz",
        "3. ",
        "removed",
        "done in",
    ] {
        assert!(stdout.contains(step), "no {step:?} in\n{stdout}");
    }
    // With a tmpfs (root), the disk steps ran; without, they say why not
    // (a skip, which SKOS_TEST_REQUIRE_ALL=1 makes a failure).
    match stdout
        .lines()
        .find_map(|l| l.split_once("3. disk: skipped ("))
    {
        Some((_, why)) => {
            skos_testsupport::require::require::<(), _>(
                &skos_testsupport::require::test_name(module_path!()),
                "a tmpfs mount for the demo's disk steps",
                Err(why.trim_end_matches(')').to_string()),
            );
        }
        None => assert!(stdout.contains("verified: the disk's use fell"), "{stdout}"),
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let sandbox = tmp.path().display().to_string();
    assert!(!mounts.contains(&sandbox), "a mount left behind:\n{mounts}");
}

/// The README's quick start runs `cargo run ... -p PKG -- ...`: cargo must
/// know which binary of PKG to run (its only one, or its `default-run`),
/// or the first command a new user types fails.
#[test]
fn the_quick_starts_cargo_run_lines_name_a_binary_cargo_can_pick() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let quick = readme
        .split_once("## Quick start")
        .and_then(|(_, after)| after.split_once("```sh\n"))
        .and_then(|(_, block)| block.split_once("```"))
        .expect("a sh block in the README's quick start")
        .0;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut metadata = std::process::Command::new(cargo);
    metadata
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root);
    let out = run_ok(metadata);
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut checked = 0;
    for line in quick
        .lines()
        .filter(|l| l.trim_start().starts_with("cargo run"))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        let package = words
            .iter()
            .position(|w| *w == "-p")
            .and_then(|i| words.get(i + 1))
            .unwrap_or_else(|| panic!("{line:?} names no package"));
        let pkg = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == *package)
            .unwrap_or_else(|| panic!("{line:?}: no package {package}"));
        let bins: Vec<&str> = pkg["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        let picked = words.contains(&"--bin")
            || bins.len() == 1
            || pkg["default_run"]
                .as_str()
                .is_some_and(|d| bins.contains(&d));
        assert!(
            picked,
            "{line:?}: package {package} has binaries {bins:?} and no default-run"
        );
        checked += 1;
    }
    assert!(
        checked >= 2,
        "the quick start runs the system with cargo run:\n{quick}"
    );
}
