//! Handlers, one module per resource, and [`api`]: the one declaration of every route —
//! its path and method (from the handler's `#[utoipa::path]`), its rate-limit group and
//! whether it is documented. The router and the OpenAPI document are both built from it.

pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod events;
pub(crate) mod health;
pub(crate) mod loyalty;
pub(crate) mod notifications;
pub(crate) mod parked;
pub(crate) mod replays;
pub(crate) mod resources;
pub(crate) mod webhooks;
pub(crate) mod workflows;

use std::sync::Arc;

use axum::middleware::from_fn_with_state;
use axum::routing::{MethodRouter, get, post};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::AppState;
use crate::limits::{self, Group};
use crate::openapi;

type S = Arc<AppState>;

/// A documented route spending `group`'s quota.
fn on(group: Group, route: UtoipaMethodRouter<S>) -> UtoipaMethodRouter<S> {
    route.map(|r| spends(group, r))
}

fn spends(group: Group, route: MethodRouter<S>) -> MethodRouter<S> {
    route.route_layer(from_fn_with_state(group, limits::spend))
}

/// Another path answered by the route at `target`, documented as a copy of it (older clients'
/// probe paths).
fn alias(
    mut router: OpenApiRouter<S>,
    path: &str,
    target: &str,
    group: Group,
    route: MethodRouter<S>,
) -> OpenApiRouter<S> {
    let doc = router.get_openapi_mut();
    if let Some(item) = doc.paths.paths.get(target).cloned() {
        doc.paths.paths.insert(path.to_string(), item);
    }
    router.route(path, spends(group, route))
}

/// Every route. `.routes(…)` entries are in the OpenAPI document; `.route(…)` ones are not.
pub(crate) fn api() -> OpenApiRouter<S> {
    use Group::{Api, Auth, Exempt};
    let mut router = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(on(Exempt, routes!(health::health)))
        .routes(on(Exempt, routes!(health::ready)))
        .routes(on(Exempt, routes!(health::metrics)))
        .routes(on(Api, routes!(events::post_one)))
        .routes(on(Api, routes!(events::post_batch)))
        .routes(on(Api, routes!(resources::get)))
        .routes(on(Api, routes!(admin::list)))
        .routes(on(Api, routes!(admin::show, admin::delete)))
        .routes(on(Api, routes!(admin::replay)))
        .routes(on(Api, routes!(admin::replay_matching)))
        .routes(on(Api, routes!(admin::purge)))
        .routes(on(Api, routes!(replays::list, replays::create)))
        .routes(on(Api, routes!(replays::show)))
        .routes(on(Api, routes!(replays::pause)))
        .routes(on(Api, routes!(replays::resume)))
        .routes(on(Api, routes!(replays::cancel)))
        .routes(on(Exempt, routes!(admin::status_page)))
        .routes(on(Api, routes!(admin::status)))
        .routes(on(Api, routes!(admin::stuck_keys)))
        .routes(on(Api, routes!(parked::list)))
        .routes(on(Api, routes!(parked::replay)))
        .routes(on(Api, routes!(parked::skip)))
        .routes(on(Auth, routes!(auth::register)))
        .routes(on(Auth, routes!(auth::login)))
        .routes(on(Auth, routes!(auth::logout)))
        .routes(on(Auth, routes!(auth::refresh)))
        .routes(on(Api, routes!(auth::info)))
        .routes(on(Api, routes!(loyalty::operate)))
        .routes(on(Api, routes!(loyalty::balance)))
        .routes(on(Api, routes!(loyalty::transactions)))
        .routes(on(Api, routes!(loyalty::saga)))
        .routes(on(Api, routes!(notifications::post)))
        .routes(on(Api, routes!(notifications::get)))
        .routes(on(Api, routes!(webhooks::list, webhooks::create)))
        .routes(on(Api, routes!(webhooks::get, webhooks::update, webhooks::delete)))
        .routes(on(Api, routes!(webhooks::enable)))
        .routes(on(Api, routes!(webhooks::disable)))
        .routes(on(Api, routes!(webhooks::secret)))
        .routes(on(Api, routes!(webhooks::rotate)))
        .routes(on(Api, routes!(webhooks::attempts)))
        .routes(on(Api, routes!(webhooks::stats)))
        .routes(on(Api, routes!(webhooks::resend)))
        .routes(on(Api, routes!(workflows::list, workflows::create)))
        .routes(on(Api, routes!(workflows::get, workflows::replace, workflows::delete)))
        .routes(on(Api, routes!(workflows::start, workflows::runs)))
        .routes(on(Api, routes!(workflows::run)))
        .routes(on(Api, routes!(workflows::cancel)))
        .routes(on(Api, routes!(workflows::dashboard)));
    // What every operation shares (security, front-end errors) goes in before the aliases
    // copy their targets, so that an alias documents exactly what its target does.
    openapi::Shared.modify(router.get_openapi_mut());
    let router = alias(router, "/auth/ready", "/ready", Exempt, get(health::ready));
    let router = alias(router, "/auth/healthz", "/health", Exempt, get(health::health));
    let router = alias(router, "/loyalty/ready", "/ready", Exempt, get(health::ready));
    let router = alias(router, "/admin/console", "/admin/status", Exempt, get(admin::status_page));
    router
        .route("/openapi.json", spends(Exempt, get(openapi::openapi_json)))
        .route("/docs", spends(Exempt, get(openapi::docs_redirect)))
        .route("/docs/", spends(Exempt, get(openapi::docs_index)))
        .route("/docs/{*path}", spends(Exempt, get(openapi::docs_asset)))
        // Test-only fault hooks (`faults.allow_panic_injection`).
        .route("/admin/faults/{subsystem}/panic", spends(Api, post(admin::inject_panic)))
        .route("/admin/faults/http/panic", spends(Api, post(admin::panic_in_handler)))
        .route("/admin/faults/keys/{key}/fail", spends(Api, post(admin::fail_key)))
        .route("/admin/faults/keys/{key}/heal", spends(Api, post(admin::heal_key)))
        .route("/admin/faults/keys/{key}/crash-partition", spends(Api, post(admin::crash_partition)))
}
