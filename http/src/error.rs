//! The one place where errors become HTTP statuses and JSON bodies:
//! `{"error": {"code": "...", "message": "...", "details": [...]}}`.

use std::time::Duration;

use axum::response::IntoResponse;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

use crate::Response;

pub use conveyor_actors::error::FieldError;

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(#[source] serde_json::Error),
    #[error("validation failed: {}", .0.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; "))]
    Validation(Vec<FieldError>),
    #[error("invalid notification: {}", .0.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; "))]
    InvalidNotification(Vec<FieldError>),
    /// Basic credentials missing or wrong where basic auth is accepted (`POST /notifications`).
    #[error("{message}")]
    BasicUnauthorized { message: &'static str, realm: String },
    #[error("the request body exceeds {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("this token lacks a required role (one of: {0})")]
    Forbidden(String),
    #[error("no route for this path")]
    NotFound,
    #[error("{0} not found")]
    ResourceNotFound(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("a request with this Idempotency-Key is still in progress")]
    IdempotencyInProgress,
    #[error("this Idempotency-Key was already used with another request body; use a new key for a new request")]
    IdempotencyKeyReused,
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{what} is unavailable; retry later")]
    Unavailable {
        what: &'static str,
        retry_after: Duration,
        #[source]
        source: Option<Box<conveyor_actors::Error>>,
    },
    #[error("{lag} events are waiting to be processed (limit {max}); retry later")]
    Overloaded { lag: i64, max: i64, retry_after: Duration },
    #[error("too many requests; retry in {}s", retry_after.as_secs().max(1))]
    RateLimited { retry_after: Duration },
    #[error("the request did not complete within {0:?}")]
    Timeout(Duration),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Every error response: `{"error": {...}}`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": {"code": "validation_failed", "message": "validation failed: device_id: is required", "details": [{"field": "device_id", "message": "is required"}]}}))]
pub struct ErrorBody {
    pub error: ErrorInner,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorInner {
    /// Stable, machine-readable: `validation_failed`, `unauthorized`, `rate_limited`, …
    pub code: String,
    pub message: String,
    /// Validation failures only: one entry per field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<FieldError>>,
}

impl ApiError {
    /// A backend error surfaced to a client: the named component is unavailable (503).
    pub fn unavailable(what: &'static str, source: conveyor_actors::Error) -> Self {
        ApiError::Unavailable { what, retry_after: Duration::from_secs(1), source: Some(Box::new(source)) }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::InvalidNotification(_) => StatusCode::BAD_REQUEST,
            ApiError::Validation(_) | ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized(_) | ApiError::BasicUnauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound | ApiError::ResourceNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::IdempotencyInProgress | ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } | ApiError::Overloaded { .. } | ApiError::Timeout(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::Validation(_) => "validation_failed",
            ApiError::BodyTooLarge { .. } => "payload_too_large",
            ApiError::Unauthorized(_) | ApiError::BasicUnauthorized { .. } => "unauthorized",
            ApiError::InvalidNotification(_) => "invalid_notification",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::ResourceNotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::IdempotencyInProgress => "idempotency_key_in_use",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::Conflict { code, .. } => code,
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Overloaded { .. } => "backlog",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Timeout(_) => "timeout",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The `{"error": …}` object alone, for per-item results.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.inner()).unwrap_or_default()
    }

    /// The inside of the error body.
    pub fn inner(&self) -> ErrorInner {
        let details = match self {
            ApiError::Validation(fields) | ApiError::InvalidNotification(fields) => Some(fields.clone()),
            _ => None,
        };
        let message = match self {
            ApiError::Unavailable { what, source: Some(source), .. } => {
                format!("{what} is unavailable ({source}); retry later")
            }
            other => other.to_string(),
        };
        ErrorInner { code: self.code().to_string(), message, details }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(
                status = status.as_u16(),
                code = self.code(),
                error = %conveyor_actors::error::chain(&self),
                "request failed"
            );
        }
        let mut response = crate::json_response(status, &serde_json::json!({ "error": self.to_json() }));
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::BasicUnauthorized { realm, .. } => {
                let challenge = format!("Basic realm=\"{}\", charset=\"UTF-8\", Bearer", realm.replace('"', ""));
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    headers.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            ApiError::Unavailable { retry_after, .. }
            | ApiError::Overloaded { retry_after, .. }
            | ApiError::RateLimited { retry_after }
            | ApiError::Timeout(retry_after) => {
                // Rounded up: a client that waits this long finds a token in the bucket.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                    headers.insert(header::RETRY_AFTER, v);
                }
            }
            _ => {}
        }
        response
    }
}

/// Backend and identity errors, mapped once: refusals keep their status, a backend that
/// fails is a 503 naming it, anything else is a 500.
impl From<conveyor_actors::Error> for ApiError {
    fn from(err: conveyor_actors::Error) -> Self {
        use conveyor_actors::Error as E;
        match err {
            E::TokenRefused { reason } => ApiError::Unauthorized(reason),
            E::InvalidCredentials => ApiError::Unauthorized("invalid email or password"),
            E::EmailTaken => ApiError::Conflict { code: "email_taken", message: err.to_string() },
            E::InvalidInput { fields } => ApiError::Validation(fields),
            E::InvalidNotification { fields } => ApiError::InvalidNotification(fields),
            E::NotFound { what } => ApiError::ResourceNotFound(what),
            E::Conflict { code, message } => ApiError::Conflict { code, message },
            E::Forbidden { reason } => ApiError::Forbidden(reason.to_string()),
            E::Store { .. } => ApiError::unavailable("store", err),
            E::Cache { .. } => ApiError::unavailable("cache", err),
            E::LogUnavailable { .. } | E::Kafka { .. } => ApiError::unavailable("log", err),
            // Back-pressure: consumers must commit and retention run before space frees up.
            E::LogFull { .. } => ApiError::Unavailable {
                what: "event log",
                retry_after: Duration::from_secs(5),
                source: Some(Box::new(err)),
            },
            E::BreakerOpen { op, .. } | E::Timeout { op, .. } => ApiError::unavailable(op, err),
            E::ShuttingDown => ApiError::unavailable("service", err),
            E::SubsystemDown { subsystem } => ApiError::unavailable(subsystem, err),
            other => ApiError::Internal(Box::new(other)),
        }
    }
}
