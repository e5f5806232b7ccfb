//! Metric names of workflows: dotted OpenTelemetry names with units; labels from bounded sets
//! only (label keys and `kv` are the runtime's).

use std::sync::OnceLock;

use opentelemetry::metrics::{Counter, Meter};

pub const WORKFLOW_RUNS: &str = "conveyor.workflow.runs";
pub const WORKFLOW_STEP_ATTEMPTS: &str = "conveyor.workflow.step.attempts";

/// The crate's instruments.
pub struct Metrics {
    pub workflow_runs: Counter<u64>,
    pub workflow_step_attempts: Counter<u64>,
}

impl Metrics {
    fn new(meter: &Meter) -> Self {
        Metrics {
            workflow_runs: meter
                .u64_counter(WORKFLOW_RUNS)
                .with_unit("{run}")
                .with_description("Workflow runs by outcome (started, succeeded, failed, cancelled, resumed)")
                .build(),
            workflow_step_attempts: meter
                .u64_counter(WORKFLOW_STEP_ATTEMPTS)
                .with_unit("{attempt}")
                .with_description("Workflow http step attempts by outcome (succeeded, retried, failed) and error class")
                .build(),
        }
    }
}

/// The crate's instruments. The engine installs the meter provider before anything calls this.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::new(&opentelemetry::global::meter("conveyor.workflows")))
}
