//! Metric names of the device pipeline: dotted OpenTelemetry names with units; labels from bounded sets
//! only (label keys and `kv` are the runtime's).

use std::sync::OnceLock;

use opentelemetry::metrics::{Counter, Meter};

pub const STALE_WRITES: &str = "conveyor.devices.stale_writes";

/// The crate's instruments.
pub struct Metrics {
    pub stale_writes: Counter<u64>,
}

impl Metrics {
    fn new(meter: &Meter) -> Self {
        Metrics {
            stale_writes: meter
                .u64_counter(STALE_WRITES)
                .with_unit("{write}")
                .with_description(
                    "Device events skipped because the stored row came from a later offset (replays, redeliveries)",
                )
                .build(),
        }
    }
}

/// The crate's instruments. The engine installs the meter provider before anything calls this.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::new(&opentelemetry::global::meter("conveyor.devices")))
}
