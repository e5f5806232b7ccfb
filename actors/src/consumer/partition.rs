//! The partition actor: owns one assigned partition, keeps each key's records in order,
//! runs different keys concurrently, and commits only what is done.
//!
//! ```text
//! record ──▶ keys[key].queued ──(key idle and a slot free)──▶ key task ──▶ KeyDone
//!                                                    offsets.done(..) ──▶ commit tick
//! ```
//! A key's state exists only while it has queued or running records, so memory follows
//! the work in flight, not the number of devices ever seen.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::KeyHandler;
use super::dead_letter::DeadLetters;
use super::key_task::{self, KeyCtx, KeyOutcome};
use super::offsets::OffsetTracker;
use super::parking::{ParkSpec, Parking};
use super::stuck::{StuckKey, StuckKeys};
use crate::breaker::BreakerState;
use crate::config::ProcessingConfig;
use crate::log::{ConsumerControl, Delivery, Intake, Record, TopicPartition};
use crate::metrics::{self, kv, metrics};
use crate::retry::RetryPolicy;

/// The actor; its behaviour is all in [`PartitionState`].
pub struct PartitionActor;

/// What a partition actor is started with.
pub struct PartitionArgs {
    pub tp: TopicPartition,
    pub handler: Arc<dyn KeyHandler>,
    pub control: Arc<dyn ConsumerControl>,
    pub dead_letters: DeadLetters,
    pub policy: RetryPolicy,
    pub processing: ProcessingConfig,
    /// Set when the topic's `on_dead_letter` is `park`.
    pub park: Option<ParkSpec>,
    /// Counts what is delivered to this actor against the in-flight bound; shared with the
    /// [`PartitionHandle`] that delivers, told here what is done.
    pub intake: Arc<Intake>,
}

/// How records reach a partition actor: admitted against the in-flight bound as they are
/// handed over, before they wait in its mailbox.
#[derive(Clone)]
pub struct PartitionHandle {
    pub actor: ActorRef<PartitionMsg>,
    pub intake: Arc<Intake>,
    /// False for an actor replacing one that died, until the backend has rewound the
    /// partition to its committed offset ([`crate::log::GroupListener::rewound`]): records
    /// read before the rewind are read again after it, and must not reach the new actor
    /// first (it would commit past the ones it never saw).
    pub live: Arc<AtomicBool>,
}

impl PartitionHandle {
    /// Hands `record` to the actor, or back when the partition is at its bound.
    pub fn deliver(&self, record: Record) -> Delivery {
        if !self.live.load(Ordering::Acquire) {
            return Delivery::Taken;
        }
        if !self.intake.try_admit() {
            return Delivery::Full { record, intake: self.intake.clone() };
        }
        if self.actor.cast(PartitionMsg::Record(record)).is_err() {
            // Not committed, so the next owner of the partition reads it again.
            tracing::warn!("record for a stopped partition actor left uncommitted");
        }
        Delivery::Taken
    }
}

/// A snapshot for the status page and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    pub tp: TopicPartition,
    pub in_flight: usize,
    pub active_keys: usize,
    pub running_keys: usize,
    /// Paused at the log for an open downstream.
    pub paused: bool,
    /// At `processing.max_in_flight_per_partition`: the backend holds further records back.
    pub full: bool,
    pub committed: Option<i64>,
    /// Keys not advancing, longest stuck first, at most [`STUCK_PER_PARTITION`].
    pub stuck: Vec<StuckKey>,
    /// How many keys are not advancing in all.
    pub stuck_total: usize,
    /// Keys parked behind a dead letter (`on_dead_letter = "park"`; 0 on other topics).
    pub parked_keys: usize,
}

/// At most this many stuck keys per partition in a status snapshot (the count is exact).
pub const STUCK_PER_PARTITION: usize = 200;

/// Messages a partition actor handles.
pub enum PartitionMsg {
    /// A record fetched from this partition, in offset order (sent by [`PartitionHandle::deliver`]).
    Record(Record),
    /// A key task ended; `outcome` says which offsets are done.
    KeyDone { key: String, outcome: KeyOutcomeMsg },
    /// Time to commit progress (sent on an interval).
    CommitTick,
    /// Stop starting work, let running keys finish or give back their records, and answer
    /// the offset to commit. The actor stops after replying.
    Drain { reply: RpcReplyPort<Option<i64>> },
    /// Report in-flight counts and pause state.
    Status { reply: RpcReplyPort<PartitionStatus> },
    /// A downstream's circuit breaker changed state (open pauses the partition).
    Downstream { name: &'static str, state: BreakerState },
    /// The partition's parked keys are loaded: records may be handled now.
    ParkedLoaded,
}

/// A finished key task's result, as carried in [`PartitionMsg::KeyDone`].
pub struct KeyOutcomeMsg(KeyOutcome);

/// One key's records waiting behind its running task.
struct KeyQueue {
    queued: VecDeque<Record>,
    running: bool,
}

pub struct PartitionState {
    args: PartitionArgs,
    ctx: Arc<KeyCtx>,
    /// Keyed by record keys, which come from outside: a seeded hash, but a faster one than
    /// SipHash (hashing took a tenth of this actor's time).
    keys: HashMap<String, KeyQueue, foldhash::fast::RandomState>,
    /// Keys with queued records waiting for a free concurrency slot, oldest first.
    ready: VecDeque<String>,
    running: usize,
    offsets: OffsetTracker,
    /// Change of the in-flight count not yet added to its metric: added once per commit tick
    /// rather than once per record and once per finished key.
    in_flight_unreported: i64,
    /// Paused at the log right now, for an open downstream. (The in-flight bound is held
    /// where records are delivered, by [`Intake`].)
    paused: bool,
    open_downstreams: HashSet<&'static str>,
    committed: Option<i64>,
    draining: Option<RpcReplyPort<Option<i64>>>,
    ticker: Option<JoinHandle<()>>,
    watchers: Vec<JoinHandle<()>>,
    /// On a parking topic, no record is handled before the parked keys are known.
    parked_loaded: bool,
}

impl Actor for PartitionActor {
    type Msg = PartitionMsg;
    type State = PartitionState;
    type Arguments = PartitionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: PartitionArgs,
    ) -> Result<PartitionState, ActorProcessingErr> {
        let labels = [kv(metrics::TOPIC, args.tp.topic.clone()), kv(metrics::PARTITION, i64::from(args.tp.partition))];
        let breakers = args.handler.breakers();
        let mut open_downstreams = HashSet::new();
        let mut watchers = Vec::new();
        for breaker in &breakers {
            // Subscribed before the state is read: a change in between (the store's breaker
            // closing while a restarted daemon catches up) would otherwise never be seen,
            // and the partition would stay paused.
            let (name, mut rx, me) = (breaker.name(), breaker.subscribe(), myself.clone());
            if *rx.borrow_and_update() == BreakerState::Open {
                open_downstreams.insert(name);
            }
            watchers.push(tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    let state = *rx.borrow_and_update();
                    if me.cast(PartitionMsg::Downstream { name, state }).is_err() {
                        break;
                    }
                }
            }));
        }
        let parking = args.park.clone().map(|spec| Arc::new(Parking::new(spec, &args.tp, args.handler.name())));
        let ctx = Arc::new(KeyCtx {
            handler: args.handler.clone(),
            dead_letters: args.dead_letters.clone(),
            policy: args.policy,
            cancel: CancellationToken::new(),
            labels,
            breakers,
            stuck: StuckKeys::new(&args.tp, args.handler.name()),
            parking: parking.clone(),
            max_coalesce: args.processing.max_coalesce,
        });
        if let Some(parking) = &parking {
            watchers.push(load_parked(parking.clone(), args.tp.clone(), args.policy, myself.clone()));
        }
        let ticker = myself.send_interval(args.processing.commit_interval(), || PartitionMsg::CommitTick);
        tracing::info!(partition = %args.tp, handler = args.handler.name(), "partition actor started");
        let mut state = PartitionState {
            args,
            ctx,
            keys: HashMap::default(),
            ready: VecDeque::new(),
            running: 0,
            offsets: OffsetTracker::default(),
            in_flight_unreported: 0,
            paused: false,
            open_downstreams,
            committed: None,
            draining: None,
            ticker: Some(ticker),
            watchers,
            parked_loaded: parking.is_none(),
        };
        state.apply_pause();
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: PartitionMsg,
        state: &mut PartitionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PartitionMsg::Record(record) => {
                if record.key.as_deref().is_some_and(super::faults::crash_requested) {
                    // The drill's crash: the supervisor restarts this partition from its
                    // committed offset (POST /admin/faults/keys/{key}/crash-partition).
                    panic!("fault injected: partition actor crash on a record of a chosen key");
                }
                state.receive(record, &myself)
            }
            PartitionMsg::KeyDone { key, outcome } => state.key_done(key, outcome.0, &myself),
            PartitionMsg::CommitTick => state.commit(),
            PartitionMsg::Drain { reply } => {
                state.ctx.cancel.cancel();
                state.draining = Some(reply);
            }
            PartitionMsg::Status { reply } => {
                let _ = reply.send(state.status());
            }
            PartitionMsg::Downstream { name, state: breaker } => {
                // Only an open breaker pauses: half-open must let records through to probe.
                if breaker == BreakerState::Open {
                    state.open_downstreams.insert(name);
                } else {
                    state.open_downstreams.remove(name);
                }
                state.apply_pause();
            }
            PartitionMsg::ParkedLoaded => {
                state.parked_loaded = true;
                state.start_ready(&myself);
            }
        }
        if state.draining.is_some() && state.running == 0 {
            // Everything started has finished or given its records back; what was
            // queued but not started stays uncommitted for the next owner.
            let position = state.offsets.committable();
            if let Some(reply) = state.draining.take() {
                let _ = reply.send(position);
            }
            myself.stop(Some("drained".into()));
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut PartitionState,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.cancel.cancel();
        state.ctx.stuck.clear_all();
        if let Some(parking) = &state.ctx.parking {
            parking.clear_all();
        }
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        for w in state.watchers.drain(..) {
            w.abort();
        }
        // What the metric shows of this partition: the count less what it was not told yet.
        let reported = state.offsets.in_flight() as i64 - state.in_flight_unreported;
        metrics().in_flight.add(-reported, &state.ctx.labels);
        tracing::info!(partition = %state.args.tp, committed = ?state.committed, "partition actor stopped");
        Ok(())
    }
}

impl PartitionState {
    fn receive(&mut self, record: Record, myself: &ActorRef<PartitionMsg>) {
        self.offsets.received(record.offset);
        self.in_flight_unreported += 1;
        let key = record.key.as_deref().unwrap_or_default();
        if let Some(entry) = self.keys.get_mut(key) {
            let now_ready = (!entry.running && entry.queued.is_empty()).then(|| key.to_string());
            entry.queued.push_back(record);
            if let Some(key) = now_ready {
                self.ready.push_back(key);
                self.start_ready(myself);
            }
        } else if self.ready.is_empty() && self.can_start() {
            // A key not seen in flight, and a slot free: it starts at once, without a turn
            // through the ready queue (the common case with many distinct keys).
            let key = key.to_string();
            self.keys.insert(key.clone(), KeyQueue { queued: VecDeque::new(), running: true });
            self.spawn_key(key, vec![record], myself);
        } else {
            let key = key.to_string();
            self.keys.insert(key.clone(), KeyQueue { queued: VecDeque::from([record]), running: false });
            self.ready.push_back(key);
            self.start_ready(myself);
        }
    }

    /// Pauses or resumes the partition at the log to match the reasons to pause.
    fn apply_pause(&mut self) {
        let want = !self.open_downstreams.is_empty();
        // A draining partition is being let go: a pause sent now could outlive it.
        if want && !self.paused && self.draining.is_none() {
            self.paused = true;
            self.args.control.pause(&self.args.tp);
            metrics().partition_pauses.add(1, &self.ctx.labels);
            tracing::info!(partition = %self.args.tp, open = ?self.open_downstreams, "partition paused");
        } else if !want && self.paused && self.draining.is_none() {
            self.paused = false;
            self.args.control.resume(&self.args.tp);
            tracing::info!(partition = %self.args.tp, "partition resumed");
        }
    }

    fn key_done(&mut self, key: String, outcome: KeyOutcome, myself: &ActorRef<PartitionMsg>) {
        self.running -= 1;
        for offset in &outcome.done {
            self.offsets.done(*offset);
        }
        self.in_flight_unreported -= outcome.done.len() as i64;
        self.args.intake.done(outcome.done.len());
        if let Entry::Occupied(mut entry) = self.keys.entry(key) {
            entry.get_mut().running = false;
            if entry.get().queued.is_empty() {
                // Passivate: an idle key keeps no state at all.
                entry.remove();
            } else if !outcome.abandoned {
                self.ready.push_back(entry.key().clone());
            }
        }
        self.start_ready(myself);
    }

    /// Whether a key task may start now: a slot free, not draining, parked keys known.
    fn can_start(&self) -> bool {
        self.parked_loaded && self.draining.is_none() && self.running < self.args.processing.max_concurrent_keys
    }

    /// Starts queued keys while concurrency slots are free (never while draining).
    fn start_ready(&mut self, myself: &ActorRef<PartitionMsg>) {
        while self.can_start() {
            let Some(key) = self.ready.pop_front() else { break };
            let Some(entry) = self.keys.get_mut(&key) else { continue };
            if entry.running || entry.queued.is_empty() {
                continue;
            }
            let take = entry.queued.len().min(self.args.processing.max_coalesce);
            let batch: Vec<Record> = entry.queued.drain(..take).collect();
            entry.running = true;
            self.spawn_key(key, batch, myself);
        }
    }

    /// Runs `key`'s turn over `batch` as a task of its own; the key is marked running.
    fn spawn_key(&mut self, key: String, batch: Vec<Record>, myself: &ActorRef<PartitionMsg>) {
        self.running += 1;
        let ctx = self.ctx.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let outcome = key_task::run(ctx, key.clone(), batch).await;
            // The actor may have stopped (drain timeout); then nothing waits for this.
            let _ = me.cast(PartitionMsg::KeyDone { key, outcome: KeyOutcomeMsg(outcome) });
        });
    }

    fn commit(&mut self) {
        if self.in_flight_unreported != 0 {
            metrics().in_flight.add(std::mem::replace(&mut self.in_flight_unreported, 0), &self.ctx.labels);
        }
        if let Some(position) = self.offsets.committable()
            && self.committed != Some(position)
        {
            self.args.control.commit(&self.args.tp, position);
            self.committed = Some(position);
            self.forget_released(position);
        }
    }

    /// Released keys whose releasing record is committed: a redelivery can no longer come,
    /// so their rows go (best effort: a row left over is forgotten after the next load).
    fn forget_released(&self, position: i64) {
        let Some(parking) = &self.ctx.parking else { return };
        let gone = parking.committed(position);
        if gone.is_empty() {
            return;
        }
        let (store, topic) = (parking.spec.store.clone(), self.args.tp.topic.clone());
        tokio::spawn(async move {
            for (key, by) in gone {
                if let Err(err) = store.forget(&topic, &key, by).await {
                    tracing::warn!(
                        topic,
                        key,
                        error = %crate::error::chain(&err),
                        "released parked key not forgotten yet"
                    );
                }
            }
        });
    }

    fn status(&self) -> PartitionStatus {
        let (stuck, stuck_total) = self.ctx.stuck.snapshot(STUCK_PER_PARTITION);
        PartitionStatus {
            stuck,
            stuck_total,
            tp: self.args.tp.clone(),
            in_flight: self.offsets.in_flight(),
            active_keys: self.keys.len(),
            running_keys: self.running,
            paused: self.paused,
            full: !self.args.intake.has_room(),
            committed: self.committed,
            parked_keys: self.ctx.parking.as_ref().map_or(0, |p| p.parked()),
        }
    }
}

/// Loads the partition's parked keys, retrying with backoff while the store is down, then
/// tells the actor (which handles nothing before).
fn load_parked(
    parking: Arc<Parking>,
    tp: crate::log::TopicPartition,
    policy: RetryPolicy,
    me: ActorRef<PartitionMsg>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut attempt = 0u32;
        loop {
            match parking.spec.store.load(&tp).await {
                Ok(keys) => {
                    let n = keys.len();
                    parking.load(keys);
                    tracing::info!(partition = %tp, keys = n, parked = parking.parked(), "parked keys loaded");
                    let _ = me.cast(PartitionMsg::ParkedLoaded);
                    return;
                }
                Err(err) => {
                    attempt += 1;
                    let delay = policy.ceiling(attempt);
                    tracing::error!(
                        partition = %tp, attempt, delay_ms = delay.as_millis() as u64,
                        error = %crate::error::chain(&err), "loading parked keys failed; partition waits"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    })
}
