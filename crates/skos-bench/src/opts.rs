//! What a run measures and how long it may take.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Opts {
    /// Simulated nodes for ingest (and the alert burst: one alert each).
    pub nodes: usize,
    /// Heartbeats in the ingest burst (spread over the nodes).
    pub heartbeats: usize,
    /// Heartbeats in the overload burst (0: none): more than a client's
    /// subscription buffer (65,536 messages) holds.
    pub overload_heartbeats: usize,
    /// Alerts in the ingest burst (one per node, at most 10,000); `None`:
    /// one per node.
    pub ingest_alerts: Option<usize>,
    /// Alerts (one per node) for the latency run.
    pub latency_alerts: usize,
    /// Open-alert counts for the alert scaling runs (a fresh server and
    /// coordinator each, one alert per node); empty: none.
    pub alert_scale: Vec<usize>,
    /// Alerts one node floods in the fairness run (0: section skipped).
    pub flood_alerts: usize,
    /// Other nodes' alerts timed without the flood (fairness baseline).
    pub fairness_probes: usize,
    /// `coordinator.leader_lease_seconds` for every coordinator the
    /// harness starts: short, so a stale lease ages out quickly.
    pub lease_seconds: f64,
    /// Requests for the bus's own round trip.
    pub round_trips: usize,
    /// Hot-CPU repetitions (distributed).
    pub detection_repeats: usize,
    /// SIGKILL repetitions for offline detection.
    pub offline_repeats: usize,
    /// HEARTBEAT_TIMEOUT for the detection run, seconds.
    pub heartbeat_timeout: f64,
    /// MONITOR_INTERVAL for the detection and embedded runs, seconds.
    pub monitor_interval: f64,
    /// Fleet sizes for the coordinator's footprint.
    pub footprint_nodes: Vec<usize>,
    /// Heartbeat interval of the simulated fleet, seconds.
    pub footprint_interval: f64,
    /// Measuring window for CPU shares.
    #[serde(with = "secs")]
    pub window: Duration,
    /// Hot-CPU repetitions through `skos up`.
    pub embedded_repeats: usize,
    /// Trials of each failover (emergency, node death).
    pub failover_trials: usize,
    /// `failover.failover_delay_seconds` for the failover run.
    pub failover_delay: f64,
    /// Trials of each healing-table row in the efficacy section.
    pub efficacy_trials: usize,
    /// Efficacy rows to run: those whose name contains one of these
    /// (all when empty).
    pub efficacy_rows: Vec<String>,
    pub nats_url: Option<String>,
    pub skos_bin: Option<PathBuf>,
    pub quick: bool,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl Opts {
    /// The defaults: a few minutes on a two-core machine.
    pub fn full() -> Self {
        Opts {
            nodes: 100_000,
            heartbeats: 100_000,
            overload_heartbeats: 200_000,
            ingest_alerts: None,
            latency_alerts: 1_000,
            alert_scale: vec![1_000, 10_000],
            flood_alerts: 50_000,
            fairness_probes: 300,
            lease_seconds: 3.0,
            round_trips: 1_000,
            detection_repeats: 5,
            offline_repeats: 2,
            heartbeat_timeout: 3.0,
            monitor_interval: 1.0,
            footprint_nodes: vec![1_000, 10_000, 100_000],
            footprint_interval: 5.0,
            window: Duration::from_secs(15),
            embedded_repeats: 3,
            failover_trials: 5,
            failover_delay: 2.0,
            efficacy_trials: 5,
            efficacy_rows: Vec::new(),
            nats_url: None,
            skos_bin: None,
            quick: false,
        }
    }

    /// A smoke run of about half a minute.
    pub fn quick() -> Self {
        Opts {
            nodes: 200,
            heartbeats: 4_000,
            overload_heartbeats: 0,
            ingest_alerts: None,
            latency_alerts: 200,
            alert_scale: vec![100, 1_000],
            flood_alerts: 2_000,
            fairness_probes: 50,
            lease_seconds: 3.0,
            round_trips: 200,
            detection_repeats: 1,
            offline_repeats: 1,
            heartbeat_timeout: 2.0,
            monitor_interval: 1.0,
            footprint_nodes: vec![1_000],
            footprint_interval: 5.0,
            window: Duration::from_secs(2),
            embedded_repeats: 1,
            failover_trials: 1,
            failover_delay: 2.0,
            efficacy_trials: 1,
            efficacy_rows: Vec::new(),
            nats_url: None,
            skos_bin: None,
            quick: true,
        }
    }
}
