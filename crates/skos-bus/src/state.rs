//! Where the coordinator keeps what must survive a crash: a snapshot per
//! key, in the JetStream stream `SKOS_STATE` (one message kept per subject,
//! like a key-value bucket, and readable on nats-server 2.9), or in a file
//! of the data dir (embedded mode), written atomically.

use std::path::PathBuf;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use crate::{subjects, Error, NatsBus, Result};

pub enum StateStore {
    File(PathBuf),
    JetStream(Box<jetstream::Context>),
}

fn stream_err(reason: impl ToString) -> Error {
    Error::Stream {
        stream: subjects::STREAM_STATE.to_string(),
        reason: reason.to_string(),
    }
}

impl StateStore {
    /// Snapshots as `<dir>/<key>.state.json`.
    pub fn dir(dir: impl Into<PathBuf>) -> Self {
        StateStore::File(dir.into())
    }

    pub async fn jetstream(bus: &NatsBus) -> Result<Self> {
        let js = bus.jetstream().clone();
        js.get_or_create_stream(stream::Config {
            name: subjects::STREAM_STATE.to_string(),
            subjects: vec![subjects::STATE.to_string()],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            allow_rollup: true,
            ..Default::default()
        })
        .await
        .map_err(stream_err)?;
        Ok(StateStore::JetStream(Box::new(js)))
    }

    pub async fn load(&self, key: &str) -> Result<Option<Bytes>> {
        match self {
            StateStore::File(dir) => {
                let path = dir.join(format!("{key}.state.json"));
                match std::fs::read(&path) {
                    Ok(b) => Ok(Some(Bytes::from(b))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Error::Io { path, source: e }),
                }
            }
            StateStore::JetStream(js) => {
                let s = js
                    .get_stream(subjects::STREAM_STATE)
                    .await
                    .map_err(stream_err)?;
                match s
                    .get_last_raw_message_by_subject(&subjects::state(key))
                    .await
                {
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
                let path = dir.join(format!("{key}.state.json"));
                let tmp = dir.join(format!(".{key}.state.json.tmp"));
                let write = || -> std::io::Result<()> {
                    use std::io::Write;
                    std::fs::create_dir_all(dir)?;
                    let mut f = std::fs::File::create(&tmp)?;
                    f.write_all(&value)?;
                    f.sync_data()?;
                    std::fs::rename(&tmp, &path)
                };
                write().map_err(|e| Error::Io { path, source: e })
            }
            StateStore::JetStream(js) => {
                let subject = subjects::state(key);
                js.publish(subject.clone(), value)
                    .await
                    .map_err(|e| Error::subject(&subject, e))?
                    .await
                    .map_err(|e| Error::subject(&subject, e))?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
