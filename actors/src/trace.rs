//! W3C trace context as it crosses the log: the front end writes `traceparent` into each
//! record's headers, consumers read it back so their logs carry the request's trace id.

use crate::log::Record;

pub const TRACEPARENT: &str = "traceparent";

/// The trace id of a `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if well-formed.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()) && trace != "0".repeat(32)).then_some(trace)
}

/// The trace id a record carries, or `""`.
pub fn record_trace_id(record: &Record) -> &str {
    record.header(TRACEPARENT).and_then(|v| std::str::from_utf8(v).ok()).and_then(trace_id).unwrap_or_default()
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
