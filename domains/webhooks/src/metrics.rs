//! Metric names of webhook delivery: dotted OpenTelemetry names with units; labels from bounded sets
//! only (label keys and `kv` are the runtime's).

use std::sync::OnceLock;

use opentelemetry::metrics::{Counter, Histogram, Meter};

pub const WEBHOOK_NOTIFICATIONS: &str = "conveyor.webhook.notifications";
pub const WEBHOOK_ATTEMPTS: &str = "conveyor.webhook.attempts";
pub const WEBHOOK_ATTEMPT_DURATION: &str = "conveyor.webhook.attempt.duration";
pub const WEBHOOK_DELIVERIES: &str = "conveyor.webhook.deliveries";
pub const WEBHOOK_ENDPOINTS_DISABLED: &str = "conveyor.webhook.endpoints.disabled";
pub const WEBHOOK_DELIVERIES_UNKEYED: &str = "conveyor.webhook.deliveries.unkeyed";
pub const WEBHOOK_ATTEMPT_RECORDS_DROPPED: &str = "conveyor.webhook.attempt_records.dropped";

/// The crate's instruments.
pub struct Metrics {
    pub webhook_notifications: Counter<u64>,
    pub webhook_attempts: Counter<u64>,
    pub webhook_attempt_duration: Histogram<f64>,
    pub webhook_deliveries: Counter<u64>,
    pub webhook_endpoints_disabled: Counter<u64>,
    pub webhook_deliveries_unkeyed: Counter<u64>,
    pub webhook_attempt_records_dropped: Counter<u64>,
}

impl Metrics {
    fn new(meter: &Meter) -> Self {
        Metrics {
            webhook_notifications: meter
                .u64_counter(WEBHOOK_NOTIFICATIONS)
                .with_unit("{notification}")
                .with_description("Notifications posted, by outcome (accepted, duplicate)")
                .build(),
            webhook_attempts: meter
                .u64_counter(WEBHOOK_ATTEMPTS)
                .with_unit("{attempt}")
                .with_description("Webhook delivery attempts by outcome (succeeded, failed) and error class")
                .build(),
            webhook_attempt_duration: meter
                .f64_histogram(WEBHOOK_ATTEMPT_DURATION)
                .with_unit("s")
                .with_description("Time from sending a webhook to its response (or failure), by outcome")
                .with_boundaries(conveyor_actors::metrics::DURATION_BUCKETS.to_vec())
                .build(),
            webhook_deliveries: meter
                .u64_counter(WEBHOOK_DELIVERIES)
                .with_unit("{delivery}")
                .with_description("Webhook deliveries finished or resent, by outcome (succeeded, exhausted, resent)")
                .build(),
            webhook_endpoints_disabled: meter
                .u64_counter(WEBHOOK_ENDPOINTS_DISABLED)
                .with_unit("{endpoint}")
                .with_description("Endpoints disabled by delivery, by reason (gone, failing)")
                .build(),
            webhook_deliveries_unkeyed: meter
                .u64_counter(WEBHOOK_DELIVERIES_UNKEYED)
                .with_unit("{delivery}")
                .with_description(
                    "Deliveries to an ordered endpoint whose notification had no ordering key (sent unordered)",
                )
                .build(),
            webhook_attempt_records_dropped: meter
                .u64_counter(WEBHOOK_ATTEMPT_RECORDS_DROPPED)
                .with_unit("{record}")
                .with_description(
                    "Attempt history records not written (the store refused them five times, or the writer stopped); \
                     the deliveries' own rows are unaffected",
                )
                .build(),
        }
    }
}

/// The crate's instruments. The engine installs the meter provider before anything calls this.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::new(&opentelemetry::global::meter("conveyor.webhooks")))
}
