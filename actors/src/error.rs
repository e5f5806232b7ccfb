//! The one error type of the `actors` crate. Every variant carries the context needed to
//! act on it and keeps its cause as a `#[source]`, never flattened into a string.

use std::fmt;
use std::time::Duration;

/// An error and every cause under it, `top: cause: cause`, for log fields. tracing's JSON
/// format writes an error field as its own message only, and the cause (SQLite's code, the
/// I/O error) is usually what an operator needs; the soak benchmark's retention fault showed
/// only "store error while purge_deliveries".
pub struct Chain<'a>(&'a (dyn std::error::Error + 'a));

/// See [`Chain`]: `tracing::warn!(error = %chain(&err), "…")`.
pub fn chain<'a>(err: &'a (dyn std::error::Error + 'a)) -> Chain<'a> {
    Chain(err)
}

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(err) = cause {
            write!(f, ": {err}")?;
            cause = err.source();
        }
        Ok(())
    }
}

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
    /// The embedded log refused an append: the topic reached its disk budget and every byte
    /// of it is still needed by a consumer group (back-pressure; retry later).
    #[error(
        "log topic {topic:?} is full: {used_bytes} bytes used of its {budget_bytes}-byte budget, \
         held by records a consumer group has not committed yet"
    )]
    LogFull { topic: String, used_bytes: u64, budget_bytes: u64 },
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
    /// Input that breaks a rule, each problem named by its field.
    #[error("invalid input: {}", fields.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; "))]
    InvalidInput { fields: Vec<FieldError> },
    /// Registration with an email that already has an account.
    #[error("an account with this email already exists")]
    EmailTaken,
    /// Login with an unknown email or a wrong password (one message for both).
    #[error("invalid email or password")]
    InvalidCredentials,
    /// A token that does not authenticate anyone; `reason` is safe to show the caller.
    #[error("{reason}")]
    TokenRefused { reason: &'static str },
    /// Hashing a password failed.
    #[error("password hashing failed")]
    PasswordHash {
        #[source]
        source: argon2::password_hash::Error,
    },
    /// Signing a token or reading a key failed.
    #[error("token error while {op}")]
    Token {
        op: &'static str,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// A notification envelope that breaks the schema (HTTP 400, as publishers expect).
    #[error("invalid notification: {}", fields.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; "))]
    InvalidNotification { fields: Vec<FieldError> },
    /// Nothing with this id that the caller may see.
    #[error("{what} not found")]
    NotFound { what: &'static str },
    /// The request contradicts the current state; `code` is a stable machine-readable name.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The caller is authenticated but may not do this.
    #[error("{reason}")]
    Forbidden { reason: &'static str },
    /// The webhook HTTP client could not be built.
    #[error("webhook client")]
    WebhookClient {
        #[source]
        source: reqwest::Error,
    },
    /// A value could not be encoded for the log or the store.
    #[error("encoding {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The runtime is shutting down and the work was dropped.
    #[error("shutting down")]
    ShuttingDown,

    /// A supervised service is between a failure and its restart.
    #[error("{subsystem} is restarting")]
    SubsystemDown { subsystem: &'static str },

    /// A device event whose record key is missing or is not its `device_id`: it sits on a
    /// partition other than the device's, where applying it would corrupt the offset guard.
    #[error("record {topic}/{partition} at offset {offset}: {}", key_mismatch(.key, .device_id))]
    KeyMismatch { topic: String, partition: i32, offset: i64, key: Option<String>, device_id: String },
}

fn key_mismatch(key: &Option<String>, device_id: &str) -> String {
    match key {
        None => format!("has no key; device events must be keyed by their device_id {device_id:?}"),
        Some(key) => format!("key {key:?} differs from its device_id {device_id:?}"),
    }
}

/// A field that failed validation, named by its JSON path (`name`, or a path such as
/// `steps[2].url`): the one field-error type of domains and the HTTP layer's 422s alike.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FieldError {
    #[schema(value_type = String)]
    pub field: std::borrow::Cow<'static, str>,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<std::borrow::Cow<'static, str>>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into() }
    }
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

#[cfg(test)]
mod chain_tests {
    use super::*;

    #[test]
    fn a_chain_names_every_cause() {
        let io = std::io::Error::other("database is locked");
        let err = Error::Io { path: "/data/x".into(), source: io };
        assert_eq!(chain(&err).to_string(), "i/o error on /data/x: database is locked");
    }
}
