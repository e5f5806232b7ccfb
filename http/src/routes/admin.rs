//! `/admin/dead-letters`: list with filters, show one, replay one or a small filtered set
//! to its source topic (larger sets: replay jobs, `routes::replays`), purge. Role `admin` only.

use axum::extract::{Request, State};
use conveyor_actors::dlq::{DeadLetterFilter, DeadLetterView, ReplayOutcome};
use http::{HeaderMap, StatusCode};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::{Authorize, roles};
use crate::body;
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::extract::RawPath;
use crate::{App, AppState, Response, json_response};

pub(crate) async fn admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    state.authenticate(headers).await?.require(&[roles::ADMIN])
}

#[derive(Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetterView>,
    /// Pass as `after_id` for the next page; null on an empty page.
    pub next_after_id: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct Deleted {
    pub deleted: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Purged {
    pub purged: u64,
}

#[derive(Serialize, ToSchema)]
pub struct ReplayedMany {
    pub replayed: usize,
    pub results: Vec<ReplayOutcome>,
}

const ID: &str = "The dead letter's id";

fn id_param(id: &str) -> Result<i64, ApiError> {
    id.parse().map_err(|_| ApiError::Validation(vec![FieldError::new("id", "must be an integer")]))
}

fn store_error(e: conveyor_actors::Error) -> ApiError {
    ApiError::unavailable("store", e)
}

/// Query parameters → filter; unknown parameters and bad numbers are a 422 naming them.
fn query_filter(query: Option<&str>) -> Result<DeadLetterFilter, ApiError> {
    let mut filter = DeadLetterFilter::default();
    let mut errors = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let num = |errors: &mut Vec<FieldError>| match conveyor_actors::json::parse_integer(&v) {
            Some(n) => Some(n),
            None => {
                errors.push(FieldError::new(k.to_string(), "must be an integer"));
                None
            }
        };
        match k.as_ref() {
            "source_topic" => filter.source_topic = Some(v.to_string()),
            "error_class" => filter.error_class = Some(v.to_string()),
            "since_ms" => filter.since_ms = num(&mut errors),
            "until_ms" => filter.until_ms = num(&mut errors),
            "after_id" => filter.after_id = num(&mut errors),
            "limit" => filter.limit = num(&mut errors).map(|n| n.clamp(0, i64::from(u32::MAX)) as u32),
            other => errors.push(FieldError::new(other.to_string(), "unknown parameter")),
        }
    }
    if errors.is_empty() { check_limit(filter) } else { Err(ApiError::Validation(errors)) }
}

/// `limit`: 1 to 1000, as documented.
fn check_limit(filter: DeadLetterFilter) -> Result<DeadLetterFilter, ApiError> {
    match filter.limit {
        Some(n) if !(1..=1000).contains(&n) => {
            Err(ApiError::Validation(vec![FieldError::new("limit", "must be from 1 to 1000")]))
        }
        _ => Ok(filter),
    }
}

async fn body_filter(req: Request) -> Result<DeadLetterFilter, ApiError> {
    let bytes = body::read(req).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(DeadLetterFilter::default());
    }
    let value = body::json(&bytes)?;
    if value.is_null() {
        return Ok(DeadLetterFilter::default());
    }
    if !value.is_object() {
        return Err(ApiError::Validation(vec![FieldError::new("body", "must be a JSON object (a filter) or null")]));
    }
    let filter = serde_json::from_value(value)
        .map_err(|e| ApiError::Validation(vec![FieldError::new("body", e.to_string())]))?;
    check_limit(filter)
}

/// Dead letters, filtered and paged by id.
#[utoipa::path(get, path = "/admin/dead-letters", tag = "admin", params(
    ("source_topic" = Option<String>, Query), ("error_class" = Option<String>, Query, description = "retryable, permanent, unavailable"),
    ("since_ms" = Option<i64>, Query, description = "Last failure at or after (ms since the epoch)"),
    ("until_ms" = Option<i64>, Query, description = "Last failure before"),
    ("after_id" = Option<i64>, Query, description = "Paging: ids greater than this"),
    ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000),
), responses((status = 200, body = DeadLetterPage)))]
pub async fn list(State(state): App, req: Request) -> Result<Response, ApiError> {
    admin(&state, req.headers()).await?;
    let filter = query_filter(req.uri().query())?;
    let items = state.conveyor.dead_letters.list(&filter).await.map_err(store_error)?;
    let next_after_id = items.last().map(|i| i.id);
    Ok(json_response(StatusCode::OK, &json!(DeadLetterPage { items, next_after_id })))
}

/// One dead letter with its payload and original headers.
#[utoipa::path(get, path = "/admin/dead-letters/{id}", tag = "admin", params(("id" = i64, Path, description = ID)),
    responses((status = 200, body = DeadLetterView), (status = 404, body = ErrorBody)))]
pub async fn show(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    admin(&state, req.headers()).await?;
    match state.conveyor.dead_letters.show(id_param(&id)?).await.map_err(store_error)? {
        Some(view) => Ok(json_response(StatusCode::OK, &json!(view))),
        None => Err(ApiError::ResourceNotFound("Dead letter")),
    }
}

/// Removes one dead letter from the index.
#[utoipa::path(delete, path = "/admin/dead-letters/{id}", tag = "admin", params(("id" = i64, Path, description = ID)),
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody)))]
pub async fn delete(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    admin(&state, req.headers()).await?;
    if state.conveyor.dead_letters.delete(id_param(&id)?).await.map_err(store_error)? {
        Ok(json_response(StatusCode::OK, &json!(Deleted { deleted: 1 })))
    } else {
        Err(ApiError::ResourceNotFound("Dead letter"))
    }
}

/// Sends one dead letter back to its source topic.
#[utoipa::path(post, path = "/admin/dead-letters/{id}/replay", tag = "admin", params(("id" = i64, Path, description = ID)),
    responses((status = 200, body = ReplayOutcome), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Replayed `dlq.max_replays` times already")))]
pub async fn replay(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    admin(&state, req.headers()).await?;
    let outcome = state.conveyor.dead_letters.replay(id_param(&id)?).await.map_err(replay_error)?;
    replay_response(outcome)
}

/// One dead letter's replay as an answer: 200 with the outcome, 404 when it is gone, 409
/// once it was replayed `dlq.max_replays` times.
pub(super) fn replay_response(outcome: ReplayOutcome) -> Result<Response, ApiError> {
    match outcome {
        ReplayOutcome::Replayed { .. } => Ok(json_response(StatusCode::OK, &json!(outcome))),
        ReplayOutcome::NotFound { .. } => Err(ApiError::ResourceNotFound("Dead letter")),
        ReplayOutcome::TooManyReplays { replay_count, .. } => Err(ApiError::Conflict {
            code: "too_many_replays",
            message: format!("already replayed {replay_count} times (dlq.max_replays)"),
        }),
    }
}

/// Replays every dead letter matching the filter, at once, when they are at most
/// `dlq.replay_sync_limit` (100); a larger set is refused with a 422: start a replay job
/// (`POST /admin/replays`) for it, which paces, reports progress and survives a restart.
#[utoipa::path(post, path = "/admin/dead-letters/replay", tag = "admin", request_body(content = Option<DeadLetterFilter>, description = "Empty: all"),
    responses((status = 200, body = ReplayedMany),
        (status = 422, body = ErrorBody, description = "More dead letters match than `dlq.replay_sync_limit` (field `filter`): use POST /admin/replays")))]
pub async fn replay_matching(State(state): App, req: Request) -> Result<Response, ApiError> {
    admin(&state, req.headers()).await?;
    let filter = body_filter(req).await?;
    let limit = state.conveyor.config.dlq.replay_sync_limit;
    let results = state.conveyor.dead_letters.replay_matching(&filter, limit).await.map_err(replay_error)?;
    let replayed = results.iter().filter(|r| matches!(r, ReplayOutcome::Replayed { .. })).count();
    Ok(json_response(StatusCode::OK, &json!(ReplayedMany { replayed, results })))
}

/// Removes every dead letter matching the filter from the index.
#[utoipa::path(post, path = "/admin/dead-letters/purge", tag = "admin", request_body(content = Option<DeadLetterFilter>, description = "Empty: all"),
    responses((status = 200, body = Purged)))]
pub async fn purge(State(state): App, req: Request) -> Result<Response, ApiError> {
    admin(&state, req.headers()).await?;
    let filter = body_filter(req).await?;
    let purged = state.conveyor.dead_letters.purge(&filter).await.map_err(store_error)?;
    Ok(json_response(StatusCode::OK, &json!(Purged { purged })))
}

/// Replays touch the store and the log: say which one failed.
fn replay_error(e: conveyor_actors::Error) -> ApiError {
    match e {
        conveyor_actors::Error::LogUnavailable { .. } | conveyor_actors::Error::Kafka { .. } => {
            ApiError::unavailable("event log", e)
        }
        conveyor_actors::Error::LogFull { .. } | conveyor_actors::Error::InvalidInput { .. } => ApiError::from(e),
        other => store_error(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_become_a_filter_and_bad_ones_are_named() {
        let f = query_filter(Some("source_topic=events-input&error_class=permanent&limit=5&since_ms=10"));
        assert!(f.is_ok_and(|f| f.source_topic.as_deref() == Some("events-input") && f.limit == Some(5)));
        let err = query_filter(Some("limit=lots&colour=red")).err();
        let fields: Vec<String> = match err {
            Some(ApiError::Validation(f)) => f.into_iter().map(|f| f.field.into_owned()).collect(),
            _ => vec![],
        };
        assert_eq!(fields, vec!["limit", "colour"]);
    }

    #[test]
    fn stuck_key_queries_default_to_100_and_name_bad_parameters() {
        assert!(stuck_query(None).is_ok_and(|q| q == (None, 100)));
        assert!(stuck_query(Some("topic=t&limit=5")).is_ok_and(|q| q == (Some("t".into()), 5)));
        let fields: Vec<String> = match stuck_query(Some("limit=0&key=x")).err() {
            Some(ApiError::Validation(f)) => f.into_iter().map(|f| f.field.into_owned()).collect(),
            _ => vec![],
        };
        assert_eq!(fields, vec!["limit", "key"]);
    }
}

/// The operator console: the live status (supervision tree, partitions, breakers), the
/// stuck keys, dead letters to browse and replay, webhook attempts to resend, workflow runs
/// to cancel. An HTML shell with no data: it calls the JSON API with the admin token it is
/// given (typed in, or `#token=…`), so it is served without authentication. Also at
/// `/admin/console`.
#[utoipa::path(get, path = "/admin/status", tag = "admin", security(()),
    responses((status = 200, content_type = "text/html", body = String, description = "Refreshes itself from /admin/status.json")))]
pub async fn status_page() -> Response {
    let mut response = Response::new(axum::body::Body::from(include_str!("../console.html")));
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

/// The supervision tree, partitions, breakers, dead letters and the outbox.
#[utoipa::path(get, path = "/admin/status.json", tag = "admin",
    responses((status = 200, body = conveyor_actors::status::SystemStatus)))]
pub async fn status(State(state): App, req: Request) -> Result<Response, ApiError> {
    admin(&state, req.headers()).await?;
    Ok(json_response(StatusCode::OK, &json!(state.conveyor.ops.status().await)))
}

/// `GET /admin/stuck-keys` query: `topic`, `limit` (1 to 1000, default 100).
fn stuck_query(query: Option<&str>) -> Result<(Option<String>, usize), ApiError> {
    let (mut topic, mut limit, mut errors) = (None, 100usize, Vec::new());
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "topic" => topic = Some(v.to_string()),
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => limit = n,
                _ => errors.push(FieldError::new("limit", "must be an integer from 1 to 1000")),
            },
            other => errors.push(FieldError::new(other.to_string(), "unknown parameter")),
        }
    }
    if errors.is_empty() { Ok((topic, limit)) } else { Err(ApiError::Validation(errors)) }
}

/// Keys that are not advancing: waiting out a backoff after a failure, behind an open
/// downstream breaker, or held by a failing dead-letter write. Longest stuck first; `total`
/// counts them all. A key leaves the list as soon as it succeeds or is dead-lettered.
#[utoipa::path(get, path = "/admin/stuck-keys", tag = "admin", params(
    ("topic" = Option<String>, Query, description = "Only keys of this source topic"),
    ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "At most this many keys (default 100)"),
), responses((status = 200, body = conveyor_actors::status::StuckKeyList)))]
pub async fn stuck_keys(State(state): App, req: Request) -> Result<Response, ApiError> {
    admin(&state, req.headers()).await?;
    let (topic, limit) = stuck_query(req.uri().query())?;
    Ok(json_response(StatusCode::OK, &json!(state.conveyor.ops.stuck_keys(topic.as_deref(), limit).await)))
}

/// Test-only fault hook (`faults.allow_panic_injection`): makes a service's actor panic so
/// that a drill sees the root supervisor restart it. Not in the OpenAPI document.
pub async fn inject_panic(
    State(state): App,
    RawPath(subsystem): RawPath<String>,
    req: Request,
) -> Result<Response, ApiError> {
    admin(&state, req.headers()).await?;
    state.conveyor.ops.inject_panic(&subsystem).await?;
    Ok(json_response(StatusCode::ACCEPTED, &json!({"subsystem": subsystem, "injected": "panic"})))
}

/// The test-only fault hooks answer an admin, and only while `faults.allow_panic_injection`
/// is on (404 otherwise, as if they did not exist).
async fn fault_hooks(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    admin(state, headers).await?;
    if !state.conveyor.config.faults.allow_panic_injection {
        return Err(ApiError::ResourceNotFound("fault hook"));
    }
    Ok(())
}

/// Test-only fault hook (`faults.allow_panic_injection`): panics in this handler, so that a
/// test sees the front end answer 500 and keep the connection. Not in the OpenAPI document.
pub async fn panic_in_handler(State(state): App, req: Request) -> Result<Response, ApiError> {
    fault_hooks(&state, req.headers()).await?;
    panic!("injected by POST /admin/faults/http/panic");
}

/// Test-only fault hook (`faults.allow_panic_injection`): every handler call for this key
/// fails retryably until healed, so a drill can hold a key in backoff and see it among the
/// stuck keys. Not in the OpenAPI document.
pub async fn fail_key(State(state): App, RawPath(key): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    fault_hooks(&state, req.headers()).await?;
    conveyor_actors::consumer::faults::fail_key(&key);
    Ok(json_response(StatusCode::ACCEPTED, &json!({"key": key, "injected": "retryable failure"})))
}

/// Test-only fault hook (`faults.allow_panic_injection`): the next record with this key makes
/// its partition actor panic, so a drill sees the partition restarted from its committed
/// offset with nothing lost. Not in the OpenAPI document.
pub async fn crash_partition(
    State(state): App,
    RawPath(key): RawPath<String>,
    req: Request,
) -> Result<Response, ApiError> {
    fault_hooks(&state, req.headers()).await?;
    conveyor_actors::consumer::faults::crash_partition_on(&key);
    Ok(json_response(StatusCode::ACCEPTED, &json!({"key": key, "injected": "partition actor crash"})))
}

/// Test-only fault hook: ends [`fail_key`] for this key.
pub async fn heal_key(State(state): App, RawPath(key): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    fault_hooks(&state, req.headers()).await?;
    let healed = conveyor_actors::consumer::faults::heal_key(&key);
    Ok(json_response(StatusCode::OK, &json!({"key": key, "healed": healed})))
}
