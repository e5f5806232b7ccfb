//! Conveyor's actor system and every side effect: the log, the store, the cache, and the
//! handlers that turn records into state.
//!
//! # The supervision tree
//!
//! One tree: every long-lived actor has a parent that restarts it with backoff (1 s, 2 s,
//! 4 s … 60 s), counts the restart (`conveyor.actor.restarts`) and reports it down in
//! `/ready` and on the status page until it is back. Services are reached through handles
//! that read the current incarnation from a [`supervision::Slot`].
//!
//! ```text
//! RootSupervisor                      restarts a failed child with backoff
//! ├── LedgerSupervisor  "ledger"      service: one AccountActor per loyalty account
//! │   └── AccountActor …              spawned on demand, retired when idle
//! ├── OutboxRelay  "outbox-relay"     service: publishes the outbox table, retries with backoff
//! ├── DispatcherActor  "webhook-dispatcher"  service: polls due retries, wakes endpoints
//! │   └── EndpointActor ep_…          one per endpoint with work: limiter, breaker, budget;
//! │                                   retired when idle
//! ├── RunSupervisor  "workflow-runs"  service: leases due runs, per-user limits
//! │   └── RunActor run_…              one per executing run: step, checkpoint, step …
//! ├── RetentionActor  "retention"     service: purges finished rows in batches ([`retention`])
//! ├── ConsumerSupervisor  (group events-processor, topic events-input)   rejoins its group
//! │   ├── PartitionActor events-input/0 ─┬─ key task "device-1"   one at a time per key,
//! │   ├── PartitionActor events-input/1  ├─ key task "device-7"   many keys at once
//! │   └── …  spawned on assign,          └─ …                     (retry/backoff, dead letters)
//! │          drained + committed on revoke
//! ├── ConsumerSupervisor  (group loyalty, topic registration)      → loyalty::LoyaltyHandler
//! ├── ConsumerSupervisor  (group identity-saga, topic loyalty)     → saga::IdentitySagaHandler
//! ├── ConsumerSupervisor  (group webhooks-fanout, topic notifications) → webhooks::fanout
//! ├── ConsumerSupervisor  (group workflows, topic workflows.command) → workflows::commands
//! └── ConsumerSupervisor  (group conveyor-dlq-index, topic events-dlq) → dlq::DeadLetterIndexer
//! ```
//! Services start before the groups (handlers call them) and stop after the groups have
//! drained and committed. Plain loops are tasks, not actors: the workflow scheduler, the lag
//! monitor and the webhook attempt writer.
//! Webhook delivery ([`webhooks`]) follows a notification from `POST /notifications` to the
//! endpoints' sinks; [`workflows`] follows a trigger to a run's last checkpoint.
//! The registration saga ([`saga`]) is choreographed across the three groups above.
//! The producer ([`log::Producer`]), the store ([`store::Store`]) and the cache
//! ([`cache::Cache`]) are shared handles, not actors: they are clients with their own pools.
//!
//! # One event, top to bottom
//!
//! 1. `POST /events` (crate `conveyor-http`) checks the token and the body, builds a
//!    [`devices::DeviceEvent`], and calls [`log::Producer::send`] keyed by `device_id`.
//!    It answers 202 only after the log acknowledged the record (fsync for the embedded
//!    log, `acks=all` for Kafka).
//! 2. The log backend owns the group membership. On assignment it calls
//!    [`log::GroupListener::assigned`]; the [`consumer::ConsumerSupervisor`] spawns one
//!    [`consumer::PartitionActor`] per partition. Fetched records go straight to that
//!    actor's mailbox ([`log::GroupListener::deliver`]).
//! 3. The partition actor queues the record behind its key. When the key is idle and a
//!    concurrency slot is free it starts a key task with everything queued for that key.
//!    Keys run concurrently; one key never has two tasks. Past the in-flight bound the
//!    partition is paused at the log instead of buffering.
//! 4. The key task calls the handler — [`devices::DeviceHandler`] upserts `resources`
//!    guarded by the record's offset (an older event never overwrites a newer one) and
//!    writes the new row through to `resource:{id}` in the cache. Failures are classified
//!    ([`retry::ErrorClass`]): retryable ones back off on this key only, permanent or
//!    exhausted ones are written to the dead-letter topic before the record counts as done.
//! 5. The partition actor marks the offsets done; its [`consumer::OffsetTracker`] yields
//!    the lowest unfinished offset, which is committed on a timer, on revoke and on shutdown.
//! 6. `GET /resource/{id}` reads through [`devices::Resources`]: cache, then store, then
//!    fills the cache for `cache.resource_ttl_secs`.

pub mod breaker;
pub mod cache;
pub use conveyor_config as config;
pub mod consumer;
pub mod dlq;
pub mod domain_events;
pub mod error;
pub mod json;
pub mod lag;
pub mod log;
pub mod metrics;
pub mod readiness;
pub mod recent;
pub mod retention;
pub mod retry;
pub mod root;
pub mod status;
pub mod store;
pub mod supervision;
pub mod trace;

pub use error::Error;
pub use readiness::Component;
