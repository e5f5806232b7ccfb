//! `/webhooks/…`: endpoint management (owner or admin), secrets, the attempt records and
//! per-endpoint counts (Gwook's wish-list "Event Metrics API"), and resending a delivery.

use axum::extract::{Request, State};
use conveyor_webhooks::endpoints::{
    Caller, CreatedEndpoint, EndpointPatch, EndpointView, NewEndpoint, RotateSecret, SecretView,
};
use conveyor_webhooks::records::{AttemptView, DeliveryView, EndpointStats};
use http::{HeaderMap, StatusCode};
use serde_json::json;

use crate::auth::{Authorize, roles};
use crate::body;
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::extract::RawPath;
use crate::{App, AppState, Response, json_response};

/// Users manage their own endpoints; admins all of them.
pub(crate) async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let principal = state.authenticate(headers).await?;
    principal.require(&[roles::USER, roles::ADMIN])?;
    Ok(Caller { admin: principal.has_role(roles::ADMIN), user_id: principal.sub })
}

fn ok(value: impl serde::Serialize) -> Response {
    json_response(StatusCode::OK, &json!(value))
}

/// Registers an endpoint; the answer carries its signing secret.
#[utoipa::path(post, path = "/webhooks/endpoints", tag = "webhooks", request_body = NewEndpoint,
    responses((status = 201, body = CreatedEndpoint)))]
pub async fn create(State(state): App, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    let spec: NewEndpoint = body::object(req).await?;
    let created = state.conveyor.webhooks.create_endpoint(&caller, spec).await?;
    Ok(json_response(StatusCode::CREATED, &json!(created)))
}

/// The caller's endpoints (every endpoint for an admin).
#[utoipa::path(get, path = "/webhooks/endpoints", tag = "webhooks", responses((status = 200, body = Vec<EndpointView>)))]
pub async fn list(State(state): App, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    Ok(ok(state.conveyor.webhooks.list_endpoints(&caller).await?))
}

#[utoipa::path(get, path = "/webhooks/endpoints/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = EndpointView), (status = 404, body = ErrorBody)))]
pub async fn get(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    Ok(ok(state.conveyor.webhooks.get_endpoint(&caller, &id).await?))
}

/// Changes the fields given; the others stay.
#[utoipa::path(patch, path = "/webhooks/endpoints/{id}", tag = "webhooks", params(("id" = String, Path)),
    request_body = EndpointPatch, responses((status = 200, body = EndpointView), (status = 404, body = ErrorBody)))]
pub async fn update(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    let patch: EndpointPatch = body::object(req).await?;
    Ok(ok(state.conveyor.webhooks.update_endpoint(&caller, &id, patch).await?))
}

/// Deletes an endpoint; its pending deliveries are discarded.
#[utoipa::path(delete, path = "/webhooks/endpoints/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)))]
pub async fn delete(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    state.conveyor.webhooks.delete_endpoint(&caller, &id).await?;
    Ok(crate::empty_response(StatusCode::NO_CONTENT))
}

/// Enables an endpoint; deliveries that waited while it was disabled go out.
#[utoipa::path(post, path = "/webhooks/endpoints/{id}/enable", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = EndpointView), (status = 404, body = ErrorBody)))]
pub async fn enable(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    Ok(ok(state.conveyor.webhooks.set_enabled(&caller, &id, true).await?))
}

/// Disables an endpoint: new notifications skip it; pending deliveries wait.
#[utoipa::path(post, path = "/webhooks/endpoints/{id}/disable", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = EndpointView), (status = 404, body = ErrorBody)))]
pub async fn disable(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    Ok(ok(state.conveyor.webhooks.set_enabled(&caller, &id, false).await?))
}

/// The signing secret (and the previous one while it still signs).
#[utoipa::path(get, path = "/webhooks/endpoints/{id}/secret", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = SecretView), (status = 404, body = ErrorBody)))]
pub async fn secret(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    Ok(ok(state.conveyor.webhooks.secret(&caller, &id).await?))
}

/// Replaces the secret; the old one keeps signing for the overlap (both signatures are sent).
#[utoipa::path(post, path = "/webhooks/endpoints/{id}/secret/rotate", tag = "webhooks", params(("id" = String, Path)),
    request_body(content = Option<RotateSecret>, description = "Optional: an empty body rotates with the defaults"), responses((status = 200, body = SecretView), (status = 404, body = ErrorBody)))]
pub async fn rotate(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    let request: RotateSecret = body::optional_object(req).await?;
    Ok(ok(state.conveyor.webhooks.rotate_secret(&caller, &id, request).await?))
}

/// Delivery attempts to this endpoint, newest first.
#[utoipa::path(get, path = "/webhooks/endpoints/{id}/attempts", tag = "webhooks", params(("id" = String, Path),
    ("before" = Option<i64>, Query, minimum = 1, description = "Only attempts with a smaller id (paging)"),
    ("limit" = Option<i64>, Query, minimum = 1, maximum = 500)),
    responses((status = 200, body = Vec<AttemptView>), (status = 404, body = ErrorBody)))]
pub async fn attempts(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    let (mut before, mut limit, mut errors) = (None, 100u64, Vec::new());
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()) {
        match (k.as_ref(), conveyor_actors::json::parse_integer(&v)) {
            ("before", Some(n)) if n >= 1 => before = Some(n),
            ("limit", Some(n)) if (1..=500).contains(&n) => limit = n as u64,
            ("before", _) => errors.push(FieldError::new("before", "must be a positive integer")),
            ("limit", _) => errors.push(FieldError::new("limit", "must be an integer from 1 to 500")),
            (other, _) => errors.push(FieldError::new(other.to_string(), "unknown parameter")),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    Ok(ok(state.conveyor.webhooks.endpoint_attempts(&caller, &id, before, limit).await?))
}

/// Deliveries forwarded, failed, pending and discarded for this endpoint.
#[utoipa::path(get, path = "/webhooks/endpoints/{id}/stats", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = EndpointStats), (status = 404, body = ErrorBody)))]
pub async fn stats(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    Ok(ok(state.conveyor.webhooks.endpoint_stats(&caller, &id).await?))
}

/// Sends a finished (delivered or failed) delivery again with a fresh schedule.
#[utoipa::path(post, path = "/webhooks/deliveries/{id}/resend", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 202, body = DeliveryView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "`delivery_pending` or `endpoint_disabled`")))]
pub async fn resend(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    let caller = caller(&state, req.headers()).await?;
    let delivery = state.conveyor.webhooks.resend(&caller, &id).await?;
    Ok(json_response(StatusCode::ACCEPTED, &json!(delivery)))
}
