//! What the records and metrics API shows: deliveries, attempts, per-endpoint counts.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::{DeliveryCounts, attempt, delivery, notification};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AttemptView {
    pub id: i64,
    pub delivery_id: String,
    pub notification_id: String,
    pub endpoint_id: String,
    /// 1 for the first attempt.
    pub attempt: i32,
    /// `succeeded` or `failed`.
    pub outcome: crate::states::AttemptOutcome,
    /// `none`, `timeout`, `connect`, `redirect`, `http_429`, `http_4xx`, `http_5xx`, `gone`, `blocked_target`.
    pub error_class: crate::client::AttemptClass,
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    /// The start of the response body (`webhooks.response_excerpt_bytes`).
    pub response_excerpt: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<attempt::Model> for AttemptView {
    fn from(a: attempt::Model) -> Self {
        AttemptView {
            id: a.id,
            delivery_id: a.delivery_id,
            notification_id: a.notification_id,
            endpoint_id: a.endpoint_id,
            attempt: a.attempt,
            outcome: a.outcome,
            error_class: a.error_class,
            status_code: a.status_code,
            latency_ms: a.latency_ms,
            response_excerpt: a.response_excerpt,
            error: a.error,
            created_at: a.created_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: String,
    pub notification_id: String,
    pub endpoint_id: String,
    /// `pending`, `succeeded`, `failed` or `discarded`.
    pub status: crate::states::DeliveryStatus,
    pub attempts: i32,
    /// When a pending delivery is tried next.
    pub next_attempt_at: DateTime<Utc>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<delivery::Model> for DeliveryView {
    fn from(d: delivery::Model) -> Self {
        DeliveryView {
            id: d.id,
            notification_id: d.notification_id,
            endpoint_id: d.endpoint_id,
            status: d.status,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

/// `GET /notifications/{id}`: the notification's deliveries and every attempt, limited to
/// the caller's endpoints unless the caller is an admin.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NotificationRecords {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub project: Option<String>,
    pub received_at: DateTime<Utc>,
    pub deliveries: Vec<DeliveryView>,
    pub attempts: Vec<AttemptView>,
}

impl NotificationRecords {
    pub fn new(n: notification::Model, deliveries: Vec<delivery::Model>, attempts: Vec<attempt::Model>) -> Self {
        NotificationRecords {
            id: n.id,
            event_type: n.event_type,
            project: n.project,
            received_at: n.received_at,
            deliveries: deliveries.into_iter().map(Into::into).collect(),
            attempts: attempts.into_iter().map(Into::into).collect(),
        }
    }
}

/// `GET /webhooks/endpoints/{id}/stats`: counts of deliveries by outcome.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"endpoint_id": "ep_0192", "forwarded": 120, "failed": 2, "pending": 3, "discarded": 0}))]
pub struct EndpointStats {
    pub endpoint_id: String,
    /// Deliveries the endpoint accepted (2xx).
    pub forwarded: u64,
    /// Deliveries that exhausted the schedule or met a 410.
    pub failed: u64,
    /// Deliveries waiting for their first or next attempt.
    pub pending: u64,
    /// Pending deliveries dropped when their endpoint was deleted.
    pub discarded: u64,
}

impl EndpointStats {
    pub fn new(endpoint_id: String, c: DeliveryCounts) -> Self {
        EndpointStats {
            endpoint_id,
            forwarded: c.succeeded,
            failed: c.failed,
            pending: c.pending,
            discarded: c.discarded,
        }
    }
}
