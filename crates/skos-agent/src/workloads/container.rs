//! The container driver: a container named `skos-<workload>` through the
//! Docker Engine API (Docker's daemon, or Podman's `podman system
//! service`), with the `bollard` client. A start creates it from the
//! configured image when it is missing (nothing is pulled: the image must
//! be on the engine) and starts it; a stop stops it (the engine kills it
//! after `stop_timeout_seconds`) and leaves it for the next start.
//!
//! Each call runs on a thread of its own with a small runtime, so the
//! driver can be used from the agent's blocking jobs and its reader
//! thread alike.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, ContainerStateStatusEnum, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, StartContainerOptions,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use skos_core::config::{DockerHost, WorkloadSpec};
use skos_core::{WorkloadName, WorkloadState};

use super::error::WorkloadError;
use super::Seen;

/// The label every container SKOS creates carries, with its workload's
/// name.
pub const LABEL: &str = "skos.workload";

/// Seconds one API request may take (a stop adds its stop timeout).
const REQUEST_SECONDS: u64 = 30;

/// The container's name for a workload.
pub fn container_name(name: &WorkloadName) -> String {
    format!("skos-{name}")
}

/// One container workload.
#[derive(Debug, Clone)]
pub struct ContainerDriver {
    pub name: WorkloadName,
    /// The engine (`unix:///run/podman/podman.sock`, `tcp://h:2375`).
    pub host: String,
    pub image: String,
    pub command: Vec<String>,
    pub network: Option<String>,
    pub stop_timeout: Duration,
}

/// What the engine said of the container.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    Missing,
    Present {
        id: String,
        status: Option<ContainerStateStatusEnum>,
        exit_code: Option<i64>,
        error: Option<String>,
    },
}

/// The workload state of a container's engine status.
fn state_of(status: Option<ContainerStateStatusEnum>) -> WorkloadState {
    use ContainerStateStatusEnum as S;
    match status {
        Some(S::RUNNING) => WorkloadState::Running,
        Some(S::CREATED | S::EXITED | S::PAUSED) => WorkloadState::Stopped,
        Some(S::RESTARTING) => WorkloadState::Starting,
        Some(S::REMOVING | S::STOPPING) => WorkloadState::Stopping,
        Some(S::DEAD) => WorkloadState::Failed,
        Some(S::EMPTY) | None => WorkloadState::Unknown,
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

impl ContainerDriver {
    /// `host`: the agent's `agent.workloads.docker_host` (already with
    /// `DOCKER_HOST` applied).
    pub fn new(name: &WorkloadName, spec: &WorkloadSpec, host: &str) -> Self {
        ContainerDriver {
            name: name.clone(),
            host: host.to_string(),
            image: spec.image.clone().unwrap_or_default(),
            command: spec.container_command.clone(),
            network: spec.network.clone(),
            stop_timeout: Duration::from_secs_f64(spec.stop_timeout_seconds),
        }
    }

    fn engine_error(&self, reason: impl std::fmt::Display) -> WorkloadError {
        WorkloadError::Engine {
            workload: self.name.clone(),
            host: self.host.clone(),
            reason: reason.to_string(),
        }
    }

    /// Run `f` against the engine on a thread of its own, with a runtime
    /// of its own.
    fn with_engine<T: Send>(
        &self,
        timeout: u64,
        f: impl for<'a> FnOnce(&'a Docker) -> futures::future::BoxFuture<'a, Result<T, WorkloadError>>
            + Send,
    ) -> Result<T, WorkloadError> {
        let docker = match DockerHost::parse(&self.host) {
            Some(DockerHost::Unix(path)) => {
                Docker::connect_with_unix(path, timeout, bollard::API_DEFAULT_VERSION)
            }
            Some(DockerHost::Http(addr)) => {
                Docker::connect_with_http(addr, timeout, bollard::API_DEFAULT_VERSION)
            }
            None => return Err(self.engine_error("not a unix:// or tcp:// address")),
        }
        .map_err(|e| self.engine_error(e))?;
        std::thread::scope(|s| {
            let run = s.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| self.engine_error(format!("no runtime: {e}")))?;
                rt.block_on(async move {
                    // Podman 4 serves API 1.41: speak the engine's version
                    // when it is older than the client's.
                    let docker = docker
                        .negotiate_version()
                        .await
                        .map_err(|e| self.engine_error(e))?;
                    f(&docker).await
                })
            });
            run.join()
                .unwrap_or_else(|_| Err(self.engine_error("the engine call panicked")))
        })
    }

    async fn find(&self, docker: &Docker) -> Result<Found, WorkloadError> {
        let name = container_name(&self.name);
        match docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => {
                let state = c.state.unwrap_or_default();
                Ok(Found::Present {
                    id: c.id.unwrap_or_default(),
                    status: state.status,
                    exit_code: state.exit_code,
                    error: state.error.filter(|e| !e.is_empty()),
                })
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(Found::Missing),
            Err(e) => Err(self.engine_error(e)),
        }
    }

    pub fn observe(&self) -> Seen {
        let me = self.clone();
        match self.with_engine(REQUEST_SECONDS, move |d| {
            Box::pin(async move { me.find(d).await })
        }) {
            Ok(Found::Missing) => Seen::new(
                WorkloadState::Stopped,
                format!("no container {}", container_name(&self.name)),
            ),
            Ok(Found::Present {
                id,
                status,
                exit_code,
                error,
            }) => {
                let mut detail = format!(
                    "container {} {}",
                    short(&id),
                    status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "in no known state".into())
                );
                if let (Some(code), Some(ContainerStateStatusEnum::EXITED)) = (exit_code, status) {
                    detail.push_str(&format!(" (exit code {code})"));
                }
                if let Some(e) = error {
                    detail.push_str(&format!(": {e}"));
                }
                Seen::new(state_of(status), detail)
            }
            Err(e) => Seen::new(WorkloadState::Unknown, e.to_string()),
        }
    }

    /// Create it if missing, start it unless it runs. Returns what was
    /// done.
    pub fn start(&self) -> Result<String, WorkloadError> {
        let me = self.clone();
        self.with_engine(REQUEST_SECONDS, move |d| {
            Box::pin(async move { me.start_on(d).await })
        })
    }

    async fn start_on(&self, docker: &Docker) -> Result<String, WorkloadError> {
        let name = container_name(&self.name);
        let (id, created) = match self.find(docker).await? {
            Found::Present {
                status: Some(ContainerStateStatusEnum::RUNNING),
                id,
                ..
            } => return Ok(format!("container {} already running", short(&id))),
            Found::Present { id, .. } => (id, false),
            Found::Missing => {
                let body = ContainerCreateBody {
                    image: Some(self.image.clone()),
                    cmd: (!self.command.is_empty()).then(|| self.command.clone()),
                    labels: Some(HashMap::from([(LABEL.to_string(), self.name.to_string())])),
                    host_config: Some(HostConfig {
                        network_mode: self.network.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let options = CreateContainerOptionsBuilder::new().name(&name).build();
                let made = docker
                    .create_container(Some(options), body)
                    .await
                    .map_err(|e| {
                        self.engine_error(format!("create {name} from {}: {e}", self.image))
                    })?;
                (made.id, true)
            }
        };
        docker
            .start_container(&name, None::<StartContainerOptions>)
            .await
            .map_err(|e| self.engine_error(format!("start {name}: {e}")))?;
        tracing::info!(workload = %self.name, container = %short(&id), created, "container workload started");
        Ok(format!(
            "container {} {}started",
            short(&id),
            if created { "created and " } else { "" }
        ))
    }

    /// Stop it (the engine kills it after the stop timeout); a missing or
    /// stopped container is already stopped.
    pub fn stop(&self) -> Result<String, WorkloadError> {
        let wait = self.stop_timeout.as_secs().max(1);
        let me = self.clone();
        self.with_engine(REQUEST_SECONDS + wait, move |d| {
            Box::pin(async move { me.stop_on(d, wait).await })
        })
    }

    async fn stop_on(&self, docker: &Docker, wait: u64) -> Result<String, WorkloadError> {
        let name = container_name(&self.name);
        match self.find(docker).await? {
            Found::Missing => return Ok(format!("no container {name}")),
            Found::Present {
                status:
                    Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::RESTARTING),
                ..
            } => {}
            Found::Present { id, .. } => {
                return Ok(format!("container {} not running", short(&id)))
            }
        }
        let t = i32::try_from(wait).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(t).build();
        match docker.stop_container(&name, Some(options)).await {
            Ok(()) => {}
            // Already stopped (304) or gone (404) meanwhile.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => {}
            Err(e) => return Err(self.engine_error(format!("stop {name}: {e}"))),
        }
        tracing::info!(workload = %self.name, container = %name, "container workload stopped");
        Ok(format!("container {name} stopped"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_statuses_map_to_workload_states() {
        use ContainerStateStatusEnum as S;
        assert_eq!(state_of(Some(S::RUNNING)), WorkloadState::Running);
        assert_eq!(state_of(Some(S::EXITED)), WorkloadState::Stopped);
        assert_eq!(state_of(Some(S::CREATED)), WorkloadState::Stopped);
        assert_eq!(state_of(Some(S::DEAD)), WorkloadState::Failed);
        assert_eq!(state_of(Some(S::RESTARTING)), WorkloadState::Starting);
        assert_eq!(state_of(None), WorkloadState::Unknown);
        let n = WorkloadName::parse("synthesis-core").unwrap();
        assert_eq!(container_name(&n), "skos-synthesis-core");
    }

    #[test]
    fn an_engine_that_is_not_there_is_unknown_and_named() {
        let spec: WorkloadSpec = container_spec();
        let d = ContainerDriver::new(
            &WorkloadName::parse("w").unwrap(),
            &spec,
            "unix:///nonexistent/skos-test/docker.sock",
        );
        let seen = d.observe();
        assert_eq!(seen.state, WorkloadState::Unknown);
        assert!(
            seen.detail.contains("/nonexistent/skos-test/docker.sock"),
            "{}",
            seen.detail
        );
        let err = d.start().unwrap_err().to_string();
        assert!(
            err.contains("container engine at unix:///nonexistent"),
            "{err}"
        );
    }

    fn container_spec() -> WorkloadSpec {
        serde_json::from_value(serde_json::json!({"driver": "container", "image": "local/x"}))
            .unwrap()
    }
}
