//! Probes and metrics: `/health` (liveness), `/ready` (backends and subsystems), `/metrics`.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Request, State};
use conveyor_actors::readiness::Verdict;
use conveyor_actors::root::ChildState;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody, ErrorInner};
use crate::{App, Response, json_response};

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct Health {
    /// Always `ok` while the process serves requests.
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// `ready`, `degraded` (serving without something non-essential: the cache, or the
    /// retention service while it restarts) or `unavailable` (the log, the store or another
    /// subsystem is down).
    pub status: Verdict,
    /// `ok` or `error: …` per backend (log, store, cache); each checked within 500 ms.
    pub checks: BTreeMap<String, String>,
    /// Each supervised service and consumer group (`group:{name}`): `running` or `restarting`.
    pub subsystems: BTreeMap<String, ChildState>,
    /// Circuit breaker state per downstream: closed, half_open, open.
    pub breakers: BTreeMap<String, String>,
    /// Partitions this process owns (`topic/partition`).
    pub partitions: Vec<String>,
    /// Present unless ready; names what is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInner>,
}

/// Liveness (also at `/auth/healthz`, for older clients).
#[utoipa::path(get, path = "/health", tag = "probes", security(()), responses((status = 200, body = Health)))]
pub async fn health() -> Response {
    json_response(StatusCode::OK, &serde_json::to_value(Health { status: "ok".into() }).unwrap_or_default())
}

/// Readiness: the log, the store and every subsystem are up; a cache outage degrades
/// (also `/auth/ready`, `/loyalty/ready`).
#[utoipa::path(get, path = "/ready", tag = "probes", security(()), responses(
    (status = 200, body = Ready, description = "Ready, or degraded: the cache is down and reads go to the store"),
    (status = 503, body = Ready, description = "The log, the store or a subsystem is down; `error` names it"),
))]
pub async fn ready(State(state): App) -> Response {
    let readiness = state.conveyor.ops.readiness().await;
    let verdict = readiness.verdict();
    let failed = readiness.failed();
    let body = Ready {
        status: verdict,
        checks: readiness
            .checks
            .iter()
            .map(|(c, r)| (c.as_str().to_string(), r.as_ref().map_or_else(|e| format!("error: {e}"), |()| "ok".into())))
            .collect(),
        subsystems: readiness.subsystems.into_iter().map(|s| (s.name, s.state)).collect(),
        breakers: state
            .conveyor
            .ops
            .breakers()
            .iter()
            .map(|b| (b.name().to_string(), b.state().as_str().into()))
            .collect(),
        // Which partitions this process owns: operators (and tests) see a rebalance here.
        partitions: readiness.partitions.iter().map(ToString::to_string).collect(),
        error: match verdict {
            Verdict::Ready => None,
            Verdict::Degraded => Some(ErrorInner {
                code: "degraded".into(),
                message: format!("degraded: {}", failed.join(", ")),
                details: None,
            }),
            Verdict::Unavailable => Some(ErrorInner {
                code: "not_ready".into(),
                message: format!("unavailable: {}", failed.join(", ")),
                details: None,
            }),
        },
    };
    let status = if verdict == Verdict::Unavailable { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    json_response(status, &serde_json::to_value(body).unwrap_or_default())
}

/// Prometheus text exposition of every metric (OpenTelemetry SDK).
#[utoipa::path(get, path = "/metrics", tag = "probes", security((), ("metrics_token" = [])), responses(
    (status = 200, content_type = "text/plain", body = String),
    (status = 401, body = ErrorBody, description = "`telemetry.metrics_token` is set and was not sent"),
))]
pub async fn metrics(State(state): App, req: Request) -> Result<Response, ApiError> {
    let token = &state.conveyor.config.telemetry.metrics_token;
    if !token.is_empty() {
        let expected = format!("Bearer {}", token.expose());
        let given = req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes).unwrap_or_default();
        if !conveyor_webhooks::signing::constant_time_eq(given, expected.as_bytes()) {
            return Err(ApiError::Unauthorized("metrics token required"));
        }
    }
    let mut response = Response::new(Body::from((state.render_metrics)()));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(response)
}
