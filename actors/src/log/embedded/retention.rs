//! Retention: which sealed segments go, and the thread that deletes them.
//!
//! Only whole sealed segments are deleted, oldest first, and only those whose every record
//! each consumer group with an offset on that partition has durably committed past (group
//! files on disk, running member or not). Among those, a segment goes when its newest record
//! is older than `retention_ms`, or while the partition is larger than `retention_bytes`, or
//! while the topic is above [`BUDGET_LOW_WATER`] of `max_disk_bytes` (oldest record first
//! across partitions), so that a topic near its budget makes room before appends are refused.
//!
//! Passes run on their own thread every `retention_check_ms`, and at once when a writer
//! rolled a segment or refused an append; never on the acknowledgement path.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;

use super::partition::Partition;
use super::segment::Segment;
use super::{Inner, Topic};
use crate::config::TopicLogPolicy;
use crate::error::Error;
use crate::log::TopicPartition;

/// Fraction (per mille) of the budget that retention brings a topic back under.
const BUDGET_LOW_WATER: u64 = 900;

/// Starts the retention thread; it ends once the log is dropped.
pub(crate) fn spawn(inner: Weak<Inner>, wake: Receiver<()>, every: Duration) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("log-retention".into())
        .spawn(move || {
            loop {
                match wake.recv_timeout(every) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                let Some(inner) = inner.upgrade() else { return };
                inner.run_retention((inner.clock)());
            }
        })
        .map(drop)
        .map_err(|e| Error::io("log-retention", e))
}

/// What a pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deleted {
    pub segments: usize,
    pub bytes: u64,
}

impl Inner {
    /// One retention pass over every topic at wall-clock time `now_ms`.
    pub(crate) fn run_retention(&self, now_ms: i64) -> Deleted {
        let floors = self.groups.floors();
        let topics: Vec<(String, Arc<Topic>)> = self
            .topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, topic)| (name.clone(), Arc::clone(topic)))
            .collect();
        let mut total = Deleted::default();
        for (name, topic) in topics {
            let deleted = retain_topic(&name, &topic.partitions, &self.config.policy(&name), &floors, now_ms);
            total.segments += deleted.segments;
            total.bytes += deleted.bytes;
        }
        total
    }
}

/// A partition's sealed segments that every group is done with, oldest first.
fn deletable(partition: &Partition, floors: &HashMap<TopicPartition, (i64, String)>) -> Vec<Arc<Segment>> {
    let mut segments = partition.segments();
    segments.pop(); // the active one
    let floor = floors.get(partition.tp()).map(|(offset, _)| *offset);
    segments.into_iter().take_while(|s| floor.is_none_or(|floor| s.next_offset() <= floor)).collect()
}

fn retain_topic(
    topic: &str,
    partitions: &[Arc<Partition>],
    policy: &TopicLogPolicy,
    floors: &HashMap<TopicPartition, (i64, String)>,
    now_ms: i64,
) -> Deleted {
    let mut deleted = Deleted::default();
    let cutoff = i64::try_from(policy.retention_ms).map_or(i64::MIN, |ms| now_ms.saturating_sub(ms));
    // Per partition: what may go, and how much of it the age and size rules take.
    let mut candidates: Vec<(usize, Vec<Arc<Segment>>, usize)> = Vec::new();
    let mut used = 0;
    for (i, partition) in partitions.iter().enumerate() {
        let mut size = partition.size_bytes();
        let segments = deletable(partition, floors);
        let mut take = 0;
        for segment in &segments {
            let expired = policy.retention_ms != 0 && segment.max_timestamp().is_none_or(|ts| ts < cutoff);
            let oversized = policy.retention_bytes != 0 && size > policy.retention_bytes;
            if !(expired || oversized) {
                break;
            }
            size -= segment.size();
            take += 1;
        }
        used += size;
        candidates.push((i, segments, take));
    }
    if policy.max_disk_bytes != 0 {
        let low_water = policy.max_disk_bytes / 1000 * BUDGET_LOW_WATER;
        while used > low_water {
            // The oldest remaining candidate across partitions.
            let oldest = candidates
                .iter_mut()
                .filter(|(_, segments, take)| *take < segments.len())
                .min_by_key(|(_, segments, take)| segments[*take].max_timestamp().unwrap_or(i64::MIN));
            let Some((_, segments, take)) = oldest else { break };
            used -= segments[*take].size();
            *take += 1;
        }
        if used > policy.max_disk_bytes {
            held_back(topic, partitions, floors, used, policy.max_disk_bytes);
        }
    }
    for (i, segments, take) in candidates {
        if take == 0 {
            continue;
        }
        let bytes = partitions[i].delete_oldest(take);
        tracing::info!(tp = %partitions[i].tp(), segments = take, bytes, through = segments[take - 1].next_offset(),
            "retention deleted segments");
        deleted.segments += take;
        deleted.bytes += bytes;
    }
    deleted
}

/// Says which groups keep a full topic from making room.
fn held_back(
    topic: &str,
    partitions: &[Arc<Partition>],
    floors: &HashMap<TopicPartition, (i64, String)>,
    used: u64,
    budget: u64,
) {
    let mut groups: Vec<&str> = partitions
        .iter()
        .filter_map(|p| floors.get(p.tp()).filter(|(floor, _)| *floor < p.next_offset()))
        .map(|(_, group)| group.as_str())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    tracing::warn!(
        topic,
        used,
        budget,
        ?groups,
        "embedded log topic is over its disk budget and every sealed segment holds uncommitted records; \
         appends are refused until these groups commit"
    );
}

/// The writers' way to wake the retention thread; one pending wake is enough.
pub(crate) fn wake_channel() -> (std::sync::mpsc::SyncSender<()>, Receiver<()>) {
    std::sync::mpsc::sync_channel(1)
}
