//! One Kafka group member: a `BaseConsumer` polled on its own thread. Partition actors
//! steer it through [`KafkaControl`] (pause, resume, commit, rewind), applied between polls.
//!
//! A partition at its in-flight bound hands a record back ([`Delivery::Full`]). The thread
//! first waits for room, up to [`HOLD`]: a pause would drop what librdkafka has prefetched for
//! the partition and the resume would fetch it again, which halved processing on the test
//! broker when the bound was held with pauses alone. A partition still full after that is
//! paused at the broker, its record kept here, so the other partitions keep moving; it is
//! resumed once half its bound is free.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::client_config;
use crate::Error;
use crate::config::KafkaConfig;
use crate::log::{ConsumerControl, ConsumerHandle, Delivery, GroupListener, Header, Intake, Record, TopicPartition};
use crate::metrics::{self as m, kv, metrics};

const POLL: Duration = Duration::from_millis(50);
const COMMIT_EVERY: Duration = Duration::from_millis(500);
/// How long the thread waits for room in a full partition before pausing it instead.
const HOLD: Duration = Duration::from_millis(100);

enum Command {
    Pause(TopicPartition),
    Resume(TopicPartition),
    Commit(TopicPartition, i64),
    Rewind(TopicPartition),
    Stop(tokio::sync::oneshot::Sender<()>),
}

/// What partition actors use to steer the consumer thread.
struct KafkaControl {
    tx: Mutex<mpsc::Sender<Command>>,
}

impl KafkaControl {
    fn send(&self, cmd: Command) {
        if let Ok(tx) = self.tx.lock() {
            // The thread is gone only after stop; nothing is left to steer then.
            let _ = tx.send(cmd);
        }
    }
}

impl ConsumerControl for KafkaControl {
    fn pause(&self, tp: &TopicPartition) {
        self.send(Command::Pause(tp.clone()));
    }
    fn resume(&self, tp: &TopicPartition) {
        self.send(Command::Resume(tp.clone()));
    }
    fn commit(&self, tp: &TopicPartition, next_offset: i64) {
        self.send(Command::Commit(tp.clone(), next_offset));
    }
    fn rewind(&self, tp: &TopicPartition) {
        self.send(Command::Rewind(tp.clone()));
    }
}

/// Rebalance callbacks: run on the consumer thread, inside `poll`.
struct GroupContext {
    listener: Arc<dyn GroupListener>,
    control: Arc<KafkaControl>,
    runtime: tokio::runtime::Handle,
    /// Partitions this member owns now; commits for others are dropped.
    owned: Mutex<HashSet<TopicPartition>>,
}

impl ClientContext for GroupContext {}

fn to_tps(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements().iter().map(|e| TopicPartition::new(e.topic(), e.partition())).collect()
}

fn commit_sync(consumer: &BaseConsumer<GroupContext>, offsets: &[(TopicPartition, i64)]) {
    if offsets.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for (tp, offset) in offsets {
        if list.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset)).is_err() {
            tracing::warn!(partition = %tp, offset, "invalid commit offset skipped");
        }
    }
    if let Err(err) = consumer.commit(&list, CommitMode::Sync) {
        tracing::error!(
            error = %crate::error::chain(&err),
            "commit on revoke failed; the next owner may redo some records"
        );
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let tps = to_tps(list);
            if let Ok(mut owned) = self.owned.lock() {
                for tp in &tps {
                    owned.remove(tp);
                }
            }
            // Drain and commit before librdkafka lets the partitions go.
            let offsets = self.runtime.block_on(self.listener.revoked(tps));
            commit_sync(consumer, &offsets);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let tps = to_tps(list);
            if tps.is_empty() {
                return;
            }
            if let Ok(mut owned) = self.owned.lock() {
                owned.extend(tps.iter().cloned());
            }
            let control: Arc<dyn ConsumerControl> = self.control.clone();
            self.runtime.block_on(self.listener.assigned(tps, control));
        }
    }
}

/// A running member; [`ConsumerHandle::stop`] leaves the group cleanly.
pub struct GroupMember {
    control: Arc<KafkaControl>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl GroupMember {
    pub fn start(
        cfg: &KafkaConfig,
        group: &str,
        topics: &[String],
        listener: Arc<dyn GroupListener>,
    ) -> Result<Self, Error> {
        let (tx, rx) = mpsc::channel();
        let control = Arc::new(KafkaControl { tx: Mutex::new(tx) });
        let context = GroupContext {
            listener: listener.clone(),
            control: control.clone(),
            runtime: tokio::runtime::Handle::current(),
            owned: Mutex::new(HashSet::new()),
        };
        let consumer: BaseConsumer<GroupContext> = client_config(cfg)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
            .set("max.poll.interval.ms", "300000")
            .create_with_context(context)
            .map_err(|source| Error::Kafka { op: "create consumer", source })?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(|source| Error::Kafka { op: "subscribe", source })?;
        let thread = std::thread::Builder::new()
            .name(format!("kafka-{group}"))
            .spawn(move || run(consumer, rx, listener))
            .map_err(|e| Error::io("consumer thread", e))?;
        Ok(GroupMember { control, thread: Mutex::new(Some(thread)) })
    }
}

#[async_trait]
impl ConsumerHandle for GroupMember {
    async fn stop(&self) -> Result<(), Error> {
        let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) else { return Ok(()) };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.control.send(Command::Stop(tx));
        let _ = rx.await;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|e| Error::Actor { actor: "kafka consumer".into(), op: "stop", source: Box::new(e) })?
            .map_err(|_| Error::Actor {
                actor: "kafka consumer".into(),
                op: "stop",
                source: "consumer thread panicked".into(),
            })
    }
}

fn record_of(msg: &BorrowedMessage<'_>) -> Record {
    let headers = msg
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| Header { name: h.key.to_string(), value: h.value.map(<[u8]>::to_vec).unwrap_or_default() })
                .collect()
        })
        .unwrap_or_default();
    Record {
        tp: TopicPartition::new(msg.topic(), msg.partition()),
        offset: msg.offset(),
        key: msg.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        payload: Bytes::copy_from_slice(msg.payload().unwrap_or_default()),
        headers,
        timestamp_ms: msg.timestamp().to_millis().unwrap_or_default(),
    }
}

fn one(tp: &TopicPartition) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    list.add_partition(&tp.topic, tp.partition);
    list
}

/// The consumer thread: poll, deliver, apply commands, commit periodically.
fn run(consumer: BaseConsumer<GroupContext>, rx: mpsc::Receiver<Command>, listener: Arc<dyn GroupListener>) {
    let mut to_commit: HashMap<TopicPartition, i64> = HashMap::new();
    let mut last_commit = Instant::now();
    let mut flow = Flow::default();
    let stopped = loop {
        match consumer.poll(POLL) {
            Some(Ok(msg)) => flow.offer(&consumer, listener.as_ref(), record_of(&msg)),
            Some(Err(err)) => tracing::warn!(error = %crate::error::chain(&err), "kafka consumer error"),
            None => {}
        }
        flow.forget_unowned(&consumer);
        flow.release(&consumer, listener.as_ref());
        flow.rewind_pending(&consumer, listener.as_ref(), &to_commit);
        let mut stop = None;
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Command::Pause(tp) => flow.owner_pause(&consumer, tp),
                Command::Resume(tp) => flow.owner_resume(&consumer, &tp),
                Command::Commit(tp, offset) => {
                    to_commit.insert(tp, offset);
                }
                Command::Rewind(tp) => {
                    flow.drop_held(&consumer, &tp);
                    flow.rewinding.insert(tp);
                    flow.next_rewind = Instant::now();
                }
                Command::Stop(done) => stop = Some(done),
            }
        }
        if stop.is_some() || last_commit.elapsed() >= COMMIT_EVERY {
            commit_owned(&consumer, &mut to_commit);
            last_commit = Instant::now();
        }
        if let Some(done) = stop {
            break done;
        }
    };
    // Leave the group: revoke everything through the listener (drain + final commit).
    let owned: Vec<TopicPartition> =
        consumer.context().owned.lock().map(|o| o.iter().cloned().collect()).unwrap_or_default();
    if !owned.is_empty() {
        let offsets = consumer.context().runtime.block_on(listener.revoked(owned));
        commit_sync(&consumer, &offsets);
        if let Ok(mut o) = consumer.context().owned.lock() {
            o.clear();
        }
    }
    consumer.unsubscribe();
    drop(consumer);
    let _ = stopped.send(());
}

/// Records fetched for a partition paused at its bound, waiting for room, in offset order.
struct Held {
    records: VecDeque<Record>,
    intake: Arc<Intake>,
}

/// Which partitions are paused at the broker, and why: a partition is paused while its owner
/// asks (an open downstream) or while it is held at its bound.
struct Flow {
    by_owner: HashSet<TopicPartition>,
    held: HashMap<TopicPartition, Held>,
    /// Partitions to read again from their committed offset, for an owner that replaced one
    /// that died; retried until the seek succeeds (the new owner takes nothing before).
    rewinding: HashSet<TopicPartition>,
    next_rewind: Instant,
}

impl Default for Flow {
    fn default() -> Self {
        Flow { by_owner: HashSet::new(), held: HashMap::new(), rewinding: HashSet::new(), next_rewind: Instant::now() }
    }
}

impl Flow {
    /// Hands a fetched record over, waiting up to [`HOLD`] for room, then holding it.
    fn offer(&mut self, consumer: &BaseConsumer<GroupContext>, listener: &dyn GroupListener, mut record: Record) {
        if let Some(held) = self.held.get_mut(&record.tp) {
            // Fetched before the pause took effect: it queues behind the held ones.
            held.records.push_back(record);
            return;
        }
        loop {
            let intake = match listener.deliver(record) {
                Delivery::Taken => return,
                Delivery::Full { record: back, intake } => {
                    record = back;
                    intake
                }
            };
            if intake.wait_blocking(HOLD) {
                continue;
            }
            let tp = record.tp.clone();
            if !self.by_owner.contains(&tp) {
                pause(consumer, &tp);
            }
            let labels = [kv(m::TOPIC, tp.topic.clone()), kv(m::PARTITION, i64::from(tp.partition))];
            metrics().partition_pauses.add(1, &labels);
            tracing::info!(partition = %tp, in_flight = intake.outstanding(), "partition full; paused at the broker");
            self.held.insert(tp, Held { records: VecDeque::from([record]), intake });
            return;
        }
    }

    /// Delivers the held records of partitions half empty again, and resumes them.
    fn release(&mut self, consumer: &BaseConsumer<GroupContext>, listener: &dyn GroupListener) {
        let ready: Vec<TopicPartition> =
            self.held.iter().filter(|(_, h)| h.intake.half_empty()).map(|(tp, _)| tp.clone()).collect();
        for tp in ready {
            let Some(mut held) = self.held.remove(&tp) else { continue };
            while let Some(record) = held.records.pop_front() {
                if let Delivery::Full { record, intake } = listener.deliver(record) {
                    held.records.push_front(record);
                    held.intake = intake;
                    break;
                }
            }
            if !held.records.is_empty() {
                self.held.insert(tp, held);
                continue;
            }
            if !self.by_owner.contains(&tp) {
                resume(consumer, &tp);
            }
            tracing::info!(partition = %tp, "partition resumed");
        }
    }

    fn owner_pause(&mut self, consumer: &BaseConsumer<GroupContext>, tp: TopicPartition) {
        // From an owner that was let go since: a pause kept for a partition not owned would
        // outlive it, if the partition came back, and nothing would resume it.
        if !owned(consumer).contains(&tp) {
            return;
        }
        if !self.held.contains_key(&tp) && !self.by_owner.contains(&tp) {
            pause(consumer, &tp);
        }
        self.by_owner.insert(tp);
    }

    fn owner_resume(&mut self, consumer: &BaseConsumer<GroupContext>, tp: &TopicPartition) {
        if self.by_owner.remove(tp) && !self.held.contains_key(tp) {
            resume(consumer, tp);
        }
    }

    /// The owner was replaced and the partition is read again from its committed offset:
    /// what was held for the old owner goes.
    fn drop_held(&mut self, consumer: &BaseConsumer<GroupContext>, tp: &TopicPartition) {
        if self.held.remove(tp).is_some() && !self.by_owner.contains(tp) {
            resume(consumer, tp);
        }
    }

    /// Seeks partitions waiting for a rewind back to their committed offset, then tells the
    /// listener; one that fails is tried again a second later.
    fn rewind_pending(
        &mut self,
        consumer: &BaseConsumer<GroupContext>,
        listener: &dyn GroupListener,
        to_commit: &HashMap<TopicPartition, i64>,
    ) {
        if self.rewinding.is_empty() || Instant::now() < self.next_rewind {
            return;
        }
        let pending: Vec<TopicPartition> = self.rewinding.iter().cloned().collect();
        for tp in pending {
            if rewind(consumer, &tp, to_commit.get(&tp).copied()) {
                self.rewinding.remove(&tp);
                listener.rewound(&tp);
            } else {
                self.next_rewind = Instant::now() + Duration::from_secs(1);
            }
        }
    }

    /// Forgets partitions revoked from this member; their next owner reads what was held.
    fn forget_unowned(&mut self, consumer: &BaseConsumer<GroupContext>) {
        if self.held.is_empty() && self.by_owner.is_empty() && self.rewinding.is_empty() {
            return;
        }
        let owned = owned(consumer);
        let gone: Vec<TopicPartition> = self
            .held
            .keys()
            .chain(self.by_owner.iter())
            .chain(self.rewinding.iter())
            .filter(|tp| !owned.contains(*tp))
            .cloned()
            .collect();
        for tp in gone {
            self.held.remove(&tp);
            self.by_owner.remove(&tp);
            self.rewinding.remove(&tp);
            // A paused partition stays paused in librdkafka if it comes back.
            resume(consumer, &tp);
        }
    }
}

/// The partitions this member owns now (a poisoned lock still holds the right set).
fn owned(consumer: &BaseConsumer<GroupContext>) -> HashSet<TopicPartition> {
    consumer.context().owned.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}

fn pause(consumer: &BaseConsumer<GroupContext>, tp: &TopicPartition) {
    if let Err(err) = consumer.pause(&one(tp)) {
        tracing::debug!(partition = %tp, error = %err, "pause ignored");
    }
}

fn resume(consumer: &BaseConsumer<GroupContext>, tp: &TopicPartition) {
    if let Err(err) = consumer.resume(&one(tp)) {
        tracing::debug!(partition = %tp, error = %err, "resume ignored");
    }
}

/// Commits positions of partitions still owned; those of revoked ones were committed on revoke.
fn commit_owned(consumer: &BaseConsumer<GroupContext>, to_commit: &mut HashMap<TopicPartition, i64>) {
    if to_commit.is_empty() {
        return;
    }
    let owned = consumer.context().owned.lock().map(|o| o.clone()).unwrap_or_default();
    let mut list = TopicPartitionList::new();
    for (tp, offset) in to_commit.drain() {
        if owned.contains(&tp) {
            let _ = list.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(offset));
        }
    }
    if list.count() > 0
        && let Err(err) = consumer.commit(&list, CommitMode::Async)
    {
        tracing::warn!(error = %crate::error::chain(&err), "async commit failed; retried on the next tick");
    }
}

/// Seeks `tp` to the position to read again from: the commit this thread has not sent yet,
/// else the group's committed offset (the start if there is none); `false` if that failed.
fn rewind(consumer: &BaseConsumer<GroupContext>, tp: &TopicPartition, unsent: Option<i64>) -> bool {
    let target = match unsent {
        Some(offset) => Offset::Offset(offset),
        None => match consumer.committed_offsets(one(tp), Duration::from_secs(5)) {
            Ok(list) => match list.find_partition(&tp.topic, tp.partition).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Offset::Offset(o),
                // Nothing committed yet: from the start, as `auto.offset.reset` says.
                _ => Offset::Beginning,
            },
            Err(err) => {
                // Not the start instead: a wrong guess would skip or replay a partition.
                tracing::error!(partition = %tp, error = %crate::error::chain(&err), "rewind: committed offset unknown; retrying");
                return false;
            }
        },
    };
    match consumer.seek(&tp.topic, tp.partition, target, Duration::from_secs(5)) {
        Ok(()) => true,
        Err(err) => {
            tracing::error!(partition = %tp, error = %crate::error::chain(&err), "rewind failed; retrying");
            false
        }
    }
}
