//! `/auth/*` in seed 004's shapes: registration, login, logout, refresh, info.
//! Responses are `{"status": "Success", …}`; failures use the common error body.

use conveyor_actors::identity::Registration;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::body;
use crate::error::ApiError;
use crate::server::Ctx;
use crate::{AppState, Response, json_response};

#[derive(Deserialize)]
struct RegistrationForm {
    email: String,
    password: String,
    name: String,
    birthday: String,
}

#[derive(Deserialize)]
struct LoginForm {
    email: String,
    password: String,
}

#[derive(Deserialize)]
struct TokenForm {
    token: String,
}

fn pair(status: StatusCode, pair: conveyor_actors::identity::TokenPair) -> Response {
    json_response(
        status,
        &json!({
            "status": "Success",
            "user_id": pair.user_id,
            "access_token": pair.access_token,
            "refresh_token": pair.refresh_token,
        }),
    )
}

pub async fn register(state: &AppState, req: Request<Incoming>, ctx: &Ctx) -> Result<Response, ApiError> {
    let f: RegistrationForm = body::object(req.into_body(), ctx.body_limit).await?;
    let registration = Registration { email: f.email, password: f.password, name: f.name, birthday: f.birthday };
    let tokens = state.conveyor.identity.register(registration).await?;
    Ok(pair(StatusCode::CREATED, tokens))
}

pub async fn login(state: &AppState, req: Request<Incoming>, ctx: &Ctx) -> Result<Response, ApiError> {
    let f: LoginForm = body::object(req.into_body(), ctx.body_limit).await?;
    Ok(pair(StatusCode::OK, state.conveyor.identity.login(&f.email, &f.password).await?))
}

pub async fn refresh(state: &AppState, req: Request<Incoming>, ctx: &Ctx) -> Result<Response, ApiError> {
    let f: TokenForm = body::object(req.into_body(), ctx.body_limit).await?;
    Ok(pair(StatusCode::OK, state.conveyor.identity.refresh(&f.token).await?))
}

pub async fn logout(state: &AppState, req: Request<Incoming>, ctx: &Ctx) -> Result<Response, ApiError> {
    let f: TokenForm = body::object(req.into_body(), ctx.body_limit).await?;
    state.conveyor.identity.logout(&f.token).await?;
    Ok(json_response(StatusCode::OK, &json!({"status": "Success"})))
}

pub async fn info(state: &AppState, req: &Request<Incoming>) -> Result<Response, ApiError> {
    let principal = state.authenticate(req.headers()).await?;
    match state.conveyor.identity.info(&principal).await? {
        Some(user) => Ok(json_response(StatusCode::OK, &serde_json::to_value(user).unwrap_or_default())),
        // Device and tool tokens name no account; say who they are.
        None => Ok(json_response(
            StatusCode::OK,
            &json!({"user_id": principal.sub, "email": null, "roles": principal.roles, "created_at": null}),
        )),
    }
}
