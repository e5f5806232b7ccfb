//! Single-process consumer groups: the only member gets every partition, one delivery task
//! per partition reads from the group's committed offset on (or from the log start, if
//! retention deleted that offset or the group is new), and a flusher persists commits.
//!
//! Joining writes the group's starting offset of every partition to its file before any
//! delivery, so that retention keeps what the group has not read yet from then on.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::groups::GroupOffsets;
use super::partition::Partition;
use crate::error::Error;
use crate::log::{ConsumerControl, ConsumerHandle, Delivery, GroupListener, Record, TopicPartition};

/// Records read per fetch, and the byte budget of one fetch.
const FETCH_RECORDS: usize = 500;
const FETCH_BYTES: u64 = 4 << 20;
/// How often commits are written to the group file.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// Pause before retrying a failed read, so a broken file does not spin a core.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The claim of a group name in this process; released on drop.
pub(crate) struct Membership {
    active: Arc<Mutex<HashSet<String>>>,
    group: String,
}

impl Membership {
    pub(crate) fn claim(active: &Arc<Mutex<HashSet<String>>>, group: &str) -> Result<Self, Error> {
        let mut groups = active.lock().unwrap_or_else(PoisonError::into_inner);
        if !groups.insert(group.to_owned()) {
            return Err(Error::Config {
                key: "group",
                reason: format!("group {group:?} already has a member in this process"),
            });
        }
        Ok(Self { active: Arc::clone(active), group: group.to_owned() })
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.active.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.group);
    }
}

/// What the owner asked of one partition's delivery task.
#[derive(Clone, Copy, Default)]
struct Flow {
    paused: bool,
    /// Bumped by every rewind; the task rewinds when it sees a count it has not handled.
    rewinds: u64,
}

/// The embedded backend's [`ConsumerControl`]: flow per partition and the offsets.
struct Control {
    group: Arc<GroupOffsets>,
    flows: HashMap<TopicPartition, watch::Sender<Flow>>,
}

impl Control {
    fn update(&self, tp: &TopicPartition, change: impl FnOnce(&mut Flow)) {
        if let Some(flow) = self.flows.get(tp) {
            flow.send_modify(change);
        }
    }
}

impl ConsumerControl for Control {
    fn pause(&self, tp: &TopicPartition) {
        self.update(tp, |flow| flow.paused = true);
    }

    fn resume(&self, tp: &TopicPartition) {
        self.update(tp, |flow| flow.paused = false);
    }

    fn rewind(&self, tp: &TopicPartition) {
        self.update(tp, |flow| flow.rewinds += 1);
    }

    fn commit(&self, tp: &TopicPartition, next_offset: i64) {
        if self.flows.contains_key(tp) {
            self.group.commit(tp, next_offset);
        } else {
            tracing::debug!(%tp, next_offset, "ignoring commit for a partition this member does not own");
        }
    }
}

/// What the delivery tasks, the flusher and the handle share.
struct Member {
    control: Arc<Control>,
    listener: Arc<dyn GroupListener>,
    cancel: CancellationToken,
    /// Held until `stop` finished, even if the handle is dropped while the tasks run.
    membership: Mutex<Option<Membership>>,
}

/// Joins the group with every partition of `partitions`; see [`crate::log::LogBackend::subscribe`].
pub(crate) async fn subscribe(
    group: Arc<GroupOffsets>,
    membership: Membership,
    partitions: Vec<Arc<Partition>>,
    listener: Arc<dyn GroupListener>,
) -> Result<Box<dyn ConsumerHandle>, Error> {
    let tps: Vec<TopicPartition> = partitions.iter().map(|p| p.tp().clone()).collect();
    let control = Arc::new(Control {
        group: Arc::clone(&group),
        flows: tps.iter().map(|tp| (tp.clone(), watch::channel(Flow::default()).0)).collect(),
    });
    let member = Arc::new(Member {
        control: Arc::clone(&control),
        listener: Arc::clone(&listener),
        cancel: CancellationToken::new(),
        membership: Mutex::new(Some(membership)),
    });
    let mut starts = Vec::with_capacity(partitions.len());
    for partition in &partitions {
        let tp = partition.tp();
        let (first, end) = (partition.start_offset(), partition.next_offset());
        let start = match group.get(tp) {
            None => {
                group.commit(tp, first);
                first
            }
            Some(committed) if committed > end => {
                // Only a log that lost acknowledged data gets here; new records must not be skipped.
                tracing::warn!(%tp, committed, end, "committed offset is past the end of the log; resetting to the end");
                group.reset(tp, end);
                end
            }
            Some(committed) if committed < first => {
                tracing::info!(%tp, committed, first, "committed offset was deleted by retention; starting at the log start");
                group.commit(tp, first);
                first
            }
            Some(committed) => committed,
        };
        starts.push(start);
    }
    if group.is_dirty() {
        persist(&group).await?;
    }
    listener.assigned(tps.clone(), control.clone() as Arc<dyn ConsumerControl>).await;
    let mut tasks = Vec::with_capacity(partitions.len() + 1);
    for (partition, start) in partitions.into_iter().zip(starts) {
        let tp = partition.tp().clone();
        let Some(flow) = control.flows.get(&tp).map(watch::Sender::subscribe) else { continue };
        tasks.push(tokio::spawn(deliver(Arc::clone(&member), partition, start, flow)));
    }
    tasks.push(tokio::spawn(flush(Arc::clone(&member))));
    Ok(Box::new(EmbeddedConsumer { member, partitions: tps, tasks: tokio::sync::Mutex::new(Some(tasks)) }))
}

/// Feeds one partition to the listener in offset order.
async fn deliver(member: Arc<Member>, partition: Arc<Partition>, mut next: i64, mut flow: watch::Receiver<Flow>) {
    let mut end = partition.watch_end();
    let mut rewinds = flow.borrow().rewinds;
    loop {
        let Some(seen) = until_resumed(&mut flow, &member.cancel).await else { return };
        if seen != rewinds {
            rewinds = seen;
            next = member.control.group.get(partition.tp()).unwrap_or(0);
            member.listener.rewound(partition.tp());
        }
        if next >= *end.borrow_and_update() {
            tokio::select! {
                _ = member.cancel.cancelled() => return,
                changed = end.changed() => if changed.is_err() { return },
                // A rewind while caught up has records to deliver again.
                changed = flow.changed() => if changed.is_err() { return },
            }
            continue;
        }
        let reader = Arc::clone(&partition);
        let batch = tokio::task::spawn_blocking(move || reader.read_batch(next, FETCH_RECORDS, FETCH_BYTES)).await;
        let failure: Box<dyn std::error::Error + Send + Sync> = match batch {
            Ok(Ok(records)) => {
                for record in records {
                    // Checked per record, so a pause or rewind issued from inside `deliver`
                    // takes effect at once; a rewind drops the rest of the batch.
                    match until_resumed(&mut flow, &member.cancel).await {
                        None => return,
                        Some(seen) if seen != rewinds => break,
                        Some(_) => {}
                    }
                    next = record.offset + 1;
                    if !offer(&member, record, &mut flow, rewinds).await {
                        break;
                    }
                }
                continue;
            }
            Ok(Err(e)) => Box::new(e),
            Err(e) => Box::new(e),
        };
        tracing::error!(tp = %partition.tp(), offset = next, error = %failure, "embedded log read failed; retrying");
        tokio::select! {
            _ = member.cancel.cancelled() => return,
            _ = tokio::time::sleep(RETRY_AFTER) => {}
        }
    }
}

/// Hands `record` over, waiting while the partition is at its in-flight bound (only this
/// partition's task waits). `false` when the member stops or a rewind drops the record.
async fn offer(member: &Member, mut record: Record, flow: &mut watch::Receiver<Flow>, rewinds: u64) -> bool {
    loop {
        let intake = match member.listener.deliver(record) {
            Delivery::Taken => return true,
            Delivery::Full { record: back, intake } => {
                record = back;
                intake
            }
        };
        tokio::select! {
            _ = member.cancel.cancelled() => return false,
            () = intake.wait() => {}
            // The owner died and was replaced: its successor reads from the committed offset.
            changed = flow.changed() => {
                if changed.is_err() || flow.borrow_and_update().rewinds != rewinds {
                    return false;
                }
            }
        }
    }
}

/// Waits while the partition is paused; answers the rewind count seen, or `None` once the
/// member is stopping.
async fn until_resumed(flow: &mut watch::Receiver<Flow>, cancel: &CancellationToken) -> Option<u64> {
    loop {
        if cancel.is_cancelled() {
            return None;
        }
        let current = *flow.borrow_and_update();
        if !current.paused {
            return Some(current.rewinds);
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            changed = flow.changed() => if changed.is_err() { return None },
        }
    }
}

/// Writes commits to the group file at most every [`FLUSH_INTERVAL`]; `stop` writes the last.
async fn flush(member: Arc<Member>) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = member.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if member.control.group.is_dirty()
            && let Err(e) = persist(&member.control.group).await
        {
            tracing::warn!(path = %member.control.group.path().display(), error = %e,
                "could not persist group offsets; retrying");
        }
    }
}

async fn persist(group: &Arc<GroupOffsets>) -> Result<(), Error> {
    let writer = Arc::clone(group);
    tokio::task::spawn_blocking(move || writer.persist())
        .await
        .map_err(|e| Error::io(group.path(), std::io::Error::other(e)))?
}

/// The handle of a running member.
struct EmbeddedConsumer {
    member: Arc<Member>,
    partitions: Vec<TopicPartition>,
    /// `None` once stopped; the async mutex makes a concurrent second `stop` wait for the first.
    tasks: tokio::sync::Mutex<Option<Vec<JoinHandle<()>>>>,
}

#[async_trait]
impl ConsumerHandle for EmbeddedConsumer {
    async fn stop(&self) -> Result<(), Error> {
        let mut tasks = self.tasks.lock().await;
        let Some(handles) = tasks.take() else { return Ok(()) };
        self.member.cancel.cancel();
        for handle in handles {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "embedded consumer task failed");
            }
        }
        let answered = self.member.listener.revoked(self.partitions.clone()).await;
        for (tp, next_offset) in answered {
            self.member.control.commit(&tp, next_offset);
        }
        let result = persist(&self.member.control.group).await;
        self.member.membership.lock().unwrap_or_else(PoisonError::into_inner).take();
        result
    }
}
