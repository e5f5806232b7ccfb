//! Metric names of the HTTP front end (OpenTelemetry semantic conventions where they exist).

use std::sync::OnceLock;

use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};

pub const REQUEST_DURATION: &str = "http.server.request.duration";
pub const ACTIVE_REQUESTS: &str = "http.server.active_requests";
pub const INGEST_ACCEPTED: &str = "conveyor.ingest.accepted";
pub const INGEST_REJECTED: &str = "conveyor.ingest.rejected";
pub const RATE_LIMITED: &str = "conveyor.http.rate_limited";

pub const ROUTE: &str = "http.route";
pub const METHOD: &str = "http.request.method";
pub const STATUS_CLASS: &str = "http.response.status_class";
pub const REASON: &str = "reason";
/// `auth` or `api`.
pub const GROUP: &str = "group";
/// `ip` or `subject`.
pub const SCOPE: &str = "scope";

pub struct HttpMetrics {
    pub request_duration: Histogram<f64>,
    pub active_requests: UpDownCounter<i64>,
    pub ingest_accepted: Counter<u64>,
    pub ingest_rejected: Counter<u64>,
    pub rate_limited: Counter<u64>,
}

pub fn metrics() -> &'static HttpMetrics {
    static M: OnceLock<HttpMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let meter = opentelemetry::global::meter("conveyor.http");
        HttpMetrics {
            request_duration: meter
                .f64_histogram(REQUEST_DURATION)
                .with_unit("s")
                .with_description("HTTP request duration by route template, method and status class")
                .with_boundaries(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .build(),
            active_requests: meter.i64_up_down_counter(ACTIVE_REQUESTS).with_unit("{request}").build(),
            ingest_accepted: meter
                .u64_counter(INGEST_ACCEPTED)
                .with_unit("{event}")
                .with_description("Events acknowledged by the log and answered 202")
                .build(),
            ingest_rejected: meter
                .u64_counter(INGEST_REJECTED)
                .with_unit("{event}")
                .with_description("Events refused, by reason")
                .build(),
            rate_limited: meter
                .u64_counter(RATE_LIMITED)
                .with_unit("{request}")
                .with_description("Requests answered 429, by route group and limit scope")
                .build(),
        }
    })
}

/// `2xx`, `4xx`… — a bounded label.
pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// The method as a metric label: a client may send any token as a method, so only the
/// standard ones are named (OpenTelemetry's `_OTHER` convention).
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_bounded_sets() {
        assert_eq!(method_label(&http::Method::PATCH), "PATCH");
        let invented = http::Method::from_bytes(b"BREW").unwrap_or(http::Method::GET);
        assert_eq!(method_label(&invented), "_OTHER");
        assert_eq!((status_class(204), status_class(599), status_class(999)), ("2xx", "5xx", "5xx"));
    }
}
