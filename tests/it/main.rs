//! Conveyor's integration suite: every test spawns the `conveyor` binary on port 0 with its
//! own topics, consumer group, schema and key prefix, so tests run in parallel. The same
//! tests run against the embedded backends and, with `CONVEYOR_IT_BACKENDS=real`, against
//! PostgreSQL + Redis + a Kafka-protocol broker started by `scripts/services.sh`.

#![allow(clippy::unwrap_used)]

mod broker_restart;
mod browser;
mod cluster;
mod console;
mod crash;
mod dead_letters;
mod devices;
mod frontend;
mod harness;
mod idempotency;
mod identity;
mod ingest;
mod kafka_flow;
mod leases;
mod lifecycle;
mod observability;
mod otlp;
mod packaging;
mod parked;
mod probes;
mod quickstart;
mod replays;
mod resilience;
mod retention;
mod saga;
mod sink;
mod stuck_keys;
mod supervision;
mod tls;
mod webdriver;
mod webhooks;
mod webhooks_ordered;
mod workflow_cancel;
mod workflows;

// Services of one test's own, from the test kit.
use conveyor_testkit::private;
