//! Probes and metrics: `/health` (liveness), `/ready` (log, store, cache), `/metrics`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody, ErrorInner};
use crate::{AppState, Response, json_response};

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct Health {
    /// Always `ok` while the process serves requests.
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// `ready` or `unavailable`.
    pub status: String,
    /// `ok` or `error: …` per component (log, store, cache).
    pub checks: BTreeMap<String, String>,
    /// Circuit breaker state per downstream: closed, half_open, open.
    pub breakers: BTreeMap<String, String>,
    /// Partitions this process owns (`topic/partition`).
    pub partitions: Vec<String>,
    /// Present when unavailable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInner>,
}

/// Liveness (also `/auth/healthz`, as in seed 004).
#[utoipa::path(get, path = "/health", tag = "probes", security(()), responses((status = 200, body = Health)))]
pub fn health() -> Response {
    json_response(StatusCode::OK, &serde_json::to_value(Health { status: "ok".into() }).unwrap_or_default())
}

/// Readiness: the log, the store and the cache answer (also `/auth/ready`, `/loyalty/ready`).
#[utoipa::path(get, path = "/ready", tag = "probes", security(()), responses(
    (status = 200, body = Ready, description = "Every backend answers"),
    (status = 503, body = Ready, description = "A backend does not answer; `error` names it"),
))]
pub async fn ready(state: &AppState) -> Response {
    let checks = state.conveyor.readiness(Duration::from_secs(2)).await;
    let mut body = Ready {
        status: "ready".into(),
        checks: BTreeMap::new(),
        breakers: state.conveyor.breakers().iter().map(|b| (b.name().to_string(), b.state().as_str().into())).collect(),
        // Which partitions this process owns: operators (and tests) see a rebalance here.
        partitions: state.conveyor.partitions().await.iter().map(|p| p.tp.to_string()).collect(),
        error: None,
    };
    let mut failed = Vec::new();
    for (component, result) in &checks {
        let value = match result {
            Ok(()) => "ok".to_string(),
            Err(err) => {
                failed.push(component.as_str());
                format!("error: {err}")
            }
        };
        body.checks.insert(component.as_str().to_string(), value);
    }
    let status = if failed.is_empty() {
        StatusCode::OK
    } else {
        body.status = "unavailable".into();
        let message = format!("unavailable: {}", failed.join(", "));
        body.error = Some(ErrorInner { code: "not_ready".into(), message, details: None });
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &serde_json::to_value(body).unwrap_or_default())
}

/// Prometheus text exposition of every metric (OpenTelemetry SDK).
#[utoipa::path(get, path = "/metrics", tag = "probes", security((), ("metrics_token" = [])), responses(
    (status = 200, content_type = "text/plain", body = String),
    (status = 401, body = ErrorBody, description = "`telemetry.metrics_token` is set and was not sent"),
))]
pub fn metrics(state: &AppState, req: &Request<Incoming>) -> Result<Response, ApiError> {
    let token = &state.conveyor.config.telemetry.metrics_token;
    if !token.is_empty() {
        let expected = format!("Bearer {}", token.expose());
        let given = req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes).unwrap_or_default();
        if !conveyor_actors::webhooks::signing::constant_time_eq(given, expected.as_bytes()) {
            return Err(ApiError::Unauthorized("metrics token required"));
        }
    }
    let mut response = http::Response::new(Full::new(Bytes::from((state.render_metrics)())));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(response)
}
