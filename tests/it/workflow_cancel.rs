//! Cancelling a workflow run: it stops before its next step (a delay is cut short), is
//! stored as `cancelled`, is not resumed after a restart; a finished run is a 409, an unknown
//! one a 404.

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Daemon, Opts, eventually, token};
use crate::sink::Sink;
use crate::workflows::{create, finished, start};

/// Long leases, so that a 20 s delay is waited out inside the run's actor (a delay longer
/// than half the lease lets the run go until it is due instead).
pub fn opts() -> Opts {
    crate::workflows::opts().env("CONVEYOR_WORKFLOWS__LEASE_MS", "60000")
}

/// How many run actors the status page says are executing.
pub async fn runs_executing(d: &Daemon, admin: &str) -> Option<u64> {
    let (_, status) = d.get("/admin/status.json", Some(admin)).await;
    let children = status["supervision"][0]["children"].as_array()?.clone();
    let detail = children.iter().find(|c| c["name"] == "workflow-runs")?["detail"].as_str()?.to_string();
    detail.split(' ').next()?.parse().ok()
}

/// A manual workflow: a request, a long delay, another request.
pub async fn delayed_workflow(d: &Daemon, user: &str, sink: &Sink, delay_secs: u64) -> String {
    create(
        d,
        user,
        json!({"name": "cancellable", "trigger": {"type": "manual"}, "steps": [
        {"type": "http", "name": "a", "url": sink.url("/a")},
        {"type": "delay", "name": "wait", "seconds": delay_secs},
        {"type": "http", "name": "b", "url": sink.url("/b")}]}),
    )
    .await
}

/// Waits until the run sits in its delay step.
pub async fn in_delay(d: &Daemon, user: &str, wf: &str, run_id: &str) -> bool {
    eventually(Duration::from_secs(20), || async {
        let (_, v) = d.get(&format!("/workflows/{wf}/runs/{run_id}"), Some(user)).await;
        v["step_index"] == 1 && v["status"] == "running" && v["steps"].as_array().is_some_and(|s| s.len() == 2)
    })
    .await
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_cancelled_run_stops_in_its_delay_and_is_not_resumed_after_a_restart() {
    let mut d = Daemon::start(opts()).await;
    let sink = Sink::start().await;
    let user = token("alice", &["user"]);
    let admin = token("ops", &["admin"]);
    // 20 s: under half the run lease, so the run actor stays in its delay (longer ones let go).
    let wf = delayed_workflow(&d, &user, &sink, 20).await;
    let run_id = start(&d, &user, &wf, json!({})).await;
    assert!(in_delay(&d, &user, &wf, &run_id).await, "the run reached its delay:\n{}", d.log_tail(20));
    assert_eq!(runs_executing(&d, &admin).await, Some(1));

    // Somebody else's run is not found; the owner cancels it.
    let bob = token("bob", &["user"]);
    let (s, body) = d.post(&format!("/workflows/{wf}/runs/{run_id}/cancel"), Some(&bob), &json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    let (s, run) = d.post(&format!("/workflows/{wf}/runs/{run_id}/cancel"), Some(&user), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{run}");
    assert_eq!(run["status"], "cancelled", "{run}");
    assert!(run["finished_at"].is_string(), "{run}");

    // The delay is cut short: the run's actor stops at once, not after 20 s.
    let stopped = eventually(Duration::from_secs(5), || async { runs_executing(&d, &admin).await == Some(0) }).await;
    assert!(stopped, "the run's actor stopped in its delay:\n{}", d.log_tail(20));
    let (_, view) = d.get(&format!("/workflows/{wf}/runs/{run_id}?wait=1s"), Some(&user)).await;
    assert_eq!(view["status"], "cancelled", "{view}");
    assert_eq!(view["step_index"], 1, "it never moved past the delay: {view}");
    assert_eq!(sink.hits("/a").len(), 1);

    // Cancelling again, or cancelling a run that does not exist.
    let (s, body) = d.post(&format!("/workflows/{wf}/runs/{run_id}/cancel"), Some(&user), &json!({})).await;
    assert_eq!((s, code(&body)), (StatusCode::CONFLICT, "run_finished"), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("cancelled")), "{body}");
    let (s, body) = d.post(&format!("/workflows/{wf}/runs/run_nope/cancel"), Some(&user), &json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    let (s, body) = d.post(&format!("/workflows/wf_nope/runs/{run_id}/cancel"), Some(&user), &json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    let metrics = d.metrics().await;
    assert!(
        metrics.lines().any(|l| l.starts_with("conveyor_workflow_runs_total") && l.contains("outcome=\"cancelled\"")),
        "{metrics}"
    );

    // After a restart nothing picks it up again.
    d.terminate(Duration::from_secs(20)).await;
    let d = Daemon::start(Opts::restart_of(&mut d)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // several polls of the run supervisor
    assert_eq!(runs_executing(&d, &admin).await, Some(0), "no run resumed");
    let (_, view) = d.get(&format!("/workflows/{wf}/runs/{run_id}"), Some(&user)).await;
    assert_eq!((view["status"].as_str(), view["step_index"].as_i64()), (Some("cancelled"), Some(1)), "{view}");
    assert_eq!(sink.hits("/b").len(), 0, "the step after the cancel never ran");
    let (_, dashboard) = d.get("/dashboard", Some(&user)).await;
    assert_eq!(dashboard["runs"]["cancelled"], 1, "{dashboard}");
}

#[tokio::test]
async fn a_finished_run_cannot_be_cancelled() {
    let d = Daemon::start(crate::workflows::opts()).await;
    let sink = Sink::start().await;
    let user = token("alice", &["user"]);
    let wf = create(
        &d,
        &user,
        json!({"name": "quick", "trigger": {"type": "manual"}, "steps": [
        {"type": "http", "name": "a", "url": sink.url("/a")}]}),
    )
    .await;
    let run_id = start(&d, &user, &wf, json!({})).await;
    assert_eq!(finished(&d, &user, &wf, &run_id).await["status"], "succeeded");
    let (s, body) = d.post(&format!("/workflows/{wf}/runs/{run_id}/cancel"), Some(&user), &json!({})).await;
    assert_eq!((s, code(&body)), (StatusCode::CONFLICT, "run_finished"), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("succeeded")), "{body}");
    let (_, view) = d.get(&format!("/workflows/{wf}/runs/{run_id}"), Some(&user)).await;
    assert_eq!(view["status"], "succeeded", "unchanged: {view}");
}
