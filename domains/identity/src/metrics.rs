//! Metric names of identity, loyalty, the saga and its outbox: dotted OpenTelemetry names with units; labels from bounded sets
//! only (label keys and `kv` are the runtime's).

use std::sync::OnceLock;

use opentelemetry::metrics::{Counter, Meter};

pub const SAGA_STEPS: &str = "conveyor.saga.steps";
pub const LOYALTY_OPERATIONS: &str = "conveyor.loyalty.operations";
pub const OUTBOX_RECORDS: &str = "conveyor.outbox.records";

/// The crate's instruments.
pub struct Metrics {
    pub saga_steps: Counter<u64>,
    pub loyalty_operations: Counter<u64>,
    pub outbox_records: Counter<u64>,
}

impl Metrics {
    fn new(meter: &Meter) -> Self {
        Metrics {
            saga_steps: meter
                .u64_counter(SAGA_STEPS)
                .with_unit("{step}")
                .with_description("Saga steps by saga, step and outcome (completed, failed, compensated)")
                .build(),
            loyalty_operations: meter
                .u64_counter(LOYALTY_OPERATIONS)
                .with_unit("{operation}")
                .with_description("Ledger operations by operation (deposit, withdraw, welcome) and outcome (applied, replayed, refused)")
                .build(),
            outbox_records: meter
                .u64_counter(OUTBOX_RECORDS)
                .with_unit("{record}")
                .with_description("Outbox publish attempts by outcome (published, failed)")
                .build(),
        }
    }
}

/// The crate's instruments. The engine installs the meter provider before anything calls this.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::new(&opentelemetry::global::meter("conveyor.identity")))
}
