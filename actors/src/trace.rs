//! W3C trace context as it crosses the log: the front end writes `traceparent` into each
//! record's headers, consumers read it back so their logs carry the request's trace id.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::log::Record;

/// Whether spans are recorded at all (an exporter is configured). When not, the runtime
/// makes no spans inside a trace that already has its id: the record's or request's
/// context is passed on as it is, so trace ids still cross the log and reach the logs, and
/// the per-record span objects (a fifth of the processing path's CPU) are not built.
static RECORDING: AtomicBool = AtomicBool::new(true);

/// Set once at start-up by whoever installs the tracer provider.
pub fn set_recording(on: bool) {
    RECORDING.store(on, Ordering::Relaxed);
}

pub fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

pub const TRACEPARENT: &str = "traceparent";

/// The trace id of a `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if well-formed.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()) && trace != "0".repeat(32)).then_some(trace)
}

/// A record's `traceparent` header, or `""`.
fn traceparent(record: &Record) -> &str {
    record.header(TRACEPARENT).and_then(|v| std::str::from_utf8(v).ok()).unwrap_or_default()
}

/// The trace id a record carries, or `""`.
pub fn record_trace_id(record: &Record) -> &str {
    trace_id(traceparent(record)).unwrap_or_default()
}

/// The OpenTelemetry context a record carries (its `traceparent`), for a consumer span;
/// `None` when it carries none.
pub fn context_of(record: &Record) -> Option<opentelemetry::Context> {
    let value = traceparent(record);
    if value.is_empty() {
        return None;
    }
    Some(opentelemetry::global::get_text_map_propagator(|p| p.extract(&Traceparent(value))))
}

/// Shows the propagator a record's `traceparent` and nothing else, without copying it (this
/// runs once per key turn).
struct Traceparent<'a>(&'a str);

impl opentelemetry::propagation::Extractor for Traceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// The `traceparent` naming `cx`'s span, to write into a record; empty when `cx` has none.
pub fn traceparent_of(cx: &opentelemetry::Context) -> String {
    let mut carrier = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(cx, &mut carrier));
    carrier.remove(TRACEPARENT).unwrap_or_default()
}

/// Runs `work` inside a child span named `name` of the current span, if there is one (a
/// request or a record being processed); background work makes no root spans of its own.
pub async fn child_span<T>(name: &'static str, work: impl Future<Output = T>) -> T {
    use opentelemetry::context::FutureExt;
    use opentelemetry::trace::{TraceContextExt, Tracer};
    let parent = opentelemetry::Context::current();
    if !recording() || !parent.has_active_span() {
        return work.await;
    }
    let tracer = opentelemetry::global::tracer("conveyor.actors");
    let cx = parent.with_span(tracer.start_with_context(name, &parent));
    let out = work.with_context(cx.clone()).await;
    cx.span().end();
    out
}

/// Runs a produce inside a producer span, a child of the current span: `send` is given the
/// `traceparent` naming that span, for the record's headers, so the consumer's span becomes
/// its child and the trace reads request → produce → consume → store as one chain.
pub async fn produce_span<T, Fut: Future<Output = T>>(name: &'static str, send: impl FnOnce(String) -> Fut) -> T {
    use opentelemetry::context::FutureExt;
    use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
    let parent = opentelemetry::Context::current();
    if !recording() || !parent.has_active_span() {
        return send(traceparent_of(&parent)).await;
    }
    let tracer = opentelemetry::global::tracer("conveyor.actors");
    let span = tracer.span_builder(name).with_kind(SpanKind::Producer).start_with_context(&tracer, &parent);
    let cx = parent.with_span(span);
    let out = send(traceparent_of(&cx)).with_context(cx.clone()).await;
    cx.span().end();
    out
}

#[cfg(test)]
mod tests {
    use super::trace_id;

    #[test]
    fn reads_the_trace_id_of_a_traceparent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(tp), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(trace_id("00-xyz-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id(""), None);
    }
}
