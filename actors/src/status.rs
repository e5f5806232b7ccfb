//! What `/admin/status` shows: the supervision tree with each actor's state and restarts,
//! owned partitions with lag and in-flight counts, breakers, dead letters, the outbox.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActorNode {
    pub name: String,
    pub kind: String,
    /// `running`, `restarting`, …
    pub state: String,
    pub restarts: u32,
    pub detail: Option<String>,
    #[schema(no_recursion)]
    pub children: Vec<ActorNode>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PartitionRow {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// Records written but not yet committed; null until first measured.
    pub lag: Option<i64>,
    pub in_flight: usize,
    pub running_keys: usize,
    /// Paused at the log while a downstream's breaker is open.
    pub paused: bool,
    /// At `processing.max_in_flight_per_partition`: further records wait in the log client.
    pub full: bool,
    pub committed: Option<i64>,
    /// Keys of this partition not advancing (in backoff or behind an open breaker).
    pub stuck_keys: usize,
    /// Keys of this partition parked behind a dead letter (`GET /admin/parked-keys` lists them).
    pub parked_keys: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BreakerRow {
    pub name: String,
    /// `closed`, `half_open` or `open`.
    pub state: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeadLetterCounts {
    pub total: u64,
    pub by_error_class: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OutboxStatus {
    /// Records not yet published.
    pub backlog: u64,
}

/// Keys not advancing, longest stuck first: at most the page's limit, and the exact total.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct StuckKeyList {
    /// Keys not advancing in all (the list may be shorter).
    pub total: usize,
    pub keys: Vec<crate::consumer::StuckKey>,
}

/// How many stuck keys `/admin/status.json` lists (`/admin/stuck-keys` pages further).
pub const STATUS_STUCK_KEYS: usize = 50;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SystemStatus {
    pub version: String,
    pub uptime_secs: u64,
    pub log_backend: String,
    /// What `/ready` answers now.
    pub readiness: crate::readiness::Verdict,
    /// Backends and subsystems that are down, by name.
    pub down: Vec<String>,
    /// `ok` or `error: …` per backend.
    pub checks: BTreeMap<String, String>,
    pub supervision: Vec<ActorNode>,
    pub partitions: Vec<PartitionRow>,
    pub breakers: Vec<BreakerRow>,
    /// Keys not advancing, longest stuck first (at most 50 listed).
    pub stuck_keys: StuckKeyList,
    /// Keys parked behind a dead letter, oldest first (at most 50 listed; `GET
    /// /admin/parked-keys` pages further). Null when the store cannot be read.
    pub parked_keys: Option<Vec<crate::parked::ParkedKeyView>>,
    /// Null when the store cannot be read.
    pub dead_letters: Option<DeadLetterCounts>,
    pub outbox: Option<OutboxStatus>,
}

/// Gathers the stuck keys of `partitions` (optionally of one topic) into one list of at most
/// `limit`, longest stuck first, with the exact total.
pub fn stuck_keys<'a>(
    partitions: impl IntoIterator<Item = &'a crate::consumer::PartitionStatus>,
    topic: Option<&str>,
    limit: usize,
) -> StuckKeyList {
    let mut total = 0;
    let mut keys = Vec::new();
    for p in partitions.into_iter().filter(|p| topic.is_none_or(|t| p.tp.topic == t)) {
        total += p.stuck_total;
        keys.extend(p.stuck.iter().cloned());
    }
    crate::consumer::sort_stuck(&mut keys);
    keys.truncate(limit);
    StuckKeyList { total, keys }
}

/// A node of the supervision tree.
pub fn node(name: impl Into<String>, kind: &str, state: &str, restarts: u32, detail: Option<String>) -> ActorNode {
    ActorNode { name: name.into(), kind: kind.into(), state: state.into(), restarts, detail, children: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::{PartitionStatus, StuckErrorClass, StuckKey, StuckReason};
    use crate::log::TopicPartition;

    fn partition(topic: &str, n: i32, since: &[i64], total: usize) -> PartitionStatus {
        let stuck = since
            .iter()
            .map(|s| StuckKey {
                topic: topic.into(),
                partition: n,
                key: format!("k{s}"),
                handler: "h".into(),
                offset: 0,
                reason: StuckReason::Backoff,
                since_ms: *s,
                attempts: 1,
                error_class: StuckErrorClass::Retryable,
                error: "e".into(),
                next_attempt_ms: None,
            })
            .collect();
        PartitionStatus {
            tp: TopicPartition::new(topic, n),
            in_flight: 0,
            active_keys: 0,
            running_keys: 0,
            paused: false,
            full: false,
            committed: None,
            stuck,
            stuck_total: total,
            parked_keys: 0,
        }
    }

    #[test]
    fn stuck_keys_merge_across_partitions_longest_stuck_first_and_count_beyond_the_limit() {
        let parts = [partition("a", 0, &[30, 10], 2), partition("a", 1, &[20], 5), partition("b", 0, &[5], 1)];
        let all = stuck_keys(&parts, None, 3);
        assert_eq!(all.total, 8, "the per-partition totals, not the listed entries");
        assert_eq!(all.keys.iter().map(|k| k.since_ms).collect::<Vec<_>>(), [5, 10, 20]);
        let of_a = stuck_keys(&parts, Some("a"), 10);
        assert_eq!((of_a.total, of_a.keys.len()), (7, 3));
        assert!(of_a.keys.iter().all(|k| k.topic == "a"));
    }
}
