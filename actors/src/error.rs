//! The one error type of the `actors` crate. Every variant carries the context needed to
//! act on it and keeps its cause as a `#[source]`, never flattened into a string.

use std::time::Duration;

/// Errors from the log, store, cache and actor system.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log did not acknowledge a write in time, or cannot be reached.
    #[error("log unavailable while {op} on topic {topic:?}")]
    LogUnavailable {
        op: &'static str,
        topic: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A Kafka client error with what we were doing.
    #[error("kafka error while {op}")]
    Kafka {
        op: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// An I/O error of the embedded log or data directory.
    #[error("i/o error on {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The embedded log found a record it cannot read (torn or corrupted).
    #[error("corrupt log segment {path} at byte {position}")]
    CorruptLog { path: String, position: u64 },
    /// A store query failed.
    #[error("store error while {op}")]
    Store {
        op: &'static str,
        #[source]
        source: sea_orm::DbErr,
    },
    /// A cache command failed.
    #[error("cache error while {op}")]
    Cache {
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A downstream's circuit breaker refused the call without trying it.
    #[error("{op} not attempted")]
    BreakerOpen {
        op: &'static str,
        #[source]
        source: crate::breaker::Refused,
    },
    /// A call did not complete in time.
    #[error("{op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    /// An actor could not be spawned or messaged.
    #[error("actor {actor} failed while {op}")]
    Actor {
        actor: String,
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Configuration that cannot work (found when the backend starts).
    #[error("invalid configuration {key}: {reason}")]
    Config { key: &'static str, reason: String },
}

impl Error {
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }

    pub fn store(op: &'static str, source: sea_orm::DbErr) -> Self {
        Error::Store { op, source }
    }

    pub fn cache<E: std::error::Error + Send + Sync + 'static>(op: &'static str, source: E) -> Self {
        Error::Cache { op, source: Box::new(source) }
    }
}
