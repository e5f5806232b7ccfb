//! Conveyor's HTTP front end on hyper 1.x: one routing table ([`router`]), bearer auth
//! ([`auth`]) and rate limits ([`limits`]), handlers that produce to the log or read through the cache, and one place
//! that maps errors to statuses ([`error`]).

pub mod auth;
pub mod body;
pub mod error;
mod facades;
pub mod idempotency;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod router;
mod routes;
mod server;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;

pub use error::ApiError;
pub use facades::{Facades, Operations};
pub use limits::RateLimits;
pub use server::{Server, ServerConfig};

pub type Response = http::Response<Full<Bytes>>;

/// Renders the Prometheus text exposition of the process's metrics.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// Everything a handler may use.
pub struct AppState {
    pub conveyor: Arc<Facades>,
    pub limits: Arc<RateLimits>,
    pub render_metrics: MetricsRenderer,
}

pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = http::Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(crate) fn empty_response(status: StatusCode) -> Response {
    let mut response = http::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
