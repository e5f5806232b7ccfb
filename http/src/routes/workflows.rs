//! `/workflows` (seeds 000/001): definitions owned by their user (admins see all), manual
//! runs, run results with `?wait=` long polling, and `/dashboard`.

use std::time::Duration;

use axum::extract::{Request, State};
use conveyor_workflows::definition::WorkflowSpec;
use conveyor_workflows::views::{Dashboard, RunSummary, RunView, WorkflowView};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::body;
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::extract::RawPath;
use crate::routes::webhooks::caller;
use crate::{App, Response, json_response};

fn ok(status: StatusCode, value: impl serde::Serialize) -> Response {
    json_response(status, &json!(value))
}

/// Creates a workflow; its `name` must be new among the caller's workflows.
#[utoipa::path(post, path = "/workflows", tag = "workflows", request_body = WorkflowSpec,
    responses((status = 201, body = WorkflowView),
        (status = 409, body = ErrorBody, description = "`workflow_name_taken`, or `duplicate_step_name`: two steps share a name")))]
pub async fn create(State(state): App, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    let spec: WorkflowSpec = body::object(req).await?;
    Ok(ok(StatusCode::CREATED, state.conveyor.workflows.create(&caller, spec).await?))
}

/// The caller's workflows (every workflow for an admin).
#[utoipa::path(get, path = "/workflows", tag = "workflows", responses((status = 200, body = Vec<WorkflowView>)))]
pub async fn list(State(state): App, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    Ok(ok(StatusCode::OK, state.conveyor.workflows.list(&caller).await?))
}

#[utoipa::path(get, path = "/workflows/{id}", tag = "workflows", params(("id" = String, Path)),
    responses((status = 200, body = WorkflowView), (status = 404, body = ErrorBody)))]
pub async fn get(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    Ok(ok(StatusCode::OK, state.conveyor.workflows.get(&caller, &id).await?))
}

/// Replaces the definition; runs already started finish with the definition they began with.
#[utoipa::path(put, path = "/workflows/{id}", tag = "workflows", params(("id" = String, Path)), request_body = WorkflowSpec,
    responses((status = 200, body = WorkflowView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "`workflow_name_taken` or `duplicate_step_name`")))]
pub async fn replace(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    let spec: WorkflowSpec = body::object(req).await?;
    Ok(ok(StatusCode::OK, state.conveyor.workflows.replace(&caller, &id, spec).await?))
}

#[utoipa::path(delete, path = "/workflows/{id}", tag = "workflows", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted; its runs stay readable by id"), (status = 404, body = ErrorBody)))]
pub async fn delete(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    state.conveyor.workflows.delete(&caller, &id).await?;
    Ok(crate::empty_response(StatusCode::NO_CONTENT))
}

#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"input": {"user_id": "u-1"}}))]
pub struct RunRequest {
    /// What the steps' templates see as `input`.
    #[serde(default)]
    input: serde_json::Map<String, serde_json::Value>,
}

/// Starts a run by hand; 202 once the request is in the log.
#[utoipa::path(post, path = "/workflows/{id}/runs", tag = "workflows", params(("id" = String, Path)),
    request_body(content = Option<RunRequest>, description = "Optional: `{\"input\": {...}}`"),
    responses((status = 202, body = RunView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "`workflow_inactive`")))]
pub async fn start(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    let request: RunRequest = body::optional_object(req).await?;
    let input = serde_json::Value::Object(request.input);
    Ok(ok(StatusCode::ACCEPTED, state.conveyor.workflows.start_manual(&caller, &id, input).await?))
}

fn query(req: &Request) -> Vec<(String, String)> {
    form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()).into_owned().collect()
}

/// The workflow's runs, newest first.
#[utoipa::path(get, path = "/workflows/{id}/runs", tag = "workflows",
    params(("id" = String, Path), ("limit" = Option<i64>, Query, minimum = 1, maximum = 500)),
    responses((status = 200, body = Vec<RunSummary>), (status = 404, body = ErrorBody)))]
pub async fn runs(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    let mut limit = 50u64;
    for (k, v) in query(&req) {
        match (k.as_str(), conveyor_actors::json::parse_integer(&v)) {
            ("limit", Some(n)) if (1..=500).contains(&n) => limit = n as u64,
            ("limit", _) => {
                return Err(ApiError::Validation(vec![FieldError::new("limit", "an integer from 1 to 500")]));
            }
            (other, _) => {
                return Err(ApiError::Validation(vec![FieldError::new(other.to_string(), "unknown parameter")]));
            }
        }
    }
    Ok(ok(StatusCode::OK, state.conveyor.workflows.runs(&caller, &id, limit).await?))
}

/// `30s`, `500ms`, `2m` or plain seconds.
fn parse_wait(text: &str) -> Option<Duration> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

/// A run with every step's status, attempts, duration and response code. `?wait=30s`
/// answers as soon as the run finishes (at most `workflows.max_wait_secs`).
#[utoipa::path(get, path = "/workflows/{id}/runs/{run_id}", tag = "workflows",
    params(("id" = String, Path), ("run_id" = String, Path),
        ("wait" = Option<String>, Query, pattern = "^[0-9]{1,6}(ms|s|m)?$", description = "Long-poll until the run finishes")),
    responses((status = 200, body = RunView), (status = 404, body = ErrorBody)))]
pub async fn run(
    State(state): App,
    RawPath((id, run_id)): RawPath<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    let mut wait = None;
    for (k, v) in query(&req) {
        match k.as_str() {
            "wait" if v.len() <= 8 => match parse_wait(&v) {
                Some(d) => wait = Some(d),
                None => return Err(ApiError::Validation(vec![FieldError::new("wait", "like 30s, 500ms or 2m")])),
            },
            "wait" => return Err(ApiError::Validation(vec![FieldError::new("wait", "like 30s, 500ms or 2m")])),
            other => return Err(ApiError::Validation(vec![FieldError::new(other.to_string(), "unknown parameter")])),
        }
    }
    Ok(ok(StatusCode::OK, state.conveyor.workflows.run(&caller, &id, &run_id, wait).await?))
}

/// Cancels a pending or running run: it stops before its next step (a request already in
/// flight may finish; a delay is cut short), its status becomes `cancelled`, and it is not
/// resumed after a restart.
#[utoipa::path(post, path = "/workflows/{id}/runs/{run_id}/cancel", tag = "workflows",
    params(("id" = String, Path), ("run_id" = String, Path)),
    responses((status = 200, body = RunView, description = "The run, now `cancelled`"), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "`run_finished`: the run has already finished")))]
pub async fn cancel(
    State(state): App,
    RawPath((id, run_id)): RawPath<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    Ok(ok(StatusCode::OK, state.conveyor.workflows.cancel(&caller, &id, &run_id).await?))
}

/// The caller's totals: workflows, runs succeeded, failed and pending, the latest runs.
#[utoipa::path(get, path = "/dashboard", tag = "workflows", responses((status = 200, body = Dashboard)))]
pub async fn dashboard(State(state): App, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    Ok(ok(StatusCode::OK, state.conveyor.workflows.dashboard(&caller).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_parse() {
        assert_eq!(parse_wait("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_wait("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_wait("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_wait("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_wait("1h"), None);
        assert_eq!(parse_wait("s"), None);
    }
}
