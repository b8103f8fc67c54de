//! Durable batches (alerts, results) carried out while the next ones are
//! decided.
//!
//! A batch's handling waits on the bus four times: the touched nodes'
//! states, its commands and raised alerts, its audit records, the acks
//! ([`Ctx::finish`]). Done one batch after another, the coordinator idles
//! while the server stores, and the server idles while the coordinator
//! decides. Here each batch is carried out on its own task ([`carry`]),
//! up to [`IN_FLIGHT`] at once, while the service decides the next batch
//! that is ready and plans its state writes. A batch touching none of the
//! nodes of the batches being carried out has its node states written at
//! once ("state ahead"); it publishes its effects once the batch before it
//! has published and the one before that has appended its audit records
//! (one batch publishes while the one before it appends), and appends its
//! own once the batch before it has. A batch touching a node in common is carried out,
//! state and all, once every batch before it is.
//!
//! Invariants (the same as [`Ctx::finish`]'s):
//! - per batch, in order: state written, effects published, audit
//!   records appended, then the messages acknowledged; a kill between two
//!   steps leaves what [`Ctx::finish`] would leave (the kill points are
//!   the same): a batch whose state was written ahead is, to a restart,
//!   a batch killed after its state was written, and one published ahead
//!   a batch killed after it was published;
//! - batches are published and audited in the order they were decided,
//!   each after the one before it (state writes and acks may run
//!   together); a
//!   batch's records keep only its own effects, because every batch takes
//!   the whole outbox, which is why only a batch touching none of the
//!   nodes of the batches being carried out has its states written ahead
//!   (a node's record written by the later batch would replace one keeping
//!   an earlier batch's effects not yet carried out);
//! - a batch carried out ahead is held when the batch before it is not
//!   published: none of it is published, its effects go back to the
//!   outbox behind the failed batch's, and its nodes wait to be written
//!   again (with those effects); when the batch before it is published
//!   but not audited, its own audit records go back behind that one's;
//!   so at most two batches' commands are out before their audit records
//!   are appended, and once an append is known to have failed, no batch
//!   behind the one published meanwhile publishes;
//! - nothing of a batch is written or published once the lease ran out
//!   (checked before each, as [`Ctx::flush`] does before publishing): a
//!   batch decided while those before it were carried out may wait that
//!   long; the coordinator then steps down, and the next leader carries
//!   out what the saved state keeps;
//! - a failure ends the pipeline: what was not carried out (the failed
//!   batch's and the later ones' effects, in order) goes back to the
//!   outbox, their nodes wait to be saved again, nothing of them is
//!   acknowledged, and the usual retries ([`Ctx::flush`]) take over.
//!
//! The pipeline is only entered when nothing waits (no queued effect, no
//! unsaved node, no uncertain audit append), and hands back to the service
//! loop after [`TURN`] so that ticks, lease renewals and other feeds are
//! not starved by a long burst.

use std::time::Instant;

use futures::{Stream, StreamExt};
use skos_bus::audit::AppendFailed;
use tokio::sync::oneshot::{self, Receiver};

use super::*;

/// The longest one call of [`Ctx::batches`] keeps taking batches before
/// the service loop runs again.
const TURN: Duration = Duration::from_millis(100);

/// A durable feed handled in batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Durable {
    Alert,
    Result,
}

impl Durable {
    /// Its name in counters (`batches.<name>`) and kill points.
    pub(super) const fn name(self) -> &'static str {
        match self {
            Durable::Alert => "alert",
            Durable::Result => "result",
        }
    }

    /// Its kill points ([`failpoint::hit`]): after deciding, after the
    /// state is written, after the effects are published, after the audit
    /// records are appended.
    pub(super) const fn points(self) -> [&'static str; 4] {
        match self {
            Durable::Alert => [
                "alert.decided",
                "alert.persisted",
                "alert.published",
                "alert.audited",
            ],
            Durable::Result => [
                "result.decided",
                "result.persisted",
                "result.published",
                "result.audited",
            ],
        }
    }

    /// Its kill points of a batch carried out ahead, while the batch
    /// before it is still being carried out: after its state is written
    /// (the one before not yet published), after its effects are published
    /// (the one before not yet audited).
    pub(super) const fn ahead_points(self) -> [&'static str; 2] {
        match self {
            Durable::Alert => ["alert.persisted_ahead", "alert.published_ahead"],
            Durable::Result => ["result.persisted_ahead", "result.published_ahead"],
        }
    }

    /// Its points to wait at ([`failpoint::stall`]), so that tests make
    /// the batch after one carried out ahead every time: before a batch's
    /// effects are published (its state written), and before its audit
    /// records are appended (the next batch told it published).
    pub(super) const fn stall_points(self) -> [&'static str; 2] {
        match self {
            Durable::Alert => ["alert.publishing", "alert.appending"],
            Durable::Result => ["result.publishing", "result.appending"],
        }
    }
}

/// What carrying out a batch needs, off the service loop.
#[derive(Clone)]
struct Carrier {
    bus: Bus,
    state: StateStore,
    audit: Arc<AuditLog>,
    signer: Option<Arc<Signer>>,
    /// Until when this coordinator leads (its lease, as of the pipeline's
    /// start: no renewal runs while the pipeline holds the service loop);
    /// `None` without a lease. A batch is neither written nor published
    /// past it.
    valid_until: Option<Instant>,
}

impl Carrier {
    /// Whether this coordinator still leads now, as [`Ctx::still_leader`]
    /// would say.
    fn leads(&self) -> bool {
        self.valid_until.is_none_or(|t| Instant::now() < t)
    }
}

/// One decided batch, its state writes planned, ready to be carried out.
struct Decided {
    feed: Durable,
    /// When the batch was taken and when it was decided.
    started: Instant,
    decided: Instant,
    /// The stamp its records with effects carry: once it is carried out,
    /// every effect up to this stamp is.
    stamp: Stamp,
    /// The nodes whose state it may have changed.
    touched: BTreeSet<NodeName>,
    /// Its state writes, already counted as written (undone on failure).
    save: Vec<(String, Bytes)>,
    remove: Vec<String>,
    /// Its effects, in the order decided.
    effects: Vec<Queued>,
    acks: Vec<Incoming>,
}

/// Batches carried out at once at most: each publishes and appends its
/// audit records after the one before it does (their state writes may
/// run together, and their acks), so at a time one publishes while the
/// one before it appends.
const IN_FLIGHT: usize = 3;

/// A batch being carried out on its own task, and the nodes it touched.
struct Running {
    handle: tokio::task::JoinHandle<Carried>,
    touched: BTreeSet<NodeName>,
    /// It writes the record of what is held ([`super::HELD_KEY`]), whole:
    /// a later batch writing it waits, as one touching the same node.
    writes_held: bool,
    /// What the batch after it waits on: taken by that batch.
    next: Option<Before>,
}

/// What a batch carried out ahead waits on from the batch before it.
struct Before {
    /// Its effects are published and the batch before it audited (`false`,
    /// or dropped: they are not).
    published: Receiver<bool>,
    /// Its audit records are appended (`false`, or dropped: they are not).
    audited: Receiver<bool>,
}

/// What a batch tells the batch after it ([`Before`]).
struct Tell {
    published: oneshot::Sender<bool>,
    audited: oneshot::Sender<bool>,
}

/// A batch's [`Tell`], and the [`Before`] the batch after it waits on.
fn chain() -> (Tell, Before) {
    let (published, published_rx) = oneshot::channel();
    let (audited, audited_rx) = oneshot::channel();
    (
        Tell { published, audited },
        Before {
            published: published_rx,
            audited: audited_rx,
        },
    )
}

/// What the batch before said, or that it has not said it yet.
enum Word {
    /// `true`, or `false` (a sender dropped says `false`).
    Said(bool),
    Awaited(Receiver<bool>),
}

impl Word {
    /// What `rx` says now.
    fn now(mut rx: Receiver<bool>) -> Self {
        use tokio::sync::oneshot::error::TryRecvError;
        match rx.try_recv() {
            Ok(said) => Word::Said(said),
            Err(TryRecvError::Empty) => Word::Awaited(rx),
            Err(TryRecvError::Closed) => Word::Said(false),
        }
    }

    /// What it says, once it says it: a word not said yet is waited for,
    /// after hitting the kill point `point`.
    async fn said(self, point: &'static str) -> bool {
        match self {
            Word::Said(said) => said,
            Word::Awaited(rx) => {
                failpoint::hit(point);
                rx.await.unwrap_or(false)
            }
        }
    }
}

/// The step of [`carry`] that failed, with the effects not carried out.
enum Failed {
    /// A state write: nothing of the batch was published.
    State(skos_bus::Error, Vec<Queued>),
    /// A publish: the batch's effects and audit records wait (published
    /// again with the same ids).
    Publish(skos_bus::Error, Vec<Queued>),
    /// An audit append: what is not known to be stored waits.
    Audit(skos_bus::Error, Vec<Queued>),
    /// The lease ran out before the state write or before the publish
    /// (while the batch before was carried out): nothing more of the batch
    /// is carried out by this coordinator; its effects are kept by the
    /// saved state where it was written, for the next leader.
    Deposed(Vec<Queued>),
    /// Its state was written ahead, and the batch before it was not
    /// published: nothing of it was published.
    Held(Vec<Queued>),
    /// Its effects were published ahead, and the batch before it was not
    /// audited: its audit records wait behind that batch's.
    Unaudited(Vec<Queued>),
}

/// How carrying out one batch went.
struct Carried {
    feed: Durable,
    started: Instant,
    decided: Instant,
    stamp: Stamp,
    touched: BTreeSet<NodeName>,
    failed: Option<Failed>,
    /// Time in each step that ran: state, publish, audit, ack.
    took: [Duration; 4],
    /// Settled after the batch before it failed: what it gives back goes
    /// behind what that batch gave back, whatever step failed.
    behind: bool,
    /// Its effects were published before the batch before it was audited.
    published_ahead: bool,
}

/// Carry out `batch`: its state, then its commands and raised alerts
/// (published back to back, their acks awaited together), then its audit
/// records, then its acks; the kill points between the steps are
/// [`Ctx::finish`]'s. `tell` is told once its effects are published and
/// once its audit records are appended (dropped unsaid when they are not).
/// With `before`, the batch is carried out ahead of the one before it: its
/// state is written at once; its effects are published once the one
/// before has published (and said so once the batch before it appended),
/// and held ([`Failed::Held`]) when it has not; its audit records are
/// appended once the one before's are, and wait ([`Failed::Unaudited`])
/// when they are not. It tells the batch after it that it published only
/// once its own audit records may follow (the one before appended).
async fn carry(c: Carrier, batch: Decided, before: Option<Before>, tell: Option<Tell>) -> Carried {
    let Decided {
        feed,
        started,
        decided,
        stamp,
        touched,
        save,
        remove,
        effects,
        acks,
    } = batch;
    let mut took = [Duration::ZERO; 4];
    let done = |took, failed, published_ahead| Carried {
        feed,
        started,
        decided,
        stamp,
        touched,
        failed,
        took,
        behind: false,
        published_ahead,
    };
    if !c.leads() {
        return done(took, Some(Failed::Deposed(effects)), false);
    }
    let at = Instant::now();
    let mut written = Ok(());
    for key in &remove {
        if let Err(e) = c.state.remove(key).await {
            written = Err(e);
            break;
        }
    }
    if written.is_ok() {
        written = c.state.save_many(save).await;
    }
    took[0] = at.elapsed();
    if let Err(e) = written {
        return done(took, Some(Failed::State(e, effects)), false);
    }
    let [_, persisted, published_point, audited] = feed.points();
    let [persisted_ahead, published_ahead_point] = feed.ahead_points();
    failpoint::hit(persisted);
    let audited_before = match before {
        Some(b) => {
            if !Word::now(b.published).said(persisted_ahead).await {
                return done(took, Some(Failed::Held(effects)), false);
            }
            Some(b.audited)
        }
        None => None,
    };
    let [publishing, appending] = feed.stall_points();
    failpoint::stall(publishing).await;
    // As [`Ctx::flush`]: nothing is published once the lease ran out (the
    // batch before may have taken long).
    if !c.leads() {
        return done(took, Some(Failed::Deposed(effects)), false);
    }
    let (publish, audits): (Vec<_>, Vec<_>) = effects
        .into_iter()
        .partition(|q| !matches!(q.effect, Effect::Audit(_)));
    let at = Instant::now();
    let sends = publish
        .iter()
        .map(|q| publish_effect(&c.bus, c.signer.as_deref(), &q.effect));
    let failed = futures::future::join_all(sends)
        .await
        .into_iter()
        .find_map(|r| r.err());
    took[1] = at.elapsed();
    if let Some(e) = failed {
        let rest = publish.into_iter().chain(audits).collect();
        return done(took, Some(Failed::Publish(e, rest)), false);
    }
    failpoint::hit(published_point);
    // Whether the batch before was audited when these were published.
    let audited_before = audited_before.map(Word::now);
    let published_ahead = matches!(audited_before, Some(Word::Awaited(_)));
    if let Some(audited) = audited_before {
        if !audited.said(published_ahead_point).await {
            return done(took, Some(Failed::Unaudited(audits)), published_ahead);
        }
    }
    // The batch after publishes only now: once an append is known to have
    // failed, no batch behind it publishes (only the one that published
    // while it was appended).
    let tell_audited = tell.map(|t| {
        let _ = t.published.send(true);
        t.audited
    });
    failpoint::stall(appending).await;
    let (seqs, entries) = audit_entries(audits);
    let at = Instant::now();
    let appended = c.audit.append_many(entries).await;
    took[2] = at.elapsed();
    if let Err(AppendFailed { error, entries }) = appended {
        let rest = given_back(&seqs, entries);
        return done(took, Some(Failed::Audit(error, rest)), published_ahead);
    }
    failpoint::hit(audited);
    if let Some(tell) = tell_audited {
        let _ = tell.send(true);
    }
    let at = Instant::now();
    futures::future::join_all(acks.into_iter().map(ack)).await;
    took[3] = at.elapsed();
    done(took, None, published_ahead)
}

impl Ctx {
    /// Handle the batch `first` of `feed` and, while its effects are
    /// carried out, the batches `more` has ready (for at most [`TURN`]);
    /// see the module's text. Where something already waits, `first` goes
    /// through [`Ctx::alerts`] or [`Ctx::results`] alone.
    pub(super) async fn batches<S>(&mut self, feed: Durable, first: Vec<Incoming>, more: &mut S)
    where
        S: Stream<Item = Vec<Incoming>> + Unpin,
    {
        self.batches_for(TURN, feed, first, more).await;
    }

    /// [`Ctx::batches`], taking batches for at most `turn`.
    async fn batches_for<S>(
        &mut self,
        turn: Duration,
        feed: Durable,
        first: Vec<Incoming>,
        more: &mut S,
    ) where
        S: Stream<Item = Vec<Incoming>> + Unpin,
    {
        if self.stalled
            || self.audits_uncertain
            || !self.outbox.is_empty()
            || !self.unsaved.is_empty()
            || !self.still_leader()
        {
            return match feed {
                Durable::Alert => self.alerts(first).await,
                Durable::Result => self.results(first).await,
            };
        }
        let until = Instant::now() + turn;
        let carrier = self.carrier();
        // The batches being carried out, oldest first: each but the first
        // waits on the one before it.
        let mut flight: VecDeque<Running> = VecDeque::new();
        let mut next = Some(first);
        loop {
            if let Some(batch) = next.take() {
                let started = Instant::now();
                let work = match feed {
                    Durable::Alert => self.decide_alerts(batch),
                    Durable::Result => self.decide_results(batch),
                };
                failpoint::hit(feed.points()[0]);
                let decided = self.plan_batch(feed, work, started);
                if !flight.is_empty() {
                    self.counters.inc(Counter::BatchesOverlapped(feed.name()));
                }
                let Some(d) = decided else {
                    self.settle_before_unplanned(&mut flight).await;
                    // Its effects wait in the outbox; its messages come again.
                    tracing::error!(
                        feed = feed.name(),
                        waiting = self.outbox.len(),
                        "batch's state not written; its effects wait, and its messages will be delivered again"
                    );
                    return;
                };
                // A batch touching a node of one being carried out would
                // replace a record keeping that one's effects: it waits
                // until every batch before it is carried out. So does one
                // writing what is held while another writes it (written
                // ahead, the older record could land last).
                let writes_held = d.save.iter().any(|(key, _)| key == super::HELD_KEY);
                if flight
                    .iter()
                    .any(|r| !r.touched.is_disjoint(&d.touched) || (writes_held && r.writes_held))
                    && !self.settle_in_order(&mut flight, false).await
                {
                    self.undo(d);
                    return;
                }
                let before = flight.back_mut().and_then(|r| r.next.take());
                if before.is_some() {
                    // Its state written while the batches before it are
                    // carried out, each later step after theirs.
                    self.counters.inc(Counter::BatchesStateAhead(feed.name()));
                }
                let (tell, next_waits) = chain();
                let touched = d.touched.clone();
                flight.push_back(Running {
                    handle: tokio::spawn(carry(carrier.clone(), d, before, Some(tell))),
                    touched,
                    writes_held,
                    next: Some(next_waits),
                });
            }
            if Instant::now() >= until || !self.still_leader() {
                break;
            }
            // A batch in flight that finished before the oldest failed (a
            // batch is carried out only after the one before it appended):
            // no more are taken; the oldest is settled first.
            let room = flight.len() < IN_FLIGHT && !flight.iter().any(|r| r.handle.is_finished());
            let Some(oldest) = flight.front_mut() else {
                break;
            };
            // The oldest batch, once carried out (or failed), is settled
            // before another is taken: its failure ends the pipeline.
            tokio::select! {
                biased;
                carried = &mut oldest.handle => {
                    flight.pop_front();
                    if !self.settle_joined(carried).await {
                        self.settle_in_order(&mut flight, true).await;
                        return;
                    }
                }
                Some(batch) = more.next(), if room => {
                    next = Some(batch);
                }
            }
        }
        self.settle_in_order(&mut flight, false).await;
    }

    /// Settle every batch of `flight`, when the batch decided after them
    /// could not be planned: its effects, left in the outbox, wait behind
    /// what they give back.
    async fn settle_before_unplanned(&mut self, flight: &mut VecDeque<Running>) {
        let unplanned = std::mem::take(&mut self.outbox);
        self.settle_in_order(flight, false).await;
        self.outbox.extend(unplanned);
    }

    /// Settle every batch of `flight`, oldest first; after one that was
    /// not carried out (`failed`: the one settled just before them), the
    /// later ones (held, or their audit records waiting) give back behind
    /// it. True when all were carried out.
    async fn settle_in_order(&mut self, flight: &mut VecDeque<Running>, mut failed: bool) -> bool {
        while let Some(r) = flight.pop_front() {
            let mut carried = r.handle.await;
            if failed {
                if let Ok(c) = carried.as_mut() {
                    c.behind = true;
                }
            }
            failed |= !self.settle_joined(carried).await;
        }
        !failed
    }

    /// What carrying out a batch needs, as this coordinator holds it now.
    fn carrier(&self) -> Carrier {
        Carrier {
            bus: self.bus.clone(),
            state: self.state.clone(),
            audit: self.audit.clone(),
            signer: self.signer.clone(),
            valid_until: self.valid_until,
        }
    }

    /// Queue `work`'s effects and plan the state writes of the nodes it
    /// touched; the batch then takes the whole outbox. `None` when the
    /// writes cannot be planned (not leading, a record not encoded or
    /// sealed): the effects then wait in the outbox and the alerts are not
    /// acknowledged.
    fn plan_batch(&mut self, feed: Durable, work: Work, started: Instant) -> Option<Decided> {
        self.queue(work.effects);
        let touched = work.touched;
        let writes = match self.plan_writes(&touched) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(nodes = touched.len(), error = %e, "node state not planned; retrying");
                self.unsaved.extend(touched);
                return None;
            }
        };
        // Counted as written now, so that the next batch, planned while
        // this one is carried out, compares against it; undone on failure.
        self.wrote(&touched, writes.written);
        Some(Decided {
            feed,
            started,
            decided: Instant::now(),
            stamp: self.stamp,
            touched,
            save: writes.save,
            remove: writes.remove,
            effects: std::mem::take(&mut self.outbox).into(),
            acks: work.acks,
        })
    }

    /// A decided batch that will not be carried out now: its effects go
    /// back to the end of the outbox, its nodes wait to be saved again
    /// (their digests forgotten, so that they are written whatever they
    /// hold), and its alerts, not acknowledged, come again.
    fn undo(&mut self, d: Decided) {
        self.forget_written(&d.touched);
        self.outbox.extend(d.effects);
    }

    /// `nodes`' last writes are not known to be stored: each is written
    /// again whatever it holds, a removal too (a node the failed write
    /// removed is kept as written, with no digest to match, so that its
    /// record, perhaps still on the bus, is removed again).
    fn forget_written(&mut self, nodes: &BTreeSet<NodeName>) {
        // What is held may not be written either.
        self.held_dirty = true;
        for node in nodes {
            self.written.insert(node.clone(), UNKNOWN_DIGEST);
            self.unsaved.insert(node.clone());
        }
    }

    /// Take the outcome of carrying out a batch: on success its effects
    /// count as carried out and its phases are counted; on a failure what
    /// was not carried out goes to the front of the outbox, as
    /// [`Ctx::flush`] leaves it. True on success.
    async fn settle(&mut self, c: Carried) -> bool {
        let Some(failed) = c.failed else {
            self.audit_written().await;
            if self.outbox.is_empty() {
                self.carried = c.stamp;
            }
            let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            let [state, publish, audit, acks] = c.took;
            for (phase, took) in [
                (BatchPhase::Decide, c.decided - c.started),
                (BatchPhase::State, state),
                (BatchPhase::Publish, publish),
                (BatchPhase::Audit, audit),
                (BatchPhase::Ack, acks),
            ] {
                self.counters
                    .add(Counter::BatchMicros(c.feed.name(), phase), micros(took));
            }
            self.counters.inc(Counter::Batches(c.feed.name()));
            if c.published_ahead {
                self.counters
                    .inc(Counter::BatchesPublishedAhead(c.feed.name()));
            }
            return true;
        };
        self.forget_written(&c.touched);
        match failed {
            Failed::State(e, effects) => {
                self.counters.inc(Counter::StateSaveFailed);
                tracing::error!(nodes = c.touched.len(), error = %e, "node state not saved; retrying");
                self.give_back(effects, c.behind);
            }
            Failed::Publish(e, rest) => {
                self.stall_at(e, rest, c.behind);
            }
            Failed::Audit(error, rest) => {
                self.audits_uncertain = true;
                self.counters.inc(Counter::AuditWriteFailed);
                self.audit_failed(&error).await;
                tracing::error!(error = %error, waiting = rest.len(), "audit trail cannot be written: no new action is carried out until it can (restoring ones excepted)");
                self.stall_at(error, rest, c.behind);
            }
            Failed::Held(effects) => {
                // Behind the failed batch's effects, which went first.
                self.give_back(effects, true);
            }
            Failed::Unaudited(audits) => {
                // Published: only its audit records wait, behind the
                // failed batch's, which went first.
                tracing::error!(
                    records = audits.len(),
                    "batch published while the one before was audited, which failed: its audit records wait behind that one's"
                );
                self.give_back(audits, true);
            }
            Failed::Deposed(effects) => {
                self.deposed = true;
                tracing::error!(
                    effects = effects.len(),
                    "leader lease ran out while a batch waited to be carried out: stepping down; its effects are left to the next leader"
                );
                self.give_back(effects, c.behind);
            }
        }
        tracing::error!(
            feed = c.feed.name(),
            waiting = self.outbox.len(),
            "batch's effects not all carried out yet; kept, and its messages will be delivered again"
        );
        false
    }
}

impl Ctx {
    /// [`Ctx::settle`] the outcome of a carrying task. A panic in it is
    /// the coordinator's own: it ends the coordinator's task as it would
    /// have on the service loop. A task cancelled (the runtime stopping)
    /// left its batch's outcome unknown: this coordinator stops leading,
    /// and whoever leads next carries out what the saved state keeps.
    async fn settle_joined(
        &mut self,
        r: std::result::Result<Carried, tokio::task::JoinError>,
    ) -> bool {
        match r {
            Ok(c) => self.settle(c).await,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => {
                    tracing::error!(error = %e, "alert batch task ended before its batch was carried out; stepping down");
                    self.deposed = true;
                    false
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skos_bus::InProcBus;

    /// `effect`, queued (its seq does not matter where it is used).
    fn q(effect: Effect) -> Queued {
        Queued {
            seq: Seq::Counted(0, 0),
            effect,
        }
    }

    /// The effects of `queued`, in order.
    fn effects_of<'a>(queued: impl IntoIterator<Item = &'a Queued>) -> Vec<&'a Effect> {
        queued.into_iter().map(|q| &q.effect).collect()
    }

    fn throttle(node: &NodeName) -> Effect {
        let cmd: Command = serde_json::from_value(json!({
            "action_id": "a-1",
            "action_type": "throttle_50",
            "timestamp": "2026-01-01T00:00:00Z",
            "node": node,
            "term": 1,
        }))
        .expect("a command");
        Effect::Command(node.clone(), cmd)
    }

    /// An alert batch about `node` alone, decided now: its record written
    /// as an empty state, then `effects`, then `acks`.
    fn one_node_batch(node: &NodeName, effects: Vec<Queued>, acks: Vec<Incoming>) -> Decided {
        Decided {
            feed: Durable::Alert,
            started: Instant::now(),
            decided: Instant::now(),
            stamp: Stamp(1, 1),
            touched: BTreeSet::from([node.clone()]),
            save: vec![(node_key(node), Bytes::from_static(b"{}"))],
            remove: Vec::new(),
            effects,
            acks,
        }
    }

    /// An in-process bus, and a subscription to `node`'s commands on it.
    async fn watching(node: &NodeName) -> (Bus, skos_bus::Subscription) {
        let bus = Bus::InProc(InProcBus::new());
        let commands = bus
            .subscribe(Feed::Commands(node.clone()))
            .await
            .expect("subscribe to the node's commands");
        (bus, commands)
    }

    /// A clean stop saves the nodes still waiting to be saved (a tick
    /// skipped while the bus was away) and carries out their effects.
    /// Before, it saved only what was held, so the waiting effects stayed
    /// blocked behind their unsaved nodes and went with the process. With
    /// the bus away nothing is tried, and nothing is published.
    #[tokio::test]
    async fn a_clean_stop_saves_the_nodes_a_skipped_tick_left_and_carries_out_their_effects() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let states = dir.path().join("state");
        std::fs::create_dir(&states).expect("the state directory");
        let [node] = nodes(["n1"]);
        let (bus, mut commands) = watching(&node).await;
        let mut c = ctx(
            bus,
            StateStore::dir(&states),
            &dir.path().join("audit.jsonl"),
        );
        // Decided by a tick while the bus was away: queued, its node not
        // saved.
        c.queue(vec![throttle(&node)]);
        c.unsaved.insert(node.clone());

        c.stop_leading(false).await;
        assert_eq!(c.outbox.len(), 1, "nothing tried with the bus away");
        assert!(
            futures::FutureExt::now_or_never(commands.next()).is_none(),
            "published with the bus away"
        );

        c.stop_leading(true).await;
        assert!(c.unsaved.is_empty(), "{:?}", c.unsaved);
        assert!(c.outbox.is_empty(), "{}", c.outbox.len());
        let sent = tokio::time::timeout(Duration::from_secs(5), commands.next())
            .await
            .expect("the command published")
            .expect("a command");
        assert!(String::from_utf8_lossy(&sent.payload).contains("throttle_50"));
        assert!(
            c.state
                .load(&node_key(&node))
                .await
                .expect("the state read")
                .is_some(),
            "the node's state saved"
        );
    }

    /// A batch decided while the one before was carried out, whose turn
    /// comes after the lease ran out (the batch before took that long):
    /// neither its state nor its command is written, the command comes
    /// back to be kept, and nothing is appended to the trail. Before, it
    /// was published by a coordinator no longer leading.
    #[tokio::test]
    async fn a_batch_whose_turn_comes_after_the_lease_ran_out_is_not_carried_out() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let node = NodeName::parse("n1").expect("a node name");
        let (bus, mut commands) = watching(&node).await;
        let audit_path = dir.path().join("audit.jsonl");
        let carrier = Carrier {
            bus,
            state: StateStore::dir(dir.path()),
            audit: Arc::new(AuditLog::open_file(&audit_path).expect("an audit trail")),
            signer: None,
            valid_until: Some(Instant::now()),
        };
        let key = node_key(&node);
        let batch = one_node_batch(&node, vec![q(throttle(&node))], Vec::new());
        let carried = carry(carrier.clone(), batch, None, None).await;
        let Some(Failed::Deposed(kept)) = carried.failed else {
            panic!("carried out past the lease");
        };
        assert!(
            matches!(effects_of(&kept).as_slice(), [Effect::Command(n, c)] if *n == node && c.action_id == "a-1")
        );
        use futures::FutureExt;
        assert!(
            commands.next().now_or_never().is_none(),
            "a command published after the lease ran out"
        );
        assert_eq!(
            carrier.state.load(&key).await.expect("state readable"),
            None
        );
        let trail = std::fs::read_to_string(&audit_path).unwrap_or_default();
        assert!(trail.is_empty(), "{trail}");
    }

    /// A batch carried out ahead of the one before it waits on that one at
    /// each step. Its state is written at once. When the one before is not
    /// published, it is held: its record (keeping its effects) is written,
    /// nothing is published or appended, and settling it puts its effects
    /// back in the outbox behind what waits there, its node to be written
    /// again. When the one before is published, it publishes too, and its
    /// audit records wait until the one before has appended its own: when
    /// that one does not, they go back behind it. When it does, everything
    /// is carried out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_carried_out_ahead_waits_on_the_one_before_at_each_step() {
        use futures::FutureExt;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let states = dir.path().join("state");
        std::fs::create_dir(&states).expect("the state directory");
        let node = NodeName::parse("n1").expect("a node name");
        let (bus, mut commands) = watching(&node).await;
        let audit_path = dir.path().join("audit.jsonl");
        let mut c = ctx(bus, StateStore::dir(&states), &audit_path);
        let key = node_key(&node);
        let entry = |what: &str| {
            Effect::Audit(AuditEntry::new(
                skos_core::AuditEvent::Command,
                chrono::Utc::now(),
                Some(&node),
                "coordinator",
                what,
                json!({}),
            ))
        };
        let batch = |stamp: u64| Decided {
            feed: Durable::Alert,
            started: Instant::now(),
            decided: Instant::now(),
            stamp: Stamp(1, stamp),
            touched: BTreeSet::from([node.clone()]),
            save: vec![(key.clone(), Bytes::from(format!("{{\"batch\":{stamp}}}")))],
            remove: Vec::new(),
            effects: vec![
                // Its own action id: the bus keeps one message per id.
                q(match throttle(&node) {
                    Effect::Command(n, mut cmd) => {
                        cmd.action_id = format!("a-{stamp}");
                        Effect::Command(n, cmd)
                    }
                    other => other,
                }),
                q(entry("its own")),
            ],
            acks: Vec::new(),
        };
        let trail = || std::fs::read_to_string(&audit_path).unwrap_or_default();
        // Batch `stamp`, carried out ahead: the words to give it about the
        // batch before, and its own word that it published.
        let ahead = |c: &Ctx, stamp: u64| {
            let (before, waits) = chain();
            let (tell, told) = chain();
            let task = tokio::spawn(carry(c.carrier(), batch(stamp), Some(waits), Some(tell)));
            (task, before.published, before.audited, told)
        };

        // The one before not published: held.
        let (task, published, _audited, told) = ahead(&c, 1);
        let mut waited = 0;
        while c.state.load(&key).await.expect("state readable").is_none() {
            waited += 1;
            assert!(waited < 500, "the state was not written ahead");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!task.is_finished(), "carried on without the batch before");
        published.send(false).expect("the batch waits");
        let carried = task.await.expect("the task ran");
        let Some(Failed::Held(kept)) = &carried.failed else {
            panic!("not held: {:?}", carried.failed.is_some());
        };
        assert_eq!(kept.len(), 2);
        assert!(
            told.published.await.is_err(),
            "a held batch said it published"
        );
        assert!(
            told.audited.await.is_err(),
            "a held batch said it was audited"
        );
        assert!(
            commands.next().now_or_never().is_none(),
            "a held batch's command was published"
        );
        assert!(trail().is_empty(), "{}", trail());
        // What the failed batch before put back goes first.
        c.outbox.push_back(q(entry("the failed batch's")));
        assert!(!c.settle(carried).await);
        assert!(matches!(
            effects_of(&c.outbox).as_slice(),
            [Effect::Audit(first), Effect::Command(n, cmd), Effect::Audit(own)]
                if first.summary == "the failed batch's" && *n == node
                    && cmd.action_id == "a-1" && own.summary == "its own"
        ));
        assert!(c.unsaved.contains(&node), "its node is not written again");
        c.outbox.clear();

        // The one before published, then not carried out: published, its
        // audit records wait behind that one's.
        let (task, published, audited, told) = ahead(&c, 2);
        published.send(true).expect("the batch waits");
        tokio::time::timeout(Duration::from_secs(5), commands.next())
            .await
            .expect("the command published before the batch before was carried out")
            .expect("a command");
        assert!(!task.is_finished(), "audited before the batch before was");
        assert!(trail().is_empty(), "{}", trail());
        audited.send(false).expect("the batch waits");
        let mut unaudited = task.await.expect("the task ran");
        // The batch after it is held: nothing more is published once an
        // append is known to have failed.
        assert!(told.published.await.is_err(), "let the batch after publish");
        assert!(told.audited.await.is_err(), "said it was audited");
        let Some(Failed::Unaudited(waiting)) = &unaudited.failed else {
            panic!("not left unaudited: {:?}", unaudited.failed.is_some());
        };
        assert!(
            matches!(effects_of(waiting).as_slice(), [Effect::Audit(e)] if e.summary == "its own")
        );
        assert!(trail().is_empty(), "{}", trail());
        c.outbox.push_back(q(entry("the failed batch's")));
        unaudited.behind = true;
        assert!(!c.settle(unaudited).await);
        assert!(matches!(
            effects_of(&c.outbox).as_slice(),
            [Effect::Audit(first), Effect::Audit(own)]
                if first.summary == "the failed batch's" && own.summary == "its own"
        ));
        assert!(c.unsaved.contains(&node), "its node is not written again");
        c.outbox.clear();

        // The one before published and audited: carried out in full; the
        // batch after it is told it may publish only once the one before
        // is audited.
        let (task, published, audited, mut told) = ahead(&c, 3);
        published.send(true).expect("the batch waits");
        let sent = tokio::time::timeout(Duration::from_secs(5), commands.next())
            .await
            .expect("the command published")
            .expect("a command");
        assert_eq!(sent.subject_node(), Some(node));
        assert!(
            told.published.try_recv().is_err(),
            "let the batch after publish before the one before was audited"
        );
        audited.send(true).expect("the batch waits");
        let done = task.await.expect("the task ran");
        assert!(done.failed.is_none());
        assert_eq!(told.published.await, Ok(true));
        assert_eq!(told.audited.await, Ok(true));
        assert!(c.settle(done).await);
        assert!(trail().contains("its own"), "{}", trail());
    }

    /// [`alert_from`], told when it is acknowledged
    /// ([`Incoming::told_when_acked`]).
    fn told_alert_from(node: &NodeName, n: u32) -> (Incoming, Receiver<()>) {
        let m = alert_from(node, n);
        Incoming::told_when_acked(m.subject, m.payload)
    }

    /// The bus refuses a batch's command: its alert is not acknowledged
    /// (it comes again), nothing of it reaches the trail, and its command
    /// then its records wait, the records in the order decided, all of
    /// them kept with their seqs in the node's record. Once the bus takes
    /// publishes again, the next flush publishes the command (under its
    /// id: delivered once however often it is sent) and appends every
    /// record, in the order decided.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_whose_publish_fails_is_not_acknowledged_and_waits() {
        use futures::FutureExt;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let [n1] = nodes(["n1"]);
        let in_proc = InProcBus::new();
        let bus = Bus::InProc(in_proc.clone());
        let mut commands = bus
            .subscribe(Feed::Commands(n1.clone()))
            .await
            .expect("subscribe to the node's commands");
        let audit_path = dir.path().join("audit.jsonl");
        let mut c = ctx(bus, StateStore::dir(dir.path()), &audit_path);
        let trail = || std::fs::read_to_string(&audit_path).unwrap_or_default();
        in_proc.refuse("skos.command.>");
        let (alert, acked) = told_alert_from(&n1, 1);
        take_batches(&mut c, alert, Vec::new()).await;
        // Dropped unacknowledged, or held: either way not acknowledged.
        let acked = tokio::time::timeout(Duration::from_secs(5), acked).await;
        assert!(
            !matches!(acked, Ok(Ok(()))),
            "acknowledged though its command was not published"
        );
        assert!(!trail().contains("a-n1-1"), "{}", trail());
        assert!(commands.next().now_or_never().is_none(), "published");
        let waiting: Vec<Queued> = c.outbox.iter().cloned().collect();
        assert!(
            matches!(
                waiting.first(),
                Some(Queued {
                    effect: Effect::Command(..),
                    ..
                })
            ),
            "the command does not wait first: {waiting:?}"
        );
        assert!(
            waiting
                .iter()
                .skip(1)
                .all(|q| matches!(q.effect, Effect::Audit(_)))
                && waiting.len() > 1,
            "{waiting:?}"
        );
        // Commands are published before any record is appended, so only
        // the records' order among themselves is the order decided.
        assert!(
            waiting[1..].windows(2).all(|w| w[0].seq < w[1].seq),
            "records not in the order decided: {waiting:?}"
        );
        // (Times are kept to the millisecond: compared by what they say.)
        let said = |kept: &[Queued]| -> Vec<(Seq, String)> {
            let mut said: Vec<_> = kept
                .iter()
                .map(|q| match &q.effect {
                    Effect::Audit(e) => (q.seq, e.summary.clone()),
                    Effect::Command(_, cmd) => (q.seq, cmd.action_id.clone()),
                    other => panic!("not decided here: {other:?}"),
                })
                .collect();
            said.sort();
            said
        };
        assert_eq!(
            said(&kept_in(&c.state).await),
            said(&waiting),
            "the record keeps otherwise"
        );

        in_proc.accept_all();
        // As the service's tick does: the nodes not known written, then
        // what waits.
        c.persist(c.unsaved.clone()).await;
        assert!(c.flush(None).await, "not carried out once the bus is back");
        let published = commands.next().await.expect("the command");
        let command: Command = serde_json::from_slice(&published.payload).expect("a command");
        assert_eq!(command.node, Some(n1));
        assert!(commands.next().now_or_never().is_none(), "published twice");
        let appended: Vec<String> = trail()
            .lines()
            .map(|line| {
                let record: Value = serde_json::from_str(line).expect("a trail record");
                record["entry"]["summary"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        let decided: Vec<String> = waiting[1..]
            .iter()
            .filter_map(|q| match &q.effect {
                Effect::Audit(e) => Some(e.summary.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(appended, decided, "not every record, in the order decided");
        assert!(c.outbox.is_empty());
    }

    /// A flood of refused heartbeats (1,000 in one batch, from three
    /// subjects): every one is counted, the first ten of the minute are
    /// audited one by one, and the rest in one summary when the minute
    /// ends, with the count by reason and the subjects. Before, each wrote
    /// its own audit record (and warning): as many records as a source
    /// could send.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_refused_messages_is_audited_ten_then_in_one_summary() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut c, audit_path) = in_proc(dir.path());
        let refused = (0..1_000)
            .map(|i| {
                super::Decoded::Refused(super::Refusal {
                    subject: format!("skos.heartbeat.n{}", i % 3),
                    bytes: 7,
                    error: DecodeError::Malformed("expected value".into()),
                })
            })
            .collect();
        c.heartbeats(refused).await;
        let counted = c.counters.of(Counter::Rejected {
            feed: "heartbeat",
            reason: "malformed",
        });
        assert_eq!(counted, 1_000);
        let rejected = |trail: &str| -> Vec<Value> {
            trail
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("a record")["entry"].clone())
                .filter(|e| e["event_type"] == "rejected")
                .collect()
        };
        let trail = std::fs::read_to_string(&audit_path).expect("the trail");
        assert_eq!(rejected(&trail).len(), 10, "{trail}");
        assert!(
            c.refusals_held(chrono::Utc::now(), false).is_empty(),
            "summed up early"
        );
        let minute_later = chrono::Utc::now() + chrono::Duration::seconds(61);
        let held = c.refusals_held(minute_later, false);
        c.queue(held);
        assert!(c.flush(None).await);
        let trail = std::fs::read_to_string(&audit_path).expect("the trail");
        let all = rejected(&trail);
        assert_eq!(all.len(), 11, "{trail}");
        let summary = &all[10];
        assert_eq!(summary["data"]["held"], 990, "{summary}");
        assert_eq!(summary["data"]["reasons"]["malformed"], 990, "{summary}");
        assert_eq!(summary["data"]["bytes"], 990 * 7, "{summary}");
        assert_eq!(
            summary["data"]["subjects"],
            json!([
                "skos.heartbeat.n0",
                "skos.heartbeat.n1",
                "skos.heartbeat.n2"
            ])
        );
        assert!(
            summary["summary"]
                .as_str()
                .is_some_and(|s| s.starts_with("990 more heartbeat messages rejected")),
            "{summary}"
        );
    }

    /// The refusals held in `c`'s saved record, as their summaries would
    /// say them.
    async fn refusals_saved(c: &Ctx) -> Vec<super::minutes::Ended<super::refusals::Refused>> {
        let saved = c
            .state
            .load(super::HELD_KEY)
            .await
            .expect("readable")
            .expect("what is held is saved");
        let held: super::HeldRecord = serde_json::from_slice(&saved).expect("a held record");
        let mut refusals = held.refusals;
        refusals.ended(chrono::Utc::now(), true)
    }

    /// `n` malformed alerts of `node` (not JSON), each told when
    /// acknowledged.
    fn malformed_alerts(node: &NodeName, n: usize) -> (Vec<Incoming>, Vec<Receiver<()>>) {
        (0..n)
            .map(|_| {
                Incoming::told_when_acked(skos_bus::subjects::alert(node), Bytes::from_static(b"{"))
            })
            .unzip()
    }

    /// Fifteen malformed alerts: the five held past the minute's ten are
    /// in the saved state (`held`) once their batch is acknowledged, so a
    /// leader killed now leaves them to the next one to sum up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refusals_held_are_saved_before_their_batch_is_acknowledged() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut c, _) = in_proc(dir.path());
        let [n1] = nodes(["n1"]);
        let (alerts, acked) = malformed_alerts(&n1, 15);
        let mut alerts = alerts.into_iter();
        let first = alerts.next().expect("an alert");
        take_batches(&mut c, first, alerts.collect()).await;
        for a in acked {
            assert_eq!(a.await, Ok(()), "a refused alert not acknowledged");
        }
        let summed = refusals_saved(&c).await;
        assert_eq!(summed.len(), 1, "{summed:?}");
        assert_eq!(summed[0].held.count(), 5);
    }

    /// Two batches of refused alerts in flight at once, the first with
    /// 300 node records to write: each writes the whole record of what is
    /// held, so the second waits for the first. Written ahead, the second
    /// (smaller) landed first and the first's older record last: all 16
    /// acknowledged, 1 held saved against 6 counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_writing_what_is_held_write_it_in_order() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut c, _) = in_proc(dir.path());
        let many: Vec<NodeName> = (0..300)
            .map(|i| NodeName::parse(&format!("n{i}")).expect("a node name"))
            .collect();
        let mut first: Vec<Incoming> = many.iter().map(|n| alert_from(n, 1)).collect();
        let (bad, mut acks) = malformed_alerts(&many[0], 11);
        first.extend(bad);
        let (second, more_acks) = malformed_alerts(&many[0], 5);
        acks.extend(more_acks);
        every_batch(&mut c, Durable::Alert, vec![first, second]).await;
        for a in acks {
            assert_eq!(a.await, Ok(()), "not acknowledged");
        }
        let stored = refusals_saved(&c).await;
        assert_eq!(stored.len(), 1, "{stored:?}");
        assert_eq!(
            stored[0].held.count(),
            6,
            "the saved record is an older one"
        );
    }

    /// Batches handled one at a time (`finish`, as after a failure): one
    /// whose record of what is held cannot be written is not
    /// acknowledged, though its refusals have no effect to wait on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_whose_held_record_is_not_written_is_not_acknowledged() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut c, states) = with_state_dir(dir.path());
        let [n1] = nodes(["n1"]);
        std::fs::rename(&states, dir.path().join("away")).expect("moved away");
        std::fs::write(&states, b"not a directory").expect("a file in its place");
        let (batch, acks) = malformed_alerts(&n1, 15);
        let work = c.decide_alerts(batch);
        assert!(
            !c.finish(work, Durable::Alert, Instant::now()).await,
            "acknowledged"
        );
        for a in acks {
            let acked = tokio::time::timeout(Duration::from_secs(5), a).await;
            assert!(
                !matches!(acked, Ok(Ok(()))),
                "acknowledged with what it held unsaved"
            );
        }
    }

    /// Fifteen results from n2 for n1's command: none touches n1's
    /// command, each is counted (`results.foreign`), ten are audited one by
    /// one and the other five held for the minute's summary. Before, each
    /// wrote its own record with the whole result in it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn results_from_another_node_are_bounded_like_refusals() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut c, audit_path) = in_proc(dir.path());
        let [n1, n2] = nodes(["n1", "n2"]);
        take_batches(&mut c, alert_from(&n1, 1), Vec::new()).await;
        let trail = || std::fs::read_to_string(&audit_path).expect("the trail");
        let sent: Value = trail()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("a record")["entry"].clone())
            .find(|e| e["event_type"] == "command")
            .expect("n1's command audited");
        let action_id = sent["data"]["command"]["action_id"]
            .as_str()
            .expect("an id");
        let forged = |i: u32| {
            let result = json!({
                "action_id": action_id, "action_type": "throttle_10", "node": "n2",
                "agent_id": "agent-n2", "status": "failed",
                "message": format!("forged {i}"), "timestamp": chrono::Utc::now(),
            });
            Incoming::plain(
                skos_bus::subjects::result(&n2),
                Bytes::from(serde_json::to_vec(&result).expect("a result")),
            )
        };
        let batches = (0..15).map(|i| vec![forged(i)]).collect();
        every_batch(&mut c, Durable::Result, batches).await;
        assert_eq!(c.counters.of(Counter::ResultsForeign), 15);
        let foreign = trail()
            .lines()
            .filter(|l| l.contains("\"foreign_node\""))
            .count();
        assert_eq!(foreign, 10, "{}", trail());
        let held = c.summed_up(chrono::Utc::now(), true);
        let [Effect::Audit(summary)] = held.as_slice() else {
            panic!("not one summary: {held:?}");
        };
        assert_eq!(summary.data["reasons"]["foreign_node"], 5, "{summary:?}");
        assert_eq!(
            c.counters.of(Counter::Results("failed")),
            0,
            "a forged result counted as n1's"
        );
    }

    /// Results from the node a command went to that answer nothing open:
    /// fifteen for action ids never sent, then the real answer, then five
    /// second answers to it. Each is counted; the first ten that answer
    /// nothing are audited one by one, the other ten held for the
    /// minute's summary; the real answer, behind the fifteen, is never
    /// held and closes its command. Before, every one wrote its own
    /// `result` record: a node grew the trail at the rate it sent them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn results_answering_nothing_open_are_bounded_like_refusals() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut c, audit_path) = in_proc(dir.path());
        let [n1] = nodes(["n1"]);
        take_batches(&mut c, alert_from(&n1, 1), Vec::new()).await;
        let sent = trail_entries(&audit_path)
            .into_iter()
            .find(|e| e["event_type"] == "command")
            .expect("n1's command audited");
        let action_id = sent["data"]["command"]["action_id"]
            .as_str()
            .expect("an id")
            .to_string();
        let result = |id: &str, status: &str, i: u32| result_from(&n1, id, status, json!({}), i);
        let mut batches: Vec<Vec<Incoming>> = (0..15)
            .map(|i| vec![result(&format!("never-sent-{i}"), "failed", i)])
            .collect();
        batches.push(vec![result(&action_id, "succeeded", 15)]);
        batches.extend((16..21).map(|i| vec![result(&action_id, "rejected", i)]));
        every_batch(&mut c, Durable::Result, batches).await;
        assert_eq!(c.counters.of(Counter::Results("failed")), 15);
        assert_eq!(c.counters.of(Counter::Results("rejected")), 5);
        assert_eq!(c.counters.of(Counter::Results("succeeded")), 1);
        assert_eq!(c.counters.of(Counter::ResultsUnmatched), 20);
        let results: Vec<Value> = trail_entries(&audit_path)
            .into_iter()
            .filter(|e| e["event_type"] == "result")
            .collect();
        assert_eq!(results.len(), 11, "{results:#?}");
        assert!(
            results
                .iter()
                .any(|e| e["data"]["result"]["action_id"] == action_id.as_str()
                    && e["data"]["result"]["status"] == "succeeded"),
            "the real answer held: {results:#?}"
        );
        let status = c.engine.status(chrono::Utc::now());
        let answered = status
            .recent_actions
            .iter()
            .find(|r| r.action_id == action_id)
            .expect("the command among the recent actions");
        assert_ne!(
            answered.state,
            crate::status::ActionState::Sent,
            "the real answer did not close its command"
        );
        let held = c.summed_up(chrono::Utc::now(), true);
        let [Effect::Audit(summary)] = held.as_slice() else {
            panic!("not one summary: {held:?}");
        };
        assert_eq!(
            summary.data["reasons"],
            json!({"unmatched": 10}),
            "{summary:?}"
        );
        assert_eq!(summary.data["subjects"], json!(["skos.result.n1"]));
    }

    /// Replays (the agent refusing an id it already executed) close
    /// nothing, so they are never news: twenty for a pending command give
    /// ten records and ten held; the command stays open. Once it is closed
    /// as `no_result`, its late answer, behind a minute's window already
    /// spent, is still audited and tells what happened. Before, every
    /// replay of an open command (each with a new timestamp, so a new
    /// message id) wrote its own record for as long as it stayed open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replays_are_bounded_and_a_late_answer_is_never_held() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut c, audit_path) = in_proc(dir.path());
        let [n1] = nodes(["n1"]);
        take_batches(&mut c, alert_from(&n1, 1), Vec::new()).await;
        let results = || {
            trail_entries(&audit_path)
                .into_iter()
                .filter(|e| e["event_type"] == "result")
                .collect::<Vec<Value>>()
        };
        let action_id = c.engine.status(chrono::Utc::now()).recent_actions[0]
            .action_id
            .clone();
        let result =
            |status: &str, details: Value, i: u32| result_from(&n1, &action_id, status, details, i);
        let state = |c: &Ctx| {
            c.engine
                .status(chrono::Utc::now())
                .recent_actions
                .into_iter()
                .find(|r| r.action_id == action_id)
                .expect("the command among the recent actions")
                .state
        };
        let replays = (0..20)
            .map(|i| vec![result("rejected", json!({"reason": "replay"}), i)])
            .collect();
        every_batch(&mut c, Durable::Result, replays).await;
        assert_eq!(results().len(), 10);
        assert_eq!(c.counters.of(Counter::ResultsReplay), 20);
        assert_eq!(state(&c), crate::status::ActionState::Sent);
        // Past its deadline and grace: closed as `no_result`.
        let later = chrono::Utc::now() + chrono::Duration::seconds(600);
        let _ = c.engine.tick(later);
        assert_eq!(state(&c), crate::status::ActionState::NoResult);
        every_batch(
            &mut c,
            Durable::Result,
            vec![vec![result("failed", json!({}), 20)]],
        )
        .await;
        let audited = results();
        assert_eq!(audited.len(), 11, "{audited:#?}");
        assert_eq!(audited[10]["data"]["result"]["status"], "failed");
        assert_eq!(state(&c), crate::status::ActionState::Failed);
        let held = c.summed_up(chrono::Utc::now(), true);
        let [Effect::Audit(summary)] = held.as_slice() else {
            panic!("not one summary: {held:?}");
        };
        assert_eq!(
            summary.data["reasons"],
            json!({"replay": 10}),
            "{summary:?}"
        );
    }

    /// A late answer to a command closed as `no_result` has its own record
    /// even past the minute's ten and after the fleet's recent actions
    /// moved on (a storm sent more commands since than they keep).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_answer_is_never_held_once_the_recent_actions_moved_on() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut c, audit_path) = in_proc(dir.path());
        let mut cfg = skos_core::config::Config::default();
        cfg.coordinator.recent_actions = 1;
        c.engine = Engine::new(cfg, c.counters.clone(), "test");
        let [n1, n2, n3] = nodes(["n1", "n2", "n3"]);
        take_batches(&mut c, alert_from(&n1, 1), vec![alert_from(&n2, 1)]).await;
        let n1s = trail_entries(&audit_path)
            .into_iter()
            .find(|e| e["event_type"] == "command" && e["data"]["command"]["node"] == "n1")
            .expect("n1's command")["data"]["command"]["action_id"]
            .as_str()
            .expect("an action id")
            .to_string();
        let _ = c
            .engine
            .tick(chrono::Utc::now() + chrono::Duration::seconds(600));
        let noise = (0..10)
            .map(|i| {
                vec![result_from(
                    &n3,
                    &format!("never-sent-{i}"),
                    "failed",
                    json!({}),
                    i,
                )]
            })
            .collect();
        every_batch(&mut c, Durable::Result, noise).await;
        every_batch(
            &mut c,
            Durable::Result,
            vec![vec![result_from(
                &n1,
                &n1s,
                "succeeded",
                json!({"bytes_freed": 1}),
                99,
            )]],
        )
        .await;
        assert!(
            trail_entries(&audit_path)
                .iter()
                .any(|e| e["event_type"] == "result"
                    && e["data"]["result"]["action_id"] == n1s.as_str()),
            "n1's late answer to {n1s} has no record of its own"
        );
    }

    /// Gaps in a feed (the bus dropped messages before they were read),
    /// fifteen batches of them in a minute: every message counted, the
    /// first ten gaps audited one by one, the other five summed up in one
    /// record once the leader stops, with their sequences.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gaps_past_ten_a_minute_are_audited_in_one_summary() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut c, audit_path) = in_proc(dir.path());
        let now = chrono::Utc::now();
        let mut effects = Vec::new();
        for i in 0..15u64 {
            effects.extend(c.audit_dropped("alert", &[i * 10..=i * 10 + 2], now));
        }
        assert_eq!(effects.len(), 10);
        assert_eq!(c.counters.of(Counter::DroppedUnread("alert")), 45);
        effects.extend(c.summed_up(now, true));
        c.queue(effects);
        assert!(c.flush(None).await);
        let trail = std::fs::read_to_string(&audit_path).expect("the trail");
        let dropped: Vec<Value> = trail
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("a record")["entry"].clone())
            .filter(|e| e["event_type"] == "dropped")
            .collect();
        assert_eq!(dropped.len(), 11, "{trail}");
        let total: u64 = dropped
            .iter()
            .map(|e| e["data"]["dropped"].as_u64().expect("a count"))
            .sum();
        assert_eq!(total, 45, "every drop audited");
        assert_eq!(
            dropped[10]["data"]["sequences"],
            json!([[100, 102], [110, 112], [120, 122], [130, 132], [140, 142]])
        );
    }

    /// A CPU alert from `node`, as it arrives on the bus.
    /// `node`'s answer `status` to `action_id` with `details`, as it
    /// arrives on the bus; `i` tells answers apart (message, timestamp).
    fn result_from(
        node: &NodeName,
        action_id: &str,
        status: &str,
        details: Value,
        i: u32,
    ) -> Incoming {
        let result = json!({
            "action_id": action_id, "action_type": "throttle_10", "node": node,
            "agent_id": format!("agent-{node}"), "status": status, "details": details,
            "message": format!("answer {i}"),
            "timestamp": chrono::Utc::now() + chrono::Duration::milliseconds(i.into()),
        });
        Incoming::plain(
            skos_bus::subjects::result(node),
            Bytes::from(serde_json::to_vec(&result).expect("a result")),
        )
    }

    /// The entries of the file trail at `path`, in order.
    fn trail_entries(path: &std::path::Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .expect("the trail")
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("a record")["entry"].clone())
            .collect()
    }

    fn alert_from(node: &NodeName, n: u32) -> Incoming {
        let alert = Alert {
            alert_id: format!("a-{node}-{n}"),
            agent_id: format!("agent-{node}"),
            kind: skos_core::protocol::AlertKind::Thermal,
            severity: skos_core::protocol::Severity::Warning,
            node: node.clone(),
            message: format!("CPU temperature 77°C exceeds warning threshold ({n})"),
            details: json!({"sensor": "cpu", "temperature": 77.0, "threshold": 75.0})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            timestamp: chrono::Utc::now(),
        };
        Incoming::plain(
            skos_bus::subjects::alert(node),
            Bytes::from(serde_json::to_vec(&alert).expect("an alert encodes")),
        )
    }

    /// The nodes the audit entries waiting in the outbox are about, in
    /// order.
    fn audited_nodes(c: &Ctx) -> Vec<String> {
        c.outbox
            .iter()
            .filter_map(|q| match &q.effect {
                Effect::Audit(entry) => entry.node.as_ref().map(|n| n.to_string()),
                _ => None,
            })
            .collect()
    }

    /// Through the service's own loop: a batch is decided while the one
    /// before it is carried out; its state is written ahead only when it
    /// touches none of that one's nodes (n1 then n1 again: not ahead; n1
    /// then n2: ahead). Everything is carried out, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_batch_touching_none_of_the_nodes_before_it_is_written_ahead() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let [n1, n2] = nodes(["n1", "n2"]);
        let (mut c, audit_path) = in_proc(dir.path());
        take_batches(
            &mut c,
            alert_from(&n1, 1),
            vec![alert_from(&n1, 2), alert_from(&n2, 1)],
        )
        .await;
        let counted = |counter| c.counters.of(counter);
        assert_eq!(counted(Counter::Batches("alert")), 3);
        // A batch carried out before the next is taken leaves nothing in
        // flight, and the next is taken afresh: how many overlapped
        // depends on the machine. Never both ahead (n1 again is not).
        let overlapped = counted(Counter::BatchesOverlapped("alert"));
        let ahead = counted(Counter::BatchesStateAhead("alert"));
        assert!(
            ahead <= 1 && ahead <= overlapped,
            "{ahead} ahead of {overlapped}"
        );
        if overlapped == 2 {
            assert_eq!(ahead, 1, "n2's batch not written ahead");
        }
        assert!(c.outbox.is_empty());
        let trail = std::fs::read_to_string(&audit_path).expect("the trail");
        let alerts: Vec<&str> = ["a-n1-1", "a-n1-2", "a-n2-1"]
            .into_iter()
            .filter(|id| trail.contains(*id))
            .collect();
        assert_eq!(alerts.len(), 3, "{trail}");
        let at = |id: &str| trail.find(id).expect("audited");
        assert!(
            at("a-n1-1") < at("a-n1-2") && at("a-n1-2") < at("a-n2-1"),
            "{trail}"
        );
    }

    /// Every state write fails (the store is gone), the later batches'
    /// written ahead of the earlier ones: what they give back waits in the
    /// order decided, the first batch's before the second's before the
    /// third's. Before, a later batch's own failure put its effects in
    /// front.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_that_failed_give_back_their_effects_in_order() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let states = dir.path().join("state");
        std::fs::write(&states, b"not a directory").expect("a file in its place");
        let [n1, n2, n3] = nodes(["n1", "n2", "n3"]);
        let mut c = ctx(
            Bus::InProc(InProcBus::new()),
            StateStore::dir(&states),
            &dir.path().join("audit.jsonl"),
        );
        take_batches(
            &mut c,
            alert_from(&n1, 1),
            vec![alert_from(&n2, 1), alert_from(&n3, 1)],
        )
        .await;
        let nodes = audited_nodes(&c);
        // However many were decided before the first failure was settled
        // (which ends the pipeline; how the batches fall depends on the
        // machine), each node's entries wait together, in the order the
        // batches were decided.
        let mut runs = nodes.clone();
        runs.dedup();
        let decided = ["n1", "n2", "n3"];
        assert!(
            !runs.is_empty() && runs.as_slice() == &decided[..runs.len()],
            "{nodes:?}"
        );
        for node in [&n1, &n2, &n3].into_iter().take(runs.len()) {
            assert!(c.unsaved.contains(node), "{node} is not written again");
        }
        // The batches not decided are delivered again: none of their
        // effects waits.
        assert_eq!(c.counters.of(Counter::Batches("alert")), 0);
    }

    /// One write keeps the effects of several nodes, each in its node's
    /// record: read back in key order, they are carried out again in the
    /// order decided, not node by node. Before, a restart went node by
    /// node, so records about different nodes could reach the trail out
    /// of the order they were decided in.
    #[tokio::test]
    async fn effects_kept_by_one_write_come_back_in_the_order_decided() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut c, _) = in_proc(dir.path());
        let a = NodeName::parse("a").expect("a node name");
        let b = NodeName::parse("b").expect("a node name");
        let decided = [(&b, "first"), (&a, "second"), (&b, "third"), (&a, "fourth")];
        let work = Work {
            effects: decided
                .iter()
                .map(|(node, what)| {
                    Effect::Audit(AuditEntry::new(
                        skos_core::AuditEvent::Command,
                        chrono::Utc::now(),
                        Some(node),
                        "coordinator",
                        *what,
                        json!({}),
                    ))
                })
                .collect(),
            touched: BTreeSet::from([a.clone(), b.clone()]),
            acks: Vec::new(),
        };
        let mut batch = c
            .plan_batch(Durable::Alert, work, Instant::now())
            .expect("planned");
        // As a restart reads them: by key.
        batch.save.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(batch.save.len(), 2);
        let kept = batch
            .save
            .iter()
            .flat_map(|(key, bytes)| {
                let saved: Saved = decode_snapshot(bytes).expect("a record");
                assert_eq!(saved.effects.len(), 2, "{key} keeps its own");
                saved.split().1
            })
            .collect();
        let order = summaries(in_kept_order(kept));
        assert_eq!(order, ["first", "second", "third", "fourth"]);
    }

    /// What the audit records of `kept` say, in order.
    fn summaries(kept: Vec<Queued>) -> Vec<String> {
        kept.into_iter()
            .map(|q| match q.effect {
                Effect::Audit(entry) => entry.summary,
                _ => panic!("not an audit entry"),
            })
            .collect()
    }

    /// Effects of two nodes wait (the bus is down), b's decided first;
    /// then b alone is written again (a heartbeat changed it). Its record
    /// now comes from a later write than a's, and still a restart, reading
    /// the records back, carries out b's effect first, then a's, then the
    /// one decided with b's new write. Before, effects were ordered by the
    /// write that kept them, then by place in its outbox: a's came back
    /// first.
    #[tokio::test]
    async fn a_node_written_again_while_effects_wait_keeps_the_order_decided() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut c, _) = in_proc(dir.path());
        let [a, b] = nodes(["a", "b"]);
        c.queue(vec![audit_about(&b, "first"), audit_about(&a, "second")]);
        c.persist_strict(BTreeSet::from([a.clone(), b.clone()]))
            .await
            .expect("both written");
        c.queue(vec![audit_about(&b, "third")]);
        c.persist_strict(BTreeSet::from([b.clone()]))
            .await
            .expect("b written again");
        // As a restart reads them back.
        assert_eq!(read_back(&c).await, ["first", "second", "third"]);
    }

    /// A batch is acknowledged only once its audit records are appended:
    /// with the trail's disk full, its messages are not acknowledged (they
    /// come again), nor when its state cannot be written or it is held
    /// (the batch before it not published); with room, they are, after
    /// the records.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_is_acknowledged_only_once_its_records_are_appended() {
        use skos_testsupport::tmpfs::Tmpfs;
        let full = skos_testsupport::require!("a tmpfs mount", Tmpfs::mount("64k", None));
        let dir = tempfile::tempdir().expect("a temporary directory");
        let node = NodeName::parse("n1").expect("a node name");
        let carrier_in = |audit: AuditLog, state: &std::path::Path| Carrier {
            bus: Bus::InProc(InProcBus::new()),
            state: StateStore::dir(state),
            audit: Arc::new(audit),
            signer: None,
            valid_until: None,
        };
        let carrier = |audit: AuditLog| carrier_in(audit, dir.path());
        let batch = |what: &str| {
            let (m, acked) = Incoming::told_when_acked(
                skos_bus::subjects::alert(&node),
                Bytes::from_static(b"{}"),
            );
            let effects = vec![
                q(throttle(&node)),
                q(Effect::Audit(entry_about(&node, what))),
            ];
            (one_node_batch(&node, effects, vec![m]), acked)
        };

        let trail = dir.path().join("audit.jsonl");
        let writable = carrier(AuditLog::open_file(&trail).expect("an audit trail"));
        let (d, acked) = batch("appended");
        let carried = carry(writable, d, None, None).await;
        assert!(carried.failed.is_none());
        assert_eq!(acked.await, Ok(()), "not acknowledged");
        let written = std::fs::read_to_string(&trail).expect("the trail");
        assert!(written.contains("appended"), "{written}");
        let not_acked = "acknowledged though its audit records were not appended";

        // Its state not written: a file stands where the records go.
        let no_dir = dir.path().join("not a directory");
        std::fs::write(&no_dir, b"").expect("a file");
        let other = dir.path().join("other.jsonl");
        let unwritable = carrier_in(AuditLog::open_file(&other).expect("a trail"), &no_dir);
        let (d, acked) = batch("state not written");
        let carried = carry(unwritable, d, None, None).await;
        assert!(matches!(carried.failed, Some(Failed::State(..))));
        assert!(acked.await.is_err(), "{not_acked}");

        // Held: the batch before it was not published.
        let other = dir.path().join("held.jsonl");
        let held = carrier(AuditLog::open_file(&other).expect("a trail"));
        let (before, waits) = chain();
        let (d, acked) = batch("held");
        let _ = before.published.send(false);
        let carried = carry(held, d, Some(waits), None).await;
        assert!(matches!(carried.failed, Some(Failed::Held(_))));
        assert!(acked.await.is_err(), "{not_acked}");

        let trail = private_dir(full.path()).join("audit.jsonl");
        let on_full = carrier(AuditLog::open_file(&trail).expect("an audit trail"));
        fill_up(full.path());
        let (d, acked) = batch("not appended");
        let carried = carry(on_full, d, None, None).await;
        assert!(
            matches!(&carried.failed, Some(Failed::Audit(_, rest)) if rest.len() == 1),
            "the append did not fail"
        );
        assert!(acked.await.is_err(), "{not_acked}");
    }

    /// Fill the filesystem at `dir` until a write fails for want of room.
    fn fill_up(dir: &std::path::Path) {
        use std::io::Write;
        let mut f = std::fs::File::create(dir.join("filler")).expect("a filler file");
        let chunk = [0x5a_u8; 4096];
        while f.write_all(&chunk).and_then(|()| f.flush()).is_ok() {}
    }

    /// B1 (n1 and n2) fails to write n2's state; B2, taken while B1 is
    /// carried out, touches n1 too. B2 is not carried out: its effects
    /// wait behind B1's, nothing of it reaches the trail, and n1's record
    /// still keeps B1's effects. Taking B2 ahead (its state written while
    /// B1 is carried out), or carrying it out once B1 failed, would
    /// replace that record with one keeping only B2's effects, and the
    /// second would append B2's records before B1's.
    #[tokio::test]
    async fn a_batch_touching_a_node_of_a_batch_that_failed_is_not_carried_out() {
        // One thread: B2 is taken before B1 is carried out at all.
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut c, audit_path) = in_proc(dir.path());
        let [n1, n2] = nodes(["n1", "n2"]);
        // n2's record cannot be written: a directory with a file in it
        // stands in its place.
        let blocked = dir.path().join(format!("{}.state.json", node_key(&n2)));
        std::fs::create_dir(&blocked).expect("a directory");
        std::fs::write(blocked.join("x"), b"").expect("a file in it");
        let mut more = futures::stream::iter(vec![vec![alert_from(&n1, 2)]]);
        c.batches_for(
            Duration::from_secs(60),
            Durable::Alert,
            vec![alert_from(&n1, 1), alert_from(&n2, 1)],
            &mut more,
        )
        .await;
        let trail = std::fs::read_to_string(&audit_path).unwrap_or_default();
        assert!(!trail.contains("a-n1-"), "{trail}");
        // What waits: B1's alert records, then B2's.
        let mut alerts: Vec<String> = c
            .outbox
            .iter()
            .filter_map(|q| match &q.effect {
                Effect::Audit(e) => e.data["alert_id"].as_str().map(String::from),
                _ => None,
            })
            .collect();
        alerts.dedup();
        assert_eq!(alerts, ["a-n1-1", "a-n2-1", "a-n1-2"]);
        assert!(c.unsaved.contains(&n1) && c.unsaved.contains(&n2));
        let record = c
            .state
            .load(&node_key(&n1))
            .await
            .expect("readable")
            .expect("n1's record, written by B1");
        let saved: Saved = decode_snapshot(&record).expect("a record");
        let mut kept: Vec<String> = saved
            .effects
            .into_iter()
            .filter_map(|k| match Effect::from(k) {
                Effect::Audit(e) => e.data["alert_id"].as_str().map(String::from),
                _ => None,
            })
            .collect();
        kept.dedup();
        assert_eq!(kept, ["a-n1-1"], "n1's record lost B1's effects");
    }

    /// Every node record read back as a restart reads them: what their
    /// kept audit records say, in the order they are carried out.
    async fn read_back(c: &Ctx) -> Vec<String> {
        summaries(kept_in(&c.state).await)
    }

    /// The same through a real failure: b's then a's records are decided
    /// and written, their append fails (the trail's disk is full) and
    /// gives them back, then both nodes are written again, b with a new
    /// effect. A restart still reads first, second, third: the records
    /// given back kept their seqs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn seqs_survive_a_failed_append_and_both_nodes_written_again() {
        use skos_testsupport::tmpfs::Tmpfs;
        let full = skos_testsupport::require!("a tmpfs mount", Tmpfs::mount("64k", None));
        let private = private_dir(full.path());
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut c = ctx(
            Bus::InProc(InProcBus::new()),
            StateStore::dir(dir.path()),
            &private.join("audit.jsonl"),
        );
        fill_up(full.path());
        let [a, b] = nodes(["a", "b"]);
        c.queue(vec![audit_about(&b, "first"), audit_about(&a, "second")]);
        let both = BTreeSet::from([a.clone(), b.clone()]);
        c.persist_strict(both.clone()).await.expect("both written");
        assert!(!c.flush(None).await, "appended on a full disk");
        assert_eq!(c.outbox.len(), 2);
        c.queue(vec![audit_about(&b, "third")]);
        c.persist_strict(both).await.expect("both written again");
        assert_eq!(read_back(&c).await, ["first", "second", "third"]);
    }

    /// Records of the version before seqs (places in one write's outbox)
    /// keep y's "first" and x's "second". A restart takes them back (the
    /// bus is down: not carried out), then y, holding the one decided
    /// first, is written again with a new effect. After another restart
    /// the order is still first, second, third: y's old effect, written
    /// again, kept its place among the earlier version's, and the new one
    /// comes after them. Written again as a seq of this version, it would
    /// go after x's.
    #[tokio::test]
    async fn an_earlier_versions_effect_written_again_keeps_its_place() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut c, _) = in_proc(dir.path());
        let [x, y] = nodes(["x", "y"]);
        for (node, what, place) in [(&x, "second", 1), (&y, "first", 0)] {
            let saved = Saved {
                state: c.engine.node_snapshot(node),
                effects: vec![Kept::from(&audit_about(node, what))],
                batch: Some(Stamp(0, 5)),
                seq: Vec::new(),
                at: Vec::new(),
            };
            let bytes = as_earlier_version(&saved, &[place]);
            c.state.save(&node_key(node), bytes).await.expect("saved");
        }
        // A restart, as `lead` restores.
        let kept = kept_in(&c.state).await;
        c.next_seq = first_seq(last_counted(None, kept.iter().map(|q| &q.seq)), None);
        assert_eq!(summaries(kept.clone()), ["first", "second"]);
        c.requeue(kept);
        c.queue(vec![audit_about(&y, "third")]);
        c.persist_strict(BTreeSet::from([y.clone()]))
            .await
            .expect("y written again");
        assert_eq!(read_back(&c).await, ["first", "second", "third"]);
    }

    /// Effects given back in front of one decided after them keep their
    /// seqs: written with it, they still come back first. A give_back
    /// that numbered them anew would put them after it.
    #[tokio::test]
    async fn effects_given_back_in_front_keep_their_seqs() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut c, _) = in_proc(dir.path());
        let [a, b] = nodes(["a", "b"]);
        c.queue(vec![audit_about(&a, "first")]);
        let taken: Vec<Queued> = std::mem::take(&mut c.outbox).into();
        c.queue(vec![audit_about(&b, "second")]);
        c.give_back(taken, false);
        c.persist_strict(BTreeSet::from([a.clone(), b.clone()]))
            .await
            .expect("written");
        assert_eq!(read_back(&c).await, ["first", "second"]);
    }

    /// A coordinator started over an earlier version's whole-engine state
    /// (which it splits into per-node records) and a node record keeping
    /// an effect not carried out: while the trail cannot take it (a full
    /// disk), that node's record still keeps it. Before, the split wrote
    /// every node's record before the kept effects were queued again, so
    /// the record lost them until they were carried out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn splitting_an_earlier_whole_state_keeps_the_effects_kept() {
        use skos_testsupport::tmpfs::Tmpfs;
        let full = skos_testsupport::require!("a tmpfs mount", Tmpfs::mount("64k", None));
        let audit = AuditLog::open_file(&private_dir(full.path()).join("audit.jsonl"))
            .expect("an audit trail");
        fill_up(full.path());
        let dir = tempfile::tempdir().expect("a temporary directory");
        let state = StateStore::dir(dir.path());
        let node = NodeName::parse("b").expect("a node name");
        let mut engine = Engine::new(Config::default(), Counters::default(), "test");
        let now = chrono::Utc::now();
        let hb =
            skos_core::protocol::Heartbeat::bare("agent-b", "thermal_sentinel", node.clone(), now);
        engine.on_heartbeat(hb, now);
        let whole = encode_snapshot(&engine.snapshot()).expect("encoded");
        state.save(STATE_KEY, whole).await.expect("saved");
        let kept = Saved {
            state: engine.node_snapshot(&node),
            effects: vec![Kept::from(&Effect::Audit(entry_about(&node, "kept")))],
            batch: Some(Stamp(0, 1)),
            seq: vec![Seq::Counted(0, 1)],
            at: Vec::new(),
        };
        let bytes = encode_snapshot(&kept).expect("encoded");
        state.save(&node_key(&node), bytes).await.expect("saved");
        let reader = state.clone();
        let key = node_key(&node);
        // Until the whole-engine state is split (and removed), then a
        // little longer.
        let split = async move {
            for _ in 0..500 {
                if reader.load(STATE_KEY).await.ok().flatten().is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        run(
            Config::default(),
            Bus::InProc(InProcBus::new()),
            Arc::new(audit),
            state.clone(),
            Counters::default(),
            ServiceOptions::default(),
            split,
        )
        .await
        .expect("ran");
        assert_eq!(
            state.load(STATE_KEY).await.expect("readable"),
            None,
            "not split"
        );
        let record = state
            .load(&key)
            .await
            .expect("readable")
            .expect("b's record");
        let saved: Saved = decode_snapshot(&record).expect("a record");
        assert_eq!(summaries(in_kept_order(saved.split().1)), ["kept"]);
    }

    /// A directory under `root`, private as the trail's directory must be.
    fn private_dir(root: &std::path::Path) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let private = root.join("trail");
        std::fs::create_dir(&private).expect("a directory");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))
            .expect("made private");
        private
    }

    /// [`entry_about`], as an effect.
    fn audit_about(node: &NodeName, what: &str) -> Effect {
        Effect::Audit(entry_about(node, what))
    }

    /// An audit entry about `node` that says `what`.
    fn entry_about(node: &NodeName, what: &str) -> AuditEntry {
        AuditEntry::new(
            skos_core::AuditEvent::Command,
            chrono::Utc::now(),
            Some(node),
            "coordinator",
            what,
            json!({}),
        )
    }

    /// A bus error, as a failed step reports it.
    fn bus_down() -> skos_bus::Error {
        skos_bus::Error::Io {
            path: "bus".into(),
            source: std::io::Error::other("down"),
        }
    }

    /// Batch `stamp` about `node`, carried out as far as `failed` says.
    fn failed_batch(stamp: u64, node: &NodeName, failed: Failed) -> Carried {
        Carried {
            feed: Durable::Alert,
            started: Instant::now(),
            decided: Instant::now(),
            stamp: Stamp(1, stamp),
            touched: BTreeSet::from([node.clone()]),
            failed: Some(failed),
            took: [Duration::ZERO; 4],
            behind: false,
            published_ahead: false,
        }
    }

    /// `carried`, as the task carrying it out hands it over.
    fn in_flight(carried: Carried, node: &NodeName) -> Running {
        Running {
            handle: tokio::spawn(async move { carried }),
            touched: BTreeSet::from([node.clone()]),
            writes_held: false,
            next: None,
        }
    }

    /// What waits in the outbox: audit entries by what they say,
    /// commands by their node.
    fn waiting(c: &Ctx) -> Vec<String> {
        c.outbox
            .iter()
            .map(|q| match &q.effect {
                Effect::Audit(a) => a.summary.clone(),
                Effect::Command(n, _) => format!("command to {n}"),
                Effect::Alert(_) => "alert".into(),
            })
            .collect()
    }

    /// B1's append of `b1_record` failed; B2, about `n2`, published while
    /// B1 was appended, and its own publish failed: both settled as the
    /// service loop settles them, B2 behind.
    async fn b1_audit_failed_b2_publish_failed(c: &mut Ctx, b1_record: AuditEntry, n2: &NodeName) {
        let n1 = b1_record.node.clone().expect("b1's record is about a node");
        let b1 = failed_batch(
            1,
            &n1,
            Failed::Audit(bus_down(), vec![q(Effect::Audit(b1_record))]),
        );
        let b2 = failed_batch(
            2,
            n2,
            Failed::Publish(
                bus_down(),
                vec![
                    q(throttle(n2)),
                    q(Effect::Audit(entry_about(n2, "b2's record"))),
                ],
            ),
        );
        assert!(!c.settle_joined(Ok(b1)).await);
        let mut flight = VecDeque::from([in_flight(b2, n2)]);
        assert!(!c.settle_in_order(&mut flight, true).await);
    }

    /// B1 published and its append failed; B2 published while B1 was
    /// appended, and its own publish failed. What B2 gives back waits
    /// behind B1's records, and reaches the trail after them. Before, a
    /// failed publish always went in front: B2's records were appended
    /// first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_later_batch_whose_publish_failed_waits_behind_the_earlier_ones_records() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let [n1, n2] = nodes(["n1", "n2"]);
        let (mut c, audit_path) = in_proc(dir.path());
        b1_audit_failed_b2_publish_failed(&mut c, entry_about(&n1, "b1's record"), &n2).await;
        assert_eq!(waiting(&c), ["b1's record", "command to n2", "b2's record"]);
        // The usual retry, the bus and the trail back.
        c.persist(c.unsaved.clone()).await;
        assert!(c.flush(None).await);
        let trail = std::fs::read_to_string(&audit_path).expect("the trail");
        let at = |what: &str| trail.find(what).expect("audited");
        assert!(at("b1's record") < at("b2's record"), "{trail}");
    }

    /// As above, and B1's append was stored though it failed (its answer
    /// lost): B1's record is not written twice. Before, B2's command at
    /// the head of the outbox made the retry take the trail for writable
    /// again without reading its tail.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_stored_though_it_failed_is_not_written_again_after_a_later_failure() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let [n1, n2] = nodes(["n1", "n2"]);
        let (mut c, audit_path) = in_proc(dir.path());
        let stored = entry_about(&n1, "b1's record");
        c.audit
            .append(stored.clone())
            .await
            .expect("the record stored");
        b1_audit_failed_b2_publish_failed(&mut c, stored, &n2).await;
        c.persist(c.unsaved.clone()).await;
        assert!(c.flush(None).await);
        let trail = std::fs::read_to_string(&audit_path).expect("the trail");
        assert_eq!(trail.matches("b1's record").count(), 1, "{trail}");
        assert_eq!(trail.matches("b2's record").count(), 1, "{trail}");
    }

    /// After an append of unknown outcome, with no record at the head of
    /// the outbox to prove the trail writable with (a command waits
    /// first): the records that wait are still checked against the
    /// trail's tail, so one already stored is not written twice. Before,
    /// the empty head counted as proof and the check was skipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_waiting_behind_a_command_are_checked_against_the_trail() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let node = NodeName::parse("n1").expect("a node name");
        let (mut c, audit_path) = in_proc(dir.path());
        let stored = entry_about(&node, "stored though its append failed");
        c.audit
            .append(stored.clone())
            .await
            .expect("the record stored");
        c.audits_uncertain = true;
        c.outbox.push_back(q(throttle(&node)));
        c.outbox.push_back(q(Effect::Audit(stored)));
        assert!(c.flush(None).await);
        let trail = std::fs::read_to_string(&audit_path).expect("the trail");
        assert_eq!(
            trail.matches("stored though its append failed").count(),
            1,
            "{trail}"
        );
        assert!(!c.audits_uncertain);
    }

    /// A batch whose records could not be planned leaves its effects in
    /// the outbox; the batches before it, failed, give back theirs in
    /// front of them, in the order decided. Before, the second failed
    /// batch's went behind the unplanned one's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_not_planned_waits_behind_the_batches_before_it() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let [n1, n2, n3] = nodes(["n1", "n2", "n3"]);
        let (mut c, _) = in_proc(dir.path());
        c.outbox
            .push_back(q(Effect::Audit(entry_about(&n3, "the unplanned batch's"))));
        let b1 = failed_batch(
            1,
            &n1,
            Failed::State(bus_down(), vec![q(Effect::Audit(entry_about(&n1, "b1's")))]),
        );
        let b2 = failed_batch(
            2,
            &n2,
            Failed::Held(vec![q(Effect::Audit(entry_about(&n2, "b2's")))]),
        );
        let mut flight = VecDeque::from([in_flight(b1, &n1), in_flight(b2, &n2)]);
        c.settle_before_unplanned(&mut flight).await;
        assert_eq!(waiting(&c), ["b1's", "b2's", "the unplanned batch's"]);
    }

    /// The lease runs out while a batch waits for the one before it to
    /// publish: nothing of it is published once it may. Before, only the
    /// check before the state write was tested.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_whose_lease_ran_out_while_it_waited_publishes_nothing() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let node = NodeName::parse("n1").expect("a node name");
        let (bus, mut commands) = watching(&node).await;
        let carrier = Carrier {
            bus,
            state: StateStore::dir(dir.path()),
            audit: Arc::new(
                AuditLog::open_file(&dir.path().join("audit.jsonl")).expect("an audit trail"),
            ),
            signer: None,
            valid_until: Some(Instant::now() + Duration::from_millis(300)),
        };
        let batch = one_node_batch(&node, vec![q(throttle(&node))], Vec::new());
        let (before, waits) = chain();
        let task = tokio::spawn(carry(carrier, batch, Some(waits), None));
        // Past the lease, whatever the machine's load: the deadline is an
        // instant, not a timer.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let _ = before.published.send(true);
        let _ = before.audited.send(true);
        let carried = task.await.expect("the task ran");
        assert!(
            matches!(carried.failed, Some(Failed::Deposed(_))),
            "carried out past the lease"
        );
        use futures::FutureExt;
        assert!(
            !matches!(commands.next().now_or_never(), Some(Some(_))),
            "published past the lease"
        );
    }

    /// [`every_batch`] of alerts: `first`, then each of `more`, one
    /// message a batch.
    async fn take_batches(c: &mut Ctx, first: Incoming, more: Vec<Incoming>) {
        let batches = std::iter::once(first).chain(more).map(|m| vec![m]);
        every_batch(c, Durable::Alert, batches.collect()).await;
    }

    /// The service loop's batches of `feed` for a turn long enough for
    /// any machine, each of `batches` taken as it is ready, until every
    /// one is handled: a turn ends once nothing is in flight, the rest
    /// unread (the service loop reads it), and the next turn goes on.
    async fn every_batch(c: &mut Ctx, feed: Durable, batches: Vec<Vec<Incoming>>) {
        let mut more = futures::stream::iter(batches);
        while let Some(first) = more.next().await {
            c.batches_for(Duration::from_secs(60), feed, first, &mut more)
                .await;
        }
    }

    /// A coordinator's context over an in-process bus, its trail in `dir`
    /// and its state in the directory `state` in it (returned), which a
    /// test can move away to make writes fail.
    fn with_state_dir(dir: &std::path::Path) -> (Ctx, std::path::PathBuf) {
        let states = dir.join("state");
        std::fs::create_dir(&states).expect("the state directory");
        let c = ctx(
            Bus::InProc(InProcBus::new()),
            StateStore::dir(&states),
            &dir.join("audit.jsonl"),
        );
        (c, states)
    }

    /// Nodes named `names`.
    fn nodes<const N: usize>(names: [&str; N]) -> [NodeName; N] {
        names.map(|n| NodeName::parse(n).expect("a node name"))
    }

    /// A coordinator's context over an in-process bus, its state and its
    /// trail (`audit.jsonl`, whose path is returned) in `dir`.
    fn in_proc(dir: &std::path::Path) -> (Ctx, std::path::PathBuf) {
        let audit_path = dir.join("audit.jsonl");
        let c = ctx(
            Bus::InProc(InProcBus::new()),
            StateStore::dir(dir),
            &audit_path,
        );
        (c, audit_path)
    }

    /// A coordinator's context over `bus`, state in `state` and the trail
    /// at `audit`, its engine empty, leading without a lease.
    fn ctx(bus: Bus, state: StateStore, audit: &std::path::Path) -> Ctx {
        // One set of counters for the engine and the service, as
        // `run` makes them.
        let counters = Counters::default();
        Ctx {
            consumers: Consumers::spawn(bus.clone()),
            flushed: FlushTimes::default(),
            written: HashMap::new(),
            unsaved: BTreeSet::new(),
            state_remade: 0,
            scratch: super::Scratch::default(),
            signer: None,
            engine: Engine::new(Config::default(), counters.clone(), "test"),
            bus,
            audit: Arc::new(AuditLog::open_file(audit).expect("an audit trail")),
            state,
            counters,
            max_bytes: 1 << 20,
            outbox: VecDeque::new(),
            next_seq: (0, 1),
            stamp: Stamp::default(),
            carried: Stamp::default(),
            carried_written: Stamp::default(),
            stalled: false,
            audits_uncertain: false,
            results_seen: RecentIds::new(16),
            refusals: super::Refusals::default(),
            drops: super::Drops::default(),
            held_dirty: false,
            held_summaries: Vec::new(),
            held_after_flush: false,
            deposed: false,
            fenced_by: None,
            valid_until: None,
            audit_down: None,
            node: NodeName::parse("coord").expect("a node name"),
            seal: None,
            seal_term: 0,
            sealed_at: 0,
            trusted: None,
            node_trust: None,
            alert_gaps: SequenceGaps::default(),
            result_gaps: SequenceGaps::default(),
        }
    }

    /// A batch that empties a node's state removes its record; when that
    /// removal fails, it is tried again. Before, the removal counted as
    /// done when it was planned (so that the next batch compares against
    /// it), and undoing it on the failure kept nothing to compare with:
    /// the record stayed on the bus, and a new leader restored the node
    /// from it.
    #[tokio::test]
    async fn a_removal_that_failed_is_tried_again() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut c, states) = with_state_dir(dir.path());
        let node = NodeName::parse("n1").expect("a node name");
        let key = node_key(&node);
        // Written once (with what the engine held then); its state now
        // empty.
        c.state
            .save(&key, Bytes::from_static(b"{}"))
            .await
            .expect("a record written");
        c.written.insert(node.clone(), 42);
        let work = Work {
            effects: Vec::new(),
            touched: BTreeSet::from([node.clone()]),
            acks: Vec::new(),
        };
        let batch = c
            .plan_batch(Durable::Alert, work, Instant::now())
            .expect("planned");
        assert_eq!(batch.remove, vec![key.clone()]);
        // The state store cannot be written to: the removal fails.
        std::fs::rename(&states, dir.path().join("away")).expect("moved away");
        std::fs::write(&states, b"not a directory").expect("a file in its place");
        let carried = carry(c.carrier(), batch, None, None).await;
        assert!(matches!(carried.failed, Some(Failed::State(..))));
        assert!(!c.settle(carried).await);
        std::fs::remove_file(&states).expect("the file removed");
        std::fs::rename(dir.path().join("away"), &states).expect("moved back");
        assert!(c.unsaved.contains(&node));
        // The retry writes the node's state as it now is: removed.
        c.persist(c.unsaved.clone()).await;
        assert!(c.unsaved.is_empty());
        assert_eq!(c.state.load(&key).await.expect("state readable"), None);
    }
}
