//! Probes and metrics: `/health` (liveness), `/ready` (log, store, cache), `/metrics`.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

use crate::error::ApiError;
use crate::{AppState, Response, json_response};

pub fn health() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

pub async fn ready(state: &AppState) -> Response {
    let checks = state.conveyor.readiness(Duration::from_secs(2)).await;
    let mut body = serde_json::Map::new();
    let mut failed = Vec::new();
    for (component, result) in &checks {
        let value = match result {
            Ok(()) => json!("ok"),
            Err(err) => {
                failed.push(component.as_str());
                json!(format!("error: {err}"))
            }
        };
        body.insert(component.as_str().to_string(), value);
    }
    let breakers: serde_json::Map<String, serde_json::Value> =
        state.conveyor.breakers().iter().map(|b| (b.name().to_string(), json!(b.state().as_str()))).collect();
    // Which partitions this process owns: operators (and tests) see a rebalance here.
    let partitions: Vec<String> = state.conveyor.partitions().await.iter().map(|p| p.tp.to_string()).collect();
    if failed.is_empty() {
        json_response(
            StatusCode::OK,
            &json!({"status": "ready", "checks": body, "breakers": breakers, "partitions": partitions}),
        )
    } else {
        let message = format!("unavailable: {}", failed.join(", "));
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "unavailable", "checks": body, "breakers": breakers, "partitions": partitions, "error": {"code": "not_ready", "message": message}}),
        )
    }
}

pub fn metrics(state: &AppState, req: &Request<Incoming>) -> Result<Response, ApiError> {
    let token = &state.conveyor.config.telemetry.metrics_token;
    if !token.is_empty() {
        let expected = format!("Bearer {}", token.expose());
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return Err(ApiError::Unauthorized("metrics token required"));
        }
    }
    let mut response = http::Response::new(Full::new(Bytes::from((state.render_metrics)())));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(response)
}
