//! `POST /events` and `/events/batch`: the seed-003 flow, every refusal path (idempotency:
//! `idempotency.rs`).

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Daemon, Opts, chrono_now, embedded_only, eventually, sign, token};

/// Seed 003's "How to Test", as written: a PyJWT-style token, POST, then GET twice.
#[tokio::test]
async fn seed_003_flow_works_as_written() {
    let d = Daemon::start(Opts::new()).await;
    let t = token("device-tester", &["device", "user"]);
    let (s, body) = d
        .post("/events", Some(&t), &json!({"device_id": "device-123", "payload": {"status": "online", "temp_c": 37.2}}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "accepted");
    let id = body["request_id"].as_str().unwrap_or_default();
    let uuid = uuid::Uuid::parse_str(id).expect("request_id is a UUID");
    assert_eq!(uuid.get_version_num(), 7, "request ids are UUIDv7");

    let found = eventually(Duration::from_secs(30), || async {
        d.get("/resource/device-123", Some(&t)).await.0 == StatusCode::OK
    })
    .await;
    assert!(found, "the worker never wrote the resource");
    let (s, first) = d.get("/resource/device-123", Some(&t)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(first, json!({"id": "device-123", "value": {"status": "online", "temp_c": 37.2}}));
    let (_, second) = d.get("/resource/device-123", Some(&t)).await;
    assert_eq!(first, second);
    let text = d.metrics().await;
    assert!(crate::harness::metric_sum(&text, "conveyor_cache_hits_total", "") >= 1.0, "second read is a cache hit");

    let (s, body) = d.get("/resource/unknown-device", Some(&t)).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let d = Daemon::start(Opts::new().env("CONVEYOR_HTTP__BODY_LIMIT_BYTES", "2048")).await;
    let device = token("dev", &["device"]);
    let post_raw = |body: &'static [u8], tok: Option<String>| {
        let d = &d;
        async move { d.request(Method::POST, "/events", tok.as_deref(), &[], body.to_vec()).await }
    };

    let (s, _, body) = post_raw(b"{\"device_id\": ", Some(device.clone())).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("malformed_json")));

    let cases: Vec<(Value, &str)> = vec![
        (json!({"payload": {}}), "device_id"),
        (json!({"device_id": "", "payload": {}}), "device_id"),
        (json!({"device_id": "x".repeat(129), "payload": {}}), "device_id"),
        (json!({"device_id": "tab\there", "payload": {}}), "device_id"),
        (json!({"device_id": "d", "payload": "text"}), "payload"),
        (json!({"device_id": "d"}), "payload"),
    ];
    for (body, field) in cases {
        let (s, resp) = d.post("/events", Some(&device), &body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(resp["error"]["details"][0]["field"], field, "{resp}");
    }

    let big = format!("{{\"device_id\": \"d\", \"payload\": {{\"x\": \"{}\"}}}}", "a".repeat(4096));
    let (s, _, body) = d.request(Method::POST, "/events", Some(&device), &[], big.into_bytes()).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")));

    let (s, headers, body) = post_raw(b"{}", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(headers.get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
    assert_eq!(body["error"]["code"], "unauthorized");

    let (s, _, _) = post_raw(b"{}", Some("not.a.jwt".into())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let expired = sign(&json!({"sub": "dev", "roles": ["device"], "exp": chrono_now() - 3600}));
    let (s, _, body) = post_raw(b"{}", Some(expired)).await;
    assert_eq!((s, body["error"]["message"].as_str()), (StatusCode::UNAUTHORIZED, Some("token expired")));
    let user = token("someone", &["user"]);
    let (s, body) = d.post("/events", Some(&user), &json!({"device_id": "d", "payload": {}})).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));
    let (s, _) = d.get("/resource/d", Some(&token("x", &["other"]))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (s, _) = d.get("/events", Some(&device)).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);

    // Nothing above crashed anything: the daemon still takes events.
    let (s, _) = d.post("/events", Some(&device), &json!({"device_id": "d", "payload": {"ok": true}})).await;
    assert_eq!(s, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn batch_answers_per_item() {
    let d = Daemon::start(Opts::new().env("CONVEYOR_INGEST__BATCH_MAX_EVENTS", "5")).await;
    let t = token("gw", &["device", "user"]);
    let (s, body) = d
        .post(
            "/events/batch",
            Some(&t),
            &json!({"events": [
                {"device_id": "b1", "payload": {"n": 1}},
                {"device_id": "", "payload": {}},
                {"device_id": "b2", "payload": {"n": 2}},
                "nonsense"
            ]}),
        )
        .await;
    assert_eq!(s, StatusCode::MULTI_STATUS, "{body}");
    assert_eq!((body["accepted"].as_u64(), body["rejected"].as_u64()), (Some(2), Some(2)));
    let results = body["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results[0]["status"], "accepted");
    assert_eq!(results[1]["error"]["details"][0]["field"], "events[1].device_id");
    assert_eq!(results[3]["error"]["details"][0]["field"], "events[3]");

    let (s, body) =
        d.post("/events/batch", Some(&t), &json!({"events": [{"device_id": "b3", "payload": {"n": 3}}]})).await;
    assert_eq!((s, body["accepted"].as_u64()), (StatusCode::ACCEPTED, Some(1)));

    let six: Vec<Value> = (0..6).map(|i| json!({"device_id": format!("x{i}"), "payload": {}})).collect();
    let (s, body) = d.post("/events/batch", Some(&t), &json!({"events": six})).await;
    assert_eq!((s, body["error"]["details"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("events")));

    for id in ["b1", "b2", "b3"] {
        assert!(
            eventually(Duration::from_secs(30), || async {
                d.get(&format!("/resource/{id}"), Some(&t)).await.0 == StatusCode::OK
            })
            .await,
            "{id} was accepted in a batch and must be processed"
        );
    }
}

/// The embedded log's disk budget is back-pressure: once a topic is full of records its group
/// has not committed, ingest answers 503 with Retry-After and says why; every event it
/// accepted still reaches its resource, and once the group commits, retention makes room.
#[tokio::test]
async fn embedded_full_log_answers_503_and_loses_nothing_accepted() {
    embedded_only("embedded_full_log_answers_503_and_loses_nothing_accepted");
    let d = Daemon::start(
        Opts::new()
            .env("CONVEYOR_LOG__EMBEDDED__SEGMENT_BYTES", "1024")
            // The smallest budget four partitions allow: 2 x 4 x segment_bytes.
            .env("CONVEYOR_LOG__EMBEDDED__MAX_DISK_BYTES", "8192")
            .env("CONVEYOR_LOG__EMBEDDED__RETENTION_CHECK_MS", "100")
            // Commits come late, so the budget fills with uncommitted records first.
            .env("CONVEYOR_PROCESSING__COMMIT_INTERVAL_MS", "3000"),
    )
    .await;
    let t = token("budget-tester", &["device", "user"]);
    let json_header = [("content-type", "application/json")];
    let mut accepted = Vec::new();
    let mut refusal = None;
    for i in 0..500 {
        let device = format!("budget-{i}");
        let body = serde_json::to_vec(&json!({"device_id": device, "payload": {"n": i}})).unwrap_or_default();
        let (s, headers, resp) = d.request(Method::POST, "/events", Some(&t), &json_header, body).await;
        match s {
            StatusCode::ACCEPTED => accepted.push(device),
            StatusCode::SERVICE_UNAVAILABLE => {
                refusal = Some((headers, resp));
                break;
            }
            other => panic!("unexpected {other}: {resp}"),
        }
    }
    let Some((headers, body)) = refusal else { panic!("the log never filled") };
    let retry_after = headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    assert!(retry_after.is_some_and(|s| s >= 1), "{headers:?}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("is full") && message.contains("budget"), "{message}");
    assert!(!accepted.is_empty(), "the first event was already refused");

    for device in &accepted {
        let path = format!("/resource/{device}");
        let found =
            eventually(Duration::from_secs(30), || async { d.get(&path, Some(&t)).await.0 == StatusCode::OK }).await;
        assert!(found, "the accepted event of {device} never reached its resource");
    }
    let after = json!({"device_id": "budget-after", "payload": {}});
    let accepts = eventually(Duration::from_secs(30), || async {
        d.post("/events", Some(&t), &after).await.0 == StatusCode::ACCEPTED
    })
    .await;
    assert!(accepts, "ingest never accepted again after the group committed");
}
