//! Handlers, one module per resource.

pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod events;
pub(crate) mod health;
pub(crate) mod loyalty;
pub(crate) mod notifications;
pub(crate) mod resources;
pub(crate) mod webhooks;
pub(crate) mod workflows;

use http::Request;
use hyper::body::Incoming;

use crate::error::ApiError;
use crate::router::Route;
use crate::server::Ctx;
use crate::{AppState, Response};

pub(crate) async fn dispatch(
    route: Route,
    state: &AppState,
    req: Request<Incoming>,
    params: &[(String, String)],
    ctx: &Ctx,
) -> Result<Response, ApiError> {
    match route {
        Route::Health => Ok(health::health()),
        Route::Ready => Ok(health::ready(state).await),
        Route::Metrics => health::metrics(state, &req),
        Route::Events => events::post_one(state, req, ctx).await,
        Route::EventsBatch => events::post_batch(state, req, ctx).await,
        Route::Resource => resources::get(state, &req, param(params, "id")).await,
        Route::DeadLetters => admin::list(state, &req).await,
        Route::DeadLetter => admin::show(state, &req, param(params, "id")).await,
        Route::DeadLetterDelete => admin::delete(state, &req, param(params, "id")).await,
        Route::DeadLetterReplay => admin::replay(state, &req, param(params, "id")).await,
        Route::DeadLettersReplay => admin::replay_matching(state, req, ctx).await,
        Route::DeadLettersPurge => admin::purge(state, req, ctx).await,
        Route::Registration => auth::register(state, req, ctx).await,
        Route::Login => auth::login(state, req, ctx).await,
        Route::Logout => auth::logout(state, req, ctx).await,
        Route::Refresh => auth::refresh(state, req, ctx).await,
        Route::AuthInfo => auth::info(state, &req).await,
        Route::AuthReady => Ok(health::ready(state).await),
        Route::AuthHealthz => Ok(health::health()),
        Route::LoyaltyOperation => loyalty::operate(state, req, ctx).await,
        Route::LoyaltyBalance => loyalty::balance(state, &req, param(params, "uuid")).await,
        Route::LoyaltyTransactions => loyalty::transactions(state, &req, param(params, "uuid")).await,
        Route::LoyaltyReady => Ok(health::ready(state).await),
        Route::Saga => loyalty::saga(state, &req, param(params, "id")).await,
        Route::AdminStatusPage => Ok(admin::status_page()),
        Route::AdminStatus => admin::status(state, &req).await,
        Route::AdminFaultPanic => admin::inject_panic(state, &req, param(params, "subsystem")).await,
        Route::Notifications => notifications::post(state, req, ctx).await,
        Route::Notification => notifications::get(state, &req, param(params, "id")).await,
        Route::WebhookEndpoints => webhooks::list(state, &req).await,
        Route::WebhookEndpointCreate => webhooks::create(state, req, ctx).await,
        Route::WebhookEndpoint => webhooks::get(state, &req, param(params, "id")).await,
        Route::WebhookEndpointUpdate => webhooks::update(state, req, param(params, "id"), ctx).await,
        Route::WebhookEndpointDelete => webhooks::delete(state, &req, param(params, "id")).await,
        Route::WebhookEndpointEnable => webhooks::enable(state, &req, param(params, "id")).await,
        Route::WebhookEndpointDisable => webhooks::disable(state, &req, param(params, "id")).await,
        Route::WebhookEndpointSecret => webhooks::secret(state, &req, param(params, "id")).await,
        Route::WebhookEndpointRotate => webhooks::rotate(state, req, param(params, "id"), ctx).await,
        Route::WebhookEndpointAttempts => webhooks::attempts(state, &req, param(params, "id")).await,
        Route::WebhookEndpointStats => webhooks::stats(state, &req, param(params, "id")).await,
        Route::WebhookDeliveryResend => webhooks::resend(state, &req, param(params, "id")).await,
        Route::Workflows => workflows::list(state, &req).await,
        Route::WorkflowCreate => workflows::create(state, req, ctx).await,
        Route::Workflow => workflows::get(state, &req, param(params, "id")).await,
        Route::WorkflowReplace => workflows::replace(state, req, param(params, "id"), ctx).await,
        Route::WorkflowDelete => workflows::delete(state, &req, param(params, "id")).await,
        Route::WorkflowRunStart => workflows::start(state, req, param(params, "id"), ctx).await,
        Route::WorkflowRuns => workflows::runs(state, &req, param(params, "id")).await,
        Route::WorkflowRun => workflows::run(state, &req, param(params, "id"), param(params, "run_id")).await,
        Route::Dashboard => workflows::dashboard(state, &req).await,
        Route::OpenApi => Ok(crate::openapi::openapi_json()),
        Route::DocsRedirect => Ok(crate::openapi::docs_redirect()),
        Route::Docs => crate::openapi::docs_file(""),
        Route::DocsAsset => crate::openapi::docs_file(param(params, "path")),
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> &'a str {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or_default()
}
