//! Handlers, one module per resource.

mod events;
mod health;
mod resources;

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
        Route::Resource => {
            let id = params.iter().find(|(k, _)| k == "id").map(|(_, v)| v.as_str()).unwrap_or_default();
            resources::get(state, &req, id).await
        }
    }
}
