//! The partition actor: owns one assigned partition, keeps each key's records in order,
//! runs different keys concurrently, and commits only what is done.
//!
//! ```text
//! record ──▶ keys[key].queued ──(key idle and a slot free)──▶ key task ──▶ KeyDone
//!                                                    offsets.done(..) ──▶ commit tick
//! ```
//! A key's state exists only while it has queued or running records, so memory follows
//! the work in flight, not the number of devices ever seen.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::KeyHandler;
use super::dead_letter::DeadLetters;
use super::key_task::{self, KeyCtx, KeyOutcome};
use super::offsets::OffsetTracker;
use crate::config::ProcessingConfig;
use crate::log::{ConsumerControl, Record, TopicPartition};
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
}

/// A snapshot for the status page and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    pub tp: TopicPartition,
    pub in_flight: usize,
    pub active_keys: usize,
    pub running_keys: usize,
    pub paused: bool,
    pub committed: Option<i64>,
}

/// Messages a partition actor handles.
pub enum PartitionMsg {
    /// A record fetched from this partition, in offset order.
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
}

/// A finished key task's result, as carried in [`PartitionMsg::KeyDone`].
pub struct KeyOutcomeMsg(KeyOutcome);

/// One key's records waiting behind its running task.
#[derive(Default)]
struct KeyQueue {
    queued: VecDeque<Record>,
    running: bool,
}

pub struct PartitionState {
    args: PartitionArgs,
    ctx: Arc<KeyCtx>,
    keys: HashMap<String, KeyQueue>,
    /// Keys with queued records waiting for a free concurrency slot, oldest first.
    ready: VecDeque<String>,
    running: usize,
    offsets: OffsetTracker,
    paused: bool,
    committed: Option<i64>,
    draining: Option<RpcReplyPort<Option<i64>>>,
    ticker: Option<JoinHandle<()>>,
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
        let ctx = Arc::new(KeyCtx {
            handler: args.handler.clone(),
            dead_letters: args.dead_letters.clone(),
            policy: args.policy,
            cancel: CancellationToken::new(),
            labels,
        });
        let ticker = myself.send_interval(args.processing.commit_interval(), || PartitionMsg::CommitTick);
        tracing::info!(partition = %args.tp, handler = args.handler.name(), "partition actor started");
        Ok(PartitionState {
            args,
            ctx,
            keys: HashMap::new(),
            ready: VecDeque::new(),
            running: 0,
            offsets: OffsetTracker::default(),
            paused: false,
            committed: None,
            draining: None,
            ticker: Some(ticker),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: PartitionMsg,
        state: &mut PartitionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PartitionMsg::Record(record) => state.receive(record, &myself),
            PartitionMsg::KeyDone { key, outcome } => state.key_done(key, outcome.0, &myself),
            PartitionMsg::CommitTick => state.commit(),
            PartitionMsg::Drain { reply } => {
                state.ctx.cancel.cancel();
                state.draining = Some(reply);
            }
            PartitionMsg::Status { reply } => {
                let _ = reply.send(state.status());
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
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        let in_flight = state.offsets.in_flight() as i64;
        metrics().in_flight.add(-in_flight, &state.ctx.labels);
        tracing::info!(partition = %state.args.tp, committed = ?state.committed, "partition actor stopped");
        Ok(())
    }
}

impl PartitionState {
    fn receive(&mut self, record: Record, myself: &ActorRef<PartitionMsg>) {
        self.offsets.received(record.offset);
        metrics().in_flight.add(1, &self.ctx.labels);
        let key = record.key.clone().unwrap_or_default();
        let entry = self.keys.entry(key.clone()).or_default();
        entry.queued.push_back(record);
        if !entry.running && entry.queued.len() == 1 {
            self.ready.push_back(key);
        }
        self.start_ready(myself);
        let bound = self.args.processing.max_in_flight_per_partition;
        if !self.paused && self.offsets.in_flight() >= bound {
            self.paused = true;
            self.args.control.pause(&self.args.tp);
            metrics().partition_pauses.add(1, &self.ctx.labels);
            tracing::debug!(partition = %self.args.tp, bound, "in-flight bound reached, partition paused");
        }
    }

    fn key_done(&mut self, key: String, outcome: KeyOutcome, myself: &ActorRef<PartitionMsg>) {
        self.running -= 1;
        for offset in &outcome.done {
            self.offsets.done(*offset);
        }
        metrics().in_flight.add(-(outcome.done.len() as i64), &self.ctx.labels);
        if let Some(entry) = self.keys.get_mut(&key) {
            entry.running = false;
            if entry.queued.is_empty() {
                // Passivate: an idle key keeps no state at all.
                self.keys.remove(&key);
            } else if !outcome.abandoned {
                self.ready.push_back(key);
            }
        }
        self.start_ready(myself);
        let low_water = self.args.processing.max_in_flight_per_partition / 2;
        if self.paused && self.draining.is_none() && self.offsets.in_flight() <= low_water {
            self.paused = false;
            self.args.control.resume(&self.args.tp);
        }
    }

    /// Starts queued keys while concurrency slots are free (never while draining).
    fn start_ready(&mut self, myself: &ActorRef<PartitionMsg>) {
        let cap = self.args.processing.max_concurrent_keys;
        while self.draining.is_none() && self.running < cap {
            let Some(key) = self.ready.pop_front() else { break };
            let Some(entry) = self.keys.get_mut(&key) else { continue };
            if entry.running || entry.queued.is_empty() {
                continue;
            }
            let take = entry.queued.len().min(self.args.processing.max_coalesce);
            let batch: Vec<Record> = entry.queued.drain(..take).collect();
            entry.running = true;
            self.running += 1;
            let ctx = self.ctx.clone();
            let me = myself.clone();
            tokio::spawn(async move {
                let outcome = key_task::run(ctx, key.clone(), batch).await;
                // The actor may have stopped (drain timeout); then nothing waits for this.
                let _ = me.cast(PartitionMsg::KeyDone { key, outcome: KeyOutcomeMsg(outcome) });
            });
        }
    }

    fn commit(&mut self) {
        if let Some(position) = self.offsets.committable()
            && self.committed != Some(position)
        {
            self.args.control.commit(&self.args.tp, position);
            self.committed = Some(position);
        }
    }

    fn status(&self) -> PartitionStatus {
        PartitionStatus {
            tp: self.args.tp.clone(),
            in_flight: self.offsets.in_flight(),
            active_keys: self.keys.len(),
            running_keys: self.running,
            paused: self.paused,
            committed: self.committed,
        }
    }
}
