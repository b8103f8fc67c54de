//! Helpers shared by the agent's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use skos_core::config::GpuConfig;

/// No GPU library and no external tool: sysfs only.
pub fn no_tools() -> GpuConfig {
    GpuConfig {
        nvml: false,
        nvidia_smi: false,
        lm_sensors: false,
    }
}

/// `tests/fixtures/field/<rel>`: the field cases rebuilt as fixtures.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/field")
        .join(rel)
}
