//! `loop:`: the loop breaker (runaway processing chains).
//!
//! Cooperative chains (applications that ask before each step) are judged
//! by the limits here, overridable per chain kind (`loop.kinds.<kind>`).
//! Uncooperative chains are process groups watched through `/proc`
//! (`loop.process_groups`). Either way a broken limit becomes a `loop`
//! alert whose `details.condition` the `actions` table maps to actions.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use super::levels::check_actions;
use super::validate::{relative_inside, valid_kind, MAX_KIND_LEN};
use super::{issue, strings, CheckContext, Config, ConfigIssue, Section};

/// Longest cycle period that can be configured, in steps.
pub const MAX_CYCLE_PERIOD: usize = 32;
/// Most repetitions of a cycle that can be required.
pub const MAX_CYCLE_REPEATS: usize = 16;
/// Most steps kept per chain as evidence.
pub const MAX_EVIDENCE_STEPS: usize = 100;
/// Most chains that can be tracked at once.
pub const MAX_CHAINS: usize = 1_000_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoopConfig {
    /// Deepest step allowed (a step at depth `max_depth + 1` is denied).
    pub max_depth: u32,
    /// Most iterations (steps since the last reset) allowed in a chain.
    pub max_iterations: u32,
    /// Repeating sequences of step signatures.
    pub cycle: CycleRule,
    /// Steps per window.
    pub rate: RateRule,
    /// Seconds a broken chain's circuit stays open before it half-opens.
    pub cool_off_seconds: f64,
    /// Limits per chain kind (the event's `kind`); unset fields fall back
    /// to the limits above.
    pub kinds: BTreeMap<String, KindLimits>,
    /// Most chains tracked at once; idle ones are forgotten first.
    pub max_chains: usize,
    /// Seconds after which a chain without steps (and without an open
    /// circuit) is forgotten.
    pub idle_seconds: f64,
    /// Last steps kept per chain, sent as evidence with every alert.
    pub evidence_steps: usize,
    /// Uncooperative chains: process groups watched through `/proc`.
    pub process_groups: Vec<ProcessGroup>,
    /// Put whole command lines into alert evidence and results (so into
    /// the audit trail, status and state). Off: evidence names each
    /// process by its program only (`sh fork.sh`, `worker`), since
    /// command lines often carry tokens and passwords.
    pub record_command_lines: bool,
    /// Actions per condition. Merged over the built-in table: a file that
    /// names one condition keeps the defaults for the others; `[]` turns a
    /// condition's actions off.
    #[serde(deserialize_with = "merged_actions")]
    pub actions: BTreeMap<String, Vec<String>>,
}

/// A cycle is a block of `min_period..=max_period` step signatures repeated
/// `repeats` times in a row at the end of a chain. `repeats: 0` turns cycle
/// detection off. A period of 1 (the same step again and again) is a plain
/// iteration and left to `max_iterations` unless `min_period` is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CycleRule {
    pub min_period: usize,
    pub max_period: usize,
    pub repeats: usize,
}

impl Default for CycleRule {
    fn default() -> Self {
        Self {
            min_period: 2,
            max_period: 8,
            repeats: 3,
        }
    }
}

/// At most `max_steps` steps per `window_seconds`; `max_steps: 0` turns the
/// rate check off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateRule {
    pub max_steps: u32,
    pub window_seconds: f64,
}

impl Default for RateRule {
    fn default() -> Self {
        Self {
            max_steps: 500,
            window_seconds: 10.0,
        }
    }
}

/// Limits for one chain kind; every field falls back to `loop.<field>`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct KindLimits {
    pub max_depth: Option<u32>,
    pub max_iterations: Option<u32>,
    pub cycle: Option<CycleRule>,
    pub rate: Option<RateRule>,
    pub cool_off_seconds: Option<f64>,
}

/// What `circuit_break` does to a process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakMode {
    /// SIGSTOP the tree for the cool-off, SIGCONT when it half-opens.
    Stop,
    /// SIGSTOP the tree, SIGTERM it after `grace_seconds`, SIGKILL what is
    /// left after another `grace_seconds`.
    StopThenTerm,
    /// SIGTERM at once, SIGKILL after `grace_seconds`.
    Term,
}

impl BreakMode {
    /// As the config spells it (`loop.on_break`).
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakMode::Stop => "stop",
            BreakMode::StopThenTerm => "stop_then_term",
            BreakMode::Term => "term",
        }
    }
}

/// One watched process group. Its members are the processes that match
/// every selector given: at least one of `uid`, `exe`, `unit` and `cgroup`
/// (what a process cannot choose for itself), at most one of `unit` and
/// `cgroup`, and optionally `command` to narrow them (a command line is
/// whatever a process says it is, so it never selects on its own). Each
/// member whose parent is not a member roots a tree, and every process
/// below a root counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessGroup {
    /// Names the group in alerts (`details.sensor` is `proc:<name>`).
    pub name: String,
    /// A glob (`*`, `?`) over the whole command line, arguments joined by
    /// single spaces; only beside `uid`, `exe`, `unit` or `cgroup`.
    pub command: Option<String>,
    /// Members run as this user: real and effective uid both.
    pub uid: Option<u32>,
    /// Members run this executable (absolute path): `/proc/<pid>/exe` is
    /// the same file (device and inode) the path names. The file and its
    /// directories must not be writable by anyone but root or the agent's
    /// user, or the group has no members.
    pub exe: Option<PathBuf>,
    /// A systemd unit (`worker.service`): the processes in its cgroup,
    /// which must be owned by root or the agent's user.
    pub unit: Option<String>,
    /// A cgroup path relative to the cgroup root (`work.slice/jobs`),
    /// owned by root or the agent's user.
    pub cgroup: Option<PathBuf>,
    /// Deepest process below a root (a root's children are at depth 1);
    /// default `loop.max_depth`.
    pub max_depth: Option<u32>,
    /// Most processes below the roots, all trees together; default
    /// `loop.max_iterations`.
    pub max_descendants: Option<u32>,
    /// Most new roots within `respawn_window_seconds` (a crash loop).
    pub max_respawns: u32,
    pub respawn_window_seconds: f64,
    pub on_break: BreakMode,
    pub grace_seconds: f64,
    /// Default `loop.cool_off_seconds`.
    pub cool_off_seconds: Option<f64>,
}

impl Default for ProcessGroup {
    fn default() -> Self {
        Self {
            name: String::new(),
            command: None,
            uid: None,
            exe: None,
            unit: None,
            cgroup: None,
            max_depth: None,
            max_descendants: None,
            max_respawns: 5,
            respawn_window_seconds: 60.0,
            on_break: BreakMode::StopThenTerm,
            grace_seconds: 10.0,
            cool_off_seconds: None,
        }
    }
}

/// What a loop alert says broke (`details.condition`), keyed in
/// `loop.actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    DepthExceeded,
    IterationsExceeded,
    Cycle,
    RateExceeded,
    /// A process group has more processes below its roots than allowed.
    DescendantsExceeded,
    /// A process group's roots were respawned too often within the window.
    CrashLoop,
}

impl Condition {
    pub const ALL: [Condition; 6] = [
        Condition::DepthExceeded,
        Condition::IterationsExceeded,
        Condition::Cycle,
        Condition::RateExceeded,
        Condition::DescendantsExceeded,
        Condition::CrashLoop,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Condition::DepthExceeded => "depth_exceeded",
            Condition::IterationsExceeded => "iterations_exceeded",
            Condition::Cycle => "cycle",
            Condition::RateExceeded => "rate_exceeded",
            Condition::DescendantsExceeded => "descendants_exceeded",
            Condition::CrashLoop => "crash_loop",
        }
    }

    pub fn parse(s: &str) -> Option<Condition> {
        Condition::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// The limits one chain is judged by: the section's, or its kind's
/// (`loop.kinds.<kind>`) where set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChainLimits {
    pub max_depth: u32,
    pub max_iterations: u32,
    pub cycle: CycleRule,
    pub rate: RateRule,
    pub cool_off_seconds: f64,
}

/// The limits of one process group, resolved against the section's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupLimits {
    pub max_depth: u32,
    pub max_descendants: u32,
    pub max_respawns: u32,
    pub respawn_window_seconds: f64,
    pub on_break: BreakMode,
    pub grace_seconds: f64,
    pub cool_off_seconds: f64,
}

/// The seed's loop table, plus the conditions it did not name.
pub fn default_actions() -> BTreeMap<String, Vec<String>> {
    BTreeMap::from([
        ("depth_exceeded".to_string(), strings(&["circuit_break"])),
        ("iterations_exceeded".to_string(), strings(&["reset_chain"])),
        ("cycle".to_string(), strings(&["circuit_break"])),
        ("rate_exceeded".to_string(), strings(&["circuit_break"])),
        (
            "descendants_exceeded".to_string(),
            strings(&["circuit_break"]),
        ),
        ("crash_loop".to_string(), strings(&["circuit_break"])),
    ])
}

fn merged_actions<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Vec<String>>, D::Error> {
    let given = BTreeMap::<String, Vec<String>>::deserialize(d)?;
    let mut all = default_actions();
    all.extend(given);
    Ok(all)
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            max_depth: 10,
            max_iterations: 100,
            cycle: CycleRule::default(),
            rate: RateRule::default(),
            cool_off_seconds: 300.0,
            kinds: BTreeMap::new(),
            max_chains: 10_000,
            idle_seconds: 3600.0,
            evidence_steps: 10,
            process_groups: Vec::new(),
            record_command_lines: false,
            actions: default_actions(),
        }
    }
}

impl Section for LoopConfig {
    const KEY: &'static str = "loop";

    fn get(cfg: &Config) -> &Self {
        &cfg.loop_
    }

    fn get_mut(cfg: &mut Config) -> &mut Self {
        &mut cfg.loop_
    }

    fn check(&self, _ctx: &CheckContext<'_>, out: &mut Vec<ConfigIssue>) {
        for (cond, actions) in &self.actions {
            check_actions(out, &format!("loop.actions.{cond}"), actions);
        }
        out.extend(self.check_fields());
    }
}

impl LoopConfig {
    /// The limits for a chain of `kind` (the section's own when the kind is
    /// absent or not configured).
    pub fn limits(&self, kind: Option<&str>) -> ChainLimits {
        let k = kind.and_then(|k| self.kinds.get(k));
        let pick = |f: fn(&KindLimits) -> Option<u32>, d: u32| k.and_then(f).unwrap_or(d);
        ChainLimits {
            max_depth: pick(|k| k.max_depth, self.max_depth),
            max_iterations: pick(|k| k.max_iterations, self.max_iterations),
            cycle: k.and_then(|k| k.cycle).unwrap_or(self.cycle),
            rate: k.and_then(|k| k.rate).unwrap_or(self.rate),
            cool_off_seconds: k
                .and_then(|k| k.cool_off_seconds)
                .unwrap_or(self.cool_off_seconds),
        }
    }

    /// A process group's limits with the section's defaults filled in.
    pub fn group_limits(&self, g: &ProcessGroup) -> GroupLimits {
        GroupLimits {
            max_depth: g.max_depth.unwrap_or(self.max_depth),
            max_descendants: g.max_descendants.unwrap_or(self.max_iterations),
            max_respawns: g.max_respawns,
            respawn_window_seconds: g.respawn_window_seconds,
            on_break: g.on_break,
            grace_seconds: g.grace_seconds,
            cool_off_seconds: g.cool_off_seconds.unwrap_or(self.cool_off_seconds),
        }
    }

    /// Checks beyond the action names.
    fn check_fields(&self) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        if self.max_depth == 0 {
            out.push(issue("loop.max_depth", "must be at least 1"));
        }
        if self.max_iterations == 0 {
            out.push(issue("loop.max_iterations", "must be at least 1"));
        }
        check_cycle(&mut out, "loop.cycle", &self.cycle);
        check_rate(&mut out, "loop.rate", &self.rate);
        check_seconds(&mut out, "loop.cool_off_seconds", self.cool_off_seconds);
        check_seconds(&mut out, "loop.idle_seconds", self.idle_seconds);
        if !(1..=MAX_CHAINS).contains(&self.max_chains) {
            out.push(issue(
                "loop.max_chains",
                format!("must be between 1 and {MAX_CHAINS}"),
            ));
        }
        if !(1..=MAX_EVIDENCE_STEPS).contains(&self.evidence_steps) {
            out.push(issue(
                "loop.evidence_steps",
                format!("must be between 1 and {MAX_EVIDENCE_STEPS}"),
            ));
        }
        for (name, k) in &self.kinds {
            let at = format!("loop.kinds.{name}");
            if !valid_kind(name) {
                out.push(issue(
                    at.clone(),
                    format!(
                        "kind names are 1 to {} letters, digits, '_' or '-'",
                        MAX_KIND_LEN
                    ),
                ));
            }
            if k.max_depth == Some(0) {
                out.push(issue(format!("{at}.max_depth"), "must be at least 1"));
            }
            if k.max_iterations == Some(0) {
                out.push(issue(format!("{at}.max_iterations"), "must be at least 1"));
            }
            if let Some(c) = &k.cycle {
                check_cycle(&mut out, &format!("{at}.cycle"), c);
            }
            if let Some(r) = &k.rate {
                check_rate(&mut out, &format!("{at}.rate"), r);
            }
            if let Some(s) = k.cool_off_seconds {
                check_seconds(&mut out, &format!("{at}.cool_off_seconds"), s);
            }
        }
        for cond in self.actions.keys() {
            if Condition::parse(cond).is_none() {
                out.push(issue(
                    format!("loop.actions.{cond}"),
                    format!(
                        "unknown condition (known: {})",
                        Condition::ALL.map(Condition::as_str).join(", ")
                    ),
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, g) in self.process_groups.iter().enumerate() {
            let at = format!("loop.process_groups[{i}]");
            if !valid_kind(&g.name) {
                out.push(issue(
                    format!("{at}.name"),
                    format!("must be 1 to {} letters, digits, '_' or '-'", MAX_KIND_LEN),
                ));
            } else if !names.insert(g.name.as_str()) {
                out.push(issue(
                    format!("{at}.name"),
                    format!("{:?} is used twice", g.name),
                ));
            }
            if g.unit.is_some() && g.cgroup.is_some() {
                out.push(issue(at.clone(), "takes one of unit or cgroup, not both"));
            }
            let anchored =
                g.uid.is_some() || g.exe.is_some() || g.unit.is_some() || g.cgroup.is_some();
            if !anchored && g.command.is_some() {
                out.push(issue(
                    at.clone(),
                    format!(
                        "group {:?}: a command pattern alone selects any process that names \
                         itself so, whoever runs it; add what its members cannot forge beside \
                         it: uid (e.g. uid: 0 for root's processes), exe (the executable's \
                         absolute path), unit or cgroup",
                        g.name
                    ),
                ));
            } else if !anchored {
                out.push(issue(at.clone(), "needs one of uid, exe, unit or cgroup"));
            }
            if let Some(exe) = &g.exe {
                let s = exe.as_os_str().as_encoded_bytes();
                if !exe.is_absolute()
                    || exe
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                    || s.len() > 4096
                    || s.iter().any(u8::is_ascii_control)
                {
                    out.push(issue(
                        format!("{at}.exe"),
                        format!(
                            "{} must be an absolute path without '..'",
                            crate::escape::Escaped::path(exe)
                        ),
                    ));
                }
            }
            if let Some(c) = &g.command {
                let literal = c.chars().filter(|c| !matches!(c, '*' | '?')).count();
                if literal < 3 || c.len() > 512 || c.chars().any(char::is_control) {
                    out.push(issue(
                        format!("{at}.command"),
                        "must name the command: at least 3 characters besides '*' and '?', at most 512",
                    ));
                }
            }
            if let Some(u) = &g.unit {
                let ok = !u.is_empty()
                    && u.len() <= 256
                    && u.contains('.')
                    && u.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "@._:-\\".contains(c));
                if !ok {
                    out.push(issue(
                        format!("{at}.unit"),
                        format!("{u:?} is not a systemd unit name (e.g. worker.service)"),
                    ));
                }
            }
            if let Some(cg) = &g.cgroup {
                if let Err(m) = relative_inside(cg) {
                    out.push(issue(format!("{at}.cgroup"), m.to_string()));
                }
            }
            if g.max_depth == Some(0) {
                out.push(issue(format!("{at}.max_depth"), "must be at least 1"));
            }
            if g.max_respawns == 0 {
                out.push(issue(format!("{at}.max_respawns"), "must be at least 1"));
            }
            check_positive(
                &mut out,
                &format!("{at}.respawn_window_seconds"),
                g.respawn_window_seconds,
            );
            check_seconds(&mut out, &format!("{at}.grace_seconds"), g.grace_seconds);
            if let Some(s) = g.cool_off_seconds {
                check_seconds(&mut out, &format!("{at}.cool_off_seconds"), s);
            }
        }
        out
    }
}

fn check_seconds(out: &mut Vec<ConfigIssue>, path: &str, v: f64) {
    if !(v.is_finite() && v >= 0.0) {
        out.push(issue(path, "must be zero or more seconds"));
    }
}

fn check_positive(out: &mut Vec<ConfigIssue>, path: &str, v: f64) {
    if !(v.is_finite() && v > 0.0) {
        out.push(issue(path, "must be a positive number of seconds"));
    }
}

fn check_cycle(out: &mut Vec<ConfigIssue>, path: &str, c: &CycleRule) {
    if c.repeats == 0 {
        return;
    }
    if c.min_period == 0 || c.min_period > c.max_period || c.max_period > MAX_CYCLE_PERIOD {
        out.push(issue(
            format!("{path}.max_period"),
            format!("need 1 <= min_period <= max_period <= {MAX_CYCLE_PERIOD}"),
        ));
    }
    if !(2..=MAX_CYCLE_REPEATS).contains(&c.repeats) {
        out.push(issue(
            format!("{path}.repeats"),
            format!("must be 0 (off) or between 2 and {MAX_CYCLE_REPEATS}"),
        ));
    }
}

fn check_rate(out: &mut Vec<ConfigIssue>, path: &str, r: &RateRule) {
    if r.max_steps > 0 {
        check_positive(out, &format!("{path}.window_seconds"), r.window_seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    /// The paths of the issues a `loop:` section raises.
    fn loop_issues(section: &str) -> Vec<String> {
        match Config::from_yaml(&format!("loop:\n{section}")) {
            Ok(_) => Vec::new(),
            Err(issues) => issues.into_iter().map(|i| i.path).collect(),
        }
    }

    #[test]
    fn group_bounds_are_exact() {
        let group = |extra: &str| {
            loop_issues(&format!(
                "  process_groups:\n    - {{name: g, uid: 0, {extra}}}\n"
            ))
        };
        // A command needs three literal characters; wildcards do not count.
        assert!(group("command: 'abc*'").is_empty());
        assert_eq!(group("command: 'ab**'"), ["loop.process_groups[0].command"]);
        let long = "x".repeat(512);
        assert!(group(&format!("command: '{long}'")).is_empty());
        assert_eq!(
            group(&format!("command: '{long}y'")),
            ["loop.process_groups[0].command"]
        );
        // A unit is a systemd unit name.
        assert!(group("unit: worker.service").is_empty());
        assert!(group("unit: 'worker@1.service'").is_empty());
        assert_eq!(group("unit: worker"), ["loop.process_groups[0].unit"]);
        assert_eq!(
            group("unit: 'a b.service'"),
            ["loop.process_groups[0].unit"]
        );
        assert_eq!(group("unit: ''"), ["loop.process_groups[0].unit"]);
        let long = format!("{}.service", "u".repeat(248));
        assert!(group(&format!("unit: '{long}'")).is_empty(), "256 bytes");
        assert_eq!(
            group(&format!("unit: 'u{long}'")),
            ["loop.process_groups[0].unit"]
        );
        // Seconds: grace may be zero, not negative; the window must be positive.
        assert!(group("command: 'abc', grace_seconds: 0").is_empty());
        assert_eq!(
            group("command: 'abc', grace_seconds: -1"),
            ["loop.process_groups[0].grace_seconds"]
        );
        assert_eq!(
            group("command: 'abc', cool_off_seconds: -1"),
            ["loop.process_groups[0].cool_off_seconds"]
        );
    }

    #[test]
    fn cycle_and_rate_bounds_are_exact() {
        assert!(loop_issues("  cycle: {min_period: 2, max_period: 2, repeats: 2}\n").is_empty());
        assert!(loop_issues("  cycle: {min_period: 1, max_period: 32, repeats: 16}\n").is_empty());
        assert_eq!(
            loop_issues("  cycle: {min_period: 3, max_period: 2, repeats: 3}\n"),
            ["loop.cycle.max_period"]
        );
        assert_eq!(
            loop_issues("  cycle: {min_period: 1, max_period: 33, repeats: 3}\n"),
            ["loop.cycle.max_period"]
        );
        assert_eq!(
            loop_issues("  cycle: {min_period: 1, max_period: 4, repeats: 17}\n"),
            ["loop.cycle.repeats"]
        );
        assert!(loop_issues("  cycle: {min_period: 0, max_period: 0, repeats: 0}\n").is_empty());
        assert_eq!(
            loop_issues("  rate: {max_steps: 5, window_seconds: 0}\n"),
            ["loop.rate.window_seconds"]
        );
        assert!(loop_issues("  rate: {max_steps: 0, window_seconds: 0}\n").is_empty());
    }

    #[test]
    fn seed_values_are_the_defaults() {
        let cfg = Config::from_yaml("").unwrap();
        let l = cfg.loop_.limits(None);
        assert_eq!((l.max_depth, l.max_iterations), (10, 100));
        assert_eq!(cfg.loop_.actions["depth_exceeded"], ["circuit_break"]);
        assert_eq!(cfg.loop_.actions["iterations_exceeded"], ["reset_chain"]);
    }

    #[test]
    fn kinds_override_field_by_field() {
        let text = "
loop:
  max_depth: 12
  kinds:
    llm_agent: {max_depth: 4, cycle: {repeats: 2}}
    batch: {max_iterations: 100000, rate: {max_steps: 50, window_seconds: 1}}
";
        let cfg = Config::from_yaml(text).unwrap();
        let agent = cfg.loop_.limits(Some("llm_agent"));
        assert_eq!(agent.max_depth, 4);
        assert_eq!(agent.max_iterations, 100);
        assert_eq!(agent.cycle.repeats, 2);
        let batch = cfg.loop_.limits(Some("batch"));
        assert_eq!(batch.max_depth, 12);
        assert_eq!(batch.max_iterations, 100_000);
        assert_eq!(batch.rate.max_steps, 50);
        assert_eq!(cfg.loop_.limits(Some("unknown")).max_depth, 12);
    }

    #[test]
    fn actions_merge_over_the_defaults() {
        let text = "loop: {actions: {cycle: [reset_chain], crash_loop: []}}";
        let cfg = Config::from_yaml(text).unwrap();
        assert_eq!(cfg.loop_.actions["cycle"], ["reset_chain"]);
        assert!(cfg.loop_.actions["crash_loop"].is_empty());
        assert_eq!(cfg.loop_.actions["depth_exceeded"], ["circuit_break"]);
    }

    #[test]
    fn process_groups_resolve_defaults() {
        let text = "
loop:
  max_depth: 7
  process_groups:
    - {name: forky, uid: 0, command: '*fork.sh*', max_descendants: 20, on_break: stop}
";
        let cfg = Config::from_yaml(text).unwrap();
        let g = cfg.loop_.group_limits(&cfg.loop_.process_groups[0]);
        assert_eq!(g.max_depth, 7);
        assert_eq!(g.max_descendants, 20);
        assert_eq!(g.on_break, BreakMode::Stop);
        assert_eq!(g.max_respawns, 5);
        assert_eq!(g.cool_off_seconds, 300.0);
    }

    #[test]
    fn bad_loop_settings_are_located() {
        let text = "
loop:
  max_depth: 0
  cycle: {min_period: 5, max_period: 2, repeats: 1}
  rate: {max_steps: 10, window_seconds: 0}
  max_chains: 0
  evidence_steps: 1000
  kinds:
    'bad kind': {max_iterations: 0}
  actions: {melting: [circuit_break], cycle: [launch]}
  process_groups:
    - {name: a, command: '**'}
    - {name: a, unit: 'x/y', cgroup: '../etc'}
    - {name: b}
";
        let errs = Config::from_yaml(text).unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "loop.max_depth",
            "loop.cycle.max_period",
            "loop.cycle.repeats",
            "loop.rate.window_seconds",
            "loop.max_chains",
            "loop.evidence_steps",
            "loop.kinds.bad kind",
            "loop.kinds.bad kind.max_iterations",
            "loop.actions.melting",
            "loop.actions.cycle[0]",
            "loop.process_groups[0].command",
            "loop.process_groups[1].name",
            "loop.process_groups[1]",
            "loop.process_groups[1].unit",
            "loop.process_groups[1].cgroup",
            "loop.process_groups[2]",
        ] {
            assert!(paths.contains(&want), "missing {want} in {errs:?}");
        }
    }

    #[test]
    fn a_command_pattern_alone_is_refused_with_the_fix() {
        let errs =
            Config::from_yaml("loop: {process_groups: [{name: forky, command: '*fork.sh*'}]}")
                .unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "loop.process_groups[0]");
        for needed in ["\"forky\"", "uid", "exe", "unit", "cgroup", "forge"] {
            assert!(
                errs[0].message.contains(needed),
                "{needed}: {}",
                errs[0].message
            );
        }
        for anchor in [
            "uid: 0",
            "exe: /usr/bin/dash",
            "unit: w.service",
            "cgroup: w.slice",
        ] {
            let text = format!(
                "loop: {{process_groups: [{{name: forky, command: '*fork.sh*', {anchor}}}]}}"
            );
            assert!(Config::from_yaml(&text).is_ok(), "{anchor}");
        }
    }

    #[test]
    fn command_lines_are_not_recorded_unless_asked() {
        assert!(!Config::from_yaml("").unwrap().loop_.record_command_lines);
        let cfg = Config::from_yaml("loop: {record_command_lines: true}").unwrap();
        assert!(cfg.loop_.record_command_lines);
    }

    #[test]
    fn unknown_group_keys_are_reported() {
        let errs =
            Config::from_yaml("loop: {process_groups: [{name: a, command: 'abc*', colour: 1}]}")
                .unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.path.starts_with("loop.process_groups")),
            "{errs:?}"
        );
    }

    #[test]
    fn section_limits_have_exact_bounds() {
        for key in ["max_depth", "max_iterations"] {
            assert_eq!(
                loop_issues(&format!("  {key}: 0\n")),
                [format!("loop.{key}")]
            );
            assert!(loop_issues(&format!("  {key}: 1\n")).is_empty(), "{key}");
        }
        assert_eq!(loop_issues("  max_chains: 0\n"), ["loop.max_chains"]);
        assert!(loop_issues("  max_chains: 1\n").is_empty());
        assert!(loop_issues(&format!("  max_chains: {MAX_CHAINS}\n")).is_empty());
        assert_eq!(
            loop_issues(&format!("  max_chains: {}\n", MAX_CHAINS + 1)),
            ["loop.max_chains"]
        );
        assert_eq!(
            loop_issues("  evidence_steps: 0\n"),
            ["loop.evidence_steps"]
        );
        assert!(loop_issues("  evidence_steps: 1\n").is_empty());
        assert!(loop_issues(&format!("  evidence_steps: {MAX_EVIDENCE_STEPS}\n")).is_empty());
        assert_eq!(
            loop_issues(&format!("  evidence_steps: {}\n", MAX_EVIDENCE_STEPS + 1)),
            ["loop.evidence_steps"]
        );
    }

    #[test]
    fn seconds_are_zero_or_more_and_finite() {
        for key in ["cool_off_seconds", "idle_seconds"] {
            for bad in ["-1", "-0.001", ".inf", "-.inf", ".nan"] {
                assert_eq!(
                    loop_issues(&format!("  {key}: {bad}\n")),
                    [format!("loop.{key}")],
                    "{key}: {bad}"
                );
            }
            for ok in ["0", "0.5"] {
                assert!(
                    loop_issues(&format!("  {key}: {ok}\n")).is_empty(),
                    "{key}: {ok}"
                );
            }
        }
        let cfg = LoopConfig {
            idle_seconds: -1.0,
            ..LoopConfig::default()
        };
        let issues = cfg.check_fields();
        assert_eq!(issues[0].message, "must be zero or more seconds");
    }

    #[test]
    fn each_cycle_condition_is_checked_on_its_own() {
        // min_period 0 alone (max_period within bounds, min <= max).
        assert_eq!(
            loop_issues("  cycle: {min_period: 0, max_period: 4, repeats: 3}\n"),
            ["loop.cycle.max_period"]
        );
        // min_period above max_period alone.
        assert_eq!(
            loop_issues("  cycle: {min_period: 5, max_period: 4, repeats: 3}\n"),
            ["loop.cycle.max_period"]
        );
        // max_period above the limit alone.
        assert_eq!(
            loop_issues(&format!(
                "  cycle: {{min_period: 2, max_period: {}, repeats: 3}}\n",
                MAX_CYCLE_PERIOD + 1
            )),
            ["loop.cycle.max_period"]
        );
        assert!(loop_issues(&format!(
            "  cycle: {{min_period: 2, max_period: {MAX_CYCLE_PERIOD}, repeats: 3}}\n"
        ))
        .is_empty());
        // repeats: 1 is neither off nor a repetition.
        assert_eq!(
            loop_issues("  cycle: {min_period: 2, max_period: 4, repeats: 1}\n"),
            ["loop.cycle.repeats"]
        );
        // repeats: 0 turns the rule off, whatever the periods.
        assert!(loop_issues("  cycle: {min_period: 9, max_period: 99, repeats: 0}\n").is_empty());
    }

    #[test]
    fn rate_window_is_checked_only_when_the_rate_is_on() {
        for bad in ["0", "-1", ".inf"] {
            assert_eq!(
                loop_issues(&format!(
                    "  rate: {{max_steps: 1, window_seconds: {bad}}}\n"
                )),
                ["loop.rate.window_seconds"],
                "{bad}"
            );
        }
        assert!(loop_issues("  rate: {max_steps: 1, window_seconds: 0.01}\n").is_empty());
        assert!(loop_issues("  rate: {max_steps: 0, window_seconds: -1}\n").is_empty());
    }

    #[test]
    fn kind_limits_are_checked_under_their_kind() {
        let kind = |body: &str| loop_issues(&format!("  kinds:\n    batch: {body}\n"));
        assert!(kind("{max_depth: 1, max_iterations: 1, cool_off_seconds: 0}").is_empty());
        assert_eq!(kind("{max_depth: 0}"), ["loop.kinds.batch.max_depth"]);
        assert_eq!(
            kind("{max_iterations: 0}"),
            ["loop.kinds.batch.max_iterations"]
        );
        assert_eq!(
            kind("{cycle: {min_period: 3, max_period: 2, repeats: 2}}"),
            ["loop.kinds.batch.cycle.max_period"]
        );
        assert_eq!(
            kind("{rate: {max_steps: 3, window_seconds: 0}}"),
            ["loop.kinds.batch.rate.window_seconds"]
        );
        assert_eq!(
            kind("{cool_off_seconds: -1}"),
            ["loop.kinds.batch.cool_off_seconds"]
        );
        let long = "k".repeat(MAX_KIND_LEN);
        assert!(loop_issues(&format!("  kinds:\n    {long}: {{}}\n")).is_empty());
        assert_eq!(
            loop_issues(&format!("  kinds:\n    {long}k: {{}}\n")),
            [format!("loop.kinds.{long}k")]
        );
    }

    #[test]
    fn group_names_and_members_are_checked() {
        let groups = |body: &str| loop_issues(&format!("  process_groups:\n{body}"));
        assert!(groups(
            "    - {name: a, uid: 0, command: abc}\n    - {name: b, unit: b.service}\n"
        )
        .is_empty());
        assert_eq!(
            groups(
                "    - {name: a, uid: 0, command: abc}\n    - {name: a, uid: 0, command: abd}\n"
            ),
            ["loop.process_groups[1].name"]
        );
        assert_eq!(
            groups("    - {name: 'a b', uid: 0, command: abc}\n"),
            ["loop.process_groups[0].name"]
        );
        // Something unforgeable, and at most one cgroup.
        assert_eq!(groups("    - {name: a}\n"), ["loop.process_groups[0]"]);
        assert!(groups("    - {name: a, command: abc, cgroup: work.slice}\n").is_empty());
        assert!(groups("    - {name: a, uid: 0, exe: /usr/bin/w, unit: w.service}\n").is_empty());
        assert_eq!(
            groups("    - {name: a, unit: w.service, cgroup: work.slice}\n"),
            ["loop.process_groups[0]"]
        );
        assert_eq!(
            groups("    - {name: a, uid: 0, exe: bin/w}\n"),
            ["loop.process_groups[0].exe"]
        );
        assert_eq!(
            groups("    - {name: a, uid: 0, exe: /usr/../tmp/w}\n"),
            ["loop.process_groups[0].exe"]
        );
        assert!(groups("    - {name: a, cgroup: work.slice/jobs}\n").is_empty());
        assert_eq!(
            groups("    - {name: a, cgroup: /work.slice}\n"),
            ["loop.process_groups[0].cgroup"]
        );
        // A control character is never part of a command line pattern.
        assert_eq!(
            groups("    - {name: a, uid: 0, command: \"abc\\u0007\"}\n"),
            ["loop.process_groups[0].command"]
        );
    }

    #[test]
    fn group_limits_have_exact_bounds() {
        let group = |extra: &str| {
            loop_issues(&format!(
                "  process_groups:\n    - {{name: g, uid: 0, command: abc, {extra}}}\n"
            ))
        };
        assert!(group("max_depth: 1, max_respawns: 1, respawn_window_seconds: 0.01").is_empty());
        assert_eq!(group("max_depth: 0"), ["loop.process_groups[0].max_depth"]);
        assert_eq!(
            group("max_respawns: 0"),
            ["loop.process_groups[0].max_respawns"]
        );
        for bad in ["0", "-1", ".inf", ".nan"] {
            assert_eq!(
                group(&format!("respawn_window_seconds: {bad}")),
                ["loop.process_groups[0].respawn_window_seconds"],
                "{bad}"
            );
        }
        for bad in [".inf", "-0.5"] {
            assert_eq!(
                group(&format!("grace_seconds: {bad}")),
                ["loop.process_groups[0].grace_seconds"],
                "{bad}"
            );
        }
        let cfg = LoopConfig {
            process_groups: vec![ProcessGroup {
                name: "g".into(),
                command: Some("abc".into()),
                uid: Some(0),
                respawn_window_seconds: 0.0,
                ..ProcessGroup::default()
            }],
            ..LoopConfig::default()
        };
        let issues = cfg.check_fields();
        assert_eq!(issues[0].message, "must be a positive number of seconds");
    }

    #[test]
    fn conditions_round_trip_through_their_names() {
        for c in Condition::ALL {
            assert_eq!(Condition::parse(c.as_str()), Some(c));
            assert!(default_actions().contains_key(c.as_str()), "{c:?}");
        }
        assert_eq!(Condition::parse("melting"), None);
        assert_eq!(
            Condition::DescendantsExceeded.as_str(),
            "descendants_exceeded"
        );
    }

    #[test]
    fn break_modes_are_said_as_the_config_spells_them() {
        for m in [BreakMode::Stop, BreakMode::StopThenTerm, BreakMode::Term] {
            assert_eq!(
                serde_json::to_string(&m).unwrap(),
                format!("\"{}\"", m.as_str())
            );
        }
    }
}
