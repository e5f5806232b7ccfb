//! Conveyor's runtime: the log, consumer supervision, partition actors and key tasks,
//! retry and backoff, circuit breakers, dead letters, the cache, lag, retention as a
//! mechanism and the store handle. It knows no domain: the domains (`domains/*`) plug in
//! as [`consumer::KeyHandler`]s, [`supervision::Service`]s and [`retention::PurgeRule`]s,
//! and `engine` wires them into one tree.
//!
//! # The supervision tree
//!
//! One tree: every long-lived actor has a parent that restarts it with backoff (1 s, 2 s,
//! 4 s … 60 s), counts the restart (`conveyor.actor.restarts`) and reports it down in
//! `/ready` and on the status page until it is back. Services are reached through handles
//! that read the current incarnation from a [`supervision::Slot`]; on-demand children
//! (one per account, endpoint or run) are kept in a [`supervision::Children`].
//!
//! ```text
//! RootSupervisor                      restarts a failed child with backoff
//! ├── service "ledger"                LedgerSupervisor (identity): one AccountActor per account
//! ├── service "outbox-relay"          OutboxRelay (identity): publishes the outbox table
//! ├── service "webhook-dispatcher"    DispatcherActor (webhooks): one EndpointActor per endpoint
//! │                                   with work: limiter, breaker, budget; retired when idle
//! ├── service "workflow-runs"         RunSupervisor (workflows): one RunActor per executing run
//! ├── service "retention"             RetentionActor (here): purges in batches ([`retention`])
//! ├── service "dead-letter-replay"    ReplayActor (here): runs the replay jobs ([`replay`])
//! ├── ConsumerSupervisor  (group events-processor, topic events-input)   rejoins its group
//! │   ├── PartitionActor events-input/0 ─┬─ key task "device-1"   one at a time per key,
//! │   ├── PartitionActor events-input/1  ├─ key task "device-7"   many keys at once
//! │   └── …  spawned on assign,          └─ …                     (retry/backoff, dead letters)
//! │          drained + committed on revoke
//! ├── ConsumerSupervisor  (group loyalty, topic registration)
//! ├── ConsumerSupervisor  (group identity-saga, topic loyalty)
//! ├── ConsumerSupervisor  (group webhooks-fanout, topic notifications)
//! ├── ConsumerSupervisor  (group workflows, topic workflows.command)
//! └── ConsumerSupervisor  (group conveyor-dlq-index, topic events-dlq) → dlq::DeadLetterIndexer
//! ```
//! Which handler serves which topic is decided in one place, `engine/src/system.rs`.
//! Services start before the groups (handlers call them) and stop after the groups have
//! drained and committed. Plain loops are tasks, not actors: the workflow scheduler, the lag
//! monitor and the webhook attempt writer. The producer ([`log::Producer`]), the store
//! ([`store::Store`]) and the cache ([`cache::Cache`]) are shared handles, not actors.
//!
//! # One key's records, top to bottom
//!
//! 1. The log backend owns the group membership. On assignment it calls
//!    [`log::GroupListener::assigned`]; the [`consumer::ConsumerSupervisor`] spawns one
//!    [`consumer::PartitionActor`] per partition. Fetched records go straight to that
//!    actor's mailbox ([`log::GroupListener::deliver`]), admitted by its [`log::Intake`]:
//!    at the in-flight bound the backend holds the next record back instead of buffering it.
//! 2. The partition actor queues the record behind its key. When the key is idle and a
//!    concurrency slot is free it starts a key task with everything queued for that key.
//!    Keys run concurrently; one key never has two tasks.
//! 3. The key task calls the topic's [`consumer::KeyHandler`]. Failures are classified
//!    ([`retry::ErrorClass`]): retryable ones back off on this key only
//!    ([`retry::RetryPolicy`], full jitter), permanent or exhausted ones are written to the
//!    dead-letter topic before the record counts as done.
//! 4. The partition actor marks the offsets done; its [`consumer::OffsetTracker`] yields
//!    the lowest unfinished offset, which is committed on a timer, on revoke and on shutdown.

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
pub mod parked;
pub mod readiness;
pub mod recent;
pub mod replay;
pub mod retention;
pub mod retry;
pub mod root;
pub mod status;
pub mod store;
pub mod supervision;
pub mod trace;

pub use error::Error;
pub use readiness::Component;
