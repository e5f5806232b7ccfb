//! What the handlers may call: the domains' facades and the operator's view of the running
//! system. The engine builds one [`Facades`] at start-up; no handler reaches a store, a topic
//! or a breaker of its own.

use std::sync::Arc;

use async_trait::async_trait;

use conveyor_actors::Error;
use conveyor_actors::breaker::Breaker;
use conveyor_actors::config::Config;
use conveyor_actors::dlq::DeadLetterAdmin;
use conveyor_actors::lag::Lag;
use conveyor_actors::parked::ParkedKeysAdmin;
use conveyor_actors::readiness::Readiness;
use conveyor_actors::replay::Replays;
use conveyor_actors::status::SystemStatus;
use conveyor_actors::store::idempotency::IdempotencyKeys;
use conveyor_devices::{Ingest, Resources};
use conveyor_identity::Identity;
use conveyor_identity::loyalty::{Ledger, LoyaltyReads};
use conveyor_webhooks::Webhooks;
use conveyor_workflows::Workflows;

/// The operator's questions to the running system (the engine answers them).
#[async_trait]
pub trait Operations: Send + Sync {
    /// Each backend checked within a short bound, and which supervised children are down.
    async fn readiness(&self) -> Readiness;
    /// The status page's snapshot.
    async fn status(&self) -> SystemStatus;
    /// Keys not advancing (optionally of one topic), longest stuck first, at most `limit`.
    async fn stuck_keys(&self, topic: Option<&str>, limit: usize) -> conveyor_actors::status::StuckKeyList;
    /// Test-only fault hook: makes the named service panic (`faults.allow_panic_injection`).
    async fn inject_panic(&self, subsystem: &str) -> Result<(), Error>;
    /// Every downstream's circuit breaker.
    fn breakers(&self) -> Vec<Arc<Breaker>>;
}

/// Everything a handler calls.
pub struct Facades {
    pub config: Arc<Config>,
    /// `POST /events`: device events into the log.
    pub events: Ingest,
    /// `GET /resource/{id}`: cache, then store.
    pub resources: Resources,
    pub dead_letters: DeadLetterAdmin,
    /// Keys parked behind a dead letter.
    pub parked: ParkedKeysAdmin,
    /// Dead-letter replay jobs.
    pub replays: Replays,
    /// Users, tokens, revocation.
    pub identity: Identity,
    /// Loyalty changes, one account actor each.
    pub ledger: Ledger,
    /// Balances, ledgers and sagas.
    pub loyalty: LoyaltyReads,
    /// Notifications, webhook endpoints and their deliveries.
    pub webhooks: Webhooks,
    /// Workflow definitions and their runs.
    pub workflows: Workflows,
    /// `Idempotency-Key`s and their answers, in the store.
    pub idempotency: IdempotencyKeys,
    /// Consumer lag of the input partitions (front-door back-pressure).
    pub lag: Arc<Lag>,
    pub ops: Arc<dyn Operations>,
}
