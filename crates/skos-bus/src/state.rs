//! Where the coordinator keeps what must survive a crash: a snapshot per
//! key, in the JetStream stream `SKOS_STATE` (one message kept per subject,
//! like a key-value bucket, and readable on nats-server 2.9), or in a file
//! of the data dir (embedded mode), written atomically.
//!
//! The stream refuses deletes and purges (and roll-ups, which purge): a
//! key is removed by writing an empty value over it, and older values go
//! by the one-per-key limit, neither of which needs a right to delete.

use std::path::PathBuf;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use crate::{subjects, Error, NatsBus, Result};

#[derive(Clone)]
pub enum StateStore {
    File(PathBuf),
    /// The stream, and which stream it is ([`StateStore::remade`]).
    JetStream(Box<jetstream::Context>, std::sync::Arc<Made>),
}

/// Which `SKOS_STATE` a store writes: when the server made it, and how many
/// times another was found in its place (or none, and one made).
#[derive(Default)]
pub struct Made {
    /// How many times the stream was found replaced or gone.
    remade: std::sync::atomic::AtomicU64,
    /// When the server made the stream last seen (ns since the epoch), and
    /// when that was last asked.
    seen: std::sync::Mutex<(Option<i128>, Option<std::time::Instant>)>,
}

/// How often [`StateStore::check_made`] asks the server.
const MADE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Made {
    /// The stream seen made at `made`: counted as replaced when another
    /// was seen before.
    fn seen(&self, made: i128) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.0.is_some_and(|m| m != made) {
            self.remade
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        *seen = (Some(made), Some(std::time::Instant::now()));
    }
}

fn stream_err(reason: impl ToString) -> Error {
    Error::Stream {
        stream: subjects::STREAM_STATE.to_string(),
        reason: reason.to_string(),
    }
}

impl StateStore {
    /// How many times the stream was found gone (and made again by a
    /// save) or another in its place ([`StateStore::check_made`]): what it
    /// held of keys not saved since is lost, so when this changes the
    /// writer saves every key again. 0 for files.
    pub fn remade(&self) -> u64 {
        match self {
            StateStore::File(_) => 0,
            StateStore::JetStream(_, made) => {
                made.remade.load(std::sync::atomic::Ordering::Relaxed)
            }
        }
    }

    /// Every ten seconds, ask the server whether the stream is still the
    /// one written (made again by another process meanwhile: counted in
    /// [`StateStore::remade`]). An error is logged and asked again later.
    pub async fn check_made(&self) {
        self.check_made_within(MADE_EVERY).await;
    }

    /// [`StateStore::check_made`], asking now.
    #[doc(hidden)]
    pub async fn check_made_now(&self) {
        self.check_made_within(std::time::Duration::ZERO).await;
    }

    async fn check_made_within(&self, every: std::time::Duration) {
        let StateStore::JetStream(js, made) = self else {
            return;
        };
        {
            let seen = made.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.1.is_some_and(|t| t.elapsed() < every) {
                return;
            }
        }
        match js.get_stream(subjects::STREAM_STATE).await {
            Ok(s) => made.seen(s.cached_info().created.unix_timestamp_nanos()),
            Err(e) => tracing::debug!(error = %e, "state stream not looked at"),
        }
    }

    /// Snapshots as `<dir>/<key>.state.json`.
    pub fn dir(dir: impl Into<PathBuf>) -> Self {
        StateStore::File(dir.into())
    }

    pub async fn jetstream(bus: &NatsBus) -> Result<Self> {
        let js = bus.jetstream().clone();
        let made = std::sync::Arc::new(Made::default());
        made.seen(make_stream(&js).await?);
        Ok(StateStore::JetStream(Box::new(js), made))
    }

    pub async fn load(&self, key: &str) -> Result<Option<Bytes>> {
        match self {
            StateStore::File(dir) => {
                let path = dir.join(format!("{key}.state.json"));
                Ok(skos_fs::read_nofollow(&path)?.map(Bytes::from))
            }
            StateStore::JetStream(js, _) => {
                let s = js
                    .get_stream(subjects::STREAM_STATE)
                    .await
                    .map_err(stream_err)?;
                match s
                    .get_last_raw_message_by_subject(&subjects::state(key))
                    .await
                {
                    Ok(m) if m.payload.is_empty() => Ok(None),
                    Ok(m) => Ok(Some(m.payload)),
                    Err(e) if e.to_string().contains("no message found") => Ok(None),
                    Err(e) if e.to_string().to_lowercase().contains("not found") => Ok(None),
                    Err(e) => Err(stream_err(e)),
                }
            }
        }
    }

    pub async fn save(&self, key: &str, value: Bytes) -> Result<()> {
        match self {
            StateStore::File(dir) => {
                // Through the private dir's handle: a temp file created
                // exclusively, mode 0600, renamed over the key's file.
                let name = format!("{key}.state.json");
                skos_fs::Dir::private(dir)?.write_atomic(name.as_ref(), &value)?;
                Ok(())
            }
            StateStore::JetStream(js, made) => save_js(js, made, &[(key.to_string(), value)]).await,
        }
    }
}

/// Get or make `SKOS_STATE`: one message per key, locked. When the server
/// made it (ns since the epoch).
pub(crate) async fn make_stream(js: &jetstream::Context) -> Result<i128> {
    js.get_or_create_stream(stream::Config {
        name: subjects::STREAM_STATE.to_string(),
        subjects: vec![subjects::STATE.to_string()],
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    })
    .await
    .map(|s| s.cached_info().created.unix_timestamp_nanos())
    .map_err(stream_err)
}

/// Save `items` on `SKOS_STATE`. Found gone (deleted, or lost with the
/// server's store), the stream is made again, locked, and every item
/// written once more (each key keeps only its last value, so twice is
/// once), and `made` counts it.
async fn save_js(js: &jetstream::Context, made: &Made, items: &[(String, Bytes)]) -> Result<()> {
    if !publish_all(js, items).await? {
        return Ok(());
    }
    tracing::warn!(
        stream = subjects::STREAM_STATE,
        "state stream was gone: made again"
    );
    made.seen(make_stream(js).await?);
    if publish_all(js, items).await? {
        return Err(stream_err("gone again as soon as it was made"));
    }
    Ok(())
}

/// Publish `items` on `SKOS_STATE` back to back and await their acks
/// together; whether the stream was found gone (nothing after the first
/// such refusal counts as saved).
async fn publish_all(js: &jetstream::Context, items: &[(String, Bytes)]) -> Result<bool> {
    let mut acks = Vec::with_capacity(items.len());
    for (key, value) in items {
        let subject = subjects::state(key);
        let ack = js
            .publish(subject.clone(), value.clone())
            .await
            .map_err(|e| Error::subject(&subject, e))?;
        acks.push((subject, ack));
    }
    let mut gone = false;
    for (subject, ack) in acks {
        match ack.await {
            Ok(_) => {}
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound => {
                gone = true;
            }
            Err(e) => return Err(Error::subject(&subject, e)),
        }
    }
    Ok(gone)
}

impl StateStore {
    /// Every key that starts with `prefix` and its value, in key order.
    /// Removed keys ([`StateStore::remove`]) are left out.
    pub async fn load_prefix(&self, prefix: &str) -> Result<Vec<(String, Bytes)>> {
        let mut out = Vec::new();
        match self {
            StateStore::File(dir) => {
                let entries = match std::fs::read_dir(dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                    Err(source) => {
                        return Err(Error::Io {
                            path: dir.clone(),
                            source,
                        })
                    }
                };
                for entry in entries {
                    let entry = entry.map_err(|source| Error::Io {
                        path: dir.clone(),
                        source,
                    })?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let Some(key) = name.strip_suffix(".state.json") else {
                        continue;
                    };
                    if !key.starts_with(prefix) || key.starts_with('.') {
                        continue;
                    }
                    let Some(bytes) = skos_fs::read_nofollow(&entry.path())? else {
                        continue;
                    };
                    if !bytes.is_empty() {
                        out.push((key.to_string(), Bytes::from(bytes)));
                    }
                }
            }
            StateStore::JetStream(js, _) => {
                use futures::StreamExt;
                let mut stream = js
                    .get_stream(subjects::STREAM_STATE)
                    .await
                    .map_err(stream_err)?;
                if stream.info().await.map_err(stream_err)?.state.messages == 0 {
                    return Ok(out);
                }
                let consumer = stream
                    .create_consumer(jetstream::consumer::pull::OrderedConfig {
                        filter_subject: subjects::STATE.to_string(),
                        deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                        ..Default::default()
                    })
                    .await
                    .map_err(stream_err)?;
                let mut messages = consumer.messages().await.map_err(stream_err)?;
                while let Some(m) = messages.next().await {
                    let m = m.map_err(stream_err)?;
                    let pending = m.info().map(|i| i.pending).unwrap_or(0);
                    let key = m
                        .subject
                        .as_str()
                        .strip_prefix(subjects::STATE.trim_end_matches('*'))
                        .unwrap_or_default()
                        .to_string();
                    if key.starts_with(prefix) && !m.payload.is_empty() {
                        out.push((key, m.payload.clone()));
                    }
                    if pending == 0 {
                        break;
                    }
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Save several keys: on JetStream published back to back and their
    /// acks awaited together; in files one after the other.
    pub async fn save_many(&self, items: Vec<(String, Bytes)>) -> Result<()> {
        match self {
            StateStore::File(_) => {
                for (key, value) in items {
                    self.save(&key, value).await?;
                }
                Ok(())
            }
            StateStore::JetStream(js, made) => save_js(js, made, &items).await,
        }
    }

    /// Forget `key` (an empty value stands for none).
    pub async fn remove(&self, key: &str) -> Result<()> {
        match self {
            StateStore::File(dir) => {
                let path = dir.join(format!("{key}.state.json"));
                skos_fs::remove_private(&path)?;
                Ok(())
            }
            StateStore::JetStream(..) => self.save(key, Bytes::new()).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_store_lists_keys_by_prefix_and_forgets_removed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::dir(dir.path());
        assert!(s.load_prefix("node_").await.unwrap().is_empty());
        for (k, v) in [("node_b", "2"), ("node_a", "1"), ("coordinator", "x")] {
            s.save(k, Bytes::from(v.to_string())).await.unwrap();
        }
        let got = s.load_prefix("node_").await.unwrap();
        let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["node_a", "node_b"]);
        assert_eq!(got[1].1.as_ref(), b"2");
        s.remove("node_a").await.unwrap();
        s.remove("node_a").await.unwrap();
        let keys: Vec<String> = s
            .load_prefix("node_")
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["node_b"]);
    }

    /// The same over JetStream: the last value per key, removed keys left
    /// out, other keys not listed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_store_lists_the_last_value_per_key() {
        use skos_testsupport::nats::{nats_server_binary, NatsServer};
        skos_testsupport::require!("nats-server", nats_server_binary());
        let server = NatsServer::start();
        let bus = NatsBus::connect(&crate::NatsOptions::new(server.url(), "test"))
            .await
            .unwrap();
        let s = StateStore::jetstream(&bus).await.unwrap();
        assert!(s.load_prefix("node_").await.unwrap().is_empty());
        for (k, v) in [
            ("node_a", "1"),
            ("node_b", "2"),
            ("node_a", "3"),
            ("coordinator", "x"),
            ("node_c", "4"),
        ] {
            s.save(k, Bytes::from(v.to_string())).await.unwrap();
        }
        s.remove("node_c").await.unwrap();
        let got = s.load_prefix("node_").await.unwrap();
        let pairs: Vec<(&str, &[u8])> = got.iter().map(|(k, v)| (k.as_str(), v.as_ref())).collect();
        assert_eq!(pairs, [("node_a", &b"3"[..]), ("node_b", &b"2"[..])]);
        assert_eq!(s.load("node_c").await.unwrap(), None);
        assert_eq!(s.load("coordinator").await.unwrap().unwrap().as_ref(), b"x");
    }

    #[tokio::test]
    async fn file_store_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::dir(dir.path());
        assert!(s.load("coordinator").await.unwrap().is_none());
        s.save("coordinator", Bytes::from_static(b"{\"a\":1}"))
            .await
            .unwrap();
        s.save("coordinator", Bytes::from_static(b"{\"a\":2}"))
            .await
            .unwrap();
        assert_eq!(
            s.load("coordinator").await.unwrap().unwrap().as_ref(),
            b"{\"a\":2}"
        );
    }
}
