//! The front end's own answers on one keep-alive connection: a handler that panics is a
//! 500 with the usual error body and the connection serves the next request; HEAD is not
//! served; unknown paths and methods are JSON errors; request ids are echoed or made; a body
//! over the limit is a 413 for a caller who may send it, and a 401 for one who may not.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::harness::{Daemon, Opts, token};

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, Value) {
    send_body(sender, method, path, headers, Bytes::new()).await
}

async fn send_body(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (StatusCode, http::HeaderMap, Value) {
    sender.ready().await.unwrap_or_else(|e| panic!("connection closed before {method} {path}: {e}"));
    let mut req = Request::builder().method(method).uri(path).header("host", "conveyor");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender.send_request(req.body(Full::new(body)).unwrap()).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_panicking_handler_answers_500_and_the_connection_lives_on() {
    let opts = Opts::new().env("CONVEYOR_FAULTS__ALLOW_PANIC_INJECTION", "true");
    let d = Daemon::start(opts.env("CONVEYOR_HTTP__BODY_LIMIT_BYTES", "2048")).await;
    let admin = format!("Bearer {}", token("ops", &["admin"]));
    let stream = tokio::net::TcpStream::connect(d.base.trim_start_matches("http://")).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    let conn = tokio::spawn(conn);

    let auth = [("authorization", admin.as_str())];
    let (s, headers, body) = send(&mut sender, Method::POST, "/admin/faults/http/panic", &auth).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"]["code"], "internal", "{body}");
    assert!(headers.contains_key("x-request-id"));
    assert_ne!(headers.get("connection").and_then(|v| v.to_str().ok()), Some("close"));

    let (s, _, body) = send(&mut sender, Method::GET, "/health", &[("x-request-id", "it-frontend-1")]).await;
    assert_eq!((s, &body["status"]), (StatusCode::OK, &Value::from("ok")), "{body}");

    let (s, headers, _) = send(&mut sender, Method::GET, "/health", &[("x-request-id", "it-frontend-2")]).await;
    assert_eq!((s, headers.get("x-request-id").and_then(|v| v.to_str().ok())), (StatusCode::OK, Some("it-frontend-2")));

    let (s, headers, _) = send(&mut sender, Method::HEAD, "/health", &[]).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers.get("allow").and_then(|v| v.to_str().ok()), Some("GET"));

    let (s, headers, body) = send(&mut sender, Method::PUT, "/webhooks/endpoints", &auth).await;
    assert_eq!((s, &body["error"]["code"]), (StatusCode::METHOD_NOT_ALLOWED, &Value::from("method_not_allowed")));
    assert_eq!(headers.get("allow").and_then(|v| v.to_str().ok()), Some("GET, POST"));

    let (s, _, body) = send(&mut sender, Method::GET, "/nowhere", &[]).await;
    assert_eq!((s, &body["error"]["code"]), (StatusCode::NOT_FOUND, &Value::from("not_found")));

    let big = Bytes::from(format!("{{\"device_id\": \"d\", \"payload\": {{\"x\": \"{}\"}}}}", "a".repeat(4096)));
    let (s, _, body) = send_body(&mut sender, Method::POST, "/events", &[], big.clone()).await;
    assert_eq!((s, &body["error"]["code"]), (StatusCode::UNAUTHORIZED, &Value::from("unauthorized")));
    let (s, _, body) = send_body(&mut sender, Method::POST, "/events", &auth, big).await;
    assert_eq!((s, &body["error"]["code"]), (StatusCode::PAYLOAD_TOO_LARGE, &Value::from("payload_too_large")));

    drop(sender);
    conn.await.unwrap().unwrap();
}
