//! Parked keys (`processing.on_dead_letter = "park"`): a poison record of one device holds
//! that device's later events (its row does not move) while other devices flow; replaying
//! the fixed record applies it and then the held events in order, skipping releases them
//! without it, and a restart in the middle (graceful or `kill -9`) loses and reorders nothing.

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};

use conveyor_actors::log::{Header, OutgoingRecord};
use conveyor_devices::DeviceStore;

use crate::devices::{raw_log, resume};
use crate::harness::{Daemon, Opts, command, eventually, metric_sum, token};
use crate::stuck_keys::fail_key;

const WITHIN: Duration = Duration::from_secs(60);

/// Parking on the device topic (by its logical name), fault hooks on, quick dead letters.
pub(crate) fn opts() -> Opts {
    Opts::new()
        .env("CONVEYOR_PROCESSING__TOPICS__EVENTS_INPUT__ON_DEAD_LETTER", "park")
        .env("CONVEYOR_FAULTS__ALLOW_PANIC_INJECTION", "true")
        .env("CONVEYOR_RETRY__MAX_ATTEMPTS", "2")
}

pub(crate) struct Ctx {
    pub admin: String,
    pub device: String,
    pub d1: String,
    pub d2: String,
}

pub(crate) fn ctx(d: &Daemon) -> Ctx {
    Ctx {
        admin: token("ops", &["admin"]),
        device: token("gw", &["device"]),
        d1: format!("{}-d1", d.names.id),
        d2: format!("{}-d2", d.names.id),
    }
}

pub(crate) async fn post(d: &Daemon, c: &Ctx, device: &str, seqs: std::ops::RangeInclusive<u64>) {
    for seq in seqs {
        let (s, body) =
            d.post("/events", Some(&c.device), &json!({"device_id": device, "payload": {"seq": seq}})).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    }
}

async fn seq_of(d: &Daemon, c: &Ctx, device: &str) -> Option<u64> {
    let (s, body) = d.get(&format!("/resource/{device}"), Some(&c.device)).await;
    if s == StatusCode::OK { body["value"]["seq"].as_u64() } else { None }
}

pub(crate) async fn reaches(d: &Daemon, c: &Ctx, device: &str, seq: u64) -> bool {
    eventually(WITHIN, || async { seq_of(d, c, device).await == Some(seq) }).await
}

async fn parked_list(d: &Daemon, c: &Ctx) -> Vec<Value> {
    let (s, body) = d.get(&format!("/admin/parked-keys?topic={}", d.names.topic_in), Some(&c.admin)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body["items"].as_array().cloned().unwrap_or_default()
}

pub(crate) async fn parked_entry(d: &Daemon, c: &Ctx, key: &str) -> Option<Value> {
    parked_list(d, c).await.into_iter().find(|e| e["key"] == key)
}

/// Waits until `key` is listed with its dead letter indexed and `held` records behind it.
pub(crate) async fn parked_with(d: &Daemon, c: &Ctx, key: &str, held: u64) -> Value {
    let listed = eventually(WITHIN, || async {
        parked_entry(d, c, key).await.is_some_and(|e| !e["dead_letter"].is_null() && e["parked_records"] == held)
    })
    .await;
    let entry = parked_entry(d, c, key).await.unwrap_or_default();
    assert!(listed, "{key} parked with {held} held records and its dead letter: {entry}\n{}", d.log_tail(30));
    entry
}

/// d1's first event applied, then its second dead-lettered (the fault hook): d1 is parked.
pub(crate) async fn park_d1(d: &Daemon, c: &Ctx) -> Value {
    post(d, c, &c.d1, 0..=0).await;
    assert!(reaches(d, c, &c.d1, 0).await, "d1's first event applies");
    fail_key(d, &c.admin, &c.d1, false).await;
    post(d, c, &c.d1, 1..=1).await;
    parked_with(d, c, &c.d1, 0).await
}

/// The row's source offset, read from the store.
async fn last_offset(d: &Daemon, device: &str) -> i64 {
    let store = d.open_store().await;
    DeviceStore::new(store).get_resource(device).await.unwrap().map(|r| r.last_offset).unwrap_or(-1)
}

/// Parked keys summed over the status page's rows for this test's input topic.
async fn parked_in_status(d: &Daemon, c: &Ctx) -> u64 {
    let (s, status) = d.get("/admin/status.json", Some(&c.admin)).await;
    assert_eq!(s, StatusCode::OK, "{status}");
    let rows = status["partitions"].as_array().cloned().unwrap_or_default();
    rows.iter().filter(|r| r["topic"] == d.names.topic_in.as_str()).filter_map(|r| r["parked_keys"].as_u64()).sum()
}

fn gauge(d: &Daemon, text: &str) -> f64 {
    metric_sum(text, "conveyor_partition_keys_parked", &format!("topic=\"{}\"", d.names.topic_in))
}

#[tokio::test]
async fn a_parked_key_holds_its_events_until_its_dead_letter_is_replayed() {
    // One record per handler call: held events apply one by one, so an order among them
    // that is wrong shows as stale writes.
    let d = Daemon::start(opts().env("CONVEYOR_PROCESSING__MAX_COALESCE", "1")).await;
    let c = ctx(&d);
    let entry = park_d1(&d, &c).await;
    assert_eq!(entry["topic"], d.names.topic_in.as_str());
    assert_eq!(entry["handler"], "devices");
    assert_eq!(entry["dead_letter"]["error_class"], "retryable", "{entry}");
    assert!(entry["dead_letter"]["error"].as_str().is_some_and(|e| e.contains("fault injected")), "{entry}");
    let origin = entry["origin_offset"].as_i64().unwrap();

    // d1's later events are held (its row does not move); d2 flows.
    post(&d, &c, &c.d1, 2..=4).await;
    post(&d, &c, &c.d2, 1..=3).await;
    assert!(reaches(&d, &c, &c.d2, 3).await, "another device is not held up");
    parked_with(&d, &c, &c.d1, 3).await;
    assert_eq!(seq_of(&d, &c, &c.d1).await, Some(0), "the parked device's row did not move");
    assert_eq!(gauge(&d, &d.metrics().await), 1.0);
    let counted = eventually(WITHIN, || async { parked_in_status(&d, &c).await == 1 }).await;
    assert!(counted, "the status page's partition rows count the parked key");
    let body = json!({"topic": d.names.topic_in, "key": c.d2});
    let (s, answer) = d.post("/admin/parked-keys/replay", Some(&c.admin), &body).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "d2 is not parked: {answer}");
    assert_eq!(d.get("/admin/parked-keys", Some(&c.device)).await.0, StatusCode::FORBIDDEN);

    // Fixed and replayed: the dead letter applies first, then the held events in order.
    fail_key(&d, &c.admin, &c.d1, true).await;
    let body = json!({"topic": d.names.topic_in, "key": c.d1});
    let (s, replayed) = d.post("/admin/parked-keys/replay", Some(&c.admin), &body).await;
    assert_eq!((s, replayed["outcome"].as_str()), (StatusCode::OK, Some("replayed")), "{replayed}");
    let replay_offset = replayed["offset"].as_i64().unwrap();
    assert!(reaches(&d, &c, &c.d1, 4).await, "d1 ends at its last held event\n{}", d.log_tail(30));
    let gone = eventually(WITHIN, || async { parked_entry(&d, &c, &c.d1).await.is_none() }).await;
    assert!(gone, "d1 is no longer parked");
    let offset = last_offset(&d, &c.d1).await;
    assert!(
        origin < offset && offset < replay_offset,
        "the row carries the last held event's own offset ({origin} < {offset} < {replay_offset})"
    );
    let text = d.metrics().await;
    let topic = format!("topic=\"{}\"", d.names.topic_in);
    assert_eq!(gauge(&d, &text), 0.0);
    // The store's release mark comes before the actor's own: the row may lag a moment.
    let uncounted = eventually(WITHIN, || async { parked_in_status(&d, &c).await == 0 }).await;
    assert!(uncounted, "released: no partition row counts it");
    assert_eq!(metric_sum(&text, "conveyor_partition_records_parked_total", &topic), 3.0, "{text}");
    assert_eq!(metric_sum(&text, "conveyor_partition_records_released_total", &topic), 3.0);
    // The next event of d1 flows as usual.
    post(&d, &c, &c.d1, 5..=5).await;
    assert!(reaches(&d, &c, &c.d1, 5).await);
    assert_eq!(stale_writes(&d).await, 0.0, "every write applied in order");
}

/// Device writes the offset guard refused (`conveyor.devices.stale_writes`). The final row
/// alone cannot show the order held events applied in: applied out of order, the row still
/// ends at the last one, but each earlier one after it is refused here. (Held events that are
/// coalesced into one call write once, so there this shows only that the dead letter went
/// first.)
async fn stale_writes(d: &Daemon) -> f64 {
    metric_sum(&d.metrics().await, "conveyor_devices_stale_writes_total", "")
}

#[tokio::test]
async fn skipping_a_parked_key_releases_its_events_without_the_dead_letter() {
    let d = Daemon::start(opts()).await;
    let c = ctx(&d);
    park_d1(&d, &c).await;
    post(&d, &c, &c.d1, 2..=3).await;
    parked_with(&d, &c, &c.d1, 2).await;
    fail_key(&d, &c.admin, &c.d1, true).await;
    // Through the CLI, which calls the running daemon's admin API.
    let cli = |args: &[&str]| {
        let out = command(&Opts::new(), &d.data_dir).args(["dlq", "--url", &d.base]).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let listed = cli(&["parked", "--topic", &d.names.topic_in]);
    assert_eq!(listed["items"][0]["key"], c.d1.as_str(), "{listed}");
    let skipped = cli(&["skip", &d.names.topic_in, &c.d1]);
    assert_eq!(skipped["key"], c.d1.as_str(), "{skipped}");
    let body = json!({"topic": d.names.topic_in, "key": c.d1});
    assert!(reaches(&d, &c, &c.d1, 3).await, "d1 ends at its last held event\n{}", d.log_tail(30));
    let gone = eventually(WITHIN, || async { parked_entry(&d, &c, &c.d1).await.is_none() }).await;
    assert!(gone, "d1 is no longer parked");
    let (s, again) = d.post("/admin/parked-keys/skip", Some(&c.admin), &body).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{again}");
    // The poison event was never applied, and its dead letter is still there to inspect.
    let (_, dlq) = d.get(&format!("/admin/dead-letters?source_topic={}", d.names.topic_in), Some(&c.admin)).await;
    let items = dlq["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "{dlq}");
    assert_eq!(items[0]["key"], c.d1.as_str());
    assert_eq!(items[0]["replay_count"], 0);
    let text = d.metrics().await;
    let topic = format!("topic=\"{}\"", d.names.topic_in);
    assert_eq!(metric_sum(&text, "conveyor_partition_records_released_total", &topic), 2.0, "{text}");
    assert_eq!(stale_writes(&d).await, 0.0, "the held events applied in order");
}

#[tokio::test]
async fn parked_keys_survive_restarts_and_release_in_order() {
    let mut d = Daemon::start(opts()).await;
    let c = ctx(&d);
    let origin = park_d1(&d, &c).await["origin_offset"].as_i64().unwrap();
    post(&d, &c, &c.d1, 2..=3).await;
    parked_with(&d, &c, &c.d1, 2).await;

    // Graceful: the key and its held events are in the store.
    assert!(d.terminate(Duration::from_secs(20)).await.success(), "{}", d.log_tail(20));
    let mut d = Daemon::start(Opts::restart_of(&mut d)).await;
    assert_eq!(parked_entry(&d, &c, &c.d1).await.map(|e| e["parked_records"].clone()), Some(json!(2)));
    post(&d, &c, &c.d1, 4..=5).await;
    parked_with(&d, &c, &c.d1, 4).await;
    assert_eq!(seq_of(&d, &c, &c.d1).await, Some(0), "still held after the restart");

    // kill -9: held events whose offsets were not committed come again, and are held once.
    d.kill9();
    let d = Daemon::start(Opts::restart_of(&mut d)).await;
    post(&d, &c, &c.d1, 6..=6).await;
    parked_with(&d, &c, &c.d1, 5).await;
    assert_eq!(seq_of(&d, &c, &c.d1).await, Some(0));
    // Another device flows meanwhile. (Posted in this process, not before the kill: a
    // record redelivered after a kill -9 is a stale write, and this daemon's count of those
    // must stay 0 below.)
    post(&d, &c, &c.d2, 1..=1).await;
    assert!(reaches(&d, &c, &c.d2, 1).await);
    // The fault hook lives in the process: the restarted daemon handles d1 normally.
    let body = json!({"topic": d.names.topic_in, "key": c.d1});
    let (s, replayed) = d.post("/admin/parked-keys/replay", Some(&c.admin), &body).await;
    assert_eq!(s, StatusCode::OK, "{replayed}");
    let replay_offset = replayed["offset"].as_i64().unwrap();
    assert!(reaches(&d, &c, &c.d1, 6).await, "every held event applied\n{}", d.log_tail(30));
    let offset = last_offset(&d, &c.d1).await;
    assert!(origin < offset && offset < replay_offset, "in order: {origin} < {offset} < {replay_offset}");
    let gone = eventually(WITHIN, || async { parked_list(&d, &c).await.is_empty() }).await;
    assert!(gone, "nothing parked any more");
    let text = d.metrics().await;
    let topic = format!("topic=\"{}\"", d.names.topic_in);
    assert_eq!(metric_sum(&text, "conveyor_partition_records_released_total", &topic), 5.0, "{text}");
    assert_eq!(stale_writes(&d).await, 0.0, "the dead letter, then every held event, each applied in order");
}

/// `kill -9` in the middle of a release: the restarted daemon finishes it from the store and
/// the log. Nothing is lost (the row ends at the last held event, by that event's own
/// offset), nothing stays parked, and the key then flows as usual.
#[tokio::test]
async fn a_kill_9_during_a_release_loses_nothing() {
    const LAST: u64 = 2000;
    // One held event per page: the release takes LAST - 1 steps, each its own store write,
    // long enough to be caught in the middle.
    let mut d = Daemon::start(opts().env("CONVEYOR_PROCESSING__MAX_COALESCE", "1")).await;
    let c = ctx(&d);
    let origin = park_d1(&d, &c).await["origin_offset"].as_i64().unwrap();
    let held: Vec<u64> = (2..=LAST).collect();
    for chunk in held.chunks(500) {
        let events: Vec<Value> = chunk.iter().map(|seq| json!({"device_id": c.d1, "payload": {"seq": seq}})).collect();
        let (s, body) = d.post("/events/batch", Some(&c.device), &json!({"events": events})).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    }
    parked_with(&d, &c, &c.d1, LAST - 1).await;
    fail_key(&d, &c.admin, &c.d1, true).await;
    let body = json!({"topic": d.names.topic_in, "key": c.d1});
    let (s, replayed) = d.post("/admin/parked-keys/replay", Some(&c.admin), &body).await;
    assert_eq!(s, StatusCode::OK, "{replayed}");
    let replay_offset = replayed["offset"].as_i64().unwrap();
    // Killed as soon as the release has begun (the dead letter applied first): polled
    // without a pause, as a fixed poll interval could miss the whole release.
    let started = std::time::Instant::now();
    let at_kill = loop {
        let seq = seq_of(&d, &c, &c.d1).await;
        if seq.is_some_and(|s| s >= 1) || started.elapsed() > WITHIN {
            break seq;
        }
    };
    d.kill9();
    assert!(
        at_kill.is_some_and(|s| (1..LAST).contains(&s)),
        "killed in the middle of the release: d1 at {at_kill:?} of {LAST}"
    );

    let d = Daemon::start(Opts::restart_of(&mut d)).await;
    let applied = reaches(&d, &c, &c.d1, LAST).await;
    assert!(
        applied,
        "every held event applied: d1 at {:?} (stored offset {}, value {:?}, stale writes {}), parked {:?}\n{}",
        seq_of(&d, &c, &c.d1).await,
        last_offset(&d, &c.d1).await,
        DeviceStore::new(d.open_store().await).get_resource(&c.d1).await.unwrap().map(|r| r.value),
        stale_writes(&d).await,
        parked_entry(&d, &c, &c.d1).await,
        d.log_tail(400)
            .lines()
            .filter(|l| !l.contains("INFO") || l.contains("park") || l.contains("releas"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let offset = last_offset(&d, &c.d1).await;
    assert!(
        origin < offset && offset < replay_offset,
        "the last held event's own offset: {origin} < {offset} < {replay_offset}"
    );
    let gone = eventually(WITHIN, || async { parked_list(&d, &c).await.is_empty() }).await;
    assert!(gone, "nothing parked any more: {:?}", parked_list(&d, &c).await);
    post(&d, &c, &c.d1, LAST + 1..=LAST + 1).await;
    assert!(reaches(&d, &c, &c.d1, LAST + 1).await, "the key flows again");
}

/// A control record is the runtime's, never a handler's, on any topic: on a `continue`
/// topic one for no parked key is counted and dropped with a log line.
#[tokio::test]
async fn a_control_record_never_reaches_a_handler() {
    let mut d = Daemon::start(Opts::new()).await;
    let c = ctx(&d);
    let log = raw_log(&mut d).await;
    let event = json!({
        "request_id": uuid::Uuid::new_v4(), "device_id": c.d1, "payload": {"seq": 1},
        "user_id": "it", "received_at": "2026-12-02T00:00:00Z",
    });
    let record = OutgoingRecord {
        topic: d.names.topic_in.clone(),
        key: Some(c.d1.clone()),
        payload: serde_json::to_vec(&event).unwrap().into(),
        headers: vec![
            Header { name: "conveyor.control".into(), value: b"skip".to_vec() },
            Header { name: "conveyor.replay.source_offset".into(), value: b"0".to_vec() },
        ],
    };
    log.producer().send(record, Duration::from_secs(10)).await.unwrap();
    resume(&mut d, log).await;
    post(&d, &c, &c.d2, 1..=1).await;
    assert!(reaches(&d, &c, &c.d2, 1).await);
    let counted = eventually(WITHIN, || async {
        metric_sum(&d.metrics().await, "conveyor_partition_park_refusals_total", "reason=\"control_ignored\"") == 1.0
    })
    .await;
    assert!(counted, "the control record is counted as ignored");
    assert_eq!(seq_of(&d, &c, &c.d1).await, None, "and never applied");
}
