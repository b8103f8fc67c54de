//! The coordinator run in-process (`skos_coordinator::run` over NATS with
//! the JetStream audit trail and state store, as `skos coordinator` runs
//! it), on its own thread and its own two-worker runtime like the binary's,
//! so the harness's clients do not share its scheduler. Its [`Counters`]
//! are shared with the harness.
//!
//! Like `skos coordinator`, it stands by until it wins the leader lease
//! (`SKOS_LEADER`, `coordinator.leader_lease_seconds`); [`InProcCoordinator::start`]
//! returns once it leads and answers status requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use skos_bus::lease::{self, Lease};
use skos_bus::{AuditLog, Bus, StateStore};
use skos_coordinator::ServiceOptions;
use skos_core::config::Config;
use skos_core::counters::Counters;
use tokio::sync::oneshot;

use crate::error::Context;
use crate::{natsutil, Error, Result};

/// The name of the coordinator's runtime threads (its CPU time is read
/// by that name).
pub const RUNTIME_THREADS: &str = "coordinator-rt";

pub struct InProcCoordinator {
    pub counters: Counters,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

/// The coordinator's config for the throughput and latency runs: defaults,
/// the server's URL, a heartbeat timeout long enough that no simulated
/// node goes offline while the harness is busy elsewhere, and the leader
/// lease `lease_seconds` long.
pub fn bench_config(url: &str, lease_seconds: f64) -> Config {
    let mut cfg = Config::default();
    cfg.nats.url = url.to_string();
    cfg.coordinator.heartbeat_timeout = 3600.0;
    cfg.coordinator.leader_lease_seconds = lease_seconds;
    cfg
}

impl InProcCoordinator {
    /// Start it and wait until it has won the lease and answers status
    /// requests as the leader (its heartbeat, alert and result
    /// subscriptions exist by then).
    pub async fn start(cfg: Config) -> Result<Self> {
        let counters = Counters::default();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
        let c = counters.clone();
        let url = cfg.nats.url.clone();
        let lease_s = cfg.coordinator.leader_lease_seconds;
        let thread = std::thread::Builder::new()
            .name("bench-coordinator".into())
            .spawn(move || -> Result<()> {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name(RUNTIME_THREADS)
                    .enable_all()
                    .build()
                    .ctx("build the coordinator's runtime")?;
                rt.block_on(async move {
                    let setup = async {
                        let nats = natsutil::bus(&cfg.nats.url, "skos-coordinator").await?;
                        let audit = AuditLog::open_jetstream(&nats)
                            .await
                            .ctx("open the audit stream")?;
                        let state = StateStore::jetstream(&nats)
                            .await
                            .ctx("open the state stream")?;
                        let lease = Lease::open(
                            &nats,
                            lease::holder_id(),
                            Duration::from_secs_f64(cfg.coordinator.leader_lease_seconds),
                        )
                        .await
                        .ctx("open the leader lease")?;
                        Ok::<_, Error>((nats, audit, state, lease))
                    };
                    let (nats, audit, state, lease) = match setup.await {
                        Ok(v) => {
                            let _ = ready_tx.send(Ok(()));
                            v
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(Error::failed("start the coordinator", &e)));
                            return Err(e);
                        }
                    };
                    // Spawned onto the workers, as `skos coordinator` does.
                    let task = tokio::spawn(skos_coordinator::run(
                        cfg,
                        Bus::Nats(nats),
                        Arc::new(audit),
                        state,
                        c,
                        ServiceOptions {
                            election: Some(lease),
                            ..ServiceOptions::default()
                        },
                        async move {
                            let _ = stop_rx.await;
                        },
                    ));
                    match task.await {
                        Ok(r) => r.ctx("coordinator"),
                        Err(e) => Err(Error::failed("coordinator", e)),
                    }
                })
            })
            .ctx("start the coordinator thread")?;
        let mut me = InProcCoordinator {
            counters,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match tokio::time::timeout(Duration::from_secs(30), ready_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(_)) => {
                return Err(match me.join_now() {
                    Some(e) => Error::failed("start the coordinator", e),
                    None => Error::failed("start the coordinator", "thread ended"),
                })
            }
            Err(_) => {
                return Err(Error::timeout(
                    "the coordinator to connect",
                    Duration::from_secs(30),
                ))
            }
        }
        let probe = Bus::Nats(natsutil::bus(&url, "skos-bench-status").await?);
        // A lease left by an earlier run (with --nats-url) ages out within
        // its lease time.
        let wait = Duration::from_secs(30) + Duration::from_secs_f64(lease_s);
        if let Err(e) = natsutil::wait_status(&probe, wait).await {
            if me.thread.as_ref().is_some_and(|t| t.is_finished()) {
                if let Some(err) = me.join_now() {
                    return Err(err);
                }
            }
            return Err(e);
        }
        Ok(me)
    }

    fn join_now(&mut self) -> Option<Error> {
        let t = self.thread.take()?;
        match t.join() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(Error::failed("coordinator", "thread panicked")),
        }
    }

    /// Ask it to stop (it saves its state) and wait up to `timeout`.
    pub async fn stop(mut self, timeout: Duration) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let deadline = Instant::now() + timeout;
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            if Instant::now() >= deadline {
                return Err(Error::timeout("the coordinator to stop", timeout));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match self.join_now() {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

impl Drop for InProcCoordinator {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // The thread is left to finish on its own; it holds no process.
    }
}
