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

use crate::harness::{Daemon, Opts, eventually, token};

type Received = Arc<Mutex<Vec<(String, Bytes)>>>;

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
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    sink.lock().map(|mut v| v.push((path, body))).unwrap_or_default();
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
    for (path, body) in posts.iter().filter(|(p, _)| p == "/v1/traces") {
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
        received.lock().map(|v| v.iter().any(|(p, b)| p == "/v1/metrics" && !b.is_empty())).unwrap_or(false)
    })
    .await;
    assert!(metrics, "no metrics pushed to {base}/v1/metrics");
}
