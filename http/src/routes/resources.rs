//! `GET /resource/{id}`: read-through cache over the store.

use axum::extract::{Request, State};
use http::StatusCode;

use crate::auth::{Authorize, roles};
use crate::error::{ApiError, FieldError};
use crate::extract::RawPath;
use crate::{App, Response, json_response};

/// A device's latest state: cache, then store.
#[utoipa::path(get, path = "/resource/{id}", tag = "events",
    params(("id" = String, Path, description = "The device id", example = "device-123")),
    responses((status = 200, body = conveyor_devices::ResourceView), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(State(state): App, RawPath(id): RawPath<String>, req: Request) -> Result<Response, ApiError> {
    let principal = state.authenticate(req.headers()).await?;
    principal.require(&[roles::USER, roles::ADMIN, roles::DEVICE])?;
    if id.is_empty() || id.chars().count() > 128 {
        return Err(ApiError::Validation(vec![FieldError::new("id", "must be 1 to 128 characters")]));
    }
    match state.conveyor.resources.get(&id).await {
        Ok(Some(view)) => Ok(json_response(StatusCode::OK, &serde_json::to_value(view).unwrap_or_default())),
        Ok(None) => Err(ApiError::ResourceNotFound("Resource")),
        Err(source) => Err(ApiError::unavailable("store", source)),
    }
}
