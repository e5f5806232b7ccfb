//! `/admin/replays`: dead-letter replay jobs. Start one (or count what it would replay),
//! list them, follow one's progress, pause, resume or cancel it. Role `admin` only.

use axum::extract::{Request, State};
use conveyor_actors::dlq::DeadLetterFilter;
use conveyor_actors::json::value_integer;
use conveyor_actors::replay::{NewReplay, ReplayAction, ReplayDryRun, ReplayJobView};
use http::StatusCode;
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use crate::body;
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::extract::RawPath;
use crate::routes::admin::admin;
use crate::{App, Response, json_response};

/// A replay job to start. Every field may be left out: an empty body replays every dead
/// letter at the default rate (`dlq.replay_default_rate`).
// Deserialize only for `deny_unknown_fields`, which tells the document what the handler
// does: an unknown field is a 422 naming it (additionalProperties: false).
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"source_topic": "events-input", "error_class": "permanent", "since_ms": 1764720000000i64, "rate": 500}))]
#[allow(dead_code)] // Documents the body; the handler reads it field by field to name bad ones.
pub struct ReplayRequest {
    /// Only dead letters from this topic.
    #[schema(pattern = r"\S")]
    source_topic: Option<String>,
    /// Only this error class: `retryable`, `permanent`, `unavailable`, …
    #[schema(pattern = r"\S")]
    error_class: Option<String>,
    /// Last failure at or after this time (ms since the epoch).
    since_ms: Option<i64>,
    /// Last failure before this time (ms since the epoch).
    until_ms: Option<i64>,
    /// Records per second, 1 to 10000 (default `dlq.replay_default_rate`).
    #[schema(minimum = 1, maximum = 10000)]
    rate: Option<u32>,
    /// Only count what would be replayed (200 with the counts; nothing is created).
    dry_run: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct ReplayJobList {
    /// Newest first.
    pub items: Vec<ReplayJobView>,
}

/// Body → job and dry-run flag; every bad field is named.
fn parse(value: Value) -> Result<(NewReplay, bool), ApiError> {
    let obj = match value {
        Value::Null => Map::new(),
        Value::Object(obj) => obj,
        _ => return Err(ApiError::Validation(vec![FieldError::new("body", "must be a JSON object or empty")])),
    };
    let mut new = NewReplay { filter: DeadLetterFilter::default(), rate: None };
    let mut dry_run = false;
    let mut errors = Vec::new();
    for (key, v) in obj {
        if v.is_null() {
            continue;
        }
        let text = |errors: &mut Vec<FieldError>| match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                errors.push(FieldError::new(key.clone(), "must be a string"));
                None
            }
        };
        let integer = |errors: &mut Vec<FieldError>| match value_integer(&v) {
            Some(n) => Some(n),
            None => {
                errors.push(FieldError::new(key.clone(), "must be an integer"));
                None
            }
        };
        match key.as_str() {
            "source_topic" => new.filter.source_topic = text(&mut errors),
            "error_class" => new.filter.error_class = text(&mut errors),
            "since_ms" => new.filter.since_ms = integer(&mut errors),
            "until_ms" => new.filter.until_ms = integer(&mut errors),
            "rate" => match value_integer(&v).map(u32::try_from) {
                Some(Ok(rate)) => new.rate = Some(rate),
                _ => errors.push(FieldError::new("rate", "must be a positive integer (records per second)")),
            },
            "dry_run" => match v.as_bool() {
                Some(b) => dry_run = b,
                None => errors.push(FieldError::new("dry_run", "must be true or false")),
            },
            _ => errors.push(FieldError::new(key.clone(), "unknown field")),
        }
    }
    if errors.is_empty() { Ok((new, dry_run)) } else { Err(ApiError::Validation(errors)) }
}

fn id_param(id: &str) -> Result<i64, ApiError> {
    id.parse().map_err(|_| ApiError::Validation(vec![FieldError::new("id", "must be an integer")]))
}

/// Starts a replay job: the matching dead letters go back to their source topic at `rate`
/// records per second, in id order; dead letters indexed after the job started are not part
/// of it. With `dry_run`, answers what it would replay and creates nothing.
#[utoipa::path(post, path = "/admin/replays", tag = "admin", request_body(content = Option<ReplayRequest>, description = "Empty: every dead letter, default rate"),
    responses((status = 201, body = ReplayJobView, description = "The job, running"),
        (status = 200, body = ReplayDryRun, description = "Dry run: the counts, nothing created"),
        (status = 422, body = ErrorBody, description = "A bad filter field or rate, named in `details`")))]
pub async fn create(State(state): App, req: Request) -> Result<Response, ApiError> {
    admin(&state, req.headers()).await?;
    let bytes = body::read(req).await?;
    let value = if bytes.iter().all(u8::is_ascii_whitespace) { Value::Null } else { body::json(&bytes)? };
    let (new, dry_run) = parse(value)?;
    let replays = &state.conveyor.replays;
    if dry_run {
        Ok(json_response(StatusCode::OK, &json!(replays.dry_run(&new).await?)))
    } else {
        Ok(json_response(StatusCode::CREATED, &json!(replays.create(&new).await?)))
    }
}

/// Recent replay jobs, newest first (finished ones are kept `retention.finished_replays_secs`).
#[utoipa::path(get, path = "/admin/replays", tag = "admin",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Default 50")),
    responses((status = 200, body = ReplayJobList), (status = 422, body = ErrorBody)))]
pub async fn list(State(state): App, req: Request) -> Result<Response, ApiError> {
    admin(&state, req.headers()).await?;
    let mut limit = 50;
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()) {
        match (k.as_ref(), v.parse::<u64>()) {
            ("limit", Ok(n)) if (1..=conveyor_actors::replay::MAX_LIST).contains(&n) => limit = n,
            ("limit", _) => return Err(ApiError::Validation(vec![FieldError::new("limit", "must be from 1 to 1000")])),
            (other, _) => {
                return Err(ApiError::Validation(vec![FieldError::new(other.to_string(), "unknown parameter")]));
            }
        }
    }
    let items = state.conveyor.replays.list(limit).await?;
    Ok(json_response(StatusCode::OK, &json!(ReplayJobList { items })))
}

/// One replay job: its status and progress (matched, replayed, skipped, failed, remaining).
#[utoipa::path(get, path = "/admin/replays/{id}", tag = "admin", params(("id" = i64, Path, description = "The job's id")),
    responses((status = 200, body = ReplayJobView), (status = 404, body = ErrorBody)))]
pub async fn show(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    admin(&state, req.headers()).await?;
    match state.conveyor.replays.get(id_param(&id)?).await? {
        Some(job) => Ok(json_response(StatusCode::OK, &json!(job))),
        None => Err(ApiError::ResourceNotFound("Replay job")),
    }
}

async fn act(state: App, id: &str, req: Request, action: ReplayAction) -> Result<Response, ApiError> {
    let State(state) = state;
    admin(&state, req.headers()).await?;
    let job = state.conveyor.replays.act(id_param(id)?, action).await?;
    Ok(json_response(StatusCode::OK, &json!(job)))
}

/// Pauses a running job after the record in progress.
#[utoipa::path(post, path = "/admin/replays/{id}/pause", tag = "admin", params(("id" = i64, Path, description = "The job's id")),
    responses((status = 200, body = ReplayJobView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The job is not running (code `replay_transition_not_allowed`)")))]
pub async fn pause(state: App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    act(state, &id, req, ReplayAction::Pause).await
}

/// Resumes a paused job where it stopped.
#[utoipa::path(post, path = "/admin/replays/{id}/resume", tag = "admin", params(("id" = i64, Path, description = "The job's id")),
    responses((status = 200, body = ReplayJobView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The job is not paused (code `replay_transition_not_allowed`)")))]
pub async fn resume(state: App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    act(state, &id, req, ReplayAction::Resume).await
}

/// Cancels a running or paused job; what it replayed stays replayed.
#[utoipa::path(post, path = "/admin/replays/{id}/cancel", tag = "admin", params(("id" = i64, Path, description = "The job's id")),
    responses((status = 200, body = ReplayJobView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The job already ended (code `replay_transition_not_allowed`)")))]
pub async fn cancel(state: App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    act(state, &id, req, ReplayAction::Cancel).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn fields(value: Value) -> Vec<String> {
        match parse(value) {
            Err(ApiError::Validation(f)) => f.into_iter().map(|f| f.field.into_owned()).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn bodies_become_jobs_and_bad_fields_are_named() {
        let (new, dry) = parse(json!({"source_topic": "in", "since_ms": 5, "rate": 300, "dry_run": true})).unwrap();
        assert_eq!(
            (new.filter.source_topic.as_deref(), new.filter.since_ms, new.rate, dry),
            (Some("in"), Some(5), Some(300), true)
        );
        assert_eq!(parse(Value::Null).unwrap().0, NewReplay::default());
        // JSON Schema's integers include integral floats; the document promises integers.
        let (new, _) = parse(json!({"since_ms": 375468.0, "rate": 8491.0})).unwrap();
        assert_eq!((new.filter.since_ms, new.rate), (Some(375_468), Some(8491)));
        assert_eq!(fields(json!({"rate": "fast", "since_ms": 1.5, "colour": 1})), vec!["colour", "rate", "since_ms"]);
        assert_eq!(fields(json!({"rate": -1})), vec!["rate"]);
        assert_eq!(fields(json!([1])), vec!["body"]);
    }
}
