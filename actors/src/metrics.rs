//! Metric names of the runtime: dotted OpenTelemetry names with units; labels come
//! from bounded sets only (topic, partition number, outcome, error class — never a key).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, OnceLock};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, UpDownCounter};

pub const RECORDS_PROCESSED: &str = "conveyor.partition.records.processed";
pub const PROCESSING_DURATION: &str = "conveyor.partition.processing.duration";
pub const IN_FLIGHT: &str = "conveyor.partition.in_flight";
pub const LAG: &str = "conveyor.partition.lag";
pub const PARTITION_PAUSES: &str = "conveyor.partition.pauses";
pub const RETRIES: &str = "conveyor.handler.retries";
pub const DEAD_LETTERS: &str = "conveyor.dlq.records.written";
pub const DEAD_LETTERS_REPLAYED: &str = "conveyor.dlq.records.replayed";
/// Dead letters handled by replay jobs, by outcome (replayed, skipped, failed).
pub const REPLAY_JOB_RECORDS: &str = "conveyor.dlq.replay.records";
/// Replay jobs entering a state (running at creation or resume, paused, cancelled, completed, failed).
pub const REPLAY_JOBS: &str = "conveyor.dlq.replay.jobs";
pub const CACHE_HITS: &str = "conveyor.cache.hits";
pub const CACHE_MISSES: &str = "conveyor.cache.misses";
pub const CACHE_ERRORS: &str = "conveyor.cache.errors";
pub const STORE_DURATION: &str = "conveyor.store.query.duration";
/// From a producer's send to the log's durable acknowledgement (embedded: the group
/// commit's fdatasync; Kafka: acks=all), by topic and outcome (`ok`, `error`). What a 202
/// waits for.
pub const LOG_APPEND_DURATION: &str = "conveyor.log.append.duration";
pub const STORE_BATCH_ROWS: &str = "conveyor.store.batch.rows";
pub const ACTOR_RESTARTS: &str = "conveyor.actor.restarts";
pub const BREAKER_TRANSITIONS: &str = "conveyor.breaker.transitions";
pub const BREAKER_STATE: &str = "conveyor.breaker.state";
pub const DOWNSTREAM_WAITS: &str = "conveyor.handler.downstream_waits";
pub const RETENTION_PURGED: &str = "conveyor.retention.purged";
pub const STUCK_KEYS: &str = "conveyor.partition.keys.stuck";
/// Keys held behind a dead letter (`processing.on_dead_letter = "park"`), by topic and handler.
pub const PARKED_KEYS: &str = "conveyor.partition.keys.parked";
/// Records held behind a parked key, by topic.
pub const RECORDS_PARKED: &str = "conveyor.partition.records.parked";
/// Held records handed to the handler when their key was released, by topic.
pub const RECORDS_RELEASED: &str = "conveyor.partition.records.released";
/// Parking refused or ignored something, by topic and reason (park_limit, parked_overflow,
/// control_ignored).
pub const PARK_REFUSALS: &str = "conveyor.partition.park.refusals";

/// Label keys.
pub const TOPIC: &str = "topic";
pub const PARTITION: &str = "partition";
pub const OUTCOME: &str = "outcome";
pub const ERROR_CLASS: &str = "error.class";
pub const OPERATION: &str = "operation";
pub const ACTOR: &str = "actor";
pub const DOWNSTREAM: &str = "downstream";
pub const STATE: &str = "state";
pub const REASON: &str = "reason";
/// The handler serving a topic (`KeyHandler::name`, a fixed set).
pub const HANDLER: &str = "handler";
/// A store table (retention), from a fixed set.
pub const TABLE: &str = "table";

/// The crate's instruments, created once from the global meter provider.
pub struct Metrics {
    pub records_processed: Counter<u64>,
    pub processing_duration: Histogram<f64>,
    pub in_flight: UpDownCounter<i64>,
    pub partition_pauses: Counter<u64>,
    pub retries: Counter<u64>,
    pub dead_letters: Counter<u64>,
    pub dead_letters_replayed: Counter<u64>,
    pub dead_letter_replay_records: Counter<u64>,
    pub dead_letter_replay_jobs: Counter<u64>,
    pub cache_hits: Counter<u64>,
    pub cache_misses: Counter<u64>,
    pub cache_errors: Counter<u64>,
    pub store_duration: Histogram<f64>,
    pub log_append_duration: Histogram<f64>,
    pub store_batch_rows: Histogram<u64>,
    pub actor_restarts: Counter<u64>,
    pub breaker_transitions: Counter<u64>,
    pub downstream_waits: Counter<u64>,
    pub retention_purged: Counter<u64>,
    pub stuck_keys: UpDownCounter<i64>,
    pub parked_keys: UpDownCounter<i64>,
    pub records_parked: Counter<u64>,
    pub records_released: Counter<u64>,
    pub park_refusals: Counter<u64>,
}

/// Seconds buckets for every duration histogram (shared with the domains' instruments).
pub const DURATION_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl Metrics {
    fn new(meter: &Meter) -> Self {
        Metrics {
            records_processed: meter
                .u64_counter(RECORDS_PROCESSED)
                .with_unit("{record}")
                .with_description("Records finished by partition actors, by outcome")
                .build(),
            processing_duration: meter
                .f64_histogram(PROCESSING_DURATION)
                .with_unit("s")
                .with_description("Handler time per key batch, retries included")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            in_flight: meter
                .i64_up_down_counter(IN_FLIGHT)
                .with_unit("{record}")
                .with_description("Records received by partition actors and not yet done")
                .build(),
            partition_pauses: meter
                .u64_counter(PARTITION_PAUSES)
                .with_unit("{pause}")
                .with_description(
                    "Times a partition was paused at the log (in-flight bound reached or a downstream breaker open)",
                )
                .build(),
            retries: meter
                .u64_counter(RETRIES)
                .with_unit("{retry}")
                .with_description("Handler attempts that failed and were retried, by error class")
                .build(),
            dead_letters: meter
                .u64_counter(DEAD_LETTERS)
                .with_unit("{record}")
                .with_description("Records written to a dead-letter topic, by error class")
                .build(),
            cache_hits: meter.u64_counter(CACHE_HITS).with_unit("{lookup}").build(),
            cache_misses: meter.u64_counter(CACHE_MISSES).with_unit("{lookup}").build(),
            cache_errors: meter
                .u64_counter(CACHE_ERRORS)
                .with_unit("{error}")
                .with_description("Cache commands that failed, by operation")
                .build(),
            store_duration: meter
                .f64_histogram(STORE_DURATION)
                .with_unit("s")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            log_append_duration: meter
                .f64_histogram(LOG_APPEND_DURATION)
                .with_unit("s")
                .with_description("From send to the log's durable acknowledgement, by topic and outcome")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            store_batch_rows: meter
                .u64_histogram(STORE_BATCH_ROWS)
                .with_unit("{row}")
                .with_description("Rows per group-committed statement, by operation")
                .with_boundaries(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0])
                .build(),
            actor_restarts: meter
                .u64_counter(ACTOR_RESTARTS)
                .with_unit("{restart}")
                .with_description("Children restarted by their supervisor, by actor kind")
                .build(),
            breaker_transitions: meter
                .u64_counter(BREAKER_TRANSITIONS)
                .with_unit("{transition}")
                .with_description("Circuit breaker transitions, by downstream and new state")
                .build(),
            downstream_waits: meter
                .u64_counter(DOWNSTREAM_WAITS)
                .with_unit("{wait}")
                .with_description("Key tasks that waited for a downstream's breaker instead of spending an attempt")
                .build(),
            dead_letters_replayed: meter
                .u64_counter(DEAD_LETTERS_REPLAYED)
                .with_unit("{record}")
                .with_description("Dead letters sent back to their source topic, by topic")
                .build(),
            dead_letter_replay_records: meter
                .u64_counter(REPLAY_JOB_RECORDS)
                .with_unit("{record}")
                .with_description("Dead letters handled by replay jobs, by outcome (replayed, skipped, failed)")
                .build(),
            dead_letter_replay_jobs: meter
                .u64_counter(REPLAY_JOBS)
                .with_unit("{job}")
                .with_description("Replay jobs entering a state (running, paused, cancelled, completed, failed)")
                .build(),
            retention_purged: meter
                .u64_counter(RETENTION_PURGED)
                .with_unit("{row}")
                .with_description("Rows deleted by retention, by table")
                .build(),
            stuck_keys: meter
                .i64_up_down_counter(STUCK_KEYS)
                .with_unit("{key}")
                .with_description(
                    "Keys not advancing (in backoff, behind an open breaker or a failing dead-letter write), by topic and handler",
                )
                .build(),
            parked_keys: meter
                .i64_up_down_counter(PARKED_KEYS)
                .with_unit("{key}")
                .with_description("Keys held behind a dead letter until it is replayed or skipped, by topic and handler")
                .build(),
            records_parked: meter
                .u64_counter(RECORDS_PARKED)
                .with_unit("{record}")
                .with_description("Records held behind a parked key, by topic")
                .build(),
            records_released: meter
                .u64_counter(RECORDS_RELEASED)
                .with_unit("{record}")
                .with_description("Held records handed to the handler when their key was released, by topic")
                .build(),
            park_refusals: meter
                .u64_counter(PARK_REFUSALS)
                .with_unit("{record}")
                .with_description(
                    "Records parking refused (park_limit, parked_overflow: dead-lettered) or ignored (control_ignored), by topic and reason",
                )
                .build(),
        }
    }
}

/// The crate's instruments. The engine installs the meter provider before anything calls this.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::new(&opentelemetry::global::meter("conveyor.actors")))
}

pub fn kv(key: &'static str, value: impl Into<opentelemetry::Value>) -> KeyValue {
    KeyValue::new(key, value)
}

/// Restarts in this process by node of the supervision tree (a partition, a consumer group,
/// an actor kind), for the status page; `conveyor.actor.restarts` carries the kind only.
static RESTARTS: LazyLock<Mutex<HashMap<String, u32>>> = LazyLock::new(Mutex::default);

/// Counts a restart of an actor of `kind` (a bounded label) at `node` on the status page.
pub fn restarted(kind: &'static str, node: &str) {
    metrics().actor_restarts.add(1, &[kv(ACTOR, kind)]);
    *RESTARTS.lock().unwrap_or_else(|e| e.into_inner()).entry(node.to_string()).or_default() += 1;
}

/// Restarts counted at `node` so far.
pub fn restarts_of(node: &str) -> u32 {
    RESTARTS.lock().unwrap_or_else(|e| e.into_inner()).get(node).copied().unwrap_or(0)
}
