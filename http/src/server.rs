//! Accepting connections and the layers every request passes (request id, OpenTelemetry
//! span and metrics, tracing span, body limit; per route: timeout and panic recovery), and
//! graceful shutdown: stop accepting, let in-flight requests finish within the grace period.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{Next, from_fn};
use axum::response::IntoResponse;
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use tokio::net::TcpListener;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::extract::{BodyLimit, Peer};
use crate::metrics::{METHOD, ROUTE, STATUS_CLASS, method_label, metrics, status_class};
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
    app: FrontEnd,
    config: ServerConfig,
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl Server {
    pub async fn bind(addr: &str, state: Arc<AppState>, config: ServerConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Server { listener, app: app(state, config), config })
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
                        tracing::warn!(error = %conveyor_actors::error::chain(&err), "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let app = self.app.clone();
            let service = service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(Peer(peer.ip()));
                app.clone().oneshot(req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(self.config.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(err) = conn.await {
                    tracing::debug!(error = %conveyor_actors::error::chain(&err), "connection ended with an error");
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

/// What serves each request: the routes, with the layers every request passes around
/// them (outside the routing, so that a HEAD never reaches a GET route and the 405's Allow
/// header can be read), outermost first.
type FrontEnd = BoxCloneSyncService<Request<Incoming>, Response, Infallible>;

fn app(state: Arc<AppState>, config: ServerConfig) -> FrontEnd {
    let timeout = config.request_timeout;
    let (router, _) = routes::api().split_for_parts();
    // Per matched route (the 405 fallback included): its template for the metrics, the
    // timeout, and a panic turned into a 500.
    let router = router
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .route_layer(
            ServiceBuilder::new()
                .layer(from_fn(matched))
                .layer(HandleErrorLayer::new(move |_: BoxError| async move { ApiError::Timeout(timeout) }))
                .timeout(timeout)
                .layer(CatchPanicLayer::custom(panicked)),
        )
        .fallback(|| async { ApiError::NotFound })
        .with_state(state.clone());
    let service = ServiceBuilder::new()
        .map_request(|req: Request<Incoming>| req.map(Body::new))
        .map_request(drop_unusable_request_id)
        .layer(SetRequestIdLayer::new(X_REQUEST_ID, NewRequestId))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
        .layer(from_fn(observe))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(())
                .on_body_chunk(())
                .on_eos(())
                .on_failure(()),
        )
        .layer(axum::Extension(state.limits.clone()))
        .layer(axum::Extension(BodyLimit(config.body_limit)))
        .layer(DefaultBodyLimit::max(config.body_limit))
        .service(router);
    BoxCloneSyncService::new(service)
}

/// A caller's id is kept if it is 1 to 128 visible characters; otherwise one is made.
fn drop_unusable_request_id<B>(mut req: Request<B>) -> Request<B> {
    let usable =
        req.headers().get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).is_some_and(|v| !v.is_empty() && v.len() <= 128);
    if !usable {
        req.headers_mut().remove(&X_REQUEST_ID);
    }
    req
}

/// UUIDv7 request ids: they sort by time.
#[derive(Clone, Copy)]
struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&uuid::Uuid::now_v7().to_string()).ok().map(RequestId::new)
    }
}

/// The trace id of the request's server span, for log lines.
#[derive(Clone)]
struct TraceId(String);

/// Every log line of a request carries its request id and trace id.
fn request_span<B>(req: &Request<B>) -> tracing::Span {
    let request_id = req.headers().get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let trace_id = req.extensions().get::<TraceId>().map(|t| t.0.as_str()).unwrap_or_default();
    tracing::info_span!("request", request_id = %request_id, trace_id = %trace_id)
}

/// A handler that panicked answers 500 with the usual error body; the connection stays open.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a handler panicked".to_string());
    ApiError::Internal(format!("handler panicked: {what}").into()).into_response()
}

/// Innermost per route: counts the request as active and tells [`observe`] its template.
async fn matched(path: MatchedPath, req: Request, next: Next) -> Response {
    let _active = ActiveRequest::enter(path.as_str());
    let mut response = next.run(req).await;
    response.extensions_mut().insert(path);
    response
}

/// The server span (continuing the caller's W3C trace), the request metrics and the
/// debug line, and the answers that must look as they always did: HEAD is not served, and a
/// 405 names the allowed methods as `GET, POST`.
async fn observe(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    if method == Method::HEAD {
        // axum would answer HEAD with the GET handler; it is a 405 (or a 404) here.
        if let Ok(unserved) = Method::from_bytes(b"UNSERVED-HEAD") {
            *req.method_mut() = unserved;
        }
    }
    let request_id = req.headers().get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    // The records this request writes name their producer span under this one (`trace::produce_span`).
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(req.headers())));
    let tracer = opentelemetry::global::tracer("conveyor.http");
    let span =
        tracer.span_builder(format!("HTTP {method}")).with_kind(SpanKind::Server).start_with_context(&tracer, &parent);
    let otel = parent.with_span(span);
    let trace_id = otel.span().span_context().trace_id().to_string();
    req.extensions_mut().insert(TraceId(trace_id.clone()));
    let mut response = opentelemetry::context::FutureExt::with_context(next.run(req), otel.clone()).await;
    let template = response.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        let allowed = response
            .headers()
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').map(str::trim).filter(|m| *m != "HEAD").collect::<Vec<_>>().join(", "));
        if let Some(v) = allowed.and_then(|a| HeaderValue::from_str(&a).ok()) {
            response.headers_mut().insert(header::ALLOW, v);
        }
    }
    let route = template.unwrap_or_else(|| "unmatched".to_string());
    let labels = [
        KeyValue::new(ROUTE, route.clone()),
        KeyValue::new(METHOD, method_label(&method)),
        KeyValue::new(STATUS_CLASS, status_class(response.status().as_u16())),
    ];
    metrics().request_duration.record(started.elapsed().as_secs_f64(), &labels);
    if route != "unmatched" {
        otel.span().update_name(format!("{method} {route}"));
    }
    otel.span().set_attribute(KeyValue::new("http.response.status_code", i64::from(response.status().as_u16())));
    otel.span().set_attribute(KeyValue::new(ROUTE, route.clone()));
    otel.span().end();
    tracing::debug!(
        request_id,
        trace_id = %trace_id,
        method = %method,
        route,
        status = response.status().as_u16(),
        "request"
    );
    response
}

/// Counts a request in `http.server.active_requests` until dropped: a client that hangs
/// up drops the request's future mid-way.
struct ActiveRequest(String);

impl ActiveRequest {
    fn enter(route: &str) -> Self {
        metrics().active_requests.add(1, &[KeyValue::new(ROUTE, route.to_string())]);
        ActiveRequest(route.to_string())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        metrics().active_requests.add(-1, &[KeyValue::new(ROUTE, self.0.clone())]);
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
