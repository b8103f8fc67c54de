//! [`ChainTable`]: every chain of one node, bounded; judges each step and
//! carries out `circuit_break` and `reset_chain`.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::circuit::{ChainState, Circuit};
use super::cycle::{detect_cycle, fingerprint};
use super::wire::{ChainDecision, ChainEvent, CircuitState, Reason, StepRecord, Verdict};
use super::Condition;
use crate::config::LoopConfig;
use crate::level::secs;
use crate::timefmt::{self, Timestamp};

/// Chains scanned for an evictable one when the table is full.
const EVICT_SCAN: usize = 256;

/// A limit a step broke; the chain's circuit opened until `until`.
#[derive(Debug, Clone, PartialEq)]
pub struct Trip {
    pub chain_id: String,
    pub kind: Option<String>,
    pub condition: Condition,
    /// The value that broke the limit (depth, iterations, steps in the
    /// window, cycle period).
    pub value: u64,
    pub limit: u64,
    pub message: String,
    pub generation: u64,
    pub until: Timestamp,
    pub evidence: Vec<StepRecord>,
}

/// A change of a chain's circuit that applications are told about.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Tripped(Trip),
    HalfOpened {
        chain_id: String,
        generation: u64,
    },
    /// A half-open trial step passed.
    Closed {
        chain_id: String,
        generation: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    pub decision: ChainDecision,
    pub transitions: Vec<Transition>,
}

/// What [`ChainTable::tick`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TickReport {
    pub transitions: Vec<Transition>,
    pub evicted: usize,
    /// Forgotten chains whose circuit had not closed again (half-open):
    /// their alerts are still open somewhere.
    pub forgotten_unclosed: Vec<String>,
}

/// A chain as seen from outside, for commands, status and tests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainView {
    pub chain_id: String,
    pub kind: Option<String>,
    pub generation: u64,
    pub steps: u32,
    pub circuit: CircuitState,
    #[serde(with = "timefmt::option")]
    pub until: Option<Timestamp>,
    pub evidence: Vec<StepRecord>,
}

/// Every tracked chain of one node.
#[derive(Debug, Clone)]
pub struct ChainTable {
    cfg: LoopConfig,
    chains: HashMap<String, ChainState>,
    /// Least recently used first.
    order: BTreeMap<u64, String>,
    seq: u64,
}

impl ChainTable {
    pub fn new(cfg: &LoopConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            chains: HashMap::new(),
            order: BTreeMap::new(),
            seq: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.chains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }

    /// Chains whose circuit is not closed, with their state.
    pub fn circuits(&self) -> Vec<(String, CircuitState)> {
        let mut v: Vec<_> = self
            .chains
            .iter()
            .filter(|(_, c)| c.circuit != Circuit::Closed)
            .map(|(id, c)| (id.clone(), c.circuit.state()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn view(&self, chain_id: &str) -> Option<ChainView> {
        let c = self.chains.get(chain_id)?;
        Some(ChainView {
            chain_id: chain_id.to_string(),
            kind: c.kind.clone(),
            generation: c.generation,
            steps: c.steps,
            circuit: c.circuit.state(),
            until: match c.circuit {
                Circuit::Open { until, .. } => Some(until),
                _ => None,
            },
            evidence: c.evidence.iter().cloned().collect(),
        })
    }

    fn touch(&mut self, chain_id: &str) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(c) = self.chains.get_mut(chain_id) {
            self.order.remove(&c.seq);
            c.seq = seq;
            self.order.insert(seq, chain_id.to_string());
        }
    }

    fn remove(&mut self, chain_id: &str) {
        if let Some(c) = self.chains.remove(chain_id) {
            self.order.remove(&c.seq);
        }
    }

    /// Make room for one more chain: forget the least recently used chain
    /// whose circuit is not open; with `force`, the least recently used
    /// one whatever its state. False when nothing could go.
    fn make_room(&mut self, now: Timestamp, force: bool) -> bool {
        if self.chains.len() < self.cfg.max_chains {
            return true;
        }
        let victim = self
            .order
            .values()
            .take(EVICT_SCAN)
            .find(|id| {
                self.chains
                    .get(*id)
                    .is_none_or(|c| c.open_until(now).is_none())
            })
            .or_else(|| force.then(|| self.order.values().next()).flatten())
            .cloned();
        match victim {
            Some(id) => {
                self.remove(&id);
                true
            }
            None => false,
        }
    }

    fn insert(&mut self, chain_id: &str, kind: Option<String>, now: Timestamp) {
        self.seq += 1;
        self.chains
            .insert(chain_id.to_string(), ChainState::new(kind, now, self.seq));
        self.order.insert(self.seq, chain_id.to_string());
    }

    /// Judge one step. The chain is created on its first step; its kind
    /// (and so its limits) is fixed then.
    pub fn step(&mut self, ev: &ChainEvent, now: Timestamp) -> StepOutcome {
        if !self.chains.contains_key(&ev.chain_id) {
            if !self.make_room(now, false) {
                let mut d = ChainDecision::invalid(
                    &ev.chain_id,
                    &ev.step_id,
                    format!(
                        "the loop breaker tracks {} chains, all with open circuits",
                        self.chains.len()
                    ),
                );
                d.reason = Some(Reason::Capacity);
                return StepOutcome {
                    decision: d,
                    transitions: Vec::new(),
                };
            }
            self.insert(&ev.chain_id, ev.kind.clone(), now);
        }
        self.touch(&ev.chain_id);
        let evidence_cap = self.cfg.evidence_steps.max(1);
        let kind = self.chains.get(&ev.chain_id).and_then(|c| c.kind.clone());
        let limits = self.cfg.limits(kind.as_deref());
        let Some(c) = self.chains.get_mut(&ev.chain_id) else {
            return StepOutcome {
                decision: ChainDecision::invalid(&ev.chain_id, &ev.step_id, "chain vanished"),
                transitions: Vec::new(),
            };
        };
        c.last_seen = now;
        let mut transitions = Vec::new();
        let mut record = StepRecord {
            step_id: ev.step_id.clone(),
            parent_step: ev.parent_step.clone(),
            depth: ev.depth,
            iteration: ev.iteration,
            signature: ev.signature.clone(),
            at: now,
            verdict: Verdict::Deny,
            reason: None,
        };
        let push = |c: &mut ChainState, r: StepRecord| {
            c.evidence.push_back(r);
            while c.evidence.len() > evidence_cap {
                c.evidence.pop_front();
            }
        };

        // An open circuit denies everything until its cool-off ends.
        if let Circuit::Open { until, reason } = c.circuit {
            if now < until {
                record.reason = Some(Reason::CircuitOpen);
                push(c, record);
                let left = (until - now).num_milliseconds() as f64 / 1000.0;
                return StepOutcome {
                    decision: ChainDecision {
                        chain_id: ev.chain_id.clone(),
                        step_id: ev.step_id.clone(),
                        decision: Verdict::Deny,
                        reason: Some(Reason::CircuitOpen),
                        message: format!(
                            "circuit open ({}) for another {left:.1} s",
                            reason.as_str()
                        ),
                        circuit: CircuitState::Open,
                        steps: c.steps,
                        generation: c.generation,
                        retry_after_seconds: Some(left),
                        dry_run: false,
                    },
                    transitions,
                };
            }
            c.circuit = Circuit::HalfOpen;
            c.clear_counters();
            transitions.push(Transition::HalfOpened {
                chain_id: ev.chain_id.clone(),
                generation: c.generation,
            });
        }
        let trial = c.circuit == Circuit::HalfOpen;

        let parent_depth = ev.parent_step.as_ref().and_then(|p| {
            c.evidence
                .iter()
                .rev()
                .find(|r| &r.step_id == p)
                .map(|r| r.depth.saturating_add(1))
        });
        let depth = ev.depth.max(parent_depth.unwrap_or(0));
        let iterations = ev.iteration.max(c.steps.saturating_add(1));
        let in_window = c
            .rate
            .count(now, limits.rate.window_seconds)
            .saturating_add(1);
        let fp = fingerprint(&ev.signature);
        let cycle = if limits.cycle.repeats >= 2 {
            let mut seq: Vec<u64> = c.fingerprints.iter().copied().collect();
            seq.push(fp);
            detect_cycle(&seq, &limits.cycle)
        } else {
            None
        };
        let broken = if depth > limits.max_depth {
            Some((
                Condition::DepthExceeded,
                u64::from(depth),
                u64::from(limits.max_depth),
                format!("depth {depth} exceeds max_depth {}", limits.max_depth),
            ))
        } else if iterations > limits.max_iterations {
            Some((
                Condition::IterationsExceeded,
                u64::from(iterations),
                u64::from(limits.max_iterations),
                format!(
                    "iteration {iterations} exceeds max_iterations {}",
                    limits.max_iterations
                ),
            ))
        } else if limits.rate.max_steps > 0 && in_window > limits.rate.max_steps {
            Some((
                Condition::RateExceeded,
                u64::from(in_window),
                u64::from(limits.rate.max_steps),
                format!(
                    "{in_window} steps within {} s exceed {}",
                    limits.rate.window_seconds, limits.rate.max_steps
                ),
            ))
        } else if let Some(p) = cycle {
            let sigs: Vec<&str> = c
                .evidence
                .iter()
                .rev()
                .filter(|r| r.verdict == Verdict::Allow)
                .take(p - 1)
                .map(|r| r.signature.as_str())
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .chain(std::iter::once(ev.signature.as_str()))
                .collect();
            Some((
                Condition::Cycle,
                p as u64,
                limits.cycle.repeats as u64,
                format!(
                    "the steps [{}] repeated {} times in a row",
                    sigs.join(" → "),
                    limits.cycle.repeats
                ),
            ))
        } else {
            None
        };

        match broken {
            Some((condition, value, limit, message)) => {
                let until = now + secs(limits.cool_off_seconds);
                let reason = Reason::from(condition);
                record.reason = Some(reason);
                push(c, record);
                c.circuit = Circuit::Open { until, reason };
                let generation = c.generation;
                let steps = c.steps;
                transitions.push(Transition::Tripped(Trip {
                    chain_id: ev.chain_id.clone(),
                    kind: c.kind.clone(),
                    condition,
                    value,
                    limit,
                    message: message.clone(),
                    generation,
                    until,
                    evidence: c.evidence.iter().cloned().collect(),
                }));
                StepOutcome {
                    decision: ChainDecision {
                        chain_id: ev.chain_id.clone(),
                        step_id: ev.step_id.clone(),
                        decision: Verdict::Deny,
                        reason: Some(reason),
                        message,
                        circuit: CircuitState::Open,
                        steps,
                        generation,
                        retry_after_seconds: Some(limits.cool_off_seconds),
                        dry_run: false,
                    },
                    transitions,
                }
            }
            None => {
                c.steps = c.steps.saturating_add(1);
                c.rate.add(now, limits.rate.window_seconds);
                c.fingerprints.push_back(fp);
                let keep = limits.cycle.max_period * limits.cycle.repeats;
                while c.fingerprints.len() > keep {
                    c.fingerprints.pop_front();
                }
                record.verdict = Verdict::Allow;
                record.depth = depth;
                push(c, record);
                if trial {
                    c.circuit = Circuit::Closed;
                    transitions.push(Transition::Closed {
                        chain_id: ev.chain_id.clone(),
                        generation: c.generation,
                    });
                }
                StepOutcome {
                    decision: ChainDecision {
                        chain_id: ev.chain_id.clone(),
                        step_id: ev.step_id.clone(),
                        decision: Verdict::Allow,
                        reason: None,
                        message: String::new(),
                        circuit: c.circuit.state(),
                        steps: c.steps,
                        generation: c.generation,
                        retry_after_seconds: None,
                        dry_run: false,
                    },
                    transitions,
                }
            }
        }
    }

    /// Open a chain's circuit for `cool_off_seconds` (its kind's cool-off
    /// when `None`), creating the chain if it is not tracked.
    pub fn open(
        &mut self,
        chain_id: &str,
        cool_off_seconds: Option<f64>,
        reason: Reason,
        now: Timestamp,
    ) -> ChainView {
        if !self.chains.contains_key(chain_id) {
            self.make_room(now, true);
            self.insert(chain_id, None, now);
        }
        self.touch(chain_id);
        let kind = self.chains.get(chain_id).and_then(|c| c.kind.clone());
        let cool_off =
            cool_off_seconds.unwrap_or(self.cfg.limits(kind.as_deref()).cool_off_seconds);
        if let Some(c) = self.chains.get_mut(chain_id) {
            c.circuit = Circuit::Open {
                until: now + secs(cool_off),
                reason,
            };
            c.last_seen = now;
        }
        self.view_or_empty(chain_id)
    }

    /// Clear a chain: counters, cycle window, rate, circuit closed, the
    /// generation one up. The evidence is kept (it is what was cleared).
    /// `None` when the chain is not tracked (it starts from zero anyway).
    pub fn reset(&mut self, chain_id: &str, now: Timestamp) -> Option<ChainView> {
        let c = self.chains.get_mut(chain_id)?;
        c.clear_counters();
        c.circuit = Circuit::Closed;
        c.generation += 1;
        c.last_seen = now;
        self.touch(chain_id);
        self.view(chain_id)
    }

    fn view_or_empty(&self, chain_id: &str) -> ChainView {
        self.view(chain_id).unwrap_or_else(|| ChainView {
            chain_id: chain_id.to_string(),
            kind: None,
            generation: 0,
            steps: 0,
            circuit: CircuitState::Closed,
            until: None,
            evidence: Vec::new(),
        })
    }

    /// Periodic work: half-open circuits whose cool-off ended, forget
    /// chains idle for `idle_seconds` (never one with an open circuit).
    pub fn tick(&mut self, now: Timestamp) -> TickReport {
        let mut report = TickReport::default();
        for (id, c) in self.chains.iter_mut() {
            if let Circuit::Open { until, .. } = c.circuit {
                if now >= until {
                    c.circuit = Circuit::HalfOpen;
                    c.clear_counters();
                    report.transitions.push(Transition::HalfOpened {
                        chain_id: id.clone(),
                        generation: c.generation,
                    });
                }
            }
        }
        let idle = secs(self.cfg.idle_seconds);
        let stale: Vec<(String, bool)> = self
            .chains
            .iter()
            .filter(|(_, c)| now - c.last_seen > idle && c.open_until(now).is_none())
            .map(|(id, c)| (id.clone(), c.circuit != Circuit::Closed))
            .collect();
        report.evicted = stale.len();
        for (id, unclosed) in stale {
            self.remove(&id);
            if unclosed {
                report.forgotten_unclosed.push(id);
            }
        }
        report.forgotten_unclosed.sort();
        report.transitions.sort_by(|a, b| {
            let key = |t: &Transition| match t {
                Transition::Tripped(t) => t.chain_id.clone(),
                Transition::HalfOpened { chain_id, .. } | Transition::Closed { chain_id, .. } => {
                    chain_id.clone()
                }
            };
            key(a).cmp(&key(b))
        });
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CycleRule, RateRule};
    use chrono::TimeZone;

    fn t(s: f64) -> Timestamp {
        chrono::Utc.timestamp_opt(1_700_000_000, 0).unwrap() + secs(s)
    }

    fn ev(chain: &str, step: usize, depth: u32, iteration: u32, sig: &str) -> ChainEvent {
        ChainEvent {
            chain_id: chain.into(),
            step_id: format!("s{step}"),
            parent_step: None,
            depth,
            iteration,
            signature: sig.into(),
            kind: None,
            node: None,
        }
    }

    fn table() -> ChainTable {
        ChainTable::new(&LoopConfig::default())
    }

    fn tripped(o: &StepOutcome) -> Option<&Trip> {
        o.transitions.iter().find_map(|t| match t {
            Transition::Tripped(t) => Some(t),
            _ => None,
        })
    }

    #[test]
    fn recursion_is_denied_at_depth_eleven_and_the_circuit_opens() {
        let mut tab = table();
        for d in 1..=10 {
            let o = tab.step(&ev("r", d as usize, d, d, "recurse"), t(d as f64 * 0.01));
            assert_eq!(o.decision.decision, Verdict::Allow, "depth {d}");
        }
        let o = tab.step(&ev("r", 11, 11, 11, "recurse"), t(0.2));
        assert_eq!(o.decision.decision, Verdict::Deny);
        assert_eq!(o.decision.reason, Some(Reason::DepthExceeded));
        assert_eq!(o.decision.circuit, CircuitState::Open);
        let trip = tripped(&o).expect("tripped");
        assert_eq!(trip.condition, Condition::DepthExceeded);
        assert_eq!((trip.value, trip.limit), (11, 10));
        assert_eq!(trip.evidence.len(), 10, "evidence_steps last steps");
        assert_eq!(trip.evidence.last().unwrap().step_id, "s11");
        // A fresh, shallow step is still refused while the circuit is open.
        let o = tab.step(&ev("r", 12, 1, 1, "recurse"), t(1.0));
        assert_eq!(o.decision.reason, Some(Reason::CircuitOpen));
        assert!(o.decision.retry_after_seconds.unwrap() > 298.0);
        assert!(o.transitions.is_empty(), "trips once");
    }

    #[test]
    fn depth_is_also_computed_from_parent_links() {
        let mut tab = table();
        let mut parent: Option<String> = None;
        for i in 1..=11usize {
            let mut e = ev("p", i, 1, 1, &format!("call{i}"));
            e.parent_step = parent.clone();
            let o = tab.step(&e, t(i as f64));
            parent = Some(e.step_id.clone());
            if i <= 10 {
                assert_eq!(o.decision.decision, Verdict::Allow, "step {i}");
            } else {
                assert_eq!(o.decision.reason, Some(Reason::DepthExceeded));
            }
        }
    }

    #[test]
    fn ping_pong_is_a_cycle_long_before_the_iteration_limit() {
        let mut tab = table();
        let mut denied_at = None;
        for i in 1..=100u32 {
            let sig = if i % 2 == 1 { "ping" } else { "pong" };
            let o = tab.step(&ev("pp", i as usize, 1, i, sig), t(i as f64));
            if o.decision.decision == Verdict::Deny {
                assert_eq!(o.decision.reason, Some(Reason::Cycle));
                let trip = tripped(&o).unwrap();
                assert_eq!(trip.value, 2, "period");
                assert!(trip.message.contains("ping → pong"), "{}", trip.message);
                denied_at = Some(i);
                break;
            }
        }
        assert_eq!(denied_at, Some(6));
    }

    #[test]
    fn ninety_legitimate_iterations_are_untouched() {
        let mut tab = table();
        for i in 1..=90u32 {
            let o = tab.step(
                &ev("ok", i as usize, 1, i, "fetch_page"),
                t(0.001 * i as f64),
            );
            assert_eq!(o.decision.decision, Verdict::Allow, "iteration {i}");
            assert!(o.transitions.is_empty());
            assert_eq!(o.decision.steps, i);
        }
        assert_eq!(tab.view("ok").unwrap().circuit, CircuitState::Closed);
    }

    #[test]
    fn iterations_count_observed_steps_when_the_app_does_not() {
        let mut tab = table();
        for i in 1..=100u32 {
            let o = tab.step(&ev("lazy", i as usize, 1, 0, "same"), t(i as f64));
            assert_eq!(o.decision.decision, Verdict::Allow);
        }
        let o = tab.step(&ev("lazy", 101, 1, 0, "same"), t(101.0));
        assert_eq!(o.decision.reason, Some(Reason::IterationsExceeded));
    }

    #[test]
    fn reset_starts_the_chain_from_zero() {
        let mut tab = table();
        for i in 1..=101u32 {
            tab.step(&ev("it", i as usize, 1, i, "work"), t(i as f64));
        }
        assert_eq!(tab.view("it").unwrap().circuit, CircuitState::Open);
        let v = tab.reset("it", t(200.0)).unwrap();
        assert_eq!(
            (v.generation, v.steps, v.circuit),
            (1, 0, CircuitState::Closed)
        );
        let o = tab.step(&ev("it", 1, 1, 1, "work"), t(201.0));
        assert_eq!(o.decision.decision, Verdict::Allow);
        assert_eq!((o.decision.steps, o.decision.generation), (1, 1));
        assert!(tab.reset("unknown", t(0.0)).is_none());
    }

    #[test]
    fn rate_over_the_limit_trips() {
        let cfg = LoopConfig {
            max_iterations: 10_000,
            rate: RateRule {
                max_steps: 20,
                window_seconds: 1.0,
            },
            ..Default::default()
        };
        let mut tab = ChainTable::new(&cfg);
        // 20 steps a second, spread out, for five seconds: fine.
        for i in 0..100u32 {
            let o = tab.step(
                &ev("r", i as usize, 1, i + 1, &format!("s{i}")),
                t(i as f64 * 0.051),
            );
            assert_eq!(o.decision.decision, Verdict::Allow, "step {i}");
        }
        // Then a burst.
        let mut reason = None;
        for i in 100..140u32 {
            let o = tab.step(&ev("r", i as usize, 1, i + 1, &format!("s{i}")), t(5.2));
            if o.decision.decision == Verdict::Deny {
                reason = o.decision.reason;
                break;
            }
        }
        assert_eq!(reason, Some(Reason::RateExceeded));
    }

    #[test]
    fn half_open_trial_closes_or_reopens() {
        let mut tab = table();
        for d in 1..=11 {
            tab.step(&ev("h", d as usize, d, d, "x"), t(0.0));
        }
        let r = tab.tick(t(299.0));
        assert!(r.transitions.is_empty());
        let r = tab.tick(t(301.0));
        assert_eq!(
            r.transitions,
            vec![Transition::HalfOpened {
                chain_id: "h".into(),
                generation: 0
            }]
        );
        // Still recursing: opens again.
        let o = tab.step(&ev("h", 20, 12, 12, "x"), t(302.0));
        assert_eq!(o.decision.reason, Some(Reason::DepthExceeded));
        assert!(tripped(&o).is_some());
        // After the next cool-off a sane step closes it.
        let o = tab.step(&ev("h", 21, 1, 1, "x"), t(700.0));
        assert_eq!(o.decision.decision, Verdict::Allow);
        assert!(matches!(o.transitions[0], Transition::HalfOpened { .. }));
        assert!(matches!(o.transitions[1], Transition::Closed { .. }));
        assert_eq!(o.decision.circuit, CircuitState::Closed);
    }

    #[test]
    fn a_half_open_chain_that_goes_quiet_is_forgotten_and_reported() {
        let cfg = LoopConfig {
            idle_seconds: 10.0,
            cool_off_seconds: 5.0,
            ..Default::default()
        };
        let mut tab = ChainTable::new(&cfg);
        for d in 1..=11 {
            tab.step(&ev("f", d as usize, d, d, "x"), t(0.0));
        }
        let r = tab.tick(t(6.0));
        assert!(matches!(r.transitions[0], Transition::HalfOpened { .. }));
        let r = tab.tick(t(20.0));
        assert_eq!(r.forgotten_unclosed, vec!["f".to_string()]);
        assert!(tab.is_empty());
    }

    #[test]
    fn commands_open_and_create() {
        let mut tab = table();
        let v = tab.open("new", Some(10.0), Reason::CrashLoop, t(0.0));
        assert_eq!(v.circuit, CircuitState::Open);
        assert_eq!(v.until, Some(t(10.0)));
        let o = tab.step(&ev("new", 1, 1, 1, "a"), t(5.0));
        assert_eq!(o.decision.reason, Some(Reason::CircuitOpen));
    }

    #[test]
    fn kinds_fix_their_limits_at_the_first_step() {
        let mut cfg = LoopConfig::default();
        cfg.kinds.insert(
            "shallow".into(),
            crate::config::KindLimits {
                max_depth: Some(2),
                ..Default::default()
            },
        );
        let mut tab = ChainTable::new(&cfg);
        let mut e = ev("k", 1, 1, 1, "a");
        e.kind = Some("shallow".into());
        assert_eq!(tab.step(&e, t(0.0)).decision.decision, Verdict::Allow);
        // Claiming another kind later does not lift the limit.
        let mut e = ev("k", 2, 3, 2, "b");
        e.kind = Some("other".into());
        assert_eq!(
            tab.step(&e, t(1.0)).decision.reason,
            Some(Reason::DepthExceeded)
        );
    }

    #[test]
    fn memory_is_bounded() {
        let cfg = LoopConfig {
            max_chains: 3,
            idle_seconds: 60.0,
            ..Default::default()
        };
        let mut tab = ChainTable::new(&cfg);
        for i in 0..10 {
            tab.step(&ev(&format!("c{i}"), 1, 1, 1, "a"), t(i as f64));
            assert!(tab.len() <= 3);
        }
        assert!(tab.view("c9").is_some());
        assert!(tab.view("c0").is_none(), "least recently used went first");
        // Open circuits are kept; with all three open a new chain is refused.
        for i in 7..10 {
            tab.open(&format!("c{i}"), Some(1000.0), Reason::Cycle, t(10.0));
        }
        let o = tab.step(&ev("intruder", 1, 1, 1, "a"), t(11.0));
        assert_eq!(o.decision.reason, Some(Reason::Capacity));
        assert_eq!(tab.len(), 3);
        // Idle chains are forgotten, open ones are not.
        tab.reset("c9", t(12.0));
        let r = tab.tick(t(100.0));
        assert_eq!(r.evicted, 1);
        assert!(r.forgotten_unclosed.is_empty());
        assert!(tab.view("c9").is_none());
        assert!(tab.view("c8").is_some());
        // Evidence per chain is capped.
        let mut tab = table();
        for i in 0..50 {
            tab.step(&ev("e", i, 1, 1, &format!("s{i}")), t(i as f64));
        }
        assert_eq!(tab.view("e").unwrap().evidence.len(), 10);
    }

    #[test]
    fn a_table_is_empty_until_its_first_step() {
        let mut tab = table();
        assert!(tab.is_empty());
        tab.step(&ev("a", 1, 1, 1, "x"), t(0.0));
        assert!(!tab.is_empty());
        assert_eq!(tab.len(), 1);
    }

    #[test]
    fn circuits_lists_the_chains_not_closed_by_id() {
        let mut tab = table();
        for id in ["c-closed", "b-open", "a-half"] {
            tab.step(&ev(id, 1, 1, 1, "x"), t(0.0));
        }
        assert!(tab.circuits().is_empty(), "every circuit closed");
        tab.open("b-open", Some(100.0), Reason::Cycle, t(0.0));
        tab.open("a-half", Some(5.0), Reason::Cycle, t(0.0));
        tab.tick(t(6.0));
        assert_eq!(
            tab.circuits(),
            vec![
                ("a-half".to_string(), CircuitState::HalfOpen),
                ("b-open".to_string(), CircuitState::Open),
            ]
        );
    }

    #[test]
    fn a_step_makes_its_chain_the_most_recently_used() {
        let cfg = LoopConfig {
            max_chains: 2,
            ..Default::default()
        };
        let mut tab = ChainTable::new(&cfg);
        tab.step(&ev("a", 1, 1, 1, "x"), t(0.0));
        tab.step(&ev("b", 1, 1, 1, "x"), t(1.0));
        tab.step(&ev("a", 2, 1, 2, "y"), t(2.0));
        tab.step(&ev("c", 1, 1, 1, "x"), t(3.0));
        assert!(tab.view("b").is_none(), "b was the least recently used");
        assert!(tab.view("a").is_some(), "a stepped after b");
        assert!(tab.view("c").is_some());
    }

    #[test]
    fn a_circuit_half_opens_exactly_when_its_cool_off_ends() {
        let mut tab = table();
        tab.open("c", Some(10.0), Reason::Cycle, t(0.0));
        let o = tab.step(&ev("c", 1, 1, 1, "x"), t(4.0));
        assert_eq!(o.decision.reason, Some(Reason::CircuitOpen));
        assert_eq!(o.decision.retry_after_seconds, Some(6.0));
        assert_eq!(o.decision.message, "circuit open (cycle) for another 6.0 s");
        let o = tab.step(&ev("c", 2, 1, 1, "x"), t(10.0));
        assert_eq!(o.decision.decision, Verdict::Allow);
        assert_eq!(
            o.transitions,
            vec![
                Transition::HalfOpened {
                    chain_id: "c".into(),
                    generation: 0
                },
                Transition::Closed {
                    chain_id: "c".into(),
                    generation: 0
                },
            ]
        );
    }

    #[test]
    fn a_circuit_whose_cool_off_ended_no_longer_holds_its_place() {
        let cfg = LoopConfig {
            max_chains: 1,
            ..Default::default()
        };
        let mut tab = ChainTable::new(&cfg);
        tab.open("old", Some(5.0), Reason::Cycle, t(0.0));
        let o = tab.step(&ev("new", 1, 1, 1, "x"), t(4.9));
        assert_eq!(o.decision.reason, Some(Reason::Capacity), "still open");
        // No tick in between: the cool-off ending is enough.
        let o = tab.step(&ev("new", 1, 1, 1, "x"), t(5.0));
        assert_eq!(o.decision.decision, Verdict::Allow);
        assert!(tab.view("old").is_none());
    }

    #[test]
    fn the_rate_limit_allows_exactly_max_steps_per_window() {
        let cfg = LoopConfig {
            rate: RateRule {
                max_steps: 5,
                window_seconds: 10.0,
            },
            ..Default::default()
        };
        let mut tab = ChainTable::new(&cfg);
        for i in 1..=5u32 {
            let o = tab.step(&ev("r", i as usize, 1, i, &format!("s{i}")), t(1.0));
            assert_eq!(o.decision.decision, Verdict::Allow, "step {i}");
        }
        let o = tab.step(&ev("r", 6, 1, 6, "s6"), t(1.0));
        assert_eq!(o.decision.reason, Some(Reason::RateExceeded));
        let trip = tripped(&o).expect("tripped");
        assert_eq!((trip.value, trip.limit), (6, 5));
    }

    #[test]
    fn max_steps_zero_turns_the_rate_check_off() {
        let cfg = LoopConfig {
            rate: RateRule {
                max_steps: 0,
                window_seconds: 10.0,
            },
            ..Default::default()
        };
        let mut tab = ChainTable::new(&cfg);
        for i in 1..=50u32 {
            let o = tab.step(&ev("r", i as usize, 1, i, &format!("s{i}")), t(1.0));
            assert_eq!(o.decision.decision, Verdict::Allow, "step {i}");
        }
    }

    #[test]
    fn a_cycle_trip_names_one_period_of_the_repeated_steps() {
        let mut tab = table();
        let sigs = ["plan", "act", "check"];
        let mut trip = None;
        for i in 0..30usize {
            let o = tab.step(&ev("c3", i + 1, 1, i as u32 + 1, sigs[i % 3]), t(i as f64));
            if let Some(tr) = tripped(&o) {
                trip = Some((i + 1, tr.clone()));
                break;
            }
        }
        let (at, trip) = trip.expect("tripped");
        assert_eq!(at, 9, "the third repetition closes the cycle");
        assert_eq!(trip.condition, Condition::Cycle);
        assert_eq!((trip.value, trip.limit), (3, 3));
        assert_eq!(
            trip.message,
            "the steps [plan → act → check] repeated 3 times in a row"
        );
    }

    #[test]
    fn the_longest_configured_period_is_still_found() {
        // Defaults: periods 2 to 8, three repetitions.
        let mut tab = table();
        let mut denied_at = None;
        for i in 0..40usize {
            let sig = format!("step{}", i % 8);
            let o = tab.step(&ev("c8", i + 1, 1, i as u32 + 1, &sig), t(i as f64));
            if o.decision.decision == Verdict::Deny {
                assert_eq!(o.decision.reason, Some(Reason::Cycle));
                assert_eq!(tripped(&o).expect("tripped").value, 8);
                denied_at = Some(i + 1);
                break;
            }
        }
        assert_eq!(denied_at, Some(24));
    }

    #[test]
    fn the_cycle_window_is_bounded_and_empty_when_cycles_are_off() {
        let mut tab = table();
        for i in 0..60usize {
            tab.step(&ev("on", i, 1, i as u32 + 1, &format!("s{i}")), t(i as f64));
        }
        let rule = CycleRule::default();
        assert!(tab.chains["on"].fingerprints.len() <= rule.max_period * rule.repeats);

        let cfg = LoopConfig {
            cycle: CycleRule { repeats: 0, ..rule },
            ..Default::default()
        };
        let mut tab = ChainTable::new(&cfg);
        for i in 0..60usize {
            let sig = if i % 2 == 0 { "ping" } else { "pong" };
            let o = tab.step(&ev("off", i, 1, i as u32 + 1, sig), t(i as f64));
            assert_eq!(o.decision.decision, Verdict::Allow, "step {i}");
        }
        assert!(tab.chains["off"].fingerprints.is_empty());
    }

    #[test]
    fn a_chain_idle_for_exactly_idle_seconds_is_kept() {
        let cfg = LoopConfig {
            idle_seconds: 10.0,
            ..Default::default()
        };
        let mut tab = ChainTable::new(&cfg);
        tab.step(&ev("i", 1, 1, 1, "x"), t(0.0));
        assert_eq!(tab.tick(t(10.0)).evicted, 0);
        assert!(tab.view("i").is_some());
        let r = tab.tick(t(10.001));
        assert_eq!(r.evicted, 1);
        assert!(r.forgotten_unclosed.is_empty(), "its circuit was closed");
        assert!(tab.is_empty());
    }
}
