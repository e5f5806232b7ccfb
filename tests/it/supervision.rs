//! One supervision tree: a panic injected into each long-lived service (the test-only fault
//! hook) is followed by a restart, `/ready` names the service while it is down, and the
//! subsystem works again afterwards.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use crate::harness::{Daemon, eventually, token};
use crate::sink::Sink;

const SERVICES: [&str; 6] =
    ["ledger", "outbox-relay", "webhook-dispatcher", "workflow-runs", "retention", "dead-letter-replay"];

/// Panics `service` and waits until `/ready` names it down (503, or 200 `degraded` for
/// retention and dead-letter replay, which the daemon does its job without), then until it is back.
async fn panic_and_recover(d: &Daemon, admin: &str, service: &str) {
    let (expected, verdict) = match service {
        "retention" | "dead-letter-replay" => (StatusCode::OK, "degraded"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    let (s, v) = d.post(&format!("/admin/faults/{service}/panic"), Some(admin), &json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{service}: {v}");
    // The backoff before the first restart is 1 s: `/ready` must say so meanwhile.
    let named = eventually(Duration::from_secs(5), || async {
        let (s, ready) = d.get("/ready", None).await;
        s == expected
            && ready["status"] == verdict
            && ready["subsystems"][service] == "restarting"
            && ready["error"]["message"].as_str().is_some_and(|m| m.contains(service))
    })
    .await;
    assert!(named, "{service} never reported down: {}", d.get("/ready", None).await.1);
    let back = eventually(Duration::from_secs(15), || async {
        let (s, ready) = d.get("/ready", None).await;
        s == StatusCode::OK && ready["subsystems"][service] == "running"
    })
    .await;
    assert!(back, "{service} never came back: {}\n{}", d.get("/ready", None).await.1, d.log_tail(30));
}

#[tokio::test]
async fn every_service_restarts_after_a_panic_and_works_again() {
    let d = Daemon::start(crate::workflows::opts().env("CONVEYOR_FAULTS__ALLOW_PANIC_INJECTION", "true")).await;
    let admin = token("ops", &["admin"]);
    for service in SERVICES {
        panic_and_recover(&d, &admin, service).await;
    }
    let (_, status) = d.get("/admin/status.json", Some(&admin)).await;
    let children = status["supervision"][0]["children"].as_array().cloned().unwrap_or_default();
    for service in SERVICES {
        let node = children.iter().find(|c| c["name"] == service);
        assert_eq!(node.map(|n| n["restarts"].clone()), Some(json!(1)), "{service} restarted once: {status}");
        assert_eq!(node.map(|n| n["state"].clone()), Some(json!("running")));
    }
    let restarts = crate::harness::metric_sum(&d.metrics().await, "conveyor_actor_restarts_total", "");
    assert!(restarts >= 6.0, "restarts counted: {restarts}");

    // Ledger and outbox relay: a registration saga goes through both.
    let user = crate::saga::register(&d).await;
    let info = crate::saga::saga_ends(&d, &user, Duration::from_secs(30)).await;
    assert_eq!(info["registration"]["status"], "completed", "{info}");
    assert_eq!(crate::saga::balance(&d, &user).await.1["balance"], 100);

    // Webhook dispatcher: a notification reaches its endpoint.
    let sink = Sink::start().await;
    crate::webhooks::endpoint(&d, &token("alice", &["user"]), json!({"url": sink.url("/hook")})).await;
    let n = json!({"id": "evt_after_panic", "type": "t.x", "source": "it", "specversion": "1.0", "data": {}});
    assert_eq!(crate::webhooks::notify(&d, &n).await.0, StatusCode::ACCEPTED);
    crate::webhooks::wait_hits(&sink, "/hook", 1, Duration::from_secs(20)).await;

    // Run supervisor: a manual run finishes.
    let user = token("alice", &["user"]);
    let wf = crate::workflows::create(
        &d,
        &user,
        json!({"name": "after-panic", "trigger": {"type": "manual"}, "steps": [
            {"type": "delay", "name": "wait", "seconds": 1}]}),
    )
    .await;
    let run = crate::workflows::start(&d, &user, &wf, json!({})).await;
    assert_eq!(crate::workflows::finished(&d, &user, &wf, &run).await["status"], "succeeded");
}

#[tokio::test]
async fn the_fault_hook_is_off_unless_configured() {
    let d = Daemon::start(crate::harness::Opts::new()).await;
    let admin = token("ops", &["admin"]);
    let (s, v) = d.post("/admin/faults/ledger/panic", Some(&admin), &json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, ready) = d.get("/ready", None).await;
    assert_eq!((s, ready["status"].clone()), (StatusCode::OK, json!("ready")), "{ready}");
    for service in SERVICES {
        assert_eq!(ready["subsystems"][service], "running", "{ready}");
    }
}

/// An endpoint actor's own idle timer is not activity: once its delivery is done it retires.
#[tokio::test]
async fn idle_endpoint_actors_retire() {
    let d = Daemon::start(crate::harness::Opts::new().env("CONVEYOR_WEBHOOKS__ENDPOINT_IDLE_MS", "500")).await;
    let admin = token("ops", &["admin"]);
    let sink = Sink::start().await;
    crate::webhooks::endpoint(&d, &token("alice", &["user"]), json!({"url": sink.url("/idle")})).await;
    let n = json!({"id": "evt_idle", "type": "t.idle", "source": "it", "specversion": "1.0", "data": {}});
    assert_eq!(crate::webhooks::notify(&d, &n).await.0, StatusCode::ACCEPTED);
    crate::webhooks::wait_hits(&sink, "/idle", 1, Duration::from_secs(20)).await;
    let endpoint_actors = || async {
        let (_, status) = d.get("/admin/status.json", Some(&admin)).await;
        let children = status["supervision"][0]["children"].as_array().cloned().unwrap_or_default();
        let dispatcher = children.into_iter().find(|c| c["name"] == "webhook-dispatcher").unwrap_or_default();
        dispatcher["detail"].as_str().unwrap_or_default().to_string()
    };
    let retired =
        eventually(Duration::from_secs(15), || async { endpoint_actors().await.starts_with("0 endpoint actors") })
            .await;
    assert!(retired, "the endpoint actor is still running: {}", endpoint_actors().await);
}

/// A partition actor that dies mid-stream (the drill's crash hook) is replaced and its
/// partition read again from the committed offset: every device still ends at its last
/// event, none is dead-lettered, and the restart is counted. Before the replacement waited
/// for the rewind, records read before it could reach the new actor first and let it commit
/// past records it never saw.
#[tokio::test]
async fn a_partition_actor_that_dies_mid_stream_is_replaced_and_loses_nothing() {
    let d = Daemon::start(crate::harness::Opts::new().env("CONVEYOR_FAULTS__ALLOW_PANIC_INJECTION", "true")).await;
    let (admin, device) = (token("ops", &["admin"]), token("gw", &["device", "user"]));
    let prefix = format!("{}-crash", d.names.id);
    crate::devices::send_sequenced(&d, &device, &prefix, 40, 10, 0).await;
    let (s, body) = d.post(&format!("/admin/faults/keys/{prefix}-0/crash-partition"), Some(&admin), &json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let expected = crate::devices::send_sequenced(&d, &device, &prefix, 40, 15, 10).await;
    let laggards = crate::devices::await_final_state(&d, &device, &expected, Duration::from_secs(90)).await;
    assert!(laggards.is_empty(), "devices that never reached their last event: {laggards:?}\n{}", d.log_tail(40));
    let text = d.metrics().await;
    let restarts = crate::harness::metric_sum(&text, "conveyor_actor_restarts_total", "actor=\"partition\"");
    assert_eq!(restarts, 1.0, "the crash happened once and was restarted");
    assert_eq!(crate::harness::metric_sum(&text, "conveyor_dlq_records_written_total", ""), 0.0);
    let (_, status) = d.get("/admin/status.json", Some(&admin)).await;
    let paused = status["partitions"].as_array().into_iter().flatten().filter(|p| p["paused"] == true).count();
    assert_eq!(paused, 0, "no partition left paused: {status}");
}
