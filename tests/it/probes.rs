//! `/health`, `/ready`, `/metrics`, and readiness failing when a backend goes away.

use std::time::Duration;

use http::StatusCode;

use crate::harness::{Daemon, Opts, eventually, real_only, token};

#[tokio::test]
async fn health_ready_and_metrics_answer() {
    let d = Daemon::start(Opts::new()).await;
    let (status, body) = d.get("/health", None).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ok")));

    let (status, body) = d.get("/ready", None).await;
    assert_eq!(status, StatusCode::OK);
    for c in ["log", "store", "cache"] {
        assert_eq!(body["checks"][c], "ok", "{c} in {body}");
    }
    assert_eq!(d.partitions().await.len(), 4, "one process owns all 4 partitions: {body}");

    let (_, headers, _) = d.request(http::Method::GET, "/nope", None, &[("x-request-id", "req-42")], vec![]).await;
    assert_eq!(headers.get("x-request-id").and_then(|v| v.to_str().ok()), Some("req-42"));

    let text = d.metrics().await;
    for name in [
        "process_memory_usage_bytes",
        "process_cpu_time_seconds_total",
        "http_server_request_duration_seconds_bucket",
        "http_server_active_requests",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}");
    }
    assert!(text.contains("http_route=\"/ready\""), "requests are labelled by route template");
}

#[tokio::test]
async fn metrics_token_protects_metrics_when_configured() {
    let d = Daemon::start(Opts::new().env("CONVEYOR_TELEMETRY__METRICS_TOKEN", "scrape-me")).await;
    assert_eq!(d.get("/metrics", None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(d.get("/metrics", Some("wrong")).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(d.get("/metrics", Some("scrape-me")).await.0, StatusCode::OK);
}

/// A private redis-server, killed mid-test: `/ready` stays 200 but says `degraded` naming
/// the cache (every read still has the store), answers within its check bound, and reads
/// and processing go on.
#[tokio::test]
async fn real_readiness_degrades_when_the_cache_stops_and_reads_continue() {
    real_only("real_readiness_degrades_when_the_cache_stops_and_reads_continue");
    let port = free_port();
    let mut redis = std::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = Daemon::start(Opts::new().env("CONVEYOR_CACHE__URL", format!("redis://127.0.0.1:{port}"))).await;
    let t = token("device-1", &["device", "user"]);
    let (s, _) = d.post("/events", Some(&t), &serde_json::json!({"device_id": "r1", "payload": {"v": 1}})).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert!(
        eventually(Duration::from_secs(30), || async { d.get("/resource/r1", Some(&t)).await.0 == StatusCode::OK })
            .await
    );

    let _ = redis.kill();
    let _ = redis.wait();
    let degraded = eventually(Duration::from_secs(15), || async {
        let (s, body) = d.get("/ready", None).await;
        s == StatusCode::OK
            && body["status"] == "degraded"
            && body["checks"]["cache"].as_str().is_some_and(|c| c.starts_with("error"))
    })
    .await;
    assert!(degraded, "/ready must say degraded naming the cache: {}", d.get("/ready", None).await.1);
    let asked = std::time::Instant::now();
    let (_, body) = d.get("/ready", None).await;
    // Each check is bounded by 500 ms and they run concurrently; the margin is for a busy machine.
    assert!(asked.elapsed() < Duration::from_secs(2), "/ready took {:?} with the cache down", asked.elapsed());
    assert_eq!(body["checks"]["store"], "ok");
    assert_eq!(body["error"]["code"], "degraded");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("cache")));

    // Cache down: reads fall back to the store, and new events are still processed.
    let (s, body) = d.get("/resource/r1", Some(&t)).await;
    assert_eq!((s, body["value"]["v"].as_i64()), (StatusCode::OK, Some(1)));
    let (s, _) = d.post("/events", Some(&t), &serde_json::json!({"device_id": "r1", "payload": {"v": 2}})).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert!(
        eventually(Duration::from_secs(30), || async {
            d.get("/resource/r1", Some(&t)).await.1["value"]["v"].as_i64() == Some(2)
        })
        .await
    );
    let text = d.metrics().await;
    assert!(crate::harness::metric_sum(&text, "conveyor_cache_errors_total", "") > 0.0);
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}
