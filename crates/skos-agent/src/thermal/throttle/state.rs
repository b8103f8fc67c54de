//! The originals of every value a throttle changed, and the state file
//! that keeps them over an agent restart (temp file, fsync, rename).

use skos_core::escape::ShowPath;
use std::io::{self, ErrorKind};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use skos_core::catalogue::ThrottleOriginal;

use super::Throttler;
use crate::{Error, Result};

/// What survives an agent restart: the active level and the originals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct SavedState {
    pub(super) level: u8,
    /// In the order they were first changed; restored in reverse.
    pub(super) originals: Vec<Original>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Original {
    pub(super) target: Target,
    pub(super) value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Target {
    /// A sysfs or cgroupfs file, relative to the sysfs root.
    File { path: PathBuf },
    /// An NVIDIA GPU's power limit in milliwatts, by UUID.
    GpuPowerLimit { uuid: String },
}

impl Target {
    /// The target's name on the wire ([`ThrottleOriginal::target`]):
    /// `cpufreq:policy<N>` for a policy's `scaling_max_freq`, `file:<path
    /// relative to the sysfs root>` for another file, `gpu:<uuid>`; `None`
    /// for a name the wire does not allow (a path that is not UTF-8).
    pub(super) fn wire(&self) -> Option<String> {
        let name = match self {
            Target::File { path } => {
                let path = path.to_str()?;
                match policy_of(path) {
                    Some(n) => ThrottleOriginal::cpufreq_target(n, n),
                    None => format!("file:{path}"),
                }
            }
            Target::GpuPowerLimit { uuid } => format!("gpu:{uuid}"),
        };
        ThrottleOriginal::target_ok(&name).then_some(name)
    }

    /// The cpufreq policy whose `scaling_max_freq` this is.
    pub(super) fn policy(&self) -> Option<u32> {
        match self {
            Target::File { path } => policy_of(path.to_str()?),
            Target::GpuPowerLimit { .. } => None,
        }
    }
}

impl Throttler {
    pub(super) fn original(&self, target: &Target) -> Option<&str> {
        self.state
            .originals
            .iter()
            .find(|o| &o.target == target)
            .map(|o| o.value.as_str())
    }

    /// Saves `value` as the original of `target`, unless one is saved already.
    pub(super) fn remember(&mut self, target: &Target, value: &str) {
        if self.original(target).is_none() {
            self.state.originals.push(Original {
                target: target.clone(),
                value: value.to_string(),
            });
        }
    }

    pub(super) fn persist(&self) -> Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let json = serde_json::to_vec_pretty(&self.state)
            .map_err(|e| Error::io(path, io::Error::new(ErrorKind::InvalidData, e)))?;
        write_atomic(path, &json)
    }

    pub(super) fn remove_state_file(&self) -> Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        skos_fs::remove_private(path)?;
        Ok(())
    }
}

/// `N` of `devices/system/cpu/cpufreq/policy<N>/scaling_max_freq`.
fn policy_of(path: &str) -> Option<u32> {
    path.strip_prefix("devices/system/cpu/cpufreq/policy")?
        .strip_suffix("/scaling_max_freq")?
        .parse()
        .ok()
}

/// Writes `bytes` to `path` through its private directory's handle: a
/// temp file created exclusively (mode 0600), fsynced, then renamed over
/// `path` ([`skos_fs::write_private`]).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    skos_fs::write_private(path, bytes)?;
    Ok(())
}

pub(super) fn load_state(path: &Path) -> SavedState {
    let bytes = match skos_fs::read_nofollow(path) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return SavedState::default(),
        Err(e) => {
            tracing::error!(path = %path.escaped(), error = %e, "cannot read the throttle state; originals from before the restart are unknown");
            return SavedState::default();
        }
    };
    match serde_json::from_slice::<SavedState>(&bytes) {
        Ok(mut state) => {
            state.originals.retain(|o| match &o.target {
                Target::File { path: rel } => {
                    let ok = !rel.as_os_str().is_empty()
                        && rel.components().all(|c| matches!(c, Component::Normal(_)));
                    if !ok {
                        tracing::error!(path = %path.escaped(), target = %rel.escaped(), "throttle state names a path outside the sysfs root; ignored");
                    }
                    ok
                }
                Target::GpuPowerLimit { .. } => true,
            });
            if state.level > 100 {
                state.level = 100;
            }
            state
        }
        Err(e) => {
            let aside = path.with_extension("corrupt");
            tracing::error!(path = %path.escaped(), error = %e, moved_to = %aside.escaped(), "throttle state unreadable; moved aside");
            let moved = match (path.parent(), path.file_name(), aside.file_name()) {
                (Some(dir), Some(from), Some(to)) => {
                    let dir = if dir.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        dir
                    };
                    skos_fs::Dir::private(dir).and_then(|d| d.rename(from, to))
                }
                _ => Err(skos_fs::Error::BadName {
                    path: path.to_path_buf(),
                }),
            };
            if let Err(e) = moved {
                tracing::error!(path = %path.escaped(), error = %e, "cannot move the unreadable throttle state aside");
            }
            SavedState::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn state_round_trips_through_json() {
        let state = SavedState {
            level: 50,
            originals: vec![
                Original {
                    target: Target::File {
                        path: PathBuf::from("fs/cgroup/batch/cpu.max"),
                    },
                    value: "max 100000".to_string(),
                },
                Original {
                    target: Target::GpuPowerLimit {
                        uuid: "GPU-1234".to_string(),
                    },
                    value: "700000".to_string(),
                },
            ],
        };
        let json = serde_json::to_string(&state).unwrap();
        assert!(json.contains("\"kind\":\"file\""), "{json}");
        assert_eq!(serde_json::from_str::<SavedState>(&json).unwrap(), state);
    }

    #[test]
    fn tampered_state_paths_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.json");
        fs::write(
            &file,
            r#"{"level":50,"originals":[
                {"target":{"kind":"file","path":"../etc/passwd"},"value":"x"},
                {"target":{"kind":"file","path":"/etc/passwd"},"value":"x"},
                {"target":{"kind":"file","path":"devices/system/cpu/cpufreq/policy0/scaling_max_freq"},"value":"3600000"}
            ]}"#,
        )
        .unwrap();
        let state = load_state(&file);
        assert_eq!(state.level, 50);
        assert_eq!(state.originals.len(), 1);
    }

    #[test]
    fn corrupt_state_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.json");
        fs::write(&file, "{not json").unwrap();
        assert_eq!(load_state(&file), SavedState::default());
        assert!(!file.exists());
        assert!(dir.path().join("state.corrupt").exists());
    }
}
