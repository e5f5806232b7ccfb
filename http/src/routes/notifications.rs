//! `POST /notifications` (seed 002's Gwook: basic auth or a publisher token; 400 for a bad
//! envelope, 409 for a repeated id, 202 once the log has it) and `GET /notifications/{id}`,
//! the notification's deliveries and attempts.

use axum::extract::{Request, State};
use conveyor_actors::log::Header;
use conveyor_webhooks::records::NotificationRecords;
use http::header::AUTHORIZATION;
use http::{HeaderMap, StatusCode};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::{Authorize, roles};
use crate::body;
use crate::error::{ApiError, ErrorBody};
use crate::extract::RawPath;
use crate::extract::request_id;
use crate::routes::webhooks::caller;
use crate::{App, AppState, Response, json_response};

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "accepted", "id": "evt_0TZRAuIV3l4rLP1NlZivWexSK93v", "partition": 1, "offset": 42}))]
pub struct NotificationAccepted {
    /// `accepted`.
    pub status: String,
    pub id: String,
    pub partition: i32,
    pub offset: i64,
}

/// The envelope as documented (`event-spec.json`); extra fields travel untouched.
#[derive(ToSchema)]
#[schema(example = json!({"object": "event", "id": "evt_0TZR3pWS3l4rLP0KQH5U1OS4MQJj", "type": "payment.succeeded",
    "source": "https://api.service.com", "specversion": "1.0", "project": "dev", "time": "2023-03-24T15:38:58Z",
    "datacontenttype": "application/json", "version": "2023-01-30", "data": {"object": "payment", "id": "pay_1", "amount": 999}}))]
#[allow(dead_code)]
pub struct NotificationEnvelope {
    /// Unique per notification; a repeat within `webhooks.dedup_window_secs` is a 409.
    #[schema(max_length = 256, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$")]
    id: String,
    /// Endpoints filter on it (`subscription.updated`, `payment.*`).
    #[schema(rename = "type", max_length = 256, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$")]
    event_type: String,
    #[schema(max_length = 2048, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$")]
    source: String,
    #[schema(pattern = r"^1\.0$")]
    specversion: String,
    data: serde_json::Map<String, serde_json::Value>,
    /// Endpoints may filter on it.
    #[schema(max_length = 256)]
    project: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    time: Option<String>,
    /// `event` when present.
    #[schema(pattern = r"^event$")]
    object: Option<String>,
    datacontenttype: Option<String>,
    version: Option<String>,
}

/// Admits basic auth (the publisher credentials in `webhooks.basic_auth_*`) or a bearer token with the publisher
/// or admin role.
async fn admit(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let webhooks = &state.conveyor.webhooks;
    let realm = webhooks.config().basic_auth_realm.clone();
    let authorization = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
    match webhooks.check_basic(authorization) {
        Some(true) => Ok(()),
        Some(false) => Err(ApiError::BasicUnauthorized { message: "invalid basic credentials", realm }),
        None if authorization.is_empty() => {
            Err(ApiError::BasicUnauthorized { message: "basic credentials or a bearer token required", realm })
        }
        None => state.authenticate(headers).await?.require(&[roles::PUBLISHER, roles::ADMIN]),
    }
}

/// Accepts a notification for delivery to the webhook endpoints that subscribe to it.
#[utoipa::path(post, path = "/notifications", tag = "webhooks", request_body = NotificationEnvelope,
    security(("basic" = []), ("bearer" = [])),
    responses((status = 202, body = NotificationAccepted, description = "In the log; fan-out follows"),
        (status = 400, body = ErrorBody, description = "`malformed_json` or `invalid_notification` (the fields are named)"),
        (status = 409, body = ErrorBody, description = "`duplicate_notification`: this id was accepted within the dedup window")))]
pub async fn post(State(state): App, req: Request) -> Result<Response, ApiError> {
    admit(&state, req.headers()).await?;
    let request_id = request_id(&req);
    let bytes = body::read(req).await?;
    let headers = |traceparent: String| {
        vec![
            Header { name: conveyor_actors::trace::TRACEPARENT.into(), value: traceparent.into_bytes() },
            Header { name: "x-request-id".into(), value: request_id.as_bytes().to_vec() },
        ]
    };
    let webhooks = &state.conveyor.webhooks;
    let published = conveyor_actors::trace::produce_span("produce", |tp| webhooks.publish(bytes, headers(tp))).await?;
    let body = NotificationAccepted {
        status: "accepted".into(),
        id: published.id,
        partition: published.ack.partition,
        offset: published.ack.offset,
    };
    Ok(json_response(StatusCode::ACCEPTED, &json!(body)))
}

/// A notification's deliveries and their attempts (only the caller's endpoints' unless admin).
#[utoipa::path(get, path = "/notifications/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "The notification id")),
    responses((status = 200, body = NotificationRecords), (status = 404, body = ErrorBody)))]
pub async fn get(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    let records = state.conveyor.webhooks.notification_records(&caller, &id).await?;
    Ok(json_response(StatusCode::OK, &json!(records)))
}
