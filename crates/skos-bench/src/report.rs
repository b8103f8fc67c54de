//! Figures, their targets and ceilings, and the human table.
//!
//! A [`Figure`] is one measured number with, where there is one, the
//! reference it was measured beside in the same run (the ceiling: a plain
//! subscriber, the bus's own round trip) and the ratio between them, and
//! the target it is judged against (on the value or on the ratio).

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    AtLeast,
    AtMost,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    pub goal: Goal,
    pub value: f64,
    /// Judged on the ratio to the reference rather than on the value.
    pub on_ratio: bool,
    /// Not one of the targets: derived here from the configuration
    /// (e.g. a monitor interval plus a margin).
    pub derived: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reference {
    pub name: String,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    pub section: String,
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub reference: Option<Reference>,
    /// value / reference.
    pub ratio: Option<f64>,
    pub target: Option<Target>,
    /// `None` when there is no target or nothing was measured.
    pub met: Option<bool>,
    /// Where missed, by how much.
    pub miss: Option<String>,
    pub note: Option<String>,
}

impl Figure {
    pub fn new(section: &str, name: impl Into<String>, value: f64, unit: &str) -> Self {
        Figure {
            section: section.to_string(),
            name: name.into(),
            value,
            unit: unit.to_string(),
            reference: None,
            ratio: None,
            target: None,
            met: None,
            miss: None,
            note: None,
        }
    }

    /// The ceiling or reference measured beside it; sets the ratio.
    pub fn beside(mut self, name: impl Into<String>, value: f64) -> Self {
        self.ratio = (value.is_finite() && value != 0.0 && self.value.is_finite())
            .then(|| self.value / value);
        self.reference = Some(Reference {
            name: name.into(),
            value,
        });
        self.judge()
    }

    pub fn at_most(self, value: f64) -> Self {
        self.with_target(Goal::AtMost, value, false, false)
    }

    pub fn at_least(self, value: f64) -> Self {
        self.with_target(Goal::AtLeast, value, false, false)
    }

    pub fn ratio_at_least(self, value: f64) -> Self {
        self.with_target(Goal::AtLeast, value, true, false)
    }

    pub fn ratio_at_most(self, value: f64) -> Self {
        self.with_target(Goal::AtMost, value, true, false)
    }

    /// A target derived from the configuration, not given by the issue.
    pub fn derived_at_most(self, value: f64) -> Self {
        self.with_target(Goal::AtMost, value, false, true)
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    fn with_target(mut self, goal: Goal, value: f64, on_ratio: bool, derived: bool) -> Self {
        self.target = Some(Target {
            goal,
            value,
            on_ratio,
            derived,
        });
        self.judge()
    }

    fn judge(mut self) -> Self {
        let Some(t) = &self.target else {
            return self;
        };
        let (subject, unit) = if t.on_ratio {
            (self.ratio.unwrap_or(f64::NAN), "×")
        } else {
            (self.value, self.unit.as_str())
        };
        if !subject.is_finite() {
            self.met = None;
            self.miss = Some("not measured".into());
            return self;
        }
        let met = match t.goal {
            Goal::AtLeast => subject >= t.value,
            Goal::AtMost => subject <= t.value,
        };
        self.met = Some(met);
        self.miss = (!met).then(|| {
            let gap = (subject - t.value).abs();
            let pct = if t.value != 0.0 {
                format!(" ({:.0}%)", gap / t.value.abs() * 100.0)
            } else {
                String::new()
            };
            match t.goal {
                Goal::AtLeast => format!("short by {}{pct}", fmt_value(gap, unit)),
                Goal::AtMost => format!("over by {}{pct}", fmt_value(gap, unit)),
            }
        });
        self
    }

    pub fn target_text(&self) -> String {
        match &self.target {
            None => "-".into(),
            Some(t) => {
                let op = match t.goal {
                    Goal::AtLeast => "≥",
                    Goal::AtMost => "≤",
                };
                let v = if t.on_ratio {
                    format!("{}× ref", trim_num(t.value))
                } else {
                    fmt_value(t.value, &self.unit)
                };
                let d = if t.derived { " (derived)" } else { "" };
                format!("{op} {v}{d}")
            }
        }
    }

    pub fn verdict_text(&self) -> String {
        match (self.met, &self.miss) {
            (Some(true), _) => "met".into(),
            (Some(false), Some(m)) => format!("MISSED: {m}"),
            (Some(false), None) => "MISSED".into(),
            (None, Some(m)) => m.clone(),
            (None, None) => "-".into(),
        }
    }
}

/// What a section hands back: its raw data (JSON) and its figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SectionReport {
    pub data: Value,
    pub figures: Vec<Figure>,
}

fn trim_num(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect();
    let out = groups.join(",");
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A value with its unit, rounded for a person.
pub fn fmt_value(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    match unit {
        "msg/s" | "msgs" | "nodes" => format!("{} {unit}", thousands(v)),
        "×" => format!("{}×", sig(v)),
        "" => sig(v),
        _ => format!("{} {unit}", sig(v)),
    }
}

/// Three significant digits, without exponent for ordinary numbers.
fn sig(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    }
}

/// The human table: one row per figure.
pub fn table(figures: &[Figure]) -> String {
    let header = [
        "SECTION",
        "FIGURE",
        "VALUE",
        "MEASURED BESIDE",
        "RATIO",
        "TARGET",
        "VERDICT",
    ];
    let rows: Vec<[String; 7]> = figures
        .iter()
        .map(|f| {
            [
                f.section.clone(),
                f.name.clone(),
                fmt_value(f.value, &f.unit),
                f.reference
                    .as_ref()
                    .map(|r| format!("{} {}", r.name, fmt_value(r.value, &f.unit)))
                    .unwrap_or_else(|| "-".into()),
                f.ratio
                    .map(|r| format!("{}×", sig(r)))
                    .unwrap_or_else(|| "-".into()),
                f.target_text(),
                f.verdict_text(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths.iter()).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(w - c.chars().count() + 2));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = String::new();
    out.push_str(&line(&header.map(String::from)));
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

/// The same table in Markdown (for RESULTS.md).
pub fn markdown(figures: &[Figure]) -> String {
    let mut out = String::from(
        "| section | figure | value | measured beside | ratio | target | verdict |\n|---|---|---|---|---|---|---|\n",
    );
    for f in figures {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            f.section,
            f.name,
            fmt_value(f.value, &f.unit),
            f.reference
                .as_ref()
                .map(|r| format!("{} {}", r.name, fmt_value(r.value, &f.unit)))
                .unwrap_or_else(|| "-".into()),
            f.ratio
                .map(|r| format!("{}×", sig(r)))
                .unwrap_or_else(|| "-".into()),
            f.target_text(),
            f.verdict_text()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_target_met_and_missed() {
        let f = Figure::new("ingest", "hb", 90.0, "msg/s")
            .beside("ceiling", 100.0)
            .ratio_at_least(0.8);
        assert_eq!(f.met, Some(true));
        assert!((f.ratio.unwrap() - 0.9).abs() < 1e-9);
        let f = Figure::new("ingest", "hb", 40.0, "msg/s")
            .beside("ceiling", 100.0)
            .ratio_at_least(0.8);
        assert_eq!(f.met, Some(false));
        assert_eq!(f.miss.as_deref(), Some("short by 0.400× (50%)"));
    }

    #[test]
    fn value_target_over_by() {
        let f = Figure::new("latency", "p99", 7.5, "ms").at_most(5.0);
        assert_eq!(f.met, Some(false));
        assert_eq!(f.miss.as_deref(), Some("over by 2.50 ms (50%)"));
        assert_eq!(f.verdict_text(), "MISSED: over by 2.50 ms (50%)");
        let f = Figure::new("latency", "p99", 3.0, "ms").at_most(5.0);
        assert_eq!(f.verdict_text(), "met");
        assert_eq!(f.target_text(), "≤ 5.00 ms");
    }

    #[test]
    fn unmeasured_is_not_judged() {
        let f = Figure::new("x", "y", f64::NAN, "ms").at_most(5.0);
        assert_eq!(f.met, None);
        assert_eq!(f.verdict_text(), "not measured");
        let f = Figure::new("x", "y", 1.0, "ms").beside("ref", 0.0);
        assert_eq!(f.ratio, None);
    }

    #[test]
    fn numbers_for_people() {
        assert_eq!(fmt_value(1234567.0, "msg/s"), "1,234,567 msg/s");
        assert_eq!(fmt_value(0.0, "msgs"), "0 msgs");
        assert_eq!(fmt_value(0.123456, "ms"), "0.123 ms");
        assert_eq!(fmt_value(12.345, "MB"), "12.3 MB");
        let t = table(&[Figure::new("a", "b", 1.0, "s")]);
        assert!(t.starts_with("SECTION"));
        assert_eq!(t.lines().count(), 2);
        assert!(markdown(&[Figure::new("a", "b", 1.0, "s")]).contains("| a | b | 1.00 s |"));
    }
}
