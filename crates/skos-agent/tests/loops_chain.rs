//! The loop breaker's cooperative protocol, through the agent runtime: on
//! the in-process bus, and on a real nats-server with the `skos-chain`
//! client. No coordinator here: commands are sent by the test.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use skos_agent::runtime::Agent;
use skos_bus::trust::Signer;
use skos_bus::{subjects, Bus, Feed, InProcBus, NatsBus, NatsOptions, Subscription};
use skos_core::chain::{
    ChainControl, ChainDecision, ChainEvent, CircuitState, ControlEvent, Reason, Verdict,
};
use skos_core::config::Config;
use skos_core::counters::Counters;
use skos_core::protocol::{Alert, AlertKind, Command, CommandResult, ResultStatus};
use skos_core::NodeName;
use skos_testsupport::nats::NatsServer;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(20);

fn nova() -> NodeName {
    NodeName::parse("nova").unwrap()
}

fn config(extra: &str) -> Config {
    Config::from_yaml(&format!(
        "agent: {{antibodies: [loop_breaker], heartbeat_interval: 0.5, monitor_interval: 0.2}}\n{extra}"
    ))
    .unwrap()
}

struct Running {
    signer: Signer,
    counters: Counters,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(bus: Bus, mut cfg: Config) -> Running {
        // Commands are signed, as the coordinator's are.
        let signer = Signer::ephemeral();
        cfg.trust.coordinator_keys = vec![signer.public_key()];
        let counters = Counters::default();
        let agent = Agent::new(cfg, bus.clone(), counters.clone(), None).unwrap();
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            agent
                .run(async move {
                    let _ = rx.wait_for(|v| *v).await;
                })
                .await
                .unwrap();
        });
        Running {
            signer,
            counters,
            stop,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn event(chain: &str, step: usize, depth: u32, iteration: u32, sig: &str) -> ChainEvent {
    ChainEvent {
        chain_id: chain.into(),
        step_id: format!("{chain}-{step}"),
        parent_step: None,
        depth,
        iteration,
        signature: sig.into(),
        kind: None,
        node: None,
    }
}

/// Ask, waiting for the loop breaker to be listening first.
async fn ask(bus: &Bus, ev: &ChainEvent) -> ChainDecision {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match bus.chain_request(&nova(), ev, Duration::from_secs(5)).await {
            Ok(b) => return serde_json::from_slice(&b).unwrap(),
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "no answer: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn ask_raw(bus: &Bus, payload: &[u8]) -> ChainDecision {
    let subject = subjects::chain(&nova());
    let b = bus
        .request_raw(
            &subject,
            Bytes::copy_from_slice(payload),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    serde_json::from_slice(&b).unwrap()
}

async fn next_control(sub: &mut Subscription, chain: &str, event: ControlEvent) -> ChainControl {
    tokio::time::timeout(WAIT, async {
        loop {
            let m = sub.next().await.expect("control feed ended");
            let c: ChainControl = serde_json::from_slice(&m.payload).unwrap();
            if c.chain_id == chain && c.event == event {
                return c;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {event:?} for {chain}"))
}

async fn next_alert(sub: &mut Subscription, chain: &str) -> Alert {
    tokio::time::timeout(WAIT, async {
        loop {
            let m = sub.next().await.expect("alert feed ended");
            let a: Alert = serde_json::from_slice(&m.payload).unwrap();
            if a.details.get("chain_id").and_then(|v| v.as_str()) == Some(chain) {
                return a;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no alert for {chain}"))
}

async fn command(
    bus: &Bus,
    agent: &Running,
    results: &mut Subscription,
    cmd: Command,
) -> CommandResult {
    bus.send_command(&nova(), &cmd, Some(&agent.signer))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            let m = results.next().await.expect("result feed ended");
            let r: CommandResult = serde_json::from_slice(&m.payload).unwrap();
            if r.action_id == cmd.action_id {
                return r;
            }
        }
    })
    .await
    .expect("no result")
}

fn cmd(action: &str, id: &str, cause: Option<&str>, problem: Option<&str>) -> Command {
    Command {
        action_id: id.into(),
        action_type: action.into(),
        parameters: Default::default(),
        timestamp: chrono::Utc::now(),
        node: Some(nova()),
        deadline: Some(chrono::Utc::now() + chrono::Duration::seconds(30)),
        cause: cause.map(str::to_owned),
        problem: problem.map(str::to_owned),
        term: None,
        level: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursion_is_denied_alerted_broken_and_reset_in_process() {
    let bus = Bus::InProc(InProcBus::new());
    let mut alerts = bus.subscribe(Feed::Alerts).await.unwrap();
    let mut results = bus.subscribe(Feed::Results).await.unwrap();
    let mut control = bus.subscribe(Feed::ChainControl(nova())).await.unwrap();
    let agent = Running::start(bus.clone(), config("")).await;

    for d in 1..=10 {
        let r = ask(&bus, &event("rec", d as usize, d, d, "recurse")).await;
        assert_eq!(r.decision, Verdict::Allow, "depth {d}: {r:?}");
    }
    let r = ask(&bus, &event("rec", 11, 11, 11, "recurse")).await;
    assert_eq!(r.decision, Verdict::Deny);
    assert_eq!(r.reason, Some(Reason::DepthExceeded));
    assert_eq!(r.circuit, CircuitState::Open);

    let local = next_control(&mut control, "rec", ControlEvent::CircuitOpen).await;
    assert_eq!(local.source, "local");
    assert_eq!(local.reason, Some(Reason::DepthExceeded));
    let alert = next_alert(&mut alerts, "rec").await;
    assert_eq!(alert.kind, AlertKind::Loop);
    assert_eq!(alert.details["condition"], "depth_exceeded");
    assert_eq!(alert.details["sensor"], "chain:rec");
    assert_eq!(alert.problem(), "loop:chain:rec");
    let evidence = alert.details["evidence"].as_array().unwrap();
    assert_eq!(evidence.len(), 10);
    assert_eq!(evidence.last().unwrap()["depth"], 11);
    assert_eq!(evidence.last().unwrap()["verdict"], "deny");

    // The coordinator's decision, by the alert id it answers.
    let res = command(
        &bus,
        &agent,
        &mut results,
        cmd("circuit_break", "a1", Some(&alert.alert_id), None),
    )
    .await;
    assert_eq!(res.status, ResultStatus::Succeeded, "{res:?}");
    assert_eq!(res.details["circuit"], "open");
    assert_eq!(res.details["evidence"].as_array().unwrap().len(), 10);
    let ctl = next_control(&mut control, "rec", ControlEvent::CircuitOpen).await;
    assert_eq!(ctl.source, "coordinator");
    assert_eq!(ctl.action_id.as_deref(), Some("a1"));
    assert!(ctl.until.is_some());
    let r = ask(&bus, &event("rec", 12, 1, 1, "recurse")).await;
    assert_eq!(r.reason, Some(Reason::CircuitOpen));

    // reset_chain by problem: the chain starts from zero.
    let res = command(
        &bus,
        &agent,
        &mut results,
        cmd("reset_chain", "a2", None, Some("loop:chain:rec")),
    )
    .await;
    assert_eq!(res.status, ResultStatus::Succeeded, "{res:?}");
    let ctl = next_control(&mut control, "rec", ControlEvent::Reset).await;
    assert_eq!(ctl.generation, 1);
    let r = ask(&bus, &event("rec", 13, 1, 1, "recurse")).await;
    assert_eq!(r.decision, Verdict::Allow);
    assert_eq!((r.steps, r.generation), (1, 1));
    // A recovery alert clears the coordinator's open alert.
    let clear = next_alert(&mut alerts, "rec").await;
    assert_eq!(clear.severity, skos_core::Severity::Normal);

    // A command about nothing this loop breaker knows fails, and says why.
    let res = command(
        &bus,
        &agent,
        &mut results,
        cmd(
            "circuit_break",
            "a3",
            Some("nope"),
            Some("loop:chain:ghost"),
        ),
    )
    .await;
    assert_eq!(res.status, ResultStatus::Failed);
    assert!(res.message.contains("no tracked chain"), "{}", res.message);

    assert_eq!(agent.counters.get("loop.trips.depth_exceeded"), 1);
    assert_eq!(agent.counters.get("loop.steps.denied.depth_exceeded"), 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_denied_as_invalid_and_counted() {
    let bus = Bus::InProc(InProcBus::new());
    let agent = Running::start(bus.clone(), config("nats: {max_message_bytes: 2048}")).await;
    // Wait until it answers.
    ask(&bus, &event("warmup", 1, 1, 1, "a")).await;

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{".to_vec(), "malformed"),
        (vec![0xff, 0xfe], "malformed"),
        (b"[]".to_vec(), "invalid"),
        ("[".repeat(100).into_bytes(), "too_deep"),
        (format!("{{\"pad\":\"{}\"}}", "x".repeat(4096)).into_bytes(), "too_large"),
        (br#"{"chain_id":"c","step_id":"s","depth":"deep","iteration":1,"signature":"a"}"#.to_vec(), "invalid"),
        (br#"{"chain_id":"has space","step_id":"s","depth":1,"iteration":1,"signature":"a"}"#.to_vec(), "invalid"),
        (br#"{"chain_id":"c","step_id":"s","depth":1,"iteration":1,"signature":"a","kind":"x.y"}"#.to_vec(), "invalid"),
        (br#"{"chain_id":"c","step_id":"s","depth":1,"iteration":1,"signature":"a","node":"lyra"}"#.to_vec(), "wrong_node"),
        (br#"{"chain_id":"c","step_id":"s","depth":1,"iteration":1,"signature":"a","node":"a.b"}"#.to_vec(), "invalid"),
    ];
    for (payload, reason) in &cases {
        let d = ask_raw(&bus, payload).await;
        assert_eq!(d.decision, Verdict::Deny, "{reason}");
        assert_eq!(d.reason, Some(Reason::Invalid), "{reason}");
    }
    // Ids that can be read are echoed so the caller can match the answer.
    let d = ask_raw(
        &bus,
        br#"{"chain_id":"c1","step_id":"s1","depth":1,"iteration":1,"signature":"a","node":"lyra"}"#,
    )
    .await;
    assert_eq!((d.chain_id.as_str(), d.step_id.as_str()), ("c1", "s1"));
    for reason in [
        "malformed",
        "invalid",
        "too_deep",
        "too_large",
        "wrong_node",
    ] {
        assert!(
            agent.counters.get(&format!("rejected.chain.{reason}")) > 0,
            "{reason} not counted: {:?}",
            agent.counters.snapshot()
        );
    }
    // Still answering.
    let r = ask(&bus, &event("after", 1, 1, 1, "a")).await;
    assert_eq!(r.decision, Verdict::Allow);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_allows_but_says_what_it_would_deny() {
    let bus = Bus::InProc(InProcBus::new());
    let mut alerts = bus.subscribe(Feed::Alerts).await.unwrap();
    let agent = Running::start(bus.clone(), config("dry_run: true\nloop: {max_depth: 2}")).await;
    for d in 1..=2 {
        assert_eq!(
            ask(&bus, &event("dry", d as usize, d, d, "x"))
                .await
                .decision,
            Verdict::Allow
        );
    }
    let r = ask(&bus, &event("dry", 3, 3, 3, "x")).await;
    assert_eq!(r.decision, Verdict::Allow);
    assert!(r.dry_run);
    assert_eq!(r.reason, Some(Reason::DepthExceeded));
    let a = next_alert(&mut alerts, "dry").await;
    assert!(a.message.contains("dry-run"), "{}", a.message);
    agent.stop().await;
}

async fn nats_bus(server: &NatsServer) -> Bus {
    Bus::Nats(
        NatsBus::connect(&NatsOptions::new(server.url(), "test"))
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_crate_over_real_nats_asks_reports_and_hears_breaks() {
    let server = NatsServer::start();
    let bus = nats_bus(&server).await;
    let agent = Running::start(
        bus.clone(),
        config("loop: {kinds: {shallow: {max_depth: 3}}}"),
    )
    .await;
    let client = skos_chain::ChainClient::connect(&server.url(), "nova")
        .await
        .unwrap();
    let mut control = client.control().await.unwrap();

    // Ask, as an application would, until the loop breaker is up.
    let chain = skos_chain::Chain::new("job-1")
        .unwrap()
        .with_kind("shallow")
        .unwrap();
    let root = chain.root("plan").unwrap();
    let d = loop {
        match client.ask(&root).await {
            Ok(d) => break d,
            Err(skos_chain::Error::NoResponders { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(d.allowed(), "{d:?}");
    assert_eq!(d.steps, 1);
    let a = chain.child(&root, "call").unwrap();
    let b = chain.child(&a, "call").unwrap();
    assert!(client.ask(&a).await.unwrap().allowed());
    assert!(client.ask(&b).await.unwrap().allowed());

    // A fire-and-forget report one level too deep: the break is announced.
    let c = chain.child(&b, "call").unwrap();
    assert_eq!(c.depth, 4);
    client.report(&c).await.unwrap();
    let ctl = tokio::time::timeout(WAIT, async {
        loop {
            let ctl = control.next().await.unwrap();
            if chain.apply(&ctl) {
                return ctl;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ctl.event, "circuit_open");
    assert_eq!(ctl.reason.as_deref(), Some("depth_exceeded"));
    assert_eq!(ctl.source, "local");
    let d = client.ask(&chain.root("plan").unwrap()).await.unwrap();
    assert!(!d.allowed());
    assert_eq!(d.reason.as_deref(), Some("circuit_open"));
    assert!(d.retry_after_seconds.unwrap() > 0.0);

    // The client refuses what the loop breaker would.
    assert!(client
        .ask(&skos_chain::Step {
            chain_id: "bad id".into(),
            ..root.clone()
        })
        .await
        .is_err());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_nats_requests_get_the_documented_answer() {
    let server = NatsServer::start();
    let bus = nats_bus(&server).await;
    let agent = Running::start(bus.clone(), config("")).await;
    let client = async_nats::connect(server.url()).await.unwrap();
    let body = br#"{"chain_id":"py-1","step_id":"s1","depth":1,"iteration":1,"signature":"fetch"}"#;
    let reply = loop {
        match client
            .request("skos.chain.nova", Bytes::from_static(body))
            .await
        {
            Ok(m) => break m,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["circuit"], "closed");
    assert_eq!(v["steps"], 1);
    assert_eq!(v["chain_id"], "py-1");
    // A request on another node's subject reaches nobody here.
    assert!(client
        .request("skos.chain.lyra", Bytes::from_static(body))
        .await
        .is_err());
    agent.stop().await;
}

/// The Python example of `docs/chain-protocol.md`, step for step: a loop
/// whose iterations are the chain's own steps (no parent, depth 1, the
/// iteration counting up). It runs to `max_iterations` and is denied there,
/// as `iterations_exceeded`, never for a depth it does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_python_loop_runs_to_its_iteration_limit() {
    let bus = Bus::InProc(InProcBus::new());
    // The defaults, as a reader of the example has them.
    let running = Running::start(bus.clone(), config("")).await;
    let chain = "crawl-1a2b3c4d";
    let mut denied = None;
    for iteration in 1..=150u32 {
        let step = serde_json::json!({
            "chain_id": chain,
            "step_id": format!("s{iteration}"),
            "depth": 1,
            "iteration": iteration,
            "signature": "fetch_page",
        });
        let d = if iteration == 1 {
            // The first waits for the loop breaker to listen.
            let ev: ChainEvent = serde_json::from_value(step).unwrap();
            ask(&bus, &ev).await
        } else {
            ask_raw(&bus, &serde_json::to_vec(&step).unwrap()).await
        };
        if d.decision != Verdict::Allow {
            denied = Some((iteration, d));
            break;
        }
    }
    let (at, d) = denied.expect("never denied");
    assert_eq!(at, 101, "{d:?}");
    assert_eq!(d.reason, Some(Reason::IterationsExceeded), "{d:?}");
    running.stop().await;
}
