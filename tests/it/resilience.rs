//! The store going away under load: the circuit breaker opens, partitions pause, nothing is
//! dead-lettered; and the backlog bound that makes ingest answer 503. Shared load helpers
//! for `broker_restart` and `crash` live here too.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{Value, json};

use crate::devices::await_final_state;
use crate::harness::{Daemon, Opts, eventually, metric_sum, real_only, token};
use crate::private::PrivatePostgres;

/// Sum of a metric's samples whose labels contain every one of `filters`.
pub fn metric_where(text: &str, name: &str, filters: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// The `seq` a device's resource holds now (`None`: not found, or no answer).
pub async fn device_seq(d: &Daemon, t: &str, id: &str) -> Option<u64> {
    let (s, body) = d.get(&format!("/resource/{id}"), Some(t)).await;
    if s == StatusCode::OK { body["value"]["seq"].as_u64() } else { None }
}

/// What a batch load generator saw.
#[derive(Default)]
struct BatchLoad {
    /// Rounds sent; round `r` carried `seq = r` for every device, and each round was sent
    /// only after the previous one was answered.
    rounds: usize,
    /// When each round was answered.
    answered_at: Vec<Instant>,
    /// Every answer that was not a 202 (round, status or transport error, body).
    not_accepted: Vec<(usize, String)>,
}

/// Posts one `/events/batch` per round (one event per device, `seq` = round number, starting
/// at `first_round`), paced at `every`, until `stop` is set.
async fn post_rounds(
    d: Arc<Daemon>,
    t: String,
    prefix: &'static str,
    devices: usize,
    first_round: usize,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> BatchLoad {
    let mut load = BatchLoad::default();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round = first_round;
    while !stop.load(Ordering::SeqCst) {
        ticker.tick().await;
        let events: Vec<Value> = (0..devices)
            .map(|dev| json!({"device_id": format!("{prefix}-{dev}"), "payload": {"seq": round, "dev": dev}}))
            .collect();
        let answer = d.try_post("/events/batch", Some(&t), &json!({"events": events}), Duration::from_secs(40)).await;
        load.answered_at.push(Instant::now());
        match answer {
            Ok((StatusCode::ACCEPTED, _)) => {}
            Ok((status, body)) => load.not_accepted.push((round, format!("{status}: {body}"))),
            Err(err) => load.not_accepted.push((round, err)),
        }
        round += 1;
        load.rounds += 1;
    }
    load
}

/// The store's PostgreSQL (a private cluster) stops for 20 s while events keep coming:
/// ingest keeps answering 202 (the log is up), the store's breaker opens, partitions pause,
/// key tasks wait instead of spending attempts, and after PostgreSQL is back every device
/// reaches its last event with nothing dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_postgres_outage_pauses_and_loses_nothing() {
    real_only("real_postgres_outage_pauses_and_loses_nothing");
    const DEVICES: usize = 50;
    const OUTAGE: Duration = Duration::from_secs(20);
    let pg = PrivatePostgres::start_new(&["conveyor"]).await;
    let d = Arc::new(
        Daemon::start(
            Opts::new()
                .env("CONVEYOR_STORE__URL", pg.url("conveyor"))
                .env("CONVEYOR_BREAKER__COOL_DOWN_MS", "1000")
                .env("CONVEYOR_STORE__CONNECT_TIMEOUT_MS", "1000"),
        )
        .await,
    );
    let t = token("gw", &["device", "user"]);

    let stop = Arc::new(AtomicBool::new(false));
    let poster =
        tokio::spawn(post_rounds(d.clone(), t.clone(), "pgo", DEVICES, 0, Duration::from_millis(100), stop.clone()));
    // The load is flowing end to end before PostgreSQL goes away.
    let flowing = eventually(Duration::from_secs(60), || async {
        let text = d.metrics().await;
        metric_where(&text, "conveyor_partition_records_processed_total", &["outcome=\"ok\""]) >= (3 * DEVICES) as f64
    })
    .await;
    assert!(flowing, "events were not processed before the outage");

    let outage_started = Instant::now();
    pg.stop().await;
    let (mut saw_open, mut saw_store_error, mut ready_samples) = (false, false, Vec::new());
    while outage_started.elapsed() < OUTAGE {
        let (status, body) = d.get("/ready", None).await;
        // Half-open between probes is fine; open must show at some point.
        saw_open |= body["breakers"]["store"] == "open";
        let store_error = body["checks"]["store"].as_str().is_some_and(|c| c.starts_with("error"));
        saw_store_error |= store_error && status == StatusCode::SERVICE_UNAVAILABLE;
        if ready_samples.len() < 5 {
            ready_samples.push(body);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mid = d.metrics().await;
    pg.start().await;
    let outage_ended = Instant::now();
    stop.store(true, Ordering::SeqCst);
    let load = poster.await.unwrap();

    let during: usize = load.answered_at.iter().filter(|at| **at > outage_started && **at < outage_ended).count();
    assert!(during >= 20, "only {during} batches were answered during the outage; the load must cover it");
    assert!(
        load.not_accepted.is_empty(),
        "every POST must be 202 while only the store is down; {} were not, e.g. {:?}",
        load.not_accepted.len(),
        load.not_accepted.first()
    );
    assert!(saw_store_error, "/ready never failed on the store during the outage: {ready_samples:?}");
    assert!(saw_open, "/ready never showed the store breaker open during the outage: {ready_samples:?}");
    assert!(
        metric_where(&mid, "conveyor_breaker_transitions_total", &["downstream=\"store\"", "state=\"open\""]) >= 1.0,
        "the store breaker's opening is counted"
    );
    assert!(metric_sum(&mid, "conveyor_partition_pauses_total", "") >= 1.0, "an open store pauses partitions");
    assert!(
        metric_sum(&mid, "conveyor_handler_downstream_waits_total", "") >= 1.0,
        "failing keys wait for the breaker"
    );

    let last = load.rounds - 1;
    let expected: HashMap<String, usize> = (0..DEVICES).map(|dev| (format!("pgo-{dev}"), last)).collect();
    let laggards = await_final_state(&d, &t, &expected, Duration::from_secs(180)).await;
    assert!(
        laggards.is_empty(),
        "{} devices never reached seq {last} after the outage, e.g. {:?} at {:?}",
        laggards.len(),
        laggards.first(),
        device_seq(&d, &t, laggards.first().map(String::as_str).unwrap_or_default()).await
    );
    let text = d.metrics().await;
    assert_eq!(
        metric_sum(&text, "conveyor_dlq_records_written_total", ""),
        0.0,
        "an outage of the store must never dead-letter anything"
    );
    let recovered = eventually(Duration::from_secs(30), || async {
        let (status, body) = d.get("/ready", None).await;
        status == StatusCode::OK && body["breakers"]["store"] == "closed" && body["checks"]["store"] == "ok"
    })
    .await;
    assert!(recovered, "/ready after recovery: {:?}", d.get("/ready", None).await);
    eprintln!(
        "postgres outage: {} batches ({} during the outage), breaker opened {} times, {} partition pauses, \
         {} downstream waits, {} handler retries",
        load.rounds,
        during,
        metric_where(&text, "conveyor_breaker_transitions_total", &["downstream=\"store\"", "state=\"open\""]),
        metric_sum(&text, "conveyor_partition_pauses_total", ""),
        metric_sum(&text, "conveyor_handler_downstream_waits_total", ""),
        metric_sum(&text, "conveyor_handler_retries_total", ""),
    );
}

/// With processing stalled (the store is down), the backlog grows past `ingest.max_lag` and
/// ingest answers 503 `backlog` with `Retry-After` instead of queueing without bound; once the
/// store is back, every event answered 202 is processed.
#[tokio::test]
async fn real_backlog_past_max_lag_answers_503() {
    real_only("real_backlog_past_max_lag_answers_503");
    let pg = PrivatePostgres::start_new(&["conveyor"]).await;
    let d = Daemon::start(
        Opts::new()
            .env("CONVEYOR_STORE__URL", pg.url("conveyor"))
            .env("CONVEYOR_INGEST__MAX_LAG", "200")
            .env("CONVEYOR_BREAKER__COOL_DOWN_MS", "1000")
            .env("CONVEYOR_STORE__CONNECT_TIMEOUT_MS", "1000"),
    )
    .await;
    let t = token("gw", &["device", "user"]);
    pg.stop().await;
    let mut last_accepted: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut refused = None;
    for round in 0..200u64 {
        let events: Vec<serde_json::Value> =
            (0..20).map(|i| serde_json::json!({"device_id": format!("bl-{i}"), "payload": {"seq": round}})).collect();
        let bytes = serde_json::to_vec(&serde_json::json!({"events": events})).unwrap();
        let (s, headers, body) = d.request(http::Method::POST, "/events/batch", Some(&t), &[], bytes).await;
        if s == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some((headers, body));
            break;
        }
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        for i in 0..20 {
            last_accepted.insert(format!("bl-{i}"), round);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (headers, body) = refused.expect("the backlog must reach ingest.max_lag while the store is down");
    assert_eq!(body["error"]["code"], "backlog", "{body}");
    assert!(headers.get("retry-after").is_some());
    pg.start().await;
    let mut pending: Vec<(String, u64)> = last_accepted.into_iter().collect();
    let recovered = eventually(Duration::from_secs(120), || {
        let (d, t) = (&d, &t);
        let check: Vec<(String, u64)> = pending.clone();
        async move {
            for (id, seq) in check {
                let (s, body) = d.get(&format!("/resource/{id}"), Some(t)).await;
                if s != StatusCode::OK || body["value"]["seq"].as_u64() != Some(seq) {
                    return false;
                }
            }
            true
        }
    })
    .await;
    pending.clear();
    assert!(recovered, "every 202'd event must be processed once the store is back");
    // The lag figure follows commits (every commit interval) and is refreshed every second.
    let reopened = eventually(Duration::from_secs(10), || async {
        d.post("/events", Some(&t), &serde_json::json!({"device_id": "bl-after", "payload": {}})).await.0
            == StatusCode::ACCEPTED
    })
    .await;
    assert!(reopened, "ingest reopens once the backlog drains");
}
