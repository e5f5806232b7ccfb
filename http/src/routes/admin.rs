//! `/admin/dead-letters`: list with filters, show one, replay one or a filtered set to
//! its source topic, purge. Role `admin` only.

use conveyor_actors::dlq::{DeadLetterFilter, ReplayOutcome};
use http::{HeaderMap, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::auth::{Authorize, roles};
use crate::body;
use crate::error::{ApiError, FieldError};
use crate::server::Ctx;
use crate::{AppState, Response, json_response};

async fn admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    state.authenticate(headers).await?.require(&[roles::ADMIN])
}

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
        let num = |errors: &mut Vec<FieldError>| match v.parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => {
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
            "limit" => filter.limit = num(&mut errors).map(|n| n.max(1) as u64),
            other => errors.push(FieldError::new(other.to_string(), "unknown parameter")),
        }
    }
    if errors.is_empty() { Ok(filter) } else { Err(ApiError::Validation(errors)) }
}

async fn body_filter(req: Request<Incoming>, ctx: &Ctx) -> Result<DeadLetterFilter, ApiError> {
    let bytes = body::read(req.into_body(), ctx.body_limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(DeadLetterFilter::default());
    }
    let value = body::json(&bytes)?;
    serde_json::from_value(value).map_err(|e| ApiError::Validation(vec![FieldError::new("body", e.to_string())]))
}

pub async fn list(state: &AppState, req: &Request<Incoming>) -> Result<Response, ApiError> {
    admin(state, req.headers()).await?;
    let filter = query_filter(req.uri().query())?;
    let items = state.conveyor.dead_letters.list(&filter).await.map_err(store_error)?;
    let next_after_id = items.last().map(|i| i.id);
    Ok(json_response(StatusCode::OK, &json!({"items": items, "next_after_id": next_after_id})))
}

pub async fn show(state: &AppState, req: &Request<Incoming>, id: &str) -> Result<Response, ApiError> {
    admin(state, req.headers()).await?;
    match state.conveyor.dead_letters.show(id_param(id)?).await.map_err(store_error)? {
        Some(view) => Ok(json_response(StatusCode::OK, &json!(view))),
        None => Err(ApiError::ResourceNotFound("Dead letter")),
    }
}

pub async fn delete(state: &AppState, req: &Request<Incoming>, id: &str) -> Result<Response, ApiError> {
    admin(state, req.headers()).await?;
    if state.conveyor.dead_letters.delete(id_param(id)?).await.map_err(store_error)? {
        Ok(json_response(StatusCode::OK, &json!({"deleted": 1})))
    } else {
        Err(ApiError::ResourceNotFound("Dead letter"))
    }
}

pub async fn replay(state: &AppState, req: &Request<Incoming>, id: &str) -> Result<Response, ApiError> {
    admin(state, req.headers()).await?;
    let outcome = state.conveyor.dead_letters.replay(id_param(id)?).await.map_err(replay_error)?;
    match outcome {
        ReplayOutcome::Replayed { .. } => Ok(json_response(StatusCode::OK, &json!(outcome))),
        ReplayOutcome::NotFound { .. } => Err(ApiError::ResourceNotFound("Dead letter")),
        ReplayOutcome::TooManyReplays { replay_count, .. } => Err(ApiError::Conflict {
            code: "too_many_replays",
            message: format!("already replayed {replay_count} times (dlq.max_replays)"),
        }),
    }
}

pub async fn replay_matching(state: &AppState, req: Request<Incoming>, ctx: &Ctx) -> Result<Response, ApiError> {
    admin(state, req.headers()).await?;
    let filter = body_filter(req, ctx).await?;
    let results = state.conveyor.dead_letters.replay_matching(&filter).await.map_err(replay_error)?;
    let replayed = results.iter().filter(|r| matches!(r, ReplayOutcome::Replayed { .. })).count();
    Ok(json_response(StatusCode::OK, &json!({"replayed": replayed, "results": results})))
}

pub async fn purge(state: &AppState, req: Request<Incoming>, ctx: &Ctx) -> Result<Response, ApiError> {
    admin(state, req.headers()).await?;
    let filter = body_filter(req, ctx).await?;
    let purged = state.conveyor.dead_letters.purge(&filter).await.map_err(store_error)?;
    Ok(json_response(StatusCode::OK, &json!({"purged": purged})))
}

/// Replays touch the store and the log: say which one failed.
fn replay_error(e: conveyor_actors::Error) -> ApiError {
    match e {
        conveyor_actors::Error::LogUnavailable { .. } | conveyor_actors::Error::Kafka { .. } => {
            ApiError::unavailable("event log", e)
        }
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
            Some(ApiError::Validation(f)) => f.into_iter().map(|f| f.field).collect(),
            _ => vec![],
        };
        assert_eq!(fields, vec!["limit", "colour"]);
    }
}
