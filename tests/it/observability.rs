//! What operators see: counters that match a known workload exactly, one trace id across
//! the log, and the status page in headless Chromium (with a screenshot).

use std::path::PathBuf;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::browser::chromium;
use crate::devices::inject;
use crate::harness::{Daemon, Opts, eventually, metric_sum, token};

fn processed(text: &str, topic: &str, outcome: &str) -> f64 {
    let filter = format!("topic=\"{topic}\"");
    text.lines()
        .filter(|l| l.starts_with("conveyor_partition_records_processed_total{"))
        .filter(|l| l.contains(&filter) && l.contains(&format!("outcome=\"{outcome}\"")))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test]
async fn scraped_counters_match_a_known_workload() {
    let mut d = Daemon::start(Opts::new()).await;
    inject(&mut d, b"{not json").await; // one poison record (restarts an embedded daemon)
    let topic = d.names.topic_in.clone();
    let t = token("gw", &["device", "user"]);
    for i in 0..20 {
        let body = json!({"device_id": format!("obs-{}", i % 5), "payload": {"seq": i}});
        assert_eq!(d.post("/events", Some(&t), &body).await.0, StatusCode::ACCEPTED);
    }
    let bad = d.post("/events", Some(&t), &json!({"device_id": "", "payload": {}})).await.0;
    assert_eq!(bad, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _, _) = d.request(Method::POST, "/events", Some(&t), &[], b"{oops".to_vec()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let done = eventually(Duration::from_secs(60), || async {
        let text = d.metrics().await;
        processed(&text, &topic, "ok") >= 20.0 && processed(&text, &topic, "dead_lettered") >= 1.0
    })
    .await;
    assert!(done, "workload not processed:\n{}", d.metrics().await);
    for i in 0..5 {
        assert_eq!(d.get(&format!("/resource/obs-{i}"), Some(&t)).await.0, StatusCode::OK);
    }
    for i in 0..3 {
        assert_eq!(d.get(&format!("/resource/none-{i}"), Some(&t)).await.0, StatusCode::NOT_FOUND);
    }

    // The lag gauge is refreshed every second and commits follow processing on their own
    // interval: wait for a scrape in which every input partition shows 0, and check that
    // same scrape (a later one may catch a commit interval that began mid-processing).
    let input = format!("topic=\"{topic}\"");
    let lag_series =
        |text: &str| text.lines().filter(|l| l.starts_with("conveyor_partition_lag{") && l.contains(&input)).count();
    let last = std::sync::Mutex::new(String::new());
    eventually(Duration::from_secs(10), || async {
        let text = d.metrics().await;
        let settled = lag_series(&text) == 4 && metric_sum(&text, "conveyor_partition_lag", &input) == 0.0;
        *last.lock().unwrap() = text;
        settled
    })
    .await;
    let text = last.into_inner().unwrap();
    assert_eq!(metric_sum(&text, "conveyor_ingest_accepted_total", ""), 20.0);
    assert_eq!(metric_sum(&text, "conveyor_ingest_rejected_total", "reason=\"validation_failed\""), 1.0);
    assert_eq!(metric_sum(&text, "conveyor_ingest_rejected_total", "reason=\"malformed_json\""), 1.0);
    assert_eq!(processed(&text, &topic, "ok"), 20.0, "every accepted event processed once");
    assert_eq!(processed(&text, &topic, "dead_lettered"), 1.0);
    assert_eq!(metric_sum(&text, "conveyor_dlq_records_written_total", "error_class=\"permanent\""), 1.0);
    // Written through on update: each device's first read is a hit; unknown ids miss.
    assert_eq!(metric_sum(&text, "conveyor_cache_hits_total", "operation=\"resource\""), 5.0);
    assert_eq!(metric_sum(&text, "conveyor_cache_misses_total", "operation=\"resource\""), 3.0);
    // Per partition: nothing left behind, nothing in flight; batches and queries were timed;
    // every breaker closed (0).
    let series = |name: &str| text.lines().filter(|l| l.starts_with(name)).count();
    assert_eq!(lag_series(&text), 4, "{text}");
    assert_eq!(metric_sum(&text, "conveyor_partition_lag", &input), 0.0, "lag never reached 0 in 10 s: {text}");
    assert_eq!(metric_sum(&text, "conveyor_partition_in_flight", &input), 0.0, "{text}");
    assert!(metric_sum(&text, "conveyor_partition_processing_duration_seconds_count", &input) >= 1.0, "{text}");
    assert!(metric_sum(&text, "conveyor_store_query_duration_seconds_count", "operation=\"upsert_resources\"") >= 1.0);
    assert_eq!(series("conveyor_breaker_state{"), 3, "store, cache, log: {text}");
    assert_eq!(metric_sum(&text, "conveyor_breaker_state", ""), 0.0);
    let posted: f64 = text
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
        .filter(|l| l.contains("http_route=\"/events\"") && l.contains("http_response_status_class=\"2xx\""))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum();
    assert_eq!(posted, 20.0, "POST /events answered 2xx, by route template");
    // What each 202 waited for: one acknowledged append per accepted event, none failed.
    let appends = |outcome: &str| {
        text.lines()
            .filter(|l| l.starts_with("conveyor_log_append_duration_seconds_count{") && l.contains(&input))
            .filter(|l| l.contains(&format!("outcome=\"{outcome}\"")))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum::<f64>()
    };
    assert_eq!((appends("ok"), appends("error")), (20.0, 0.0), "{text}");
    // Labels come from bounded sets: no device id anywhere in the exposition.
    assert!(!text.contains("obs-0") && !text.contains("none-0"), "a device id leaked into a label");
}

#[tokio::test]
async fn one_trace_id_crosses_the_log() {
    let opts =
        Opts::new().env("CONVEYOR_TELEMETRY__LOG_FILTER", "info,conveyor_http=debug,conveyor_actors::consumer=debug");
    let d = Daemon::start(opts).await;
    let t = token("gw", &["device"]);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = serde_json::to_vec(&json!({"device_id": "traced", "payload": {"x": 1}})).unwrap_or_default();
    let headers =
        [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), ("x-request-id", "req-trace-1")];
    let (s, _, _) = d.request(Method::POST, "/events", Some(&t), &headers, body).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let lines = |d: &Daemon| -> Vec<Value> {
        std::fs::read_to_string(d.data_dir.join("daemon.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    };
    let seen = eventually(Duration::from_secs(30), || async {
        lines(&d).iter().any(|l| {
            l["target"].as_str().is_some_and(|t| t.starts_with("conveyor_actors::consumer")) && l["trace_id"] == trace
        })
    })
    .await;
    assert!(seen, "the consumer never logged trace {trace}:\n{}", d.log_tail(20));
    let all = lines(&d);
    let http = all
        .iter()
        .find(|l| l["target"].as_str().is_some_and(|t| t.starts_with("conveyor_http")) && l["trace_id"] == trace)
        .unwrap_or_else(|| panic!("no HTTP log line with the trace id:\n{}", d.log_tail(20)));
    assert_eq!(http["request_id"], "req-trace-1");
    for field in ["timestamp", "level", "target"] {
        assert!(http[field].is_string(), "log lines carry {field}: {http}");
    }
    assert!(!all.iter().any(|l| l.to_string().contains("\"x\":1")), "payloads are never logged");

    // Secrets neither: a token, a password, a webhook secret pass through and leave no trace.
    let password = "pw-marker-7f3a9c";
    let reg = json!({"email": "secret-log@example.com", "password": password, "name": "S", "birthday": "x"});
    let (s, b) = d.post("/auth/registration", None, &reg).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let access = b["access_token"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        d.post("/auth/login", None, &json!({"email": "secret-log@example.com", "password": "wrong-pass"})).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (s, ep) = d.post("/webhooks/endpoints", Some(&access), &json!({"url": "https://example.com/hook"})).await;
    assert_eq!(s, StatusCode::CREATED, "{ep}");
    let (_, secret) =
        d.get(&format!("/webhooks/endpoints/{}/secret", ep["id"].as_str().unwrap_or_default()), Some(&access)).await;
    let whsec = secret["secret"].as_str().unwrap_or_default().to_string();
    assert!(whsec.starts_with("whsec_"), "{secret}");
    assert_eq!(d.get("/auth/info", Some(&access)).await.0, StatusCode::OK);
    let text = std::fs::read_to_string(d.data_dir.join("daemon.log")).unwrap_or_default();
    for (what, secret) in [
        ("the device token", t.as_str()),
        ("an access token", &access),
        ("a password", password),
        ("a wrong password", "wrong-pass"),
        ("a webhook secret", &whsec),
        ("the JWT secret", crate::harness::SECRET),
    ] {
        assert!(!text.contains(secret), "{what} appears in the log");
    }
}

#[tokio::test]
async fn status_page_shows_the_running_system_in_headless_chromium() {
    let mut d = Daemon::start(Opts::new()).await;
    inject(&mut d, b"{not json").await; // one dead letter to count
    let device = token("gw", &["device"]);
    for i in 0..3 {
        let body = json!({"device_id": format!("st-{i}"), "payload": {"n": i}});
        assert_eq!(d.post("/events", Some(&device), &body).await.0, StatusCode::ACCEPTED);
    }
    assert_eq!(d.get("/admin/status.json", Some(&device)).await.0, StatusCode::FORBIDDEN);
    let admin = token("ops", &["admin"]);
    // On Kafka every group's assignment arrives on its own schedule.
    let assigned = eventually(Duration::from_secs(60), || async {
        d.get("/admin/status.json", Some(&admin)).await.1["partitions"].as_array().map(Vec::len) == Some(24)
    })
    .await;
    let indexed = eventually(Duration::from_secs(60), || async {
        d.get("/admin/status.json", Some(&admin)).await.1["dead_letters"]["total"] == 1
    })
    .await;
    let (s, status) = d.get("/admin/status.json", Some(&admin)).await;
    assert_eq!(s, StatusCode::OK, "{status}");
    assert!(assigned && indexed, "{status}");
    let children = status["supervision"][0]["children"].as_array().cloned().unwrap_or_default();
    let of_kind = |kind: &str| children.iter().filter(|c| c["kind"] == kind).count();
    assert_eq!(of_kind("ConsumerSupervisor"), 6, "devices, loyalty, identity saga, webhooks, workflows, dlq index");
    for kind in ["LedgerSupervisor", "OutboxRelay", "DispatcherActor", "RunSupervisor"] {
        assert_eq!(of_kind(kind), 1, "{kind} hangs under the root: {status}");
    }
    assert_eq!(status["partitions"].as_array().map(Vec::len), Some(24), "6 groups x 4 partitions");

    let url = format!("{}/admin/status#token={admin}", d.base);
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots/admin-status.png");
    std::fs::create_dir_all(shot.parent().unwrap_or(&shot)).unwrap_or_default();
    let anonymous = format!("{}/admin/status", d.base);
    let (dom, _, locked) = tokio::task::spawn_blocking({
        let shot = shot.display().to_string();
        move || (chromium(&["dom", &url]), chromium(&["screenshot", &url, &shot]), chromium(&["dom", &anonymous]))
    })
    .await
    .unwrap_or_default();
    // Without an admin token the page is an empty shell asking for one.
    assert!(locked.contains("An admin token is required.") && !locked.contains("data-testid=\"partition-row\""));
    assert!(dom.contains("<title>Conveyor console</title>"));
    assert_eq!(dom.matches("data-testid=\"partition-row\"").count(), 24, "partition rows in:\n{dom}");
    assert_eq!(dom.matches("data-kind=\"ConsumerSupervisor\"").count(), 6);
    assert!(dom.contains("data-kind=\"RunSupervisor\""));
    assert!(dom.contains("data-kind=\"LedgerSupervisor\"") && dom.contains("data-kind=\"OutboxRelay\""));
    assert!(dom.contains("data-kind=\"DispatcherActor\""));
    for breaker in ["store", "cache", "log"] {
        assert!(dom.contains(&format!("data-testid=\"breaker-{breaker}\"")), "breaker {breaker}");
    }
    assert!(dom.contains("data-testid=\"dlq-total\">1<"), "dead letters: 1");
    let lags = dom.split("data-testid=\"partition-lag\">").skip(1).filter_map(|rest| rest.split('<').next());
    let numeric = lags.filter(|v| v.parse::<u64>().is_ok()).count();
    assert_eq!(numeric, 24, "every partition shows its lag as a number");
    assert_eq!(dom.matches("data-testid=\"partition-in-flight\">").count(), 24);
    let states = dom.matches("data-testid=\"actor-state\">running<").count();
    assert!(states >= 24 + 6 + 5, "root, groups, partitions and the other supervisors are running: {states}");
    assert!(dom.contains("data-testid=\"actor-restarts\">restarts: 0<"));
    assert!(dom.contains("data-testid=\"outbox-backlog\""));
    assert!(dom.contains("data-testid=\"readiness\">ready<"), "the page says the daemon is ready");
    assert!(dom.contains("updated "), "the page refreshed from /admin/status.json");
    let png = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(png > 10_000, "screenshot {} is {png} bytes", shot.display());
    eprintln!("status page screenshot: {}", shot.display());
}
