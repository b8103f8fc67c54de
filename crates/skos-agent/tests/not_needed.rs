//! The check before acting, through the real agent runtime on the
//! in-process bus, with a fake sysfs CPU and cpufreq policies: a CPU heats
//! (the alert goes out), cools before the command arrives, and the
//! command is answered `not_needed` with nothing written; while it is hot
//! the same command is carried out; a restoring action and a command
//! without a level are never refused this way.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use skos_agent::runtime::Agent;
use skos_bus::trust::Signer;
use skos_bus::{Bus, Feed, InProcBus, Subscription};
use skos_core::config::Config;
use skos_core::counters::Counters;
use skos_core::protocol::{Alert, Command, CommandResult, Heartbeat, ResultStatus, Severity};
use skos_core::NodeName;
use skos_testsupport::cpufreq::{fake_cpufreq, read_khz};
use skos_testsupport::sysfs::{FakeSysfs, HwmonHandle};
use tokio::sync::watch;

const MIN: u64 = 800_000;
const MAX: u64 = 3_600_000;
const POLICIES: usize = 2;

/// How long a step may take before the test gives up (a bound against
/// hanging, not a measurement).
const GIVE_UP: Duration = Duration::from_secs(30);

fn nova() -> NodeName {
    NodeName::parse("nova").unwrap()
}

fn config(root: &Path, signer: &Signer) -> Config {
    let mut cfg = Config::from_yaml(
        "agent: {heartbeat_interval: 0.2, monitor_interval: 0.2, antibodies: [thermal_sentinel]}\n\
thermal:\n  thresholds: {warning: 75, critical: 85, emergency: 95}\n  hysteresis: 3\n  \
gpu: {nvml: false, nvidia_smi: false, lm_sensors: false}\n",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    cfg.sysfs_root = root.to_path_buf();
    cfg.node.name = nova();
    // Commands are signed, as the coordinator's are.
    cfg.trust.coordinator_keys = vec![signer.public_key()];
    cfg
}

fn khz(root: &Path) -> Vec<u64> {
    (0..POLICIES).map(|n| read_khz(root, n)).collect()
}

fn command(id: &str, action: &str, level: Option<f64>) -> Command {
    let now = chrono::Utc::now();
    Command {
        action_id: id.into(),
        action_type: action.into(),
        parameters: Default::default(),
        timestamp: now,
        node: Some(nova()),
        deadline: Some(now + chrono::Duration::seconds(60)),
        cause: Some("test".into()),
        problem: Some("thermal:cpu".into()),
        term: None,
        level,
    }
}

/// The next message of `feed` that `pick` takes.
async fn next<T: serde::de::DeserializeOwned>(
    feed: &mut Subscription,
    what: &str,
    mut pick: impl FnMut(&T) -> bool,
) -> T {
    let wait = async {
        loop {
            let m = feed.next().await.expect("feed closed");
            let v: T = serde_json::from_slice(&m.payload).unwrap();
            if pick(&v) {
                return v;
            }
        }
    };
    tokio::time::timeout(GIVE_UP, wait)
        .await
        .unwrap_or_else(|_| panic!("no {what} within {GIVE_UP:?}"))
}

struct Fixture {
    bus: Bus,
    signer: Signer,
    beats: Subscription,
    results: Subscription,
    cpu: HwmonHandle,
}

impl Fixture {
    /// Heat the CPU to `c` and wait until a heartbeat says the agent read it.
    async fn temperature(&mut self, c: f64) {
        self.cpu.heat(c);
        next(
            &mut self.beats,
            &format!("heartbeat at {c} °C"),
            |hb: &Heartbeat| hb.cpu_temp == Some(c),
        )
        .await;
    }

    /// Send `cmd` and wait for its result.
    async fn run(&mut self, cmd: Command) -> CommandResult {
        self.bus
            .send_command(&nova(), &cmd, Some(&self.signer))
            .await
            .unwrap();
        let id = cmd.action_id.clone();
        next(
            &mut self.results,
            &format!("result of {id}"),
            |r: &CommandResult| r.action_id == id,
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_gone_before_the_command_runs_is_answered_not_needed() {
    let fake = FakeSysfs::new();
    let cpu = fake.coretemp(60.0, &[58.0]);
    fake_cpufreq(fake.root(), POLICIES, MIN, MAX);
    let root = fake.root().to_path_buf();
    let bus = Bus::InProc(InProcBus::new());
    let beats = bus.subscribe(Feed::Heartbeats).await.unwrap();
    let mut alerts = bus.subscribe(Feed::Alerts).await.unwrap();
    let results = bus.subscribe(Feed::Results).await.unwrap();
    let signer = Signer::ephemeral();
    let agent = Agent::new(
        config(&root, &signer),
        bus.clone(),
        Counters::default(),
        None,
    )
    .unwrap();
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        agent
            .run(async move {
                let _ = stopped.wait_for(|v| *v).await;
            })
            .await
            .unwrap();
    });
    let mut f = Fixture {
        bus,
        signer,
        beats,
        results,
        cpu,
    };

    // Hot: the critical alert goes out.
    f.temperature(90.0).await;
    let alert: Alert = next(&mut alerts, "critical alert", |a: &Alert| {
        a.severity == Severity::Critical
    })
    .await;
    assert_eq!(alert.details["threshold"], 85.0);

    // Cool again before the command for it arrives: not needed, nothing
    // written.
    f.temperature(60.0).await;
    let r = f
        .run(command(
            "nova:thermal:throttle_50:1",
            "throttle_50",
            Some(85.0),
        ))
        .await;
    assert_eq!(r.status, ResultStatus::NotNeeded, "{r:?}");
    assert_eq!(r.details["reading"], 60.0, "{r:?}");
    assert_eq!(r.details["level"], 85.0, "{r:?}");
    assert_eq!(r.details["problem"], "thermal:cpu", "{r:?}");
    assert!(r.changes.is_empty(), "{r:?}");
    assert_eq!(khz(&root), [MAX; POLICIES], "no throttle written");

    // Still hot when it arrives: carried out.
    f.temperature(90.0).await;
    let r = f
        .run(command(
            "nova:thermal:throttle_50:2",
            "throttle_50",
            Some(85.0),
        ))
        .await;
    assert_eq!(r.status, ResultStatus::Succeeded, "{r:?}");
    let capped = khz(&root);
    assert!(capped.iter().all(|&k| k < MAX), "{capped:?}");

    // Cool: a reset is never refused as not needed, even with a level.
    f.temperature(60.0).await;
    let r = f
        .run(command(
            "nova:thermal:reset_throttle:3",
            "reset_throttle",
            Some(75.0),
        ))
        .await;
    assert_eq!(r.status, ResultStatus::Succeeded, "{r:?}");
    assert_eq!(khz(&root), [MAX; POLICIES], "restored");

    // A command without a level (an older coordinator's) runs as before.
    let r = f
        .run(command("nova:thermal:throttle_10:4", "throttle_10", None))
        .await;
    assert_eq!(r.status, ResultStatus::Succeeded, "{r:?}");
    assert!(khz(&root).iter().all(|&k| k < MAX));

    stop.send(true).unwrap();
    tokio::time::timeout(GIVE_UP, task)
        .await
        .expect("the agent stops")
        .unwrap();
}
