//! Retention (issue 15): with retention shortened to seconds, a delivered notification (its
//! delivery and attempts) and a finished workflow run disappear from the API on their own,
//! `conveyor.retention.purged` counts them per table, and the notification id may be posted
//! again once its dedup window and its record are gone.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Daemon, Opts, eventually, token};
use crate::sink::Sink;

const BASIC: &str = "Basic YWRtaW46YWRtaW4=";

async fn notify(d: &Daemon, body: &Value) -> StatusCode {
    let bytes = serde_json::to_vec(body).unwrap();
    d.request(Method::POST, "/notifications", None, &[("authorization", BASIC)], bytes).await.0
}

fn purged(metrics: &str, table: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("conveyor_retention_purged") && l.contains(&format!("table=\"{table}\"")))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test]
async fn finished_deliveries_notifications_and_runs_are_purged_and_counted() {
    let d = Daemon::start(
        Opts::new()
            .env("CONVEYOR_RETENTION__INTERVAL_MS", "300")
            .env("CONVEYOR_RETENTION__BATCH_SIZE", "2")
            .env("CONVEYOR_RETENTION__DELIVERIES_SECS", "5")
            .env("CONVEYOR_RETENTION__NOTIFICATIONS_SECS", "5")
            .env("CONVEYOR_RETENTION__FINISHED_RUNS_SECS", "5")
            .env("CONVEYOR_WEBHOOKS__DEDUP_WINDOW_SECS", "5")
            .env("CONVEYOR_WORKFLOWS__ALLOW_LOOPBACK", "true")
            .env("CONVEYOR_WORKFLOWS__POLL_INTERVAL_MS", "200"),
    )
    .await;
    let sink = Sink::start().await;
    let user = token("alice", &["user"]);
    let admin = token("root", &["admin"]);
    let (s, v) = d.post("/webhooks/endpoints", Some(&user), &json!({"url": sink.url("/hook")})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // More notifications than a batch, so the purge has to loop.
    let ids: Vec<String> = (0..5).map(|i| format!("evt_retention_{i}")).collect();
    for id in &ids {
        let n = json!({"id": id, "type": "retention.test", "source": "it", "specversion": "1.0", "data": {}});
        assert_eq!(notify(&d, &n).await, StatusCode::ACCEPTED);
    }
    // A repeat within the window is still a duplicate.
    let repeat = json!({"id": ids[0], "type": "retention.test", "source": "it", "specversion": "1.0", "data": {}});
    assert_eq!(notify(&d, &repeat).await, StatusCode::CONFLICT);
    let delivered = eventually(Duration::from_secs(30), || async { sink.hits("/hook").len() >= ids.len() }).await;
    assert!(delivered, "{}", d.log_tail(20));
    let (s, records) = d.get(&format!("/notifications/{}", ids[0]), Some(&user)).await;
    assert_eq!(s, StatusCode::OK, "the delivery is kept until it is past retention: {records}");

    let wf = {
        let spec = json!({"name": "short-lived", "trigger": {"type": "manual"},
            "steps": [{"type": "http", "name": "call", "url": sink.url("/run")}]});
        let (s, v) = d.post("/workflows", Some(&user), &spec).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_str().unwrap().to_string()
    };
    let (s, v) = d.post(&format!("/workflows/{wf}/runs"), Some(&user), &json!({"input": {}})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let run = v["id"].as_str().unwrap().to_string();
    let run_path = format!("/workflows/{wf}/runs/{run}");
    let finished = eventually(Duration::from_secs(20), || async {
        d.get(&run_path, Some(&user)).await.1["status"] == "succeeded"
    })
    .await;
    assert!(finished, "{}", d.log_tail(20));

    let gone = eventually(Duration::from_secs(30), || async {
        let mut all = true;
        for id in &ids {
            // An admin sees a notification whose deliveries are gone: 404 means the row itself went.
            all &= d.get(&format!("/notifications/{id}"), Some(&admin)).await.0 == StatusCode::NOT_FOUND;
        }
        all && d.get(&run_path, Some(&user)).await.0 == StatusCode::NOT_FOUND
    })
    .await;
    assert!(gone, "notifications and the run were purged; log:\n{}", d.log_tail(30));
    let counted = eventually(Duration::from_secs(10), || async {
        let m = d.metrics().await;
        purged(&m, "webhook_deliveries") >= 5.0
            && purged(&m, "webhook_attempts") >= 5.0
            && purged(&m, "notifications") >= 5.0
            && purged(&m, "workflow_runs") >= 1.0
            && purged(&m, "workflow_run_steps") >= 1.0
    })
    .await;
    assert!(counted, "{}", d.metrics().await);
    // The workflow itself and the endpoint are not finished rows: they stay.
    assert_eq!(d.get(&format!("/workflows/{wf}"), Some(&user)).await.0, StatusCode::OK);
    // Past its window and purged, the id is new again.
    assert_eq!(notify(&d, &repeat).await, StatusCode::ACCEPTED);
}
