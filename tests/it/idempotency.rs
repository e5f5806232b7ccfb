//! `Idempotency-Key` on `POST /events` and `/events/batch`: the same body replays the first
//! answer, another body is refused, a running first request is a conflict, and all of it
//! holds across a restart (the keys are in the store).

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use conveyor_actors::store::idempotency::{Begin, IdempotencyKeys, KeyedRequest};

use crate::harness::{Daemon, Opts, eventually, metric_sum, token};

async fn send(d: &Daemon, t: &str, path: &str, key: &str, body: &Value) -> (StatusCode, http::HeaderMap, Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    d.request(Method::POST, path, Some(t), &[("idempotency-key", key), ("content-type", "application/json")], bytes)
        .await
}

fn replayed(headers: &http::HeaderMap) -> bool {
    headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()) == Some("true")
}

/// The other body's refusal: a 422 that names the reuse.
fn assert_reused(s: StatusCode, body: &Value) {
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("another request body"), "{body}");
}

#[tokio::test]
async fn the_same_body_replays_the_first_answer_and_another_body_is_refused() {
    let d = Daemon::start(Opts::new()).await;
    let t = token("gw", &["device", "user"]);
    let first = json!({"device_id": "idem-1", "payload": {"v": "first"}});
    let (s1, h1, b1) = send(&d, &t, "/events", "k-1", &first).await;
    assert_eq!(s1, StatusCode::ACCEPTED, "{b1}");
    assert!(!replayed(&h1));
    let (s2, h2, b2) = send(&d, &t, "/events", "k-1", &first).await;
    assert_eq!((s2, &b2), (StatusCode::ACCEPTED, &b1), "the first answer, status and body");
    assert!(replayed(&h2));
    let (s3, h3, b3) =
        send(&d, &t, "/events", "k-1", &json!({"device_id": "idem-1", "payload": {"v": "second"}})).await;
    assert_reused(s3, &b3);
    assert!(!replayed(&h3));
    // A repeat while the first request still runs is a conflict.
    let running = json!({"device_id": "idem-running", "payload": {}});
    claim(&d, "gw", "k-running", &running).await;
    let (s, _, busy) = send(&d, &t, "/events", "k-running", &running).await;
    assert_eq!((s, busy["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("idempotency_key_in_use")), "{busy}");
    // The key is the client's: another subject's same key is a request of its own.
    let (s, h, _) = send(&d, &token("other", &["device"]), "/events", "k-1", &first).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert!(!replayed(&h));

    // A batch keeps its first status (207: one item was refused) and per-item results.
    let batch = json!({"events": [{"device_id": "idem-2", "payload": {}}, {"device_id": "", "payload": {}}]});
    let (s1, _, b1) = send(&d, &t, "/events/batch", "k-1", &batch).await;
    assert_eq!(s1, StatusCode::MULTI_STATUS, "{b1}");
    let (s2, h2, b2) = send(&d, &t, "/events/batch", "k-1", &batch).await;
    assert_eq!((s2, &b2), (StatusCode::MULTI_STATUS, &b1));
    assert!(replayed(&h2));

    // A marker after the repeats: once it is processed, so is anything sent before it.
    let (s, _) = d.post("/events", Some(&t), &json!({"device_id": "idem-marker", "payload": {}})).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let marker = eventually(Duration::from_secs(30), || async {
        d.get("/resource/idem-marker", Some(&t)).await.0 == StatusCode::OK
    });
    assert!(marker.await);
    let (_, body) = d.get("/resource/idem-1", Some(&t)).await;
    assert_eq!(body["value"]["v"], "first", "neither repeat was enqueued");
    // idem-1 twice (two clients), idem-2 once, the marker: repeats enqueue nothing.
    assert_eq!(metric_sum(&d.metrics().await, "conveyor_ingest_accepted_total", ""), 4.0);

    let (s, _, body) = d.request(Method::POST, "/events", Some(&t), &[("idempotency-key", "")], b"{}".to_vec()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

/// Claims `key` for `subject` with `body` in the daemon's store, as a request of its own
/// that is still running (or died with its process) would have.
async fn claim(d: &Daemon, subject: &str, key: &str, body: &Value) {
    let sha: String = Sha256::digest(serde_json::to_vec(body).unwrap()).iter().map(|b| format!("{b:02x}")).collect();
    let req = KeyedRequest { scope: "events".into(), subject: subject.into(), key: key.into(), request_sha256: sha };
    assert_eq!(keys_of(d).await.begin(&req, chrono::Utc::now()).await.unwrap(), Begin::Started);
}

/// The daemon's store, opened from the test (the daemon stopped or running).
async fn keys_of(d: &Daemon) -> IdempotencyKeys {
    let store = d.open_store().await;
    IdempotencyKeys::new(store, Duration::from_secs(3_600), Duration::from_secs(3_600))
}

#[tokio::test]
async fn keys_answers_and_claims_survive_a_restart() {
    let mut d = Daemon::start(Opts::new()).await;
    let t = token("gw", &["device", "user"]);
    let body = json!({"device_id": "restart-1", "payload": {"v": 1}});
    let (s, _, first) = send(&d, &t, "/events", "r-1", &body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{first}");
    assert_eq!(d.terminate(Duration::from_secs(20)).await.code(), Some(0), "{}", d.log_tail(20));

    // While it is down, a request of this client claims "r-2" and dies with its process.
    let running = json!({"device_id": "restart-2", "payload": {}});
    claim(&d, "gw", "r-2", &running).await;

    let d = Daemon::start(Opts::restart_of(&mut d)).await;
    let (s, h, again) = send(&d, &t, "/events", "r-1", &body).await;
    assert_eq!((s, &again), (StatusCode::ACCEPTED, &first), "the first answer, after the restart");
    assert!(replayed(&h));
    let (s, _, refused) = send(&d, &t, "/events", "r-1", &json!({"device_id": "restart-1", "payload": {"v": 2}})).await;
    assert_reused(s, &refused);
    let (s, _, busy) = send(&d, &t, "/events", "r-2", &running).await;
    assert_eq!((s, busy["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("idempotency_key_in_use")), "{busy}");
    assert_eq!(metric_sum(&d.metrics().await, "conveyor_ingest_accepted_total", ""), 0.0, "nothing enqueued again");
}
