//! OTLP export: a collector stand-in (a real OTLP/HTTP endpoint that decodes what it gets)
//! receives one trace spanning HTTP request → consume → store, and the pushed metrics.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::json;

use crate::harness::{Backend, Daemon, Opts, command, eventually, token};

/// One OTLP post: path, body and the headers it came with.
type Received = Arc<Mutex<Vec<(String, Bytes, http::HeaderMap)>>>;

/// Accepts OTLP/HTTP posts on 127.0.0.1; returns its base URL and what it received.
async fn collector() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
    let base = format!("http://{}", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
    let received: Received = Arc::default();
    let sink = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sink = sink.clone();
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let sink = sink.clone();
                async move {
                    let path = req.uri().path().to_string();
                    let headers = req.headers().clone();
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    sink.lock().map(|mut v| v.push((path, body, headers))).unwrap_or_default();
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    (base, received)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `(trace id, name)` of every span received.
fn spans(received: &Received) -> Vec<(String, String)> {
    full_spans(received).into_iter().map(|s| (s.trace, s.name)).collect()
}

struct Seen {
    trace: String,
    name: String,
    id: String,
    parent: String,
}

fn full_spans(received: &Received) -> Vec<Seen> {
    let posts = received.lock().map(|v| v.clone()).unwrap_or_default();
    let mut out = Vec::new();
    for (path, body, _) in posts.iter().filter(|(p, _, _)| p == "/v1/traces") {
        let Ok(request) = ExportTraceServiceRequest::decode(body.clone()) else { panic!("{path}: not OTLP protobuf") };
        for span in request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
            out.push(Seen {
                trace: hex(&span.trace_id),
                name: span.name.clone(),
                id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
            });
        }
    }
    out
}

#[tokio::test]
async fn one_trace_from_the_request_to_the_store_reaches_the_collector() {
    let (base, received) = collector().await;
    let d = Daemon::start(
        Opts::new().env("CONVEYOR_TELEMETRY__OTLP_ENDPOINT", &base).env("CONVEYOR_TELEMETRY__OTLP_INTERVAL_MS", "300"),
    )
    .await;
    let t = token("gw", &["device"]);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = serde_json::to_vec(&json!({"device_id": "otlp-1", "payload": {"x": 1}})).unwrap_or_default();
    let headers = [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")];
    let (s, _, _) = d.request(http::Method::POST, "/events", Some(&t), &headers, body).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let wanted = ["POST /events", "produce", "process devices", "upsert_resource"];
    let complete = eventually(Duration::from_secs(30), || async {
        let seen = spans(&received);
        wanted.iter().all(|name| seen.iter().any(|(t, n)| t == trace && n == name))
    })
    .await;
    let seen: Vec<(String, String)> = spans(&received).into_iter().filter(|(t, _)| t == trace).collect();
    assert!(complete, "spans of trace {trace}: {seen:?}");
    // One chain: each span is the child of the one before it.
    let all: Vec<Seen> = full_spans(&received).into_iter().filter(|s| s.trace == trace).collect();
    let id_of = |name: &str| all.iter().find(|s| s.name == name).map(|s| s.id.clone()).unwrap_or_default();
    let parent_of = |name: &str| all.iter().find(|s| s.name == name).map(|s| s.parent.clone()).unwrap_or_default();
    assert_eq!(parent_of("POST /events"), "00f067aa0ba902b7", "the caller's span is the request's parent");
    for pair in wanted.windows(2) {
        assert_eq!(parent_of(pair[1]), id_of(pair[0]), "{} is the child of {}", pair[1], pair[0]);
    }
    let metrics = eventually(Duration::from_secs(30), || async {
        received.lock().map(|v| v.iter().any(|(p, b, _)| p == "/v1/metrics" && !b.is_empty())).unwrap_or(false)
    })
    .await;
    assert!(metrics, "no metrics pushed to {base}/v1/metrics");
}

/// `service.name` of every resource that sent spans.
fn span_service_names(received: &Received) -> Vec<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let posts = received.lock().map(|v| v.clone()).unwrap_or_default();
    let mut out = Vec::new();
    for (_, body, _) in posts.iter().filter(|(p, _, _)| p == "/v1/traces") {
        let request = ExportTraceServiceRequest::decode(body.clone()).unwrap_or_default();
        for resource in request.resource_spans.iter().filter_map(|r| r.resource.as_ref()) {
            for kv in resource.attributes.iter().filter(|kv| kv.key == "service.name") {
                if let Some(Value::StringValue(name)) = kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    out.push(name.clone());
                }
            }
        }
    }
    out
}

fn metric_posts(received: &Received) -> usize {
    received.lock().map(|v| v.iter().filter(|(p, _, _)| p == "/v1/metrics").count()).unwrap_or(0)
}

/// The OTel variables win over config.toml: the endpoint, headers, service name and a sampler
/// that records new traces although `telemetry.trace_sample_ratio` says none.
#[tokio::test]
async fn otel_environment_variables_name_the_service_and_choose_the_sampler() {
    let (base, received) = collector().await;
    let d = Daemon::start(
        Opts::new()
            .env("CONVEYOR_TELEMETRY__OTLP_INTERVAL_MS", "300")
            .env("CONVEYOR_TELEMETRY__TRACE_SAMPLE_RATIO", "0")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &base)
            .env("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=it%20key")
            .env("OTEL_SERVICE_NAME", "conveyor-edge-7")
            .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=it,service.name=overridden")
            .env("OTEL_TRACES_SAMPLER", "always_on"),
    )
    .await;
    let t = token("gw", &["device"]);
    // No traceparent: a new trace, which the configured ratio of 0 would not record.
    let (s, _) = d.post("/events", Some(&t), &json!({"device_id": "otel-env-1", "payload": {"x": 1}})).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let exported = eventually(Duration::from_secs(30), || async {
        spans(&received).iter().any(|(_, name)| name == "POST /events")
    })
    .await;
    assert!(exported, "always_on from the environment must export the new trace: {:?}", spans(&received));
    let names = span_service_names(&received);
    assert!(!names.is_empty() && names.iter().all(|n| n == "conveyor-edge-7"), "service names: {names:?}");
    let posts = received.lock().map(|v| v.clone()).unwrap_or_default();
    let keys: Vec<_> = posts.iter().map(|(p, _, h)| (p.clone(), h.get("x-api-key").cloned())).collect();
    assert!(
        keys.iter().all(|(_, k)| k.as_ref().is_some_and(|k| k == "it key")),
        "every post carries OTEL_EXPORTER_OTLP_HEADERS: {keys:?}"
    );
}

/// `always_off` exports no span, even for a caller that sampled its trace; metrics still go.
#[tokio::test]
async fn otel_always_off_exports_no_span() {
    let (base, received) = collector().await;
    let d = Daemon::start(
        Opts::new()
            .env("CONVEYOR_TELEMETRY__OTLP_INTERVAL_MS", "300")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &base)
            .env("OTEL_TRACES_SAMPLER", "always_off"),
    )
    .await;
    let t = token("gw", &["device", "user"]);
    let body = serde_json::to_vec(&json!({"device_id": "otel-off-1", "payload": {"x": 1}})).unwrap_or_default();
    let headers = [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b7-01")];
    let (s, _, _) = d.request(http::Method::POST, "/events", Some(&t), &headers, body).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let stored = eventually(Duration::from_secs(30), || async {
        d.get("/resource/otel-off-1", Some(&t)).await.0 == StatusCode::OK
    })
    .await;
    assert!(stored, "the event was not processed");
    // Two metric pushes after the work was done: the span batches (same interval) had time to go.
    let after = metric_posts(&received);
    let pushed = eventually(Duration::from_secs(30), || async { metric_posts(&received) >= after + 2 }).await;
    assert!(pushed, "the exporter is not pushing metrics to {base}");
    assert_eq!(spans(&received), Vec::<(String, String)>::new(), "always_off exported spans");
}

/// `OTEL_SDK_DISABLED=true` pushes nothing, even with `telemetry.otlp_endpoint` set.
#[tokio::test]
async fn otel_sdk_disabled_pushes_nothing() {
    let (base, received) = collector().await;
    let mut d = Daemon::start(
        Opts::new()
            .env("CONVEYOR_TELEMETRY__OTLP_ENDPOINT", &base)
            .env("CONVEYOR_TELEMETRY__OTLP_INTERVAL_MS", "100")
            .env("OTEL_SDK_DISABLED", "true"),
    )
    .await;
    let t = token("gw", &["device", "user"]);
    let (s, _) = d.post("/events", Some(&t), &json!({"device_id": "otel-dis-1", "payload": {"x": 1}})).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let stored = eventually(Duration::from_secs(30), || async {
        d.get("/resource/otel-dis-1", Some(&t)).await.0 == StatusCode::OK
    })
    .await;
    assert!(stored, "the event was not processed");
    // /metrics still answers: it is Conveyor's own endpoint, not an SDK export.
    assert!(d.metrics().await.contains("process_uptime"), "/metrics must still answer");
    // A clean stop flushes every exporter: had there been one, it would have pushed now.
    assert_eq!(d.terminate(Duration::from_secs(20)).await.code(), Some(0));
    assert_eq!(received.lock().map(|v| v.len()).unwrap_or(usize::MAX), 0, "OTEL_SDK_DISABLED pushed to {base}");
}

#[test]
fn a_bad_otel_variable_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = Opts::new();
    opts.backend = Backend::Embedded;
    for (var, value) in [
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ("OTEL_SDK_DISABLED", "maybe"),
    ] {
        let mut cmd = command(&opts, dir.path());
        cmd.args(["config", "check"]).env(var, value);
        if var == "OTEL_TRACES_SAMPLER_ARG" {
            cmd.env("OTEL_TRACES_SAMPLER", "traceidratio");
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{var}={value}: {stderr}");
        assert!(stderr.contains(var), "{var}={value}: the error must name it: {stderr}");
    }
}
