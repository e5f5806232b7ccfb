//! Accepting connections, per-request bookkeeping (request id, timeout, metrics), and
//! graceful shutdown: stop accepting, let in-flight requests finish within the grace period.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Request};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use tokio::net::TcpListener;

use crate::error::ApiError;
use crate::metrics::{METHOD, ROUTE, STATUS_CLASS, method_label, metrics, status_class};
use crate::router::{Matched, Table};
use crate::{AppState, Response, routes};

/// Limits applied to every request.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    pub body_limit: usize,
    pub request_timeout: Duration,
    pub header_read_timeout: Duration,
}

/// A bound HTTP server.
pub struct Server {
    listener: TcpListener,
    state: Arc<AppState>,
    table: Arc<Table>,
    config: ServerConfig,
}

/// Per-request facts handlers need.
pub struct Ctx {
    pub request_id: String,
    pub body_limit: usize,
}

impl Server {
    pub async fn bind(addr: &str, state: Arc<AppState>, config: ServerConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Server { listener, state, table: Arc::new(Table::new()), config })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains connections for at most `grace`.
    pub async fn run(self, shutdown: impl Future<Output = ()>, grace: Duration) {
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        tracing::warn!(error = &err as &dyn std::error::Error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let state = self.state.clone();
            let table = self.table.clone();
            let config = self.config;
            let service = service_fn(move |req| {
                let state = state.clone();
                let table = table.clone();
                async move { Ok::<_, Infallible>(handle(&state, &table, config, peer.ip(), req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(config.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(err) = conn.await {
                    tracing::debug!(error = &err as &dyn std::error::Error, "connection ended with an error");
                }
            });
        }
        drop(self.listener);
        tracing::info!(grace_ms = grace.as_millis() as u64, "http: stopped accepting, draining connections");
        if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
            tracing::warn!("http: grace period over with requests still open");
        }
    }
}

async fn handle(
    state: &AppState,
    table: &Table,
    config: ServerConfig,
    peer: std::net::IpAddr,
    req: Request<Incoming>,
) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let method = req.method().clone();
    // The server span continues the caller's trace (W3C `traceparent`) or starts one; the
    // records this request writes name their producer span under it (`trace::produce_span`).
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(req.headers())));
    let tracer = opentelemetry::global::tracer("conveyor.http");
    let span =
        tracer.span_builder(format!("HTTP {method}")).with_kind(SpanKind::Server).start_with_context(&tracer, &parent);
    let otel = parent.with_span(span);
    let trace_id = otel.span().span_context().trace_id().to_string();
    let client_ip = state.limits.client_ip(peer, req.headers());
    let ctx = Ctx { request_id: request_id.clone(), body_limit: config.body_limit };
    let path = req.uri().path().to_string();
    let m = metrics();
    let (template, response) = match table.at(&method, &path) {
        None => ("unmatched", ApiError::NotFound.into_response()),
        Some(Matched::WrongMethod { template }) => {
            let mut response = ApiError::MethodNotAllowed.into_response();
            let allowed: Vec<&str> =
                crate::router::ROUTES.iter().filter(|(t, _, _)| *t == template).map(|(_, m, _)| m.as_str()).collect();
            if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                response.headers_mut().insert(http::header::ALLOW, v);
            }
            (template, response)
        }
        Some(Matched::Found { route, template, params }) => {
            let params: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            // A guard, not a pair of calls: a client that hangs up drops this future mid-request.
            let _active = ActiveRequest::enter(template);
            let result = match state.limits.check_ip(route.group(), client_ip) {
                Err(refused) => Err(refused),
                Ok(()) => {
                    // Every log line of this request carries its request id and trace id.
                    let span = tracing::info_span!(
                        "request",
                        request_id = %ctx.request_id,
                        trace_id = %trace_id,
                    );
                    otel.span().update_name(format!("{method} {template}"));
                    let work =
                        tracing::Instrument::instrument(routes::dispatch(route, state, req, &params, &ctx), span);
                    let work = opentelemetry::context::FutureExt::with_context(work, otel.clone());
                    match tokio::time::timeout(config.request_timeout, work).await {
                        Ok(result) => result,
                        Err(_) => Err(ApiError::Timeout(config.request_timeout)),
                    }
                }
            };
            (template, result.unwrap_or_else(ApiError::into_response))
        }
    };
    let mut response = response;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    let labels = [
        KeyValue::new(ROUTE, template),
        KeyValue::new(METHOD, method_label(&method)),
        KeyValue::new(STATUS_CLASS, status_class(response.status().as_u16())),
    ];
    m.request_duration.record(started.elapsed().as_secs_f64(), &labels);
    otel.span().set_attribute(KeyValue::new("http.response.status_code", i64::from(response.status().as_u16())));
    otel.span().set_attribute(KeyValue::new(ROUTE, template));
    otel.span().end();
    tracing::debug!(
        request_id,
        trace_id = %trace_id,
        method = %method,
        route = template,
        status = response.status().as_u16(),
        "request"
    );
    response
}

/// Counts a request in `http.server.active_requests` until dropped.
struct ActiveRequest(&'static str);

impl ActiveRequest {
    fn enter(route: &'static str) -> Self {
        metrics().active_requests.add(1, &[KeyValue::new(ROUTE, route)]);
        ActiveRequest(route)
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        metrics().active_requests.add(-1, &[KeyValue::new(ROUTE, self.0)]);
    }
}

/// Reads W3C trace context from request headers.
struct Headers<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
