//! Writing a record that exhausted its policy to the dead-letter topic.

use std::sync::Arc;
use std::time::Duration;

use crate::log::{Header, OutgoingRecord, Producer, Record};
use crate::retry::{ErrorClass, HandlerError};

/// The metadata headers a dead letter carries; the dead-letter indexer reads the same names.
pub mod headers {
    /// Every dead-letter metadata header starts with this.
    pub const PREFIX: &str = "conveyor.dlq.";
    pub const SOURCE_TOPIC: &str = "conveyor.dlq.source_topic";
    pub const SOURCE_PARTITION: &str = "conveyor.dlq.source_partition";
    pub const SOURCE_OFFSET: &str = "conveyor.dlq.source_offset";
    pub const ERROR_CLASS: &str = "conveyor.dlq.error_class";
    pub const ERROR: &str = "conveyor.dlq.error";
    pub const ATTEMPTS: &str = "conveyor.dlq.attempts";
    pub const FIRST_FAILURE_MS: &str = "conveyor.dlq.first_failure_ms";
    pub const LAST_FAILURE_MS: &str = "conveyor.dlq.last_failure_ms";
}

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

/// Where a dead letter came from and why it failed: the metadata every dead letter carries,
/// whichever part of the engine wrote it.
pub struct DeadLetterMeta<'a> {
    pub source_topic: &'a str,
    /// `-1` when the failure belongs to no single record (a webhook delivery, a workflow run).
    pub source_partition: i32,
    pub source_offset: i64,
    pub error_class: &'a str,
    pub error: &'a str,
    pub attempts: u32,
    pub first_failure_ms: i64,
    pub last_failure_ms: i64,
}

impl DeadLetterMeta<'_> {
    /// Appends the metadata headers the dead-letter indexer reads.
    pub fn append_to(&self, headers: &mut Vec<Header>) {
        let mut push =
            |name: &str, value: String| headers.push(Header { name: name.to_string(), value: value.into_bytes() });
        push(headers::SOURCE_TOPIC, self.source_topic.to_string());
        push(headers::SOURCE_PARTITION, self.source_partition.to_string());
        push(headers::SOURCE_OFFSET, self.source_offset.to_string());
        push(headers::ERROR_CLASS, self.error_class.to_string());
        push(headers::ERROR, self.error.to_string());
        push(headers::ATTEMPTS, self.attempts.to_string());
        push(headers::FIRST_FAILURE_MS, self.first_failure_ms.to_string());
        push(headers::LAST_FAILURE_MS, self.last_failure_ms.to_string());
    }
}

/// The dead-letter metadata headers: original headers are kept, these are appended.
pub fn dlq_headers(record: &Record, failure: &Failure<'_>) -> Vec<Header> {
    let mut headers = record.headers.clone();
    DeadLetterMeta {
        source_topic: &record.tp.topic,
        source_partition: record.tp.partition,
        source_offset: record.offset,
        error_class: failure.error.class.as_str(),
        error: &failure.error.describe(),
        attempts: failure.attempts,
        first_failure_ms: failure.first_failure_ms,
        last_failure_ms: failure.last_failure_ms,
    }
    .append_to(&mut headers);
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

impl DeadLetters {
    /// Writes a dead letter that parking refused to hold (`reason` is its error class).
    pub async fn write_refused(
        &self,
        record: &Record,
        reason: super::ParkRefusal,
        error: &str,
    ) -> Result<(), crate::Error> {
        let mut headers = record.headers.clone();
        let now = chrono::Utc::now().timestamp_millis();
        DeadLetterMeta {
            source_topic: &record.tp.topic,
            source_partition: record.tp.partition,
            source_offset: record.offset,
            error_class: reason.as_str(),
            error,
            attempts: 0,
            first_failure_ms: now,
            last_failure_ms: now,
        }
        .append_to(&mut headers);
        let out = OutgoingRecord {
            topic: self.topic.clone(),
            key: record.key.clone(),
            payload: record.payload.clone(),
            headers,
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
