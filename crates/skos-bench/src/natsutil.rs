//! The NATS side of a run: a real nats-server started for the section
//! (random port, JetStream in a temp dir, killed on drop) or the server at
//! `--nats-url`; plain clients; waiting for the coordinator to answer.

use std::time::{Duration, Instant};

use serde_json::Value;
use skos_bus::{Bus, NatsBus, NatsOptions};
use skos_testsupport::nats::{nats_server_binary, NatsServer};

use crate::error::{guarded, Context};
use crate::{Error, Result};

pub struct Server {
    own: Option<NatsServer>,
    url: String,
}

impl Server {
    /// Start a fresh server, or use `external`.
    pub fn start(external: Option<&str>) -> Result<Server> {
        if let Some(url) = external {
            return Ok(Server {
                own: None,
                url: url.to_string(),
            });
        }
        nats_server_binary().map_err(Error::Missing)?;
        let own = guarded("start nats-server", NatsServer::start)?;
        let url = own.url();
        Ok(Server {
            own: Some(own),
            url,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's pid, when this run started it.
    pub fn pid(&self) -> Option<u32> {
        let store = self
            .own
            .as_ref()?
            .store_dir()
            .to_string_lossy()
            .into_owned();
        crate::procfs::find_pid_by_cmdline(&store)
    }

    pub fn is_own(&self) -> bool {
        self.own.is_some()
    }
}

/// `nats-server --version`, if it can be run.
pub fn server_version() -> Option<String> {
    let bin = nats_server_binary().ok()?;
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// A plain client (no SKOS code in the path).
pub async fn client(url: &str, name: &str) -> Result<async_nats::Client> {
    let connect = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .connect(url);
    tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| Error::timeout(format!("connect {url}"), Duration::from_secs(10)))?
        .map_err(|e| Error::failed(format!("connect {url}"), e))
}

/// A SKOS bus connection (creates the streams if missing).
pub async fn bus(url: &str, name: &str) -> Result<NatsBus> {
    tokio::time::timeout(
        Duration::from_secs(15),
        NatsBus::connect(&NatsOptions::new(url, name)),
    )
    .await
    .map_err(|_| Error::timeout(format!("connect {url}"), Duration::from_secs(15)))?
    .map_err(|e| Error::failed(format!("connect {url}"), e))
}

/// Ask for the coordinator's status until a leader answers: a coordinator
/// stands by, answering nothing, until it wins the leader lease, and names
/// itself in `leader` once it leads. By then its subscriptions exist (they
/// are made before the status one, on the same connection).
pub async fn wait_status(bus: &Bus, timeout: Duration) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    let mut last = "no answer";
    loop {
        if let Ok(body) = bus.request_status(Duration::from_secs(2)).await {
            match serde_json::from_slice::<Value>(&body) {
                Ok(v) if has_leader(&v) => return Ok(v),
                Ok(_) => last = "an answer without a leader",
                Err(_) => last = "an answer that is not JSON",
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::timeout(
                format!("the coordinator's status answer from a leader (last: {last})"),
                timeout,
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long to wait for a freshly started coordinator to lead: its start
/// plus, should a lease be left from an earlier run on the same server,
/// that lease's time.
pub fn leader_wait(o: &crate::Opts) -> Duration {
    Duration::from_secs(30) + Duration::from_secs_f64(o.lease_seconds.max(0.0))
}

/// Whether a status reply names the leader that sent it.
pub fn has_leader(status: &Value) -> bool {
    status["leader"]["holder"].is_string()
}

/// The bus's own request/reply round trip, in ms: a plain responder on its
/// own connection echoes `payload`; `n` sequential requests from `client`
/// after 50 uncounted warm-up ones.
pub async fn echo_round_trips(
    url: &str,
    client: &async_nats::Client,
    payload: bytes::Bytes,
    n: usize,
) -> Result<Vec<f64>> {
    use futures::StreamExt;
    let responder = self::client(url, "skos-bench-responder").await?;
    let subject = format!("skos-bench.echo.{}", crate::sim::run_id());
    let mut sub = responder
        .subscribe(subject.clone())
        .await
        .ctx("subscribe echo")?;
    let r2 = responder.clone();
    let _task = crate::progress::Task::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = r2.publish(reply, m.payload).await;
            }
        }
    });
    responder.flush().await.ctx("flush")?;
    // A flush sends the SUB but need not wait for the server to register
    // it: the first requests may find no responder yet. Ask until one
    // answers (bounded), then measure.
    let ready = Instant::now();
    while let Err(e) = client.request(subject.clone(), payload.clone()).await {
        if ready.elapsed() > Duration::from_secs(5) {
            return Err(e).ctx("echo request (no responder after 5 s)");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..(n + 50) {
        let t0 = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(5),
            client.request(subject.clone(), payload.clone()),
        )
        .await
        .map_err(|_| Error::timeout("an echo reply", Duration::from_secs(5)))?
        .ctx("echo request")?;
        if i >= 50 {
            out.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(out)
}

/// A node's status (`healthy`, `critical`, `offline`…) in a status report.
pub fn node_status(status: &Value, node: &str) -> Option<String> {
    status["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == node)
        .and_then(|n| n["status"].as_str())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_status_lookup() {
        let s = serde_json::json!({"nodes": [{"name": "a", "status": "healthy"}, {"name": "b", "status": "offline"}]});
        assert_eq!(node_status(&s, "b").as_deref(), Some("offline"));
        assert_eq!(node_status(&s, "c"), None);
        assert_eq!(node_status(&serde_json::json!({}), "a"), None);
    }

    #[test]
    fn a_leader_is_named_in_the_status() {
        let led = serde_json::json!({"leader": {"holder": "h:1:x", "term": 3, "since": "2024-01-01T00:00:00Z"}});
        assert!(has_leader(&led));
        assert!(!has_leader(&serde_json::json!({"nodes": []})));
        assert!(!has_leader(&serde_json::json!({"leader": null})));
    }
}
