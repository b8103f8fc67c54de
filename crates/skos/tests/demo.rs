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
