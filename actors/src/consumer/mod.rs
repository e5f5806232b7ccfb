//! Owning partitions: the consumer supervisor, one partition actor per assigned partition,
//! and the per-key work inside it.

mod dead_letter;
pub mod faults;
mod key_run;
mod key_task;
mod offsets;
#[cfg(test)]
mod park_tests;
mod parking;
mod partition;
mod stuck;
mod supervisor;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;

pub use dead_letter::{DeadLetterMeta, DeadLetters, dlq_headers, headers as dlq_header};
pub use offsets::OffsetTracker;
pub use parking::{ParkRefusal, ParkSpec, headers as park_header};
pub use partition::{PartitionActor, PartitionArgs, PartitionHandle, PartitionMsg, PartitionState, PartitionStatus};
pub use stuck::{StuckErrorClass, StuckKey, StuckKeys, StuckReason, sort as sort_stuck};
pub use supervisor::{ConsumerArgs, ConsumerSupervisor, ConsumerSupervisorHandle, SupervisorMsg};

use crate::breaker::Breaker;
use crate::log::Record;
use crate::retry::HandlerError;

/// Business logic for one source topic. Records of one key arrive in offset order, one
/// call at a time per key; calls for different keys run concurrently.
#[async_trait]
pub trait KeyHandler: Send + Sync + 'static {
    /// A bounded name for logs and metrics, e.g. `devices`.
    fn name(&self) -> &'static str;

    /// The downstreams this handler cannot work without. While one's breaker is open the
    /// partition pauses, and failing keys wait for it instead of spending attempts.
    fn breakers(&self) -> Vec<Arc<Breaker>> {
        Vec::new()
    }

    /// Whether the test-only per-key fault hook (`faults.rs`) applies to this handler.
    fn fault_injectable(&self) -> bool {
        true
    }

    /// Handles `records` (one or more, same key, ascending offsets). Several records arrive
    /// together only when they queued up behind a running call; a handler may coalesce them.
    /// Must be idempotent: after a crash or rebalance a record can be handled again.
    async fn handle(&self, key: &str, records: &[Record]) -> Result<(), HandlerError>;
}
