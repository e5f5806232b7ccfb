//! Workflows (seeds 000/001) against local HTTP targets: an event-triggered three-step run
//! with templated bodies, retries by error class, a 4xx failing at once (then replayed from
//! the dead-letter topic), `kill -9` mid-run, long polling, schedules, validation.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Daemon, Opts, eventually, token};
use crate::sink::{Script, Sink};

/// Quick retries and leases, so the tests take seconds.
pub(crate) fn opts() -> Opts {
    Opts::new()
        .env("CONVEYOR_WORKFLOWS__ALLOW_LOOPBACK", "true")
        .env("CONVEYOR_WORKFLOWS__RETRY_BASE_MS", "100")
        .env("CONVEYOR_WORKFLOWS__RETRY_CAP_MS", "400")
        .env("CONVEYOR_WORKFLOWS__POLL_INTERVAL_MS", "200")
        .env("CONVEYOR_WORKFLOWS__SCHEDULER_TICK_MS", "200")
        .env("CONVEYOR_WORKFLOWS__STEP_TIMEOUT_MS", "2000")
        .env("CONVEYOR_WORKFLOWS__LEASE_MS", "3000")
}

pub(crate) async fn create(d: &Daemon, user: &str, spec: Value) -> String {
    let (s, v) = d.post("/workflows", Some(user), &spec).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["id"].as_str().unwrap().to_string()
}

pub(crate) async fn start(d: &Daemon, user: &str, wf: &str, input: Value) -> String {
    let (s, v) = d.post(&format!("/workflows/{wf}/runs"), Some(user), &json!({"input": input})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// Long-polls the run until it finishes.
pub(crate) async fn finished(d: &Daemon, user: &str, wf: &str, run: &str) -> Value {
    for _ in 0..6 {
        let (s, v) = d.get(&format!("/workflows/{wf}/runs/{run}?wait=10s"), Some(user)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if v["status"] == "succeeded" || v["status"] == "failed" {
            return v;
        }
    }
    panic!("run {run} did not finish:\n{}", d.log_tail(30));
}

#[tokio::test]
async fn a_notification_runs_a_three_step_workflow_with_templated_bodies() {
    let d = Daemon::start(opts()).await;
    let sink = Sink::start().await;
    let user = token("alice", &["user"]);
    let wf = create(&d, &user, json!({
        "name": "payments", "trigger": {"type": "event", "event_type": "payment.*", "condition": "input.project == 'dev'"},
        "steps": [
            {"type": "http", "name": "first", "url": sink.url("/first"), "headers": {"x-payment": "{{ input.data.id }}"},
             "body": "{\"payment\": {{ input.data.id | tojson }}, \"amount\": {{ input.data.amount }}}"},
            {"type": "condition", "name": "ok", "if": "steps.first.status == 200"},
            {"type": "http", "name": "second", "method": "PUT", "url": sink.url("/second/{{ input.id }}"),
             "body": "{\"answer\": {{ steps.first.body.answer }}, \"run\": \"{{ run.id }}\"}"}
        ]})).await;
    let event = json!({"id": "evt_pay_1", "type": "payment.succeeded", "source": "it", "specversion": "1.0", "project": "dev",
        "data": {"object": "payment", "id": "pay_42", "amount": 999}});
    let other = json!({"id": "evt_pay_2", "type": "payment.succeeded", "source": "it", "specversion": "1.0", "project": "prod", "data": {"id": "pay_x", "amount": 1}});
    for n in [&event, &other] {
        let bytes = serde_json::to_vec(n).unwrap();
        let (s, _, v) = d
            .request(Method::POST, "/notifications", None, &[("authorization", "Basic YWRtaW46YWRtaW4=")], bytes)
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    }
    let started = eventually(Duration::from_secs(20), || async {
        d.get(&format!("/workflows/{wf}/runs"), Some(&user)).await.1.as_array().is_some_and(|r| !r.is_empty())
    })
    .await;
    assert!(started, "{}", d.log_tail(20));
    let runs = d.get(&format!("/workflows/{wf}/runs"), Some(&user)).await.1;
    let run_id = runs[0]["id"].as_str().unwrap().to_string();
    let run = finished(&d, &user, &wf, &run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["trigger"], "event");
    let steps: Vec<_> =
        run["steps"].as_array().unwrap().iter().map(|s| (s["name"].clone(), s["status"].clone())).collect();
    assert_eq!(
        steps,
        [
            (json!("first"), json!("succeeded")),
            (json!("ok"), json!("succeeded")),
            (json!("second"), json!("succeeded"))
        ]
    );
    let first = sink.hits("/first");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].json(), json!({"payment": "pay_42", "amount": 999}));
    assert_eq!(first[0].headers["x-payment"], "pay_42");
    assert_eq!(first[0].headers["idempotency-key"], format!("{run_id}:first"));
    let second = sink.hits("/second/evt_pay_1");
    assert_eq!(second.len(), 1, "PUT to the templated URL");
    assert_eq!(second[0].json(), json!({"answer": 200, "run": run_id}));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        d.get(&format!("/workflows/{wf}/runs"), Some(&user)).await.1.as_array().map(Vec::len),
        Some(1),
        "the prod event fails the condition"
    );
}

#[tokio::test]
async fn retries_follow_the_error_class() {
    let d = Daemon::start(opts()).await;
    let sink = Sink::start().await;
    let user = token("alice", &["user"]);
    sink.script("/limited", Script::LimitedThenOk(2, 1));
    sink.script("/flaky", Script::FailThenOk(503, 3));
    let wf = create(
        &d,
        &user,
        json!({"name": "retries", "trigger": {"type": "manual"}, "steps": [
        {"type": "http", "name": "limited", "url": sink.url("/limited")},
        {"type": "http", "name": "flaky", "url": sink.url("/flaky")}]}),
    )
    .await;
    let run_id = start(&d, &user, &wf, json!({})).await;
    let run = finished(&d, &user, &wf, &run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let limited = sink.hits("/limited");
    assert_eq!(limited.len(), 2);
    let waited = limited[1].at - limited[0].at;
    assert!(waited >= Duration::from_secs(2), "429 + Retry-After: 2 was retried after {waited:?}");
    assert_eq!(sink.hits("/flaky").len(), 4, "503 three times, then 200 on the fourth attempt");
    assert_eq!(run["steps"][0]["attempts"], 2);
    assert_eq!(run["steps"][1]["attempts"], 4);
    assert_eq!(run["steps"][1]["response_code"], 200);
    let metrics = d.metrics().await;
    assert!(
        metrics.contains("conveyor_workflow_step_attempts_total{") && metrics.contains("outcome=\"retried\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_4xx_fails_the_run_at_once_and_the_dead_letter_replays_it() {
    let d = Daemon::start(opts()).await;
    let sink = Sink::start().await;
    let user = token("alice", &["user"]);
    let admin = token("root", &["admin"]);
    sink.script("/bad", Script::Always(400, None));
    let wf = create(
        &d,
        &user,
        json!({"name": "bad", "trigger": {"type": "manual"}, "steps": [
        {"type": "http", "name": "ok", "url": sink.url("/ok")},
        {"type": "http", "name": "bad", "url": sink.url("/bad")}]}),
    )
    .await;
    let run_id = start(&d, &user, &wf, json!({})).await;
    let run = finished(&d, &user, &wf, &run_id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(sink.hits("/bad").len(), 1, "no retry after a 400");
    assert_eq!((run["steps"][1]["attempts"].as_i64(), run["steps"][1]["response_code"].as_i64()), (Some(1), Some(400)));
    assert!(run["error"].as_str().unwrap().contains("HTTP 400"), "{run}");
    // The dead letter is keyed by the workflow and carries a `run.retry` command.
    let indexed = eventually(Duration::from_secs(20), || async {
        d.get("/admin/dead-letters", Some(&admin)).await.1.to_string().contains(&wf)
    })
    .await;
    let (_, letters) = d.get("/admin/dead-letters", Some(&admin)).await;
    assert!(indexed, "{letters}");
    let id = letters["items"].as_array().unwrap().iter().find(|l| l.to_string().contains(&wf)).unwrap()["id"].clone();
    // Fixed on the target's side; the replay resumes at the failed step only.
    sink.script("/bad", Script::Ok);
    let (s, v) = d.post(&format!("/admin/dead-letters/{id}/replay"), Some(&admin), &json!({})).await;
    assert!(s.is_success(), "{v}");
    let resumed = eventually(Duration::from_secs(20), || async {
        d.get(&format!("/workflows/{wf}/runs/{run_id}"), Some(&user)).await.1["status"] == "succeeded"
    })
    .await;
    assert!(resumed, "{}", d.log_tail(20));
    assert_eq!(sink.hits("/ok").len(), 1, "the finished step is not repeated");
    assert_eq!(sink.hits("/bad").len(), 2);
}

#[tokio::test]
async fn a_run_killed_mid_way_resumes_without_repeating_finished_steps() {
    let mut d = Daemon::start(opts()).await;
    let sink = Sink::start().await;
    let user = token("alice", &["user"]);
    let wf = create(
        &d,
        &user,
        json!({"name": "durable", "trigger": {"type": "manual"}, "steps": [
        {"type": "http", "name": "a", "url": sink.url("/a")},
        {"type": "delay", "name": "wait", "seconds": 4},
        {"type": "http", "name": "b", "url": sink.url("/b")}]}),
    )
    .await;
    let run_id = start(&d, &user, &wf, json!({"n": 1})).await;
    let waiting = eventually(Duration::from_secs(20), || async {
        let (_, v) = d.get(&format!("/workflows/{wf}/runs/{run_id}"), Some(&user)).await;
        v["step_index"] == 1 && v["steps"].as_array().is_some_and(|s| s.len() == 2)
    })
    .await;
    assert!(waiting, "the run reached its delay");
    d.kill9();
    let d = Daemon::start(Opts::restart_of(&mut d)).await;
    let run = finished(&d, &user, &wf, &run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(run["resumes"].as_i64().unwrap() >= 1, "{run}");
    assert_eq!(sink.hits("/a").len(), 1, "a finished step is never repeated");
    assert_eq!(sink.hits("/b").len(), 1);
    let b = &sink.hits("/b")[0];
    let a = &sink.hits("/a")[0];
    assert!(b.at - a.at >= Duration::from_secs(4), "the delay continued rather than being skipped");
    let metrics = d.metrics().await;
    assert!(
        metrics.lines().any(|l| l.starts_with("conveyor_workflow_runs_total") && l.contains("outcome=\"resumed\"")),
        "{metrics}"
    );
}

#[tokio::test]
async fn long_polling_answers_when_the_run_finishes() {
    let d = Daemon::start(opts()).await;
    let user = token("alice", &["user"]);
    let wf = create(
        &d,
        &user,
        json!({"name": "slow", "trigger": {"type": "manual"}, "steps": [
        {"type": "delay", "name": "wait", "seconds": 1}]}),
    )
    .await;
    let run_id = start(&d, &user, &wf, json!({})).await;
    let asked = Instant::now();
    let (s, run) = d.get(&format!("/workflows/{wf}/runs/{run_id}?wait=30s"), Some(&user)).await;
    let answered = asked.elapsed();
    assert_eq!(s, StatusCode::OK);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(answered < Duration::from_secs(20), "answered after {answered:?}, not at the end of the wait");
    let (_, pending) = d.get(&format!("/workflows/{wf}/runs/{run_id}?wait=0s"), Some(&user)).await;
    assert_eq!(pending["status"], "succeeded");
}

#[tokio::test]
async fn a_schedule_starts_runs() {
    let d = Daemon::start(opts()).await;
    let sink = Sink::start().await;
    let user = token("alice", &["user"]);
    let wf = create(&d, &user, json!({"name": "tick", "trigger": {"type": "schedule", "cron": "@every 1s", "timezone": "Europe/Lisbon"},
        "steps": [{"type": "http", "name": "ping", "url": sink.url("/tick"), "body": "{{ input.scheduled_for | tojson }}"}]})).await;
    assert!(eventually(Duration::from_secs(20), || async { sink.hits("/tick").len() >= 2 }).await);
    let (_, runs) = d.get(&format!("/workflows/{wf}/runs"), Some(&user)).await;
    assert!(runs.as_array().unwrap().iter().all(|r| r["trigger"] == "schedule"), "{runs}");
    let bodies: std::collections::BTreeSet<_> = sink.hits("/tick").iter().map(|h| h.body.clone()).collect();
    assert_eq!(bodies.len(), sink.hits("/tick").len(), "each fire time runs once");
}

#[tokio::test]
async fn definitions_are_validated_owned_and_counted() {
    let d = Daemon::start(opts()).await;
    let user = token("alice", &["user"]);
    let spec =
        json!({"name": "w", "trigger": {"type": "manual"}, "steps": [{"type": "delay", "name": "d", "seconds": 0}]});
    let wf = create(&d, &user, spec.clone()).await;
    let (s, v) = d.post("/workflows", Some(&user), &spec).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("workflow_name_taken")), "{v}");
    let (s, v) = d
        .post(
            "/workflows",
            Some(&user),
            &json!({"name": "x", "trigger": {"type": "schedule", "cron": "bad"},
        "steps": [{"type": "http", "name": "1st", "url": "{{ oops"}, {"type": "condition", "name": "c", "if": "1 +"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<_> =
        v["error"]["details"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap().to_string()).collect();
    assert_eq!(fields, ["trigger.cron", "steps[0].name"], "{v}");
    // Templates that do not compile are accepted with warnings naming them.
    let warned_spec = json!({"name": "warned", "trigger": {"type": "manual"},
        "steps": [{"type": "http", "name": "a", "url": "{{ oops"}, {"type": "condition", "name": "c", "if": "1 +"}]});
    let (s, v) = d.post("/workflows", Some(&user), &warned_spec).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let warned: Vec<_> =
        v["warnings"].as_array().unwrap().iter().map(|w| w["field"].as_str().unwrap().to_string()).collect();
    assert_eq!(warned, ["steps[0].url", "steps[1].if"], "{v}");
    let bob = token("bob", &["user"]);
    assert_eq!(d.get(&format!("/workflows/{wf}"), Some(&bob)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(d.post("/workflows", Some(&bob), &spec).await.0, StatusCode::CREATED, "names are unique per user");
    let mut renamed = spec.clone();
    renamed["is_active"] = json!(false);
    let body = serde_json::to_vec(&renamed).unwrap();
    let (s, _, v) = d
        .request(Method::PUT, &format!("/workflows/{wf}"), Some(&user), &[("content-type", "application/json")], body)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = d.post(&format!("/workflows/{wf}/runs"), Some(&user), &json!({})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("workflow_inactive")));
    let (_, dash) = d.get("/dashboard", Some(&user)).await;
    assert_eq!(dash["workflows"], 2, "{dash}");
    assert_eq!(dash["runs"], json!({"succeeded": 0, "failed": 0, "pending": 0, "cancelled": 0}));
}
