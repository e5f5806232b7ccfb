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
    pub paused: bool,
    pub committed: Option<i64>,
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
    /// Null when the store cannot be read.
    pub dead_letters: Option<DeadLetterCounts>,
    pub outbox: Option<OutboxStatus>,
}

/// A node of the supervision tree.
pub fn node(name: impl Into<String>, kind: &str, state: &str, restarts: u32, detail: Option<String>) -> ActorNode {
    ActorNode { name: name.into(), kind: kind.into(), state: state.into(), restarts, detail, children: Vec::new() }
}
