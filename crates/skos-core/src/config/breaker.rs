//! `circuit_breaker:`: when an action stops being tried.

use serde::{Deserialize, Serialize};

use super::{issue, positive_seconds, CheckContext, Config, ConfigIssue, Section};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerConfig {
    pub max_failures: u32,
    pub window_seconds: f64,
    pub reset_timeout_seconds: f64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            max_failures: 5,
            window_seconds: 300.0,
            reset_timeout_seconds: 60.0,
        }
    }
}

impl Section for BreakerConfig {
    const KEY: &'static str = "circuit_breaker";

    fn get(cfg: &Config) -> &Self {
        &cfg.circuit_breaker
    }

    fn get_mut(cfg: &mut Config) -> &mut Self {
        &mut cfg.circuit_breaker
    }

    fn check(&self, _ctx: &CheckContext<'_>, out: &mut Vec<ConfigIssue>) {
        positive_seconds(out, "circuit_breaker.window_seconds", self.window_seconds);
        positive_seconds(
            out,
            "circuit_breaker.reset_timeout_seconds",
            self.reset_timeout_seconds,
        );
        if self.max_failures == 0 {
            out.push(issue("circuit_breaker.max_failures", "must be at least 1"));
        }
    }
}
