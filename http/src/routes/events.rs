//! `POST /events` and `POST /events/batch`: validate, produce to `events-input` keyed by
//! `device_id`, and answer 202 only once the log acknowledged the record.

use std::time::Duration;

use axum::extract::{Request, State};
use http::{HeaderValue, StatusCode};
use opentelemetry::KeyValue;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Authorize, Principal, roles};
use crate::body::{self, EventInput};
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::extract::request_id;
use crate::idempotency::{Begin, Guard, Idempotency};
use crate::metrics::{REASON, metrics};
use crate::{App, AppState, Response, json_response};

/// `POST /events/batch`. Items are read one by one ([`body::event`]): each should be an
/// `EventInput`, and one that is not is rejected in its own result while the others go on,
/// so the document promises no more about an item than that it is a JSON value.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BatchBody {
    /// 1 to `ingest.batch_max_events` (default 500) events, each `{"device_id", "payload"}`.
    #[schema(min_items = 1, max_items = 500)]
    events: Vec<serde_json::Value>,
}

/// An event in the log.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"request_id": "0193a7c2-5f1e-7a3b-9c4d-2e8f1a6b3c5d", "status": "accepted"}))]
pub struct Accepted {
    /// UUIDv7, also in the record.
    pub request_id: String,
    /// `accepted`.
    pub status: String,
}

/// One item of a batch's answer.
#[derive(Serialize, ToSchema)]
pub struct BatchItem {
    pub index: usize,
    /// `accepted` or `rejected`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::error::ErrorInner>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchResult {
    pub accepted: usize,
    pub rejected: usize,
    pub results: Vec<BatchItem>,
}

/// How long a client should wait before retrying when the log cannot take events.
const LOG_RETRY_AFTER: Duration = Duration::from_secs(5);

fn rejected(reason: &'static str) {
    metrics().ingest_rejected.add(1, &[KeyValue::new(REASON, reason)]);
}

/// What [`admit`] checked: who, the `Idempotency-Key` with the raw body it binds, the JSON.
struct Admitted {
    principal: Principal,
    key: Option<(String, bytes::Bytes)>,
    value: serde_json::Value,
}

/// Token, role and body, in that order; each failure is counted by reason.
async fn admit(state: &AppState, req: Request) -> Result<Admitted, ApiError> {
    let checked = async {
        let principal = state.authenticate(req.headers()).await?;
        principal.require(&[roles::DEVICE, roles::ADMIN])?;
        let key = crate::idempotency::header_key(req.headers())?;
        let bytes = body::read(req).await?;
        let value = body::json(&bytes)?;
        Ok(Admitted { principal, key: key.map(|k| (k, bytes)), value })
    };
    checked.await.inspect_err(|e: &ApiError| rejected(e.code()))
}

/// Claims the request's `Idempotency-Key`, if it has one: `Err(response)` is the first
/// request's answer to send back instead of doing the work again.
async fn claim(
    state: &AppState,
    principal: &Principal,
    scope: &str,
    key: Option<(String, bytes::Bytes)>,
) -> Result<Result<Option<Guard>, Response>, ApiError> {
    let Some((key, body)) = key else { return Ok(Ok(None)) };
    Ok(match Idempotency::begin(&state.conveyor.idempotency, &principal.sub, scope, &key, &body).await? {
        Begin::Replay { status, body } => Err(replayed(status, body)),
        Begin::Started(guard) => Ok(Some(guard)),
    })
}

/// Refuses new work while this process's backlog is past `ingest.max_lag`.
fn check_backlog(state: &AppState) -> Result<(), ApiError> {
    let max = state.conveyor.config.ingest.max_lag;
    let lag = state.conveyor.lag.total();
    if max > 0 && lag > max {
        rejected("backlog");
        return Err(ApiError::Overloaded { lag, max, retry_after: LOG_RETRY_AFTER });
    }
    Ok(())
}

/// Ingest one device event: 202 only once the log acknowledged it.
#[utoipa::path(post, path = "/events", tag = "events", request_body = EventInput,
    params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[!-~]{1,255}$", description = "1 to 255 visible ASCII characters; a repeat with the same body within the window returns the first answer, one with another body is refused (422)")),
    responses(
        (status = 202, body = Accepted, description = "Durably in the log"),
        (status = 409, body = ErrorBody, description = "A request with this Idempotency-Key is in progress"),
        (status = 422, body = ErrorBody, description = "Invalid event, or this Idempotency-Key was used with another body"),
    ))]
pub async fn post_one(State(state): App, req: Request) -> Result<Response, ApiError> {
    let request_id = request_id(&req);
    let Admitted { principal, key, value } = admit(&state, req).await?;
    check_backlog(&state)?;
    let input = body::event(value, "").map_err(ApiError::Validation).inspect_err(|e| rejected(e.code()))?;
    let idem = match claim(&state, &principal, "events", key).await? {
        Ok(guard) => guard,
        Err(replay) => return Ok(replay),
    };
    match produce(&state, &principal, input, &request_id).await {
        Ok(request_id) => {
            let body = serde_json::to_value(Accepted { request_id, status: "accepted".into() }).unwrap_or_default();
            if let Some(guard) = idem {
                guard.complete(StatusCode::ACCEPTED, &body).await;
            }
            Ok(json_response(StatusCode::ACCEPTED, &body))
        }
        Err(err) => {
            if let Some(guard) = idem {
                guard.abandon().await;
            }
            Err(err)
        }
    }
}

/// Ingest up to `ingest.batch_max_events` events, answered per item.
#[utoipa::path(post, path = "/events/batch", tag = "events", request_body = BatchBody,
    params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[!-~]{1,255}$", description = "1 to 255 visible ASCII characters; a repeat with the same body within the window returns the first answer, one with another body is refused (422)")),
    responses(
        (status = 202, body = BatchResult, description = "Every item is in the log"),
        (status = 207, body = BatchResult, description = "Some items were rejected; see each result"),
        (status = 409, body = ErrorBody, description = "A request with this Idempotency-Key is in progress"),
        (status = 422, body = ErrorBody, description = "Invalid event, or this Idempotency-Key was used with another body"),
    ))]
pub async fn post_batch(State(state): App, req: Request) -> Result<Response, ApiError> {
    let request_id = request_id(&req);
    let Admitted { principal, key, value } = admit(&state, req).await?;
    check_backlog(&state)?;
    let items = match value {
        serde_json::Value::Object(mut obj) => match obj.remove("events") {
            Some(serde_json::Value::Array(items)) => items,
            _ => return Err(ApiError::Validation(vec![FieldError::new("events", "must be an array of events")])),
        },
        _ => return Err(ApiError::Validation(vec![FieldError::new("body", "must be {\"events\": [...]}")])),
    };
    let max = state.conveyor.config.ingest.batch_max_events;
    if items.is_empty() || items.len() > max {
        rejected("batch_size");
        return Err(ApiError::Validation(vec![FieldError::new("events", format!("must hold 1 to {max} events"))]));
    }
    let idem = match claim(&state, &principal, "events-batch", key).await? {
        Ok(guard) => guard,
        Err(replay) => return Ok(replay),
    };
    // One device's events go to the log one after another, in the batch's order: sent
    // together, they could be appended in any order (a send that has to wait lets the next
    // one pass), and the log's order is the order they are processed in. Devices go
    // concurrently.
    let mut chains: Vec<Vec<(usize, Parsed)>> = Vec::new();
    let mut chain_of: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (index, item) in items.into_iter().enumerate() {
        let parsed = body::event(item, &format!("events[{index}]."));
        let chain = match &parsed {
            Ok(input) => *chain_of.entry(input.device_id.clone()).or_insert_with(|| {
                chains.push(Vec::new());
                chains.len() - 1
            }),
            Err(_) => {
                chains.push(Vec::new());
                chains.len() - 1
            }
        };
        chains[chain].push((index, parsed));
    }
    let work = chains.into_iter().map(|chain| {
        let (state, principal, request_id) = (&*state, &principal, &request_id);
        async move {
            let mut results = Vec::with_capacity(chain.len());
            for (index, parsed) in chain {
                let outcome = match parsed {
                    Err(fields) => Err(ApiError::Validation(fields)),
                    Ok(input) => produce(state, principal, input, request_id).await,
                };
                results.push(match outcome {
                    Ok(request_id) => {
                        let item =
                            BatchItem { index, status: "accepted".into(), request_id: Some(request_id), error: None };
                        (true, false, item)
                    }
                    Err(err) => {
                        rejected(err.code());
                        let unavailable = matches!(err, ApiError::Unavailable { .. });
                        let item =
                            BatchItem { index, status: "rejected".into(), request_id: None, error: Some(err.inner()) };
                        (false, unavailable, item)
                    }
                });
            }
            results
        }
    });
    let mut results: Vec<(bool, bool, BatchItem)> =
        futures::future::join_all(work).await.into_iter().flatten().collect();
    results.sort_by_key(|(_, _, item)| item.index);
    let all_accepted = results.iter().all(|(ok, _, _)| *ok);
    let any_unavailable = results.iter().any(|(_, unavailable, _)| *unavailable);
    let accepted = results.iter().filter(|(ok, _, _)| *ok).count();
    let rejected_count = results.len() - accepted;
    let results = results.into_iter().map(|(_, _, r)| r).collect();
    let body = serde_json::to_value(BatchResult { accepted, rejected: rejected_count, results }).unwrap_or_default();
    // A batch is answered per item; 202 when every item is in the log, 207 otherwise.
    let status = if all_accepted { StatusCode::ACCEPTED } else { StatusCode::MULTI_STATUS };
    if let Some(guard) = idem {
        if any_unavailable { guard.abandon().await } else { guard.complete(status, &body).await }
    }
    let mut response = json_response(status, &body);
    if any_unavailable && let Ok(v) = HeaderValue::from_str(&LOG_RETRY_AFTER.as_secs().to_string()) {
        response.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
    Ok(response)
}

/// A batch item, read: the event, or what is wrong with it.
type Parsed = Result<EventInput, Vec<FieldError>>;

/// Writes one event to the log and waits for its acknowledgement; returns its request id.
async fn produce(
    state: &AppState,
    principal: &Principal,
    input: EventInput,
    request_id: &str,
) -> Result<String, ApiError> {
    let sent = state.conveyor.events.send(&principal.sub, input.device_id, input.payload, request_id).await;
    match sent {
        Ok(request_id) => {
            metrics().ingest_accepted.add(1, &[]);
            Ok(request_id.to_string())
        }
        // A full log answered at once and is healthy: back-pressure, not an outage.
        Err(source @ conveyor_actors::Error::LogFull { .. }) => {
            rejected("log_full");
            Err(ApiError::from(source))
        }
        // Down, or its breaker open (then at once instead of after the produce timeout).
        Err(source) => Err(log_unavailable(source)),
    }
}

/// The log cannot take the event (down, or its breaker open): 503 with `Retry-After`.
fn log_unavailable(source: conveyor_actors::Error) -> ApiError {
    rejected("log_unavailable");
    ApiError::Unavailable { what: "event log", retry_after: LOG_RETRY_AFTER, source: Some(Box::new(source)) }
}

fn replayed(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = json_response(status, &body);
    response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}
