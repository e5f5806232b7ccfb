//! The OpenAPI 3.1 document, generated from the handlers' own `#[utoipa::path]`
//! annotations and request/response types, served at `/openapi.json`; Swagger UI (its
//! assets compiled into the binary) at `/docs/`.
//!
//! What every operation shares is added here once instead of on each handler: bearer
//! security unless an operation says otherwise, and the error statuses the front end
//! itself produces (malformed bodies, auth, rate limits, unavailability).

use std::sync::{Arc, LazyLock};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::Response;
use crate::error::{ApiError, ErrorBody};
use crate::extract::RawPath;
use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Conveyor",
        description = "Actor-based event processing: device events, identity and loyalty (a registration saga), webhook delivery, workflows, dead letters. Errors are always `{\"error\": {\"code\", \"message\", \"details\"}}`.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "events", description = "Device events: ingest, processed in order per device, and the latest state"),
        (name = "auth", description = "Identity: registration, login, token refresh and logout"),
        (name = "loyalty", description = "Loyalty ledger and the registration saga"),
        (name = "webhooks", description = "Notifications fanned out to webhook endpoints, signed per Standard Webhooks"),
        (name = "workflows", description = "User-defined workflows: triggers and steps, run durably"),
        (name = "admin", description = "Dead letters and their replay jobs, the status page (admin role)"),
        (name = "probes", description = "Health, readiness, metrics"),
    )
)]
pub(crate) struct ApiDoc;

/// What every operation shares, added to the document once the routes are in it.
pub(crate) struct Shared;

fn error(description: &str) -> RefOr<utoipa::openapi::Response> {
    let content = ContentBuilder::new().schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody"))).build();
    ResponseBuilder::new().description(description).content("application/json", content).build().into()
}

fn add(op: &mut Operation, status: &str, description: &str) {
    op.responses.responses.entry(status.to_string()).or_insert_with(|| error(description));
}

impl Modify for Shared {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
        components.add_security_scheme(
            "metrics_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            let probe = matches!(path.as_str(), "/health" | "/ready" | "/metrics" | "/admin/status");
            for op in
                [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete].into_iter().flatten()
            {
                let public = op.security.is_some();
                if path == "/notifications" {
                    add(op, "401", "Missing or wrong basic credentials or token");
                    add(op, "403", "The token lacks the publisher or admin role");
                }
                if !public {
                    op.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
                    add(op, "401", "Missing, invalid, expired or revoked token");
                    add(op, "403", "The token lacks a required role");
                }
                if op.request_body.is_some() {
                    add(op, "400", "The body is not JSON");
                    add(op, "413", "The body exceeds `http.body_limit_bytes`");
                }
                if op.request_body.is_some() || op.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
                    add(op, "422", "A field, parameter or header is invalid; `details` names each");
                }
                if public && path.starts_with("/auth/") {
                    add(op, "401", "Invalid credentials or token");
                }
                if !probe {
                    add(op, "429", "Rate limited; `Retry-After` says when to come back");
                }
                if !matches!(path.as_str(), "/health" | "/metrics" | "/admin/status") {
                    add(op, "503", "A backend is unavailable or the request timed out; retry after `Retry-After`");
                }
            }
        }
    }
}

/// The document, built once.
pub fn document() -> &'static Document {
    static DOC: LazyLock<Document> = LazyLock::new(|| routes::api().split_for_parts().1);
    &DOC
}

static JSON: LazyLock<Bytes> = LazyLock::new(|| Bytes::from(serde_json::to_vec_pretty(document()).unwrap_or_default()));

pub async fn openapi_json() -> Response {
    let mut response = Response::new(Body::from(JSON.clone()));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

static SWAGGER: LazyLock<Arc<utoipa_swagger_ui::Config<'static>>> =
    // `validator_url("none")`: by default Swagger UI sends the document's URL to
    // validator.swagger.io for a badge; the docs must work offline and leak nothing.
    LazyLock::new(|| {
        Arc::new(utoipa_swagger_ui::Config::from("/openapi.json").persist_authorization(true).validator_url("none"))
    });

/// `/docs` → `/docs/` (Swagger UI's assets are relative to the page).
pub async fn docs_redirect() -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    response.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/docs/"));
    response
}

/// `/docs/`: Swagger UI's page.
pub async fn docs_index() -> Result<Response, ApiError> {
    docs_file("")
}

/// `/docs/{*path}`: one of Swagger UI's files.
pub async fn docs_asset(RawPath(tail): RawPath<String>) -> Result<Response, ApiError> {
    docs_file(&tail)
}

/// A Swagger UI file: `tail` is the path under `/docs/`.
fn docs_file(tail: &str) -> Result<Response, ApiError> {
    let tail = if tail.is_empty() { "index.html" } else { tail };
    match utoipa_swagger_ui::serve(tail, SWAGGER.clone()) {
        Ok(Some(file)) => {
            let mut response = Response::new(Body::from(file.bytes.into_owned()));
            if let Ok(v) = HeaderValue::from_str(&file.content_type) {
                response.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            Ok(response)
        }
        Ok(None) => Err(ApiError::NotFound),
        Err(e) => Err(ApiError::Internal(e.to_string().into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document is built from the routes: every documented operation, the probe
    /// aliases as copies of their targets, and none of the docs or fault-hook routes.
    #[test]
    fn the_document_lists_the_documented_routes_only() {
        let doc = document();
        let mut operations = 0;
        for (path, item) in &doc.paths.paths {
            assert!(!path.starts_with("/docs") && path != "/openapi.json", "{path}");
            assert!(!path.starts_with("/admin/faults"), "{path}");
            operations +=
                [&item.get, &item.post, &item.put, &item.patch, &item.delete].iter().filter(|o| o.is_some()).count();
        }
        // 49, the six replay-job operations under /admin/replays, GET /admin/stuck-keys,
        // POST …/runs/{run_id}/cancel, the /admin/console alias and the three
        // /admin/parked-keys operations.
        assert_eq!(operations, 61);
        for (alias, target) in [
            ("/auth/ready", "/ready"),
            ("/auth/healthz", "/health"),
            ("/loyalty/ready", "/ready"),
            ("/admin/console", "/admin/status"),
        ] {
            let json = |p: &str| serde_json::to_value(&doc.paths.paths[p]).unwrap_or_default();
            assert_eq!(json(alias), json(target), "{alias}");
        }
    }

    /// Users read the document in /docs: features are named by what they do, not by the
    /// internal names of the systems Conveyor replaced.
    #[test]
    fn the_document_speaks_in_feature_names() {
        let text = serde_json::to_string(document()).unwrap_or_default().to_lowercase();
        for internal in ["seed 0", "seeds 0", "gwook", "minireipaz"] {
            assert!(!text.contains(internal), "the OpenAPI document mentions {internal:?}");
        }
    }

    /// A replay job's rate: the schema states the same bound the runtime enforces, so a
    /// request the document calls valid is never refused for its rate.
    #[test]
    fn the_replay_rate_bound_is_the_runtimes() {
        let json = serde_json::to_value(document()).unwrap_or_default();
        let rate = &json["components"]["schemas"]["ReplayRequest"]["properties"]["rate"];
        assert_eq!(rate["maximum"], conveyor_actors::config::REPLAY_MAX_RATE, "{rate}");
        assert_eq!(rate["minimum"], 1, "{rate}");
    }

    /// Endpoints document their ordering key where they are created, changed and shown.
    #[test]
    fn endpoints_document_their_ordering_key() {
        let json = serde_json::to_value(document()).unwrap_or_default();
        for schema in ["NewEndpoint", "EndpointPatch", "EndpointView"] {
            let key = &json["components"]["schemas"][schema]["properties"]["ordering_key"];
            assert!(key.is_object(), "{schema}: {key}");
        }
    }

    #[test]
    fn it_is_openapi_3_1_with_auth_and_error_bodies() {
        let json = serde_json::to_value(document()).unwrap_or_default();
        assert!(json["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", json["openapi"]);
        assert_eq!(json["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        let events = &json["paths"]["/events"]["post"];
        assert_eq!(events["security"][0]["bearer"], serde_json::json!([]));
        for status in ["202", "400", "401", "422", "429", "503"] {
            assert!(events["responses"][status].is_object(), "POST /events lacks {status}");
        }
        assert!(json["paths"]["/auth/login"]["post"]["security"][0].as_object().is_some_and(|o| o.is_empty()));
        assert!(json["components"]["schemas"]["ErrorBody"].is_object());
    }

    #[test]
    fn swagger_ui_is_served_from_the_binary() {
        let index = docs_file("").map(|r| r.status());
        assert_eq!(index.ok(), Some(StatusCode::OK));
        let config = docs_file("swagger-initializer.js").map(|r| r.status());
        assert_eq!(config.ok(), Some(StatusCode::OK));
    }

    #[test]
    fn swagger_ui_keeps_the_token_and_calls_nobody_else() {
        let initializer = utoipa_swagger_ui::serve("swagger-initializer.js", SWAGGER.clone())
            .ok()
            .flatten()
            .map(|f| String::from_utf8_lossy(&f.bytes).into_owned())
            .unwrap_or_default();
        assert!(initializer.contains("\"persistAuthorization\": true"), "{initializer}");
        assert!(initializer.contains("\"validatorUrl\": \"none\""), "{initializer}");
        assert!(!initializer.contains("http://") && !initializer.contains("https://"), "{initializer}");
    }

    /// Public operations are exactly those that say so; every other one asks for a bearer
    /// token, and `/notifications` also takes basic credentials.
    #[test]
    fn every_operation_names_its_auth_scheme() {
        let json = serde_json::to_value(document()).unwrap_or_default();
        let mut public = Vec::new();
        for (path, item) in json["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                let schemes: Vec<String> = op["security"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|r| r.as_object().into_iter().flat_map(|o| o.keys().cloned().collect::<Vec<_>>()))
                    .collect();
                let open = op["security"].as_array().is_some_and(|a| a.iter().any(|r| r == &serde_json::json!({})));
                match (path.as_str(), open) {
                    ("/notifications", _) => assert_eq!(schemes, ["basic", "bearer"], "{method} {path}"),
                    (_, true) => public.push(path.clone()),
                    (_, false) => assert_eq!(schemes, ["bearer"], "{method} {path}"),
                }
            }
        }
        public.sort();
        let expected = [
            "/admin/console",
            "/admin/status",
            "/auth/healthz",
            "/auth/login",
            "/auth/logout",
            "/auth/ready",
            "/auth/refresh",
            "/auth/registration",
            "/health",
            "/loyalty/ready",
            "/metrics",
            "/ready",
        ];
        assert_eq!(public, expected);
    }
}
