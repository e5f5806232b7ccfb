//! Outages and crashes under load: the store going away (circuit breaker, paused partitions,
//! nothing dead-lettered), the broker restarting (only 202 or 503, nothing acknowledged is
//! lost), and `kill -9` in the middle of processing 50,000 events.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{Value, json};

use conveyor_actors::log::{ConsumerControl, GroupListener, Record, TopicPartition};

use crate::devices::await_final_state;
use crate::harness::{Daemon, Opts, PrivateBroker, PrivatePostgres, eventually, metric_sum, real_only, token};

/// Sum of a metric's samples whose labels contain every one of `filters`.
fn metric_where(text: &str, name: &str, filters: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// The `seq` a device's resource holds now (`None`: not found, or no answer).
async fn device_seq(d: &Daemon, t: &str, id: &str) -> Option<u64> {
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
    if !real_only("real_postgres_outage_pauses_and_loses_nothing") {
        return;
    }
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

/// Records seen by [`read_topic`]'s consumer: (partition, offset, device, seq).
#[derive(Default)]
struct Collected {
    records: std::sync::Mutex<Vec<(i32, i64, String, u64)>>,
}

// `GroupListener` is an `#[async_trait]` trait; this crate does not depend on async-trait,
// so its async methods are written as the macro expands them.
impl GroupListener for Collected {
    fn assigned<'life0, 'async_trait>(
        &'life0 self,
        _partitions: Vec<TopicPartition>,
        _control: Arc<dyn ConsumerControl>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async {})
    }

    fn deliver(&self, record: Record) {
        let event: Value = serde_json::from_slice(&record.payload).unwrap_or_default();
        let device = event["device_id"].as_str().unwrap_or_default().to_string();
        let seq = event["payload"]["seq"].as_u64().unwrap_or(u64::MAX);
        if let Ok(mut records) = self.records.lock() {
            records.push((record.tp.partition, record.offset, device, seq));
        }
    }

    fn revoked<'life0, 'async_trait>(
        &'life0 self,
        _partitions: Vec<TopicPartition>,
    ) -> Pin<Box<dyn Future<Output = Vec<(TopicPartition, i64)>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async { Vec::new() })
    }
}

/// Every record of `topic` on the Kafka `brokers`, read by a consumer group of the test's
/// own from the beginning: (partition, offset, device, seq), sorted by partition and offset.
async fn read_topic(brokers: &str, group: &str, topic: &str) -> Vec<(i32, i64, String, u64)> {
    let mut config = conveyor_actors::config::Config::default();
    config.log.backend = conveyor_actors::config::LogBackendKind::Kafka;
    config.log.kafka.brokers = brokers.to_string();
    config.log.kafka.session_timeout_ms = 6000;
    let log = conveyor_actors::system::open_log(&config).unwrap();
    let end: i64 = log.end_offsets(topic).await.unwrap().iter().map(|(_, end)| end).sum();
    let collected = Arc::new(Collected::default());
    let member = log.subscribe(group, &[topic.to_string()], collected.clone()).await.unwrap();
    let count = || collected.records.lock().map(|r| r.len()).unwrap_or_default() as i64;
    let all = eventually(Duration::from_secs(90), || async { count() >= end }).await;
    member.stop().await.unwrap();
    assert!(all, "read {} of the {end} records of {topic}", count());
    let mut records = collected.records.lock().map(|r| r.clone()).unwrap_or_default();
    records.sort_by_key(|(p, o, _, _)| (*p, *o));
    records
}

/// One device's view of a broker restart: every answer, in order.
struct DeviceLog {
    id: String,
    /// (seq, when answered, status or transport error)
    answers: Vec<(usize, Instant, Result<StatusCode, String>)>,
    /// How long each answer took, in the same order.
    took: Vec<Duration>,
}

impl DeviceLog {
    fn last_accepted(&self) -> Option<usize> {
        self.answers.iter().rev().find(|(_, _, r)| r == &Ok(StatusCode::ACCEPTED)).map(|(seq, _, _)| *seq)
    }
}

/// Posts `/events` for one device, strictly one after the other (`seq` 0, 1, 2, …), until
/// `stop`; then once more until a 202, so the device's last event is one the log took.
async fn post_device(
    d: Arc<Daemon>,
    t: String,
    id: String,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> DeviceLog {
    let mut log = DeviceLog { id, answers: Vec::new(), took: Vec::new() };
    let mut seq = 0;
    let final_deadline = Duration::from_secs(90);
    let mut stopping_since: Option<Instant> = None;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if stopping && stopping_since.is_none() {
            stopping_since = Some(Instant::now());
        }
        if stopping_since.is_some_and(|since| since.elapsed() > final_deadline) {
            break;
        }
        let body = json!({"device_id": log.id, "payload": {"seq": seq}});
        let sent = Instant::now();
        let answer = d.try_post("/events", Some(&t), &body, Duration::from_secs(45)).await;
        log.took.push(sent.elapsed());
        let result = answer.map(|(status, body)| {
            if status == StatusCode::SERVICE_UNAVAILABLE && body["error"]["code"] != "unavailable" {
                // A 503 must be the log's refusal, as a JSON error.
                return StatusCode::INTERNAL_SERVER_ERROR;
            }
            status
        });
        let ok = result == Ok(StatusCode::ACCEPTED);
        log.answers.push((seq, Instant::now(), result));
        seq += 1;
        if ok {
            accepted.fetch_add(1, Ordering::SeqCst);
            if stopping {
                break;
            }
        } else {
            // A client honouring Retry-After, shortened: the load must go on.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    log
}

/// The Kafka-protocol broker is killed (`kill -9`) and restarted while events come in, one
/// device at a time in strict sequence. nisshi stores durably in PostgreSQL here (a private
/// cluster), so the restarted broker still holds every record it acknowledged. Conveyor
/// answers only 202 or 503 throughout, and every device ends at the last event it got a
/// 202 for — so no acknowledged event was lost, and none arrived out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_broker_restart_under_load_answers_only_202_or_503() {
    if !real_only("real_broker_restart_under_load_answers_only_202_or_503") {
        return;
    }
    const DEVICES: usize = 20;
    let pg = PrivatePostgres::start_new(&["nisshi"]).await;
    let mut broker = PrivateBroker::start_new(&pg.url("nisshi")).await;
    // A produce gives up after 3 s, well inside the 8 s outage: requests that arrive while
    // the broker is down must be answered 503, not held until it is back.
    let d = Arc::new(
        Daemon::start(
            Opts::new()
                .env("CONVEYOR_LOG__KAFKA__BROKERS", broker.brokers())
                .env("CONVEYOR_LOG__PRODUCE_TIMEOUT_MS", "3000"),
        )
        .await,
    );
    let t = token("gw", &["device", "user"]);

    let accepted = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..DEVICES)
        .map(|dev| {
            tokio::spawn(post_device(d.clone(), t.clone(), format!("brk-{dev}"), accepted.clone(), stop.clone()))
        })
        .collect();
    let loaded = eventually(Duration::from_secs(60), || async { accepted.load(Ordering::SeqCst) >= 200 }).await;
    assert!(loaded, "the load never got going: {} accepted", accepted.load(Ordering::SeqCst));

    broker.kill9();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    broker.start().await;
    let restarted_at = Instant::now();
    let before = accepted.load(Ordering::SeqCst);
    let resumed =
        eventually(Duration::from_secs(90), || async { accepted.load(Ordering::SeqCst) >= before + 10 * DEVICES })
            .await;
    stop.store(true, Ordering::SeqCst);
    let mut logs = Vec::new();
    for s in senders {
        logs.push(s.await.unwrap());
    }
    assert!(resumed, "ingest did not recover after the broker restarted; daemon log:\n{}", d.log_tail(30));

    let answers = || logs.iter().flat_map(|l| l.answers.iter().map(move |a| (&l.id, a)));
    let unexpected: Vec<_> = answers()
        .filter(|(_, (_, _, r))| !matches!(r, Ok(StatusCode::ACCEPTED | StatusCode::SERVICE_UNAVAILABLE)))
        .collect();
    let unavailable = answers().filter(|(_, (_, _, r))| r == &Ok(StatusCode::SERVICE_UNAVAILABLE)).count();
    let during = answers().filter(|(_, (_, at, _))| *at > killed_at && *at < restarted_at).count();
    let after_restart: Vec<f64> = answers()
        .filter(|(_, (_, at, r))| *at > restarted_at && r == &Ok(StatusCode::SERVICE_UNAVAILABLE))
        .map(|(_, (_, at, _))| at.duration_since(restarted_at).as_secs_f64())
        .collect();
    let mut slow_503: Vec<Duration> = logs
        .iter()
        .flat_map(|l| l.answers.iter().zip(&l.took))
        .filter(|((_, _, r), _)| r == &Ok(StatusCode::SERVICE_UNAVAILABLE))
        .map(|(_, took)| *took)
        .collect();
    slow_503.sort();
    eprintln!(
        "broker restart: 503s took {:?} (median) to {:?} (max)",
        slow_503.get(slow_503.len() / 2),
        slow_503.last()
    );
    let last_503_after_restart = after_restart.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "broker restart: {} answers, {} x 503, {} answered while the broker was down, {} x 503 after the \
         restart (the last {last_503_after_restart:.1}s after it)",
        answers().count(),
        unavailable,
        during,
        after_restart.len()
    );
    assert!(
        unexpected.is_empty(),
        "only 202 or 503 may be answered (and always answered); {} others, e.g. {:?}",
        unexpected.len(),
        unexpected.iter().take(5).collect::<Vec<_>>()
    );
    // Answered while the broker was certainly down (a second after the kill, before the
    // restart): nothing can have been acknowledged by the log then.
    let down: Vec<_> = answers()
        .filter(|(_, (_, at, _))| *at > killed_at + Duration::from_secs(1) && *at < restarted_at)
        .map(|(id, (seq, _, r))| (id, seq, r))
        .collect();
    assert!(!down.is_empty(), "no request was answered while the broker was down");
    let accepted_while_down: Vec<_> =
        down.iter().filter(|(_, _, r)| r != &&Ok(StatusCode::SERVICE_UNAVAILABLE)).collect();
    assert!(accepted_while_down.is_empty(), "answered while the broker was down, but not 503: {accepted_while_down:?}");
    for l in &logs {
        let recovered = l.answers.iter().any(|(_, at, r)| *at > restarted_at && r == &Ok(StatusCode::ACCEPTED));
        assert!(recovered, "{} got no 202 after the broker restarted", l.id);
    }
    // Each device's last answer is a 202 (post_device ends on one), so its final state
    // must be exactly that event: an earlier 202'd event arriving late would be a
    // reordering, a missing one a loss.
    let expected: HashMap<String, usize> =
        logs.iter().map(|l| (l.id.clone(), l.last_accepted().unwrap_or(usize::MAX))).collect();
    let laggards = await_final_state(&d, &t, &expected, Duration::from_secs(120)).await;
    let mut report = Vec::new();
    for id in laggards.iter().take(5) {
        report.push((id.clone(), expected.get(id).copied(), device_seq(&d, &t, id).await));
    }
    assert!(
        laggards.is_empty(),
        "{} devices do not hold their last 202'd event (id, expected, actual): {report:?}",
        laggards.len()
    );
    let text = d.metrics().await;
    assert_eq!(metric_sum(&text, "conveyor_dlq_records_written_total", ""), 0.0);

    // The log itself, read back from the restarted broker: every event that got a 202 is
    // there (a 503'd one may be too: it may have been written without an answer), and each
    // device's events are in the order they were sent.
    let records = read_topic(&broker.brokers(), &format!("{}-audit", d.names.group), &d.names.topic_in).await;
    let in_log: HashSet<(&str, u64)> = records.iter().map(|(_, _, dev, seq)| (dev.as_str(), *seq)).collect();
    let lost: Vec<_> = answers()
        .filter(|(_, (_, _, r))| r == &Ok(StatusCode::ACCEPTED))
        .filter(|(id, (seq, _, _))| !in_log.contains(&(id.as_str(), *seq as u64)))
        .map(|(id, (seq, _, _))| (id.clone(), *seq))
        .collect();
    assert!(
        lost.is_empty(),
        "{} events answered 202 are not in the log, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let mut last_seen: HashMap<&str, u64> = HashMap::new();
    let (mut reordered, mut duplicated) = (Vec::new(), 0usize);
    for (p, o, dev, seq) in &records {
        match last_seen.insert(dev.as_str(), *seq) {
            Some(prev) if prev > *seq => reordered.push((dev.clone(), *p, *o, prev, *seq)),
            Some(prev) if prev == *seq => duplicated += 1,
            _ => {}
        }
    }
    let landed_503 = answers()
        .filter(|(_, (_, _, r))| r == &Ok(StatusCode::SERVICE_UNAVAILABLE))
        .filter(|(id, (seq, _, _))| in_log.contains(&(id.as_str(), *seq as u64)))
        .count();
    eprintln!(
        "broker restart: {} records in the log, {landed_503} of the 503'd events were written anyway, \
         {duplicated} duplicated records",
        records.len()
    );
    assert!(reordered.is_empty(), "a device's events are out of order in the log: {reordered:?}");
    let ready = eventually(Duration::from_secs(30), || async { d.get("/ready", None).await.0 == StatusCode::OK }).await;
    assert!(ready, "/ready after the broker restart: {:?}", d.get("/ready", None).await);
}

/// Records the daemon's partition actors finished successfully.
async fn processed(d: &Daemon) -> usize {
    metric_where(&d.metrics().await, "conveyor_partition_records_processed_total", &["outcome=\"ok\""]) as usize
}

/// Sends rounds `rounds` of the 50k test: round `seq` carries event `seq` of each of
/// `devices` devices, as batches of 100 devices sent at once; the next round starts only
/// when every batch of this one got its 202, so each device's events enter the log in
/// order. Returns the first round that was not fully accepted (`rounds.end` if all were),
/// and why.
async fn send_rounds(
    d: Arc<Daemon>,
    t: String,
    devices: usize,
    rounds: std::ops::Range<usize>,
) -> (usize, Option<String>) {
    for seq in rounds.clone() {
        let mut batches = tokio::task::JoinSet::new();
        for part in 0..devices / 100 {
            let (d, t) = (d.clone(), t.clone());
            batches.spawn(async move {
                let events: Vec<Value> = (part * 100..(part + 1) * 100)
                    .map(|dev| json!({"device_id": format!("k9-{dev}"), "payload": {"seq": seq, "dev": dev}}))
                    .collect();
                d.try_post("/events/batch", Some(&t), &json!({"events": events}), Duration::from_secs(60)).await
            });
        }
        let mut failed = None;
        while let Some(answer) = batches.join_next().await {
            match answer.map_err(|e| e.to_string()).and_then(|a| a) {
                Ok((StatusCode::ACCEPTED, _)) => {}
                Ok((status, body)) => failed = Some(format!("{status}: {body}")),
                Err(err) => failed = Some(err),
            }
        }
        if failed.is_some() {
            return (seq, failed);
        }
    }
    (rounds.end, None)
}

/// 50,000 events over 1,000 devices through `/events/batch` (100 per request, 10 requests
/// at once); `kill -9` once 10,000 are processed — ingest and processing both in full
/// flow — then restart on the same log and store and send the rounds that were not fully
/// acknowledged. Every device reaches its last event and none ever moves backwards.
///
/// (Killing right after the last 202 does not land mid-processing: processing keeps up with
/// ingest, coalescing each device's queued events into one write, and is done within a
/// second of the last 202.)
///
/// Records whose processing finished after the last committed offset are delivered again
/// after the restart. Each one reaches the store as an upsert guarded by its source offset
/// (`… WHERE resources.last_offset < excluded.last_offset`): the stored row already carries
/// that offset or a later one, so the write changes nothing and is counted in
/// `conveyor_devices_stale_writes_total` — that is the number of redeliveries absorbed.
/// An *applied* duplicate would rewrite a device with an older event, which the sampled
/// devices would show as a step backwards; that count must be 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_processing_of_50k_events() {
    const DEVICES: usize = 1_000;
    const PER_DEVICE: usize = 50;
    const TOTAL: usize = DEVICES * PER_DEVICE;
    const KILL_AT: usize = 10_000;
    let started = Instant::now();
    let d = Arc::new(Daemon::start(Opts::new()).await);
    let t = token("gw", &["device", "user"]);

    let sender = tokio::spawn(send_rounds(d.clone(), t.clone(), DEVICES, 0..PER_DEVICE));
    // A floor for each sampled device, read (all at once: different devices do not race)
    // while the load runs; the kill follows as soon as KILL_AT events are processed.
    let floor_at = eventually(Duration::from_secs(120), || async { processed(&d).await >= KILL_AT / 2 }).await;
    assert!(floor_at, "fewer than {} events processed in 2 minutes: {}", KILL_AT / 2, processed(&d).await);
    let sample: Vec<String> = (0..DEVICES).step_by(20).map(|dev| format!("k9-{dev}")).collect();
    let mut reads = tokio::task::JoinSet::new();
    for id in sample.clone() {
        let (d, t) = (d.clone(), t.clone());
        reads.spawn(async move {
            let seq = device_seq(&d, &t, &id).await;
            (id, seq)
        });
    }
    let mut seen: HashMap<String, Option<u64>> = HashMap::new();
    while let Some(read) = reads.join_next().await {
        let (id, seq) = read.unwrap();
        seen.insert(id, seq);
    }
    let reached = eventually(Duration::from_secs(120), || async { processed(&d).await >= KILL_AT }).await;
    assert!(reached, "fewer than {KILL_AT} events processed in 2 minutes: {}", processed(&d).await);
    let processed_at_kill = processed(&d).await;
    d.send_kill9();
    let (resume_from, why) = sender.await.unwrap();
    let mut d = Arc::try_unwrap(d).unwrap_or_else(|_| panic!("the daemon is still shared"));
    d.kill9();
    eprintln!(
        "kill -9 after {:.1}s: {processed_at_kill} events processed, rounds 0..{resume_from} of {PER_DEVICE} fully \
         acknowledged ({why:?})",
        started.elapsed().as_secs_f64(),
    );
    assert!(processed_at_kill < TOTAL, "processing had finished before the kill; it must land mid-processing");

    let d = Arc::new(Daemon::start(Opts::restart_of(&mut d)).await);
    // The rounds not fully acknowledged before the kill are sent again (a client retrying
    // what got no 202); devices whose event of that round did land simply get it twice.
    let (done, why) = send_rounds(d.clone(), t.clone(), DEVICES, resume_from..PER_DEVICE).await;
    assert_eq!(done, PER_DEVICE, "after the restart every batch must be accepted: {why:?}");

    // Recovery: poll the sample (each must never go below what it showed before) and the
    // rest (until they hold their last event), one request at a time so that no read of
    // ours races another read of ours through the cache.
    let last = (PER_DEVICE - 1) as u64;
    let mut backwards = Vec::new();
    let mut pending: Vec<String> = (0..DEVICES).map(|dev| format!("k9-{dev}")).collect();
    let deadline = Instant::now() + Duration::from_secs(150);
    while !pending.is_empty() && Instant::now() < deadline {
        for id in &sample {
            let now = device_seq(&d, &t, id).await;
            let before = seen.get(id).copied().flatten();
            if let (Some(b), n) = (before, now)
                && n.is_none_or(|n| n < b)
            {
                backwards.push((id.clone(), b, n));
            }
            if now.is_some() {
                seen.insert(id.clone(), now);
            }
        }
        let mut still = Vec::new();
        for id in pending {
            if device_seq(&d, &t, &id).await != Some(last) {
                still.push(id);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(backwards.is_empty(), "devices moved backwards after kill -9 (id, before, after): {backwards:?}");
    assert!(
        pending.is_empty(),
        "{} devices never reached seq {last} after kill -9, e.g. {:?}",
        pending.len(),
        pending.first()
    );
    let text = d.metrics().await;
    let absorbed = metric_sum(&text, "conveyor_devices_stale_writes_total", "");
    let applied_duplicates = backwards.len();
    eprintln!(
        "kill -9 recovery done after {:.1}s: redeliveries absorbed by the offset guard (stale writes) = {absorbed}, \
         applied duplicates = {applied_duplicates}, records processed after restart = {}",
        started.elapsed().as_secs_f64(),
        metric_where(&text, "conveyor_partition_records_processed_total", &["outcome=\"ok\""])
    );
    assert_eq!(metric_sum(&text, "conveyor_dlq_records_written_total", ""), 0.0);
}

/// With processing stalled (the store is down), the backlog grows past `ingest.max_lag` and
/// ingest answers 503 `backlog` with `Retry-After` instead of queueing without bound; once the
/// store is back, every event answered 202 is processed.
#[tokio::test]
async fn real_backlog_past_max_lag_answers_503() {
    if !real_only("real_backlog_past_max_lag_answers_503") {
        return;
    }
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
