//! `/admin/parked-keys`: keys held behind a dead letter (`processing.on_dead_letter =
//! "park"`), with their dead letter; release one by replaying its dead letter or skipping
//! it. Role `admin` only.

use axum::extract::{Request, State};
use conveyor_actors::dlq::ReplayOutcome;
use conveyor_actors::json::parse_integer;
use conveyor_actors::parked::{ParkedKeyView, Skipped};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::admin::{admin, replay_response};
use crate::body;
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::{App, Response, json_response};

#[derive(Serialize, ToSchema)]
pub struct ParkedKeyPage {
    pub items: Vec<ParkedKeyView>,
    /// Pass as `after_id` for the next page; null on an empty page.
    pub next_after_id: Option<i64>,
}

/// Which parked key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ParkedKeyRef {
    /// The source topic (its name in the log).
    pub topic: String,
    pub key: String,
}

/// `GET /admin/parked-keys` query: `topic`, `after_id`, `limit` (1 to 1000, default 100).
fn list_query(query: Option<&str>) -> Result<(Option<String>, i64, u64), ApiError> {
    let (mut topic, mut after, mut limit, mut errors) = (None, 0i64, 100u64, Vec::new());
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "topic" => topic = Some(v.to_string()),
            "after_id" => match parse_integer(&v) {
                Some(n) => after = n,
                None => errors.push(FieldError::new("after_id", "must be an integer")),
            },
            "limit" => match parse_integer(&v) {
                Some(n) if (1..=1000).contains(&n) => limit = n as u64,
                _ => errors.push(FieldError::new("limit", "must be an integer from 1 to 1000")),
            },
            other => errors.push(FieldError::new(other.to_string(), "unknown parameter")),
        }
    }
    if errors.is_empty() { Ok((topic, after, limit)) } else { Err(ApiError::Validation(errors)) }
}

async fn key_ref(req: Request) -> Result<ParkedKeyRef, ApiError> {
    let bytes = body::read(req).await?;
    let value = body::json(&bytes)?;
    serde_json::from_value(value).map_err(|e| ApiError::Validation(vec![FieldError::new("body", e.to_string())]))
}

/// Parked keys by id, each with its held-record count and its dead letter (null until the
/// dead-letter index has it).
#[utoipa::path(get, path = "/admin/parked-keys", tag = "admin", params(
    ("topic" = Option<String>, Query, description = "Only keys of this source topic"),
    ("after_id" = Option<i64>, Query, description = "Paging: ids greater than this"),
    ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "At most this many keys (default 100)"),
), responses((status = 200, body = ParkedKeyPage)))]
pub async fn list(State(state): App, req: Request) -> Result<Response, ApiError> {
    admin(&state, req.headers()).await?;
    let (topic, after, limit) = list_query(req.uri().query())?;
    let items = state.conveyor.parked.list(topic.as_deref(), after, limit).await.map_err(ApiError::from)?;
    let next_after_id = items.last().map(|i| i.id);
    Ok(json_response(StatusCode::OK, &json!(ParkedKeyPage { items, next_after_id })))
}

/// Replays the parked key's dead letter to its partition (`dlq.max_replays` applies): it is
/// applied first, then the records held behind it, in order.
#[utoipa::path(post, path = "/admin/parked-keys/replay", tag = "admin", request_body = ParkedKeyRef,
    responses((status = 200, body = ReplayOutcome), (status = 404, body = ErrorBody, description = "Not parked"),
        (status = 409, body = ErrorBody, description = "The dead letter is not indexed yet, or was replayed `dlq.max_replays` times")))]
pub async fn replay(State(state): App, req: Request) -> Result<Response, ApiError> {
    admin(&state, req.headers()).await?;
    let r = key_ref(req).await?;
    let outcome = state.conveyor.parked.replay(&r.topic, &r.key).await.map_err(ApiError::from)?;
    replay_response(outcome)
}

/// Releases the parked key without its dead letter: the records held behind it are
/// applied in order; the dead letter stays in the index.
#[utoipa::path(post, path = "/admin/parked-keys/skip", tag = "admin", request_body = ParkedKeyRef,
    responses((status = 200, body = Skipped), (status = 404, body = ErrorBody, description = "Not parked")))]
pub async fn skip(State(state): App, req: Request) -> Result<Response, ApiError> {
    admin(&state, req.headers()).await?;
    let r = key_ref(req).await?;
    let skipped = state.conveyor.parked.skip(&r.topic, &r.key).await.map_err(ApiError::from)?;
    Ok(json_response(StatusCode::OK, &json!(skipped)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_default_and_name_bad_parameters() {
        assert!(list_query(None).is_ok_and(|q| q == (None, 0, 100)));
        assert!(list_query(Some("topic=t&after_id=4&limit=5")).is_ok_and(|q| q == (Some("t".into()), 4, 5)));
        assert!(list_query(Some("after_id=4.0&limit=5e1")).is_ok_and(|q| q == (None, 4, 50)));
        let fields: Vec<String> = match list_query(Some("limit=0&key=x")).err() {
            Some(ApiError::Validation(f)) => f.into_iter().map(|f| f.field.into_owned()).collect(),
            _ => vec![],
        };
        assert_eq!(fields, vec!["limit", "key"]);
    }
}
