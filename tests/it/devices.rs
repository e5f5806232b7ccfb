//! The device pipeline end to end: volume with per-device order, replays, crash safety.

use std::collections::HashMap;
use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use conveyor_actors::config::LogBackendKind;
use conveyor_actors::log::{LogBackend, OutgoingRecord};

use crate::harness::{Backend, Daemon, Names, Opts, eventually, metric_sum, token};

/// Sends `per_device` events to each of `devices` devices, in per-device sequence order,
/// through `/events/batch` (100 per request); returns the last seq per device.
pub async fn send_sequenced(
    d: &Daemon,
    t: &str,
    prefix: &str,
    devices: usize,
    per_device: usize,
    from_seq: usize,
) -> HashMap<String, usize> {
    let mut events = Vec::with_capacity(devices * per_device);
    for seq in from_seq..from_seq + per_device {
        for dev in 0..devices {
            events.push(json!({"device_id": format!("{prefix}-{dev}"), "payload": {"seq": seq, "dev": dev}}));
        }
    }
    for chunk in events.chunks(100) {
        let (s, body) = d.post("/events/batch", Some(t), &json!({"events": chunk})).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    }
    (0..devices).map(|dev| (format!("{prefix}-{dev}"), from_seq + per_device - 1)).collect()
}

/// Waits until every device's resource holds its expected last seq; returns the laggards.
pub async fn await_final_state(
    d: &Daemon,
    t: &str,
    expected: &HashMap<String, usize>,
    within: Duration,
) -> Vec<String> {
    let mut pending: Vec<&String> = expected.keys().collect();
    let started = std::time::Instant::now();
    while !pending.is_empty() && started.elapsed() < within {
        let mut still = Vec::new();
        for id in pending {
            let (s, body) = d.get(&format!("/resource/{id}"), Some(t)).await;
            let seq = body["value"]["seq"].as_u64().map(|v| v as usize);
            if s != StatusCode::OK || seq != expected.get(id).copied() {
                still.push(id);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    pending.into_iter().cloned().collect()
}

/// 10,000 events over 500 devices across 4 partitions: every device ends at its last
/// event, and no write was ever skipped as older than what was stored — which is what
/// processing any device out of order would cause.
#[tokio::test]
async fn ten_thousand_events_keep_per_device_order() {
    let d = Daemon::start(Opts::new()).await;
    let t = token("gw", &["device", "user"]);
    let expected = send_sequenced(&d, &t, "dev", 500, 20, 0).await;
    let laggards = await_final_state(&d, &t, &expected, Duration::from_secs(180)).await;
    assert!(
        laggards.is_empty(),
        "{} devices never reached their last event, e.g. {:?}",
        laggards.len(),
        laggards.first()
    );
    let text = d.metrics().await;
    assert_eq!(
        metric_sum(&text, "conveyor_devices_stale_writes_total", ""),
        0.0,
        "an older event reached the store after a newer one"
    );
    assert_eq!(metric_sum(&text, "conveyor_dlq_records_written_total", ""), 0.0);
    assert!(metric_sum(&text, "conveyor_partition_records_processed_total", "outcome=\"ok\"") >= 10_000.0);
}

/// A second consumer group replays the whole topic into the same store: every write is
/// older than what is stored, so nothing changes and each one is counted as stale.
#[tokio::test]
async fn replayed_old_events_do_not_overwrite_newer_state() {
    let mut first = Daemon::start(Opts::new()).await;
    let t = token("gw", &["device", "user"]);
    let expected = send_sequenced(&first, &t, "rp", 20, 5, 0).await;
    assert!(await_final_state(&first, &t, &expected, Duration::from_secs(60)).await.is_empty());
    assert!(first.terminate(Duration::from_secs(20)).await.success());

    let mut replay = Opts::restart_of(&mut first);
    replay.names.group = format!("{}-replay", replay.names.group);
    let second = Daemon::start(replay).await;
    let replayed = eventually(Duration::from_secs(60), || async {
        metric_sum(&second.metrics().await, "conveyor_devices_stale_writes_total", "") >= 1.0
    })
    .await;
    assert!(replayed, "the replaying group must hit the offset guard");
    assert!(
        await_final_state(&second, &t, &expected, Duration::from_secs(5)).await.is_empty(),
        "a replay moved a device backwards"
    );
}

/// An undecodable record goes to the dead-letter topic; the partition keeps flowing.
#[tokio::test]
async fn poison_record_is_dead_lettered_and_the_partition_flows() {
    let mut d = Daemon::start(Opts::new()).await;
    let t = token("gw", &["device", "user"]);
    inject(&mut d, b"{not json").await;
    let expected = send_sequenced(&d, &t, "after-poison", 8, 3, 0).await;
    assert!(await_final_state(&d, &t, &expected, Duration::from_secs(60)).await.is_empty());
    let dead = eventually(Duration::from_secs(30), || async {
        metric_sum(&d.metrics().await, "conveyor_dlq_records_written_total", "permanent") >= 1.0
    })
    .await;
    assert!(dead, "the poison record must be dead-lettered");
    // At the default log level, the error line names the record's trace.
    let logged = std::fs::read_to_string(d.data_dir.join("daemon.log")).unwrap_or_default();
    let line = logged
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "record dead-lettered")
        .unwrap_or_else(|| panic!("no dead-letter log line:\n{}", d.log_tail(20)));
    assert_eq!((line["level"].as_str(), line["trace_id"].as_str()), (Some("ERROR"), Some(POISON_TRACE)), "{line}");
    if d.backend() == Backend::Embedded {
        assert!(d.terminate(Duration::from_secs(20)).await.success());
    }
    let log = open_log(&d.names, Some(&d.data_dir)).await;
    let dlq = log.end_offsets(&d.names.topic_dlq).await.unwrap_or_default();
    assert!(dlq.iter().map(|(_, end)| end).sum::<i64>() >= 1, "the dead-letter topic holds the record: {dlq:?}");
}

/// The trace id the injected records carry.
pub const POISON_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// Writes a raw record to the daemon's input topic, as a broken producer would. The
/// embedded log belongs to one process, so there the daemon is stopped and restarted around it.
pub async fn inject(d: &mut Daemon, payload: &'static [u8]) {
    if d.backend() == Backend::Embedded {
        assert!(d.terminate(Duration::from_secs(20)).await.success());
        produce_raw(&d.names, Some(&d.data_dir), payload).await;
        *d = Daemon::start(Opts::restart_of(d)).await;
    } else {
        produce_raw(&d.names, None, payload).await;
    }
}

/// The test's own client of the daemon's log (Kafka directly, or the embedded files).
async fn open_log(names: &Names, data_dir: Option<&std::path::Path>) -> std::sync::Arc<dyn LogBackend> {
    let mut config = conveyor_actors::config::Config::default();
    match data_dir {
        Some(dir) if Backend::from_env() == Backend::Embedded => config.data_dir = dir.to_path_buf(),
        _ => {
            config.log.backend = LogBackendKind::Kafka;
            config.log.kafka.brokers = std::env::var("CONVEYOR_TEST_KAFKA_BROKERS").unwrap_or_default();
        }
    }
    config.log.topics.events_input = names.topic_in.clone();
    conveyor_actors::system::open_log(&config).unwrap()
}

async fn produce_raw(names: &Names, data_dir: Option<&std::path::Path>, payload: &'static [u8]) {
    let log = open_log(names, data_dir).await;
    let record = OutgoingRecord {
        topic: names.topic_in.clone(),
        key: Some("poison-device".into()),
        payload: bytes::Bytes::from_static(payload),
        // A broken producer that still propagates its trace: the consumer's log lines about
        // this record carry the trace id.
        headers: vec![conveyor_actors::log::Header {
            name: "traceparent".into(),
            value: format!("00-{POISON_TRACE}-00f067aa0ba902b7-01").into_bytes(),
        }],
    };
    log.producer().send(record, Duration::from_secs(10)).await.unwrap();
}

/// `kill -9` right after the last 202: every accepted event is processed after restart.
#[tokio::test]
async fn kill_9_loses_no_accepted_event() {
    let mut d = Daemon::start(Opts::new()).await;
    let t = token("gw", &["device", "user"]);
    let expected = send_sequenced(&d, &t, "crash", 50, 20, 0).await;
    d.kill9();
    let d = Daemon::start(Opts::restart_of(&mut d)).await;
    let laggards = await_final_state(&d, &t, &expected, Duration::from_secs(120)).await;
    assert!(laggards.is_empty(), "accepted events lost across kill -9: {laggards:?}");
}
