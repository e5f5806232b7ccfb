//! Writing a record that exhausted its policy to the dead-letter topic.

use std::sync::Arc;
use std::time::Duration;

use crate::log::{Header, OutgoingRecord, Producer, Record};
use crate::retry::{ErrorClass, HandlerError};

/// Where a source topic's dead letters go.
#[derive(Clone)]
pub struct DeadLetters {
    pub producer: Arc<dyn Producer>,
    pub topic: String,
    pub timeout: Duration,
}

/// What a dead letter says about its failure.
pub struct Failure<'a> {
    pub error: &'a HandlerError,
    pub attempts: u32,
    pub first_failure_ms: i64,
    pub last_failure_ms: i64,
}

/// The dead-letter metadata headers: original headers are kept, these are appended.
pub fn dlq_headers(record: &Record, failure: &Failure<'_>) -> Vec<Header> {
    let mut headers = record.headers.clone();
    let mut push =
        |name: &str, value: String| headers.push(Header { name: name.to_string(), value: value.into_bytes() });
    push("conveyor.dlq.source_topic", record.tp.topic.clone());
    push("conveyor.dlq.source_partition", record.tp.partition.to_string());
    push("conveyor.dlq.source_offset", record.offset.to_string());
    push("conveyor.dlq.error_class", failure.error.class.as_str().to_string());
    push("conveyor.dlq.error", failure.error.describe());
    push("conveyor.dlq.attempts", failure.attempts.to_string());
    push("conveyor.dlq.first_failure_ms", failure.first_failure_ms.to_string());
    push("conveyor.dlq.last_failure_ms", failure.last_failure_ms.to_string());
    headers
}

impl DeadLetters {
    /// Writes one dead letter; the caller retries until it succeeds, because the source
    /// offset must not advance past a record that is neither processed nor dead-lettered.
    pub async fn write(&self, record: &Record, failure: &Failure<'_>) -> Result<(), crate::Error> {
        let out = OutgoingRecord {
            topic: self.topic.clone(),
            key: record.key.clone(),
            payload: record.payload.clone(),
            headers: dlq_headers(record, failure),
        };
        self.producer.send(out, self.timeout).await.map(|_| ())
    }
}

impl ErrorClass {
    /// Dead letters written because of this class (a bounded metric label).
    pub fn dlq_reason(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retries_exhausted",
            ErrorClass::Permanent | ErrorClass::Unavailable => "permanent",
        }
    }
}
