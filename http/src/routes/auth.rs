//! `/auth/*` in seed 004's shapes: registration, login, logout, refresh, info.
//! Responses are `{"status": "Success", …}`; failures use the common error body.

use axum::extract::{Request, State};
use conveyor_identity::{Registration, UserInfo};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::body;
use crate::error::{ApiError, ErrorBody};
use crate::{App, Response, json_response};

#[derive(Deserialize, ToSchema)]
/// An example registration.
#[schema(example = json!({"birthday": "string", "email": "test00@test.com", "name": "test_name", "password": "test-password"}))]
pub struct RegistrationForm {
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// The default policy (`auth.password`): 8 to 128 characters.
    #[schema(min_length = 8, max_length = 128)]
    password: String,
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// Free text, kept as written (`YYYY-MM-DD` recommended).
    #[schema(min_length = 1, max_length = 100)]
    birthday: String,
}

#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"email": "test00@test.com", "password": "test-password"}))]
pub struct LoginForm {
    email: String,
    password: String,
}

#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJlbWFpbCI6InRlc3RAdGVzdC5jb20iLCJleHAiOjE3MjUxOTM5MTEsInRva2VuX3R5cGUiOiJhY2Nlc3MiLCJ1aWQiOiJlNjZhMjk4YS1jODM1LTRjZmEtOGM4ZS02MDUzNGY0YzAwZjkifQ.D7SQF4GlM3ykCh8gZbb6qUOAxufbha_0ZEW1GEsei2g"}))]
pub struct TokenForm {
    /// A token Conveyor issued.
    token: String,
}

/// The answer with a token pair.
#[derive(Serialize, ToSchema)]
pub struct TokenPairBody {
    /// `Success`.
    pub status: String,
    pub user_id: String,
    pub access_token: String,
    pub refresh_token: String,
}

#[derive(Serialize, ToSchema)]
pub struct StatusBody {
    /// `Success`.
    pub status: String,
}

fn pair(status: StatusCode, pair: conveyor_identity::TokenPair) -> Response {
    let body = TokenPairBody {
        status: "Success".into(),
        user_id: pair.user_id,
        access_token: pair.access_token,
        refresh_token: pair.refresh_token,
    };
    json_response(status, &json!(body))
}

/// Creates an account (role `user`) and starts its registration saga.
#[utoipa::path(post, path = "/auth/registration", tag = "auth", security(()), request_body = RegistrationForm, responses(
    (status = 201, body = TokenPairBody), (status = 409, body = ErrorBody, description = "The email has an account")))]
pub async fn register(State(state): App, req: Request) -> Result<Response, ApiError> {
    let f: RegistrationForm = body::object(req).await?;
    let registration = Registration { email: f.email, password: f.password, name: f.name, birthday: f.birthday };
    let tokens = state.conveyor.identity.register(registration).await?;
    Ok(pair(StatusCode::CREATED, tokens))
}

/// Password login.
#[utoipa::path(post, path = "/auth/login", tag = "auth", security(()), request_body = LoginForm, responses(
    (status = 200, body = TokenPairBody)))]
pub async fn login(State(state): App, req: Request) -> Result<Response, ApiError> {
    let f: LoginForm = body::object(req).await?;
    Ok(pair(StatusCode::OK, state.conveyor.identity.login(&f.email, &f.password).await?))
}

/// Trades a refresh token for a new pair; the old one is spent.
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", security(()), request_body = TokenForm, responses(
    (status = 200, body = TokenPairBody)))]
pub async fn refresh(State(state): App, req: Request) -> Result<Response, ApiError> {
    let f: TokenForm = body::object(req).await?;
    Ok(pair(StatusCode::OK, state.conveyor.identity.refresh(&f.token).await?))
}

/// Revokes the token and its session.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", security(()), request_body = TokenForm, responses(
    (status = 200, body = StatusBody)))]
pub async fn logout(State(state): App, req: Request) -> Result<Response, ApiError> {
    let f: TokenForm = body::object(req).await?;
    state.conveyor.identity.logout(&f.token).await?;
    Ok(json_response(StatusCode::OK, &json!(StatusBody { status: "Success".into() })))
}

/// Who the token belongs to, and the state of its registration saga.
#[utoipa::path(get, path = "/auth/info", tag = "auth", responses((status = 200, body = conveyor_identity::UserInfo)))]
pub async fn info(State(state): App, req: Request) -> Result<Response, ApiError> {
    let principal = state.authenticate(req.headers()).await?;
    match state.conveyor.identity.info(&principal).await? {
        Some(user) => Ok(json_response(StatusCode::OK, &serde_json::to_value(user).unwrap_or_default())),
        // Device, tool and external tokens name no account; say who they are.
        None => Ok(json_response(StatusCode::OK, &json!(UserInfo::principal_only(&principal)))),
    }
}
