//! Leader election for coordinators: a lease in a JetStream key-value
//! bucket (`SKOS_LEADER`, one key), taken with compare-and-set.
//!
//! * The bucket's `max_age` is the lease time: a leader that stops renewing
//!   (dead, paused, cut off) loses the key when it ages out, and a standby's
//!   `create` then succeeds.
//! * The **term** of a leadership is the key's revision when it was
//!   created: a stream sequence, so a later leader always has a higher term,
//!   across restarts of every coordinator and of the server (the bucket is
//!   file-backed). Commands and audit records carry it (fencing).
//! * The leader renews with `update` against the revision it last wrote;
//!   an update that finds another revision means someone else holds the
//!   key, and the leader steps down at once.
//! * A leader that cannot renew stops acting once [`Lease::valid`] says
//!   the lease may have run out: `lease × SAFETY` after the last renewal
//!   was *sent* (the server stored it after that instant, so the key lives
//!   at least `lease` past it).
//!
//! * Terms never go back: a coordinator keeps the highest term it has
//!   seen (its own, those in the records it read, the one the audit trail
//!   ends with: [`Lease::observe`]); a key created at a revision not above
//!   it (a bucket deleted and made again, or a server that lost its store)
//!   is written again at once with the term after it.
//! * A bucket gone (deleted, or lost with the server's store) is made
//!   again by the next try, so the coordinators elect a leader again
//!   rather than wait for good.
//!
//! Works on nats-server 2.9.10 and later (no per-message TTLs).

use std::time::{Duration, Instant};

use async_nats::jetstream::{kv, stream};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use skos_core::timefmt::{self, Timestamp};

use crate::{subjects, Error, NatsBus, Result};

/// How long [`Lease::release`] waits for the bus.
pub const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Share of the lease time a leader trusts its last renewal for.
pub const SAFETY: f64 = 0.8;

/// How far above the highest term seen a term is believed (2^40: a term is
/// a lease revision, about one per renewal, so no fleet comes near it in
/// centuries; a forged `u64::MAX` is not believed).
pub const TERM_JUMP_MAX: u64 = 1 << 40;

/// What the key holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The holder's id (`<host>:<pid>:<random>`), unique per process.
    pub holder: String,
    /// Its term (absent in the record the lease was created with: the
    /// term is that record's revision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// When it became leader (its clock).
    #[serde(with = "timefmt")]
    pub since: Timestamp,
}

/// A won leadership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// The fencing token: higher is newer.
    pub term: u64,
    /// When leadership was won (this process's clock).
    pub since: Timestamp,
}

/// One coordinator's side of the election.
pub struct Lease {
    js: async_nats::jetstream::Context,
    kv: kv::Store,
    holder: String,
    lease: Duration,
    /// The revision this holder last wrote, while it leads.
    revision: Option<u64>,
    term: Option<Term>,
    /// When the last successful renewal (or the create) was sent.
    renewed: Option<Instant>,
    /// The highest term seen ([`Lease::observe`]): the next term won is
    /// above it.
    floor: u64,
}

fn lease_err(reason: impl ToString) -> Error {
    Error::Stream {
        stream: format!("KV_{}", subjects::LEADER_BUCKET),
        reason: reason.to_string(),
    }
}

/// Outcome of [`Lease::renew`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still the leader.
    Renewed,
    /// Another coordinator holds the lease now: stop acting.
    Lost,
}

impl Lease {
    /// Open (or create) the bucket. `lease` is how long a leader that stops
    /// renewing keeps the lease; `holder` names this process.
    pub async fn open(bus: &NatsBus, holder: String, lease: Duration) -> Result<Self> {
        let js = bus.jetstream().clone();
        let kv = make_bucket(&js, lease).await?;
        Ok(Self {
            js,
            kv,
            holder,
            lease,
            revision: None,
            term: None,
            renewed: None,
            floor: 0,
        })
    }

    /// A term seen elsewhere (the audit trail's last record, a record read
    /// from the bucket): the next term this process wins is above it. A
    /// term more than [`TERM_JUMP_MAX`] above the highest seen is not
    /// believed (forged: one record would use every term up), and logged.
    pub fn observe(&mut self, term: u64) {
        if term.saturating_sub(self.floor) > TERM_JUMP_MAX {
            tracing::warn!(
                term,
                highest_term = self.floor,
                "a term far above any seen is not believed (a forged lease record or audit record)"
            );
            return;
        }
        self.floor = self.floor.max(term);
    }

    /// The highest term seen.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// After a failed request: when the bucket is gone, make it again
    /// (whether it was).
    async fn remake_if_gone(&mut self) -> bool {
        let name = format!("KV_{}", subjects::LEADER_BUCKET);
        let gone = matches!(
            self.js.get_stream(&name).await,
            Err(e) if matches!(
                e.kind(),
                async_nats::jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
            )
        );
        if !gone {
            return false;
        }
        match make_bucket(&self.js, self.lease).await {
            Ok(kv) => {
                tracing::warn!(
                    bucket = subjects::LEADER_BUCKET,
                    highest_term = self.floor,
                    "leader lease bucket was gone (deleted, or lost with the server's store): made again; the next term is above the highest seen"
                );
                self.kv = kv;
                true
            }
            Err(e) => {
                tracing::warn!(bucket = subjects::LEADER_BUCKET, error = %e, "leader lease bucket gone and not made again");
                false
            }
        }
    }

    /// This process's holder id.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The lease time.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The term held, if this process leads.
    pub fn term(&self) -> Option<&Term> {
        self.term.as_ref()
    }

    /// Who holds the lease now, as the bucket says.
    /// Its term is seen ([`Lease::observe`]).
    pub async fn current(&mut self) -> Result<Option<(LeaderRecord, u64)>> {
        let entry = self
            .kv
            .entry(subjects::LEADER_KEY)
            .await
            .map_err(lease_err)?;
        let held = entry.and_then(|e| {
            if e.operation != kv::Operation::Put {
                return None;
            }
            let rec: LeaderRecord = serde_json::from_slice(&e.value).ok()?;
            Some((rec, e.revision))
        });
        if let Some((rec, revision)) = &held {
            self.observe(rec.term.unwrap_or(*revision));
        }
        Ok(held)
    }

    /// Try to become leader: succeeds when nobody holds the lease, or when
    /// the record still in the bucket is this process's own, left by a
    /// leadership it gave up because it could not renew in time (the key
    /// had not aged out, so nobody else can have led since): that record is
    /// replaced by compare-and-set, and the new revision is a new, higher
    /// term. `Ok(None)`: someone else leads.
    pub async fn try_acquire(&mut self, now: Timestamp) -> Result<Option<Term>> {
        let record = LeaderRecord {
            holder: self.holder.clone(),
            term: None,
            since: now,
        };
        let body = Bytes::from(serde_json::to_vec(&record).map_err(lease_err)?);
        let sent = Instant::now();
        let created = match self.kv.create(subjects::LEADER_KEY, body.clone()).await {
            Err(e)
                if e.kind() != kv::CreateErrorKind::AlreadyExists
                    && self.remake_if_gone().await =>
            {
                self.kv.create(subjects::LEADER_KEY, body.clone()).await
            }
            created => created,
        };
        let revision = match created {
            Ok(revision) => revision,
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let Some((held, revision)) = self.current().await? else {
                    // Aged out meanwhile: the next try creates it.
                    return Ok(None);
                };
                if held.holder != self.holder {
                    return Ok(None);
                }
                match self.kv.update(subjects::LEADER_KEY, body, revision).await {
                    Ok(revision) => revision,
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        return Ok(None)
                    }
                    Err(e) => return Err(lease_err(e)),
                }
            }
            Err(e) => return Err(lease_err(e)),
        };
        // A revision not above a term seen (the bucket made again): the
        // record says the highest term seen plus the revision, written over
        // the one just made before anything is done in it. Plus the
        // revision, not plus one: coordinators that saw the same highest
        // term, winning one after the other in the bucket made again
        // (revisions only grow in it), never take the same term.
        let (revision, term) = if revision > self.floor {
            (revision, revision)
        } else {
            // A leadership won in this bucket since this process last read
            // it wrote its term in the trail first (`leader` elected).
            // Bounded in time too: the key just made waits meanwhile.
            let read = tokio::time::timeout(self.lease / 4, crate::audit::last_term(&self.js));
            if let Ok(Some(t)) = read.await {
                self.observe(t);
            }
            // No term above the highest seen is left: never the same term
            // twice (two leaders the agents could not tell apart). The key
            // just made is given back, so another coordinator may lead.
            let Some(term) = self.floor.checked_add(revision) else {
                let purge = self
                    .kv
                    .purge_expect_revision(subjects::LEADER_KEY, Some(revision));
                if !matches!(tokio::time::timeout(RELEASE_WAIT, purge).await, Ok(Ok(()))) {
                    tracing::debug!("lease not given back; it will age out");
                }
                return Err(lease_err(format!(
                    "no term is left above the highest seen ({}): a term that high was claimed or forged; \
                     start the fleet again with fresh agent term files",
                    self.floor
                )));
            };
            let record = LeaderRecord {
                term: Some(term),
                ..record
            };
            let body = Bytes::from(serde_json::to_vec(&record).map_err(lease_err)?);
            match self.kv.update(subjects::LEADER_KEY, body, revision).await {
                Ok(rev) => {
                    tracing::warn!(
                        term,
                        revision,
                        "the lease bucket's revision is below a term already seen (the bucket was made again): this leadership takes the term after the highest seen"
                    );
                    (rev, term)
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => return Ok(None),
                Err(e) => return Err(lease_err(e)),
            }
        };
        self.observe(term);
        let term = Term { term, since: now };
        self.revision = Some(revision);
        self.renewed = Some(sent);
        self.term = Some(term.clone());
        Ok(Some(term))
    }

    /// Renew the lease (call about every `lease / 3`).
    pub async fn renew(&mut self) -> Result<Renewal> {
        let (Some(revision), Some(term)) = (self.revision, self.term.clone()) else {
            return Ok(Renewal::Lost);
        };
        let record = LeaderRecord {
            holder: self.holder.clone(),
            term: Some(term.term),
            since: term.since,
        };
        let body = Bytes::from(serde_json::to_vec(&record).map_err(lease_err)?);
        let mut revision = revision;
        // Two tries: the second only on top of this holder's own record.
        for first in [true, false] {
            let sent = Instant::now();
            match self
                .kv
                .update(subjects::LEADER_KEY, body.clone(), revision)
                .await
            {
                Ok(rev) => {
                    self.revision = Some(rev);
                    self.renewed = Some(sent);
                    return Ok(Renewal::Renewed);
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision && first => {
                    // An earlier renewal whose answer was lost (the server
                    // went away) may have been stored all the same: the key
                    // then holds this holder's record at a newer revision.
                    // Renew on top of it; anyone else's record means the
                    // lease is lost.
                    match self.current().await? {
                        Some((rec, rev)) if rec.holder == self.holder => revision = rev,
                        _ => break,
                    }
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => break,
                // The bucket gone: so is the key; the next try makes both,
                // in a new term.
                Err(_) if self.remake_if_gone().await => break,
                Err(e) => return Err(lease_err(e)),
            }
        }
        self.step_down();
        Ok(Renewal::Lost)
    }

    /// Whether this process may still act as leader: it holds a term and
    /// its last renewal is recent enough that the key cannot have aged out.
    pub fn valid(&self) -> bool {
        self.term.is_some()
            && self
                .renewed
                .is_some_and(|t| t.elapsed() < self.lease.mul_f64(SAFETY))
    }

    /// Until when this process may act as leader on its last renewal
    /// (`None`: it does not lead).
    pub fn valid_until(&self) -> Option<Instant> {
        self.term.as_ref()?;
        self.renewed.map(|t| t + self.lease.mul_f64(SAFETY))
    }

    /// Forget the leadership locally (after a lost renewal or a shutdown).
    pub fn step_down(&mut self) {
        self.revision = None;
        self.term = None;
        self.renewed = None;
    }

    /// Give the lease up so a standby takes over at once: deletes the key
    /// only if this process still holds it, waiting at most
    /// [`RELEASE_WAIT`] (a bus that does not answer lets the key age out).
    /// Steps down whatever happens.
    pub async fn release(&mut self) {
        if let Some(revision) = self.revision {
            // Purge, not delete: a delete marker would count as a
            // revision `create` must overwrite, which it does, but a purge
            // also leaves nothing behind.
            let purge = self
                .kv
                .purge_expect_revision(subjects::LEADER_KEY, Some(revision));
            match tokio::time::timeout(RELEASE_WAIT, purge).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "lease not released; it will age out"),
                Err(_) => tracing::warn!(
                    wait_s = RELEASE_WAIT.as_secs(),
                    "lease not released in time (the bus does not answer); it will age out"
                ),
            }
        }
        self.step_down();
    }
}

/// Open (or create) the lease bucket, with `lease` as its max age.
async fn make_bucket(js: &async_nats::jetstream::Context, lease: Duration) -> Result<kv::Store> {
    // The bucket's stream, shaped as `create_key_value` would shape it,
    // created directly: `create_key_value` first asks for the account
    // info, whose reply from nats-server 2.9 this client cannot parse.
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{}", subjects::LEADER_BUCKET),
        description: Some("SKOS coordinator leader lease".into()),
        subjects: vec![format!("$KV.{}.>", subjects::LEADER_BUCKET)],
        max_messages_per_subject: 1,
        max_age: lease,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(lease_err)?;
    // A bucket made with another lease keeps its max age unless told:
    // the configured lease is the one every coordinator counts on.
    let name = format!("KV_{}", subjects::LEADER_BUCKET);
    let mut s = js.get_stream(&name).await.map_err(lease_err)?;
    let mut config = s.info().await.map_err(lease_err)?.config.clone();
    if config.max_age != lease {
        tracing::warn!(
            bucket = subjects::LEADER_BUCKET,
            was_s = config.max_age.as_secs_f64(),
            now_s = lease.as_secs_f64(),
            "leader lease changed: the bucket's max age is updated (every coordinator should use the same coordinator.leader_lease_seconds)"
        );
        config.max_age = lease;
        // The server refuses a duplicates window longer than the max
        // age (a bucket made with a longer lease has one as long).
        config.duplicate_window = config.duplicate_window.min(lease);
        js.update_stream(config).await.map_err(lease_err)?;
    }
    js.get_key_value(subjects::LEADER_BUCKET)
        .await
        .map_err(lease_err)
}

/// A holder id unique to this process: host name, pid and a random part.
pub fn holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &rand[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bucket's max age follows the configured lease, also when the
    /// bucket was made with another one: the key ages out when the
    /// leaders expect it to.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_lease_changes_the_buckets_max_age() {
        use skos_testsupport::nats::{nats_server_binary, NatsServer};
        skos_testsupport::require!("nats-server", nats_server_binary());
        let server = NatsServer::start();
        let bus = NatsBus::connect(&crate::NatsOptions::new(server.url(), "test"))
            .await
            .unwrap();
        let max_age = || async {
            let mut s = bus
                .jetstream()
                .get_stream(format!("KV_{}", subjects::LEADER_BUCKET))
                .await
                .unwrap();
            s.info().await.unwrap().config.max_age
        };
        // Made with a long lease (its duplicates window as long), then
        // shortened: the window follows, or the server refuses the change.
        Lease::open(&bus, "a:1:x".into(), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(max_age().await, Duration::from_secs(60));
        Lease::open(&bus, "a:1:x".into(), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(max_age().await, Duration::from_secs(2));
        Lease::open(&bus, "b:2:y".into(), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(max_age().await, Duration::from_secs(10));
    }

    /// A renewal stored after its answer was lost (the server restarted)
    /// leaves this holder's own record at a newer revision: the next
    /// renewal keeps the lease. Another holder's record loses it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_renewal_stored_without_its_answer_keeps_the_lease() {
        use skos_testsupport::nats::{nats_server_binary, NatsServer};
        skos_testsupport::require!("nats-server", nats_server_binary());
        let server = NatsServer::start();
        let bus = NatsBus::connect(&crate::NatsOptions::new(server.url(), "test"))
            .await
            .unwrap();
        let mut lease = Lease::open(&bus, "a:1:x".into(), Duration::from_secs(30))
            .await
            .unwrap();
        let term = lease
            .try_acquire(chrono::Utc::now())
            .await
            .unwrap()
            .unwrap();
        let (first, rev) = lease.current().await.unwrap().unwrap();
        let lost = LeaderRecord {
            term: Some(term.term),
            ..first.clone()
        };
        let body = Bytes::from(serde_json::to_vec(&lost).unwrap());
        lease
            .kv
            .update(subjects::LEADER_KEY, body, rev)
            .await
            .unwrap();
        assert_eq!(lease.renew().await.unwrap(), Renewal::Renewed);
        assert!(lease.valid());
        assert_eq!(lease.renew().await.unwrap(), Renewal::Renewed);

        let (_, rev) = lease.current().await.unwrap().unwrap();
        let other = LeaderRecord {
            holder: "b:2:y".into(),
            term: Some(term.term + 1),
            since: first.since,
        };
        let body = Bytes::from(serde_json::to_vec(&other).unwrap());
        lease
            .kv
            .update(subjects::LEADER_KEY, body, rev)
            .await
            .unwrap();
        assert_eq!(lease.renew().await.unwrap(), Renewal::Lost);
        assert!(!lease.valid());
    }

    /// A leader that gave its leadership up for want of a renewal finds
    /// its own record still in the bucket: it leads again at once, in a
    /// new, higher term, rather than waiting a lease for its own record
    /// to age out. Another holder's record still keeps it out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn its_own_record_left_behind_is_taken_back_in_a_new_term() {
        use skos_testsupport::nats::{nats_server_binary, NatsServer};
        skos_testsupport::require!("nats-server", nats_server_binary());
        let server = NatsServer::start();
        let bus = NatsBus::connect(&crate::NatsOptions::new(server.url(), "test"))
            .await
            .unwrap();
        let mut a = Lease::open(&bus, "a:1:x".into(), Duration::from_secs(60))
            .await
            .unwrap();
        let mut b = Lease::open(&bus, "b:2:y".into(), Duration::from_secs(60))
            .await
            .unwrap();
        let first = a.try_acquire(chrono::Utc::now()).await.unwrap().unwrap();
        assert_eq!(a.renew().await.unwrap(), Renewal::Renewed);
        // Its renewals stopped in time (the bus was away): it stepped down,
        // and its record stays until it ages out.
        a.step_down();
        assert!(b.try_acquire(chrono::Utc::now()).await.unwrap().is_none());
        let again = a.try_acquire(chrono::Utc::now()).await.unwrap().unwrap();
        assert!(again.term > first.term, "{again:?} after {first:?}");
        assert!(a.valid());
        let (held, rev) = a.current().await.unwrap().unwrap();
        assert_eq!(
            (held.holder.as_str(), held.term, rev),
            ("a:1:x", None, again.term)
        );
        assert_eq!(a.renew().await.unwrap(), Renewal::Renewed);
        assert_eq!(a.current().await.unwrap().unwrap().0.term, Some(again.term));
        // Never another's: b still waits, and a, stepped down again, does
        // not take b's record.
        assert!(b.try_acquire(chrono::Utc::now()).await.unwrap().is_none());
        a.release().await;
        let bs = b.try_acquire(chrono::Utc::now()).await.unwrap().unwrap();
        assert!(bs.term > again.term);
        assert!(a.try_acquire(chrono::Utc::now()).await.unwrap().is_none());
    }

    #[test]
    fn the_first_record_carries_no_term_and_later_ones_do() {
        let since = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let first = LeaderRecord {
            holder: "a:1:x".into(),
            term: None,
            since,
        };
        let text = serde_json::to_string(&first).unwrap();
        assert!(!text.contains("term"), "{text}");
        let back: LeaderRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, first);
        let renewed = LeaderRecord {
            term: Some(7),
            ..first
        };
        let back: LeaderRecord =
            serde_json::from_str(&serde_json::to_string(&renewed).unwrap()).unwrap();
        assert_eq!(back.term, Some(7));
    }

    #[test]
    fn holder_ids_differ_per_call() {
        let (a, b) = (holder_id(), holder_id());
        assert_ne!(a, b);
        assert!(a.contains(&format!(":{}:", std::process::id())), "{a}");
    }
}
