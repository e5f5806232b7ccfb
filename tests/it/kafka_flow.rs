//! The Kafka consumer at a partition's in-flight bound: it holds records back, never drops
//! or repeats one, and pauses a partition that stays full.

use crate::broker_restart::Collected;
use crate::harness::{eventually, real_only};
use conveyor_actors::log::{Intake, OutgoingRecord};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kafka_consumer_holds_a_full_partition_back_and_loses_nothing() {
    real_only("real_kafka_consumer_holds_a_full_partition_back_and_loses_nothing");
    const RECORDS: i64 = 300;
    const BOUND: usize = 20;
    let mut config = conveyor_actors::config::Config::default();
    config.log.backend = conveyor_actors::config::LogBackendKind::Kafka;
    config.log.kafka.brokers = std::env::var("CONVEYOR_TEST_KAFKA_BROKERS").expect("scripts/services.sh up");
    config.log.kafka.session_timeout_ms = 6000;
    config.log.partitions = 1;
    let log = conveyor_actors::log::open(&config).unwrap();
    let topic = format!("flow-{}", uuid::Uuid::new_v4().simple());
    log.ensure_topics(std::slice::from_ref(&topic)).await.unwrap();
    for seq in 0..RECORDS {
        let payload = format!(r#"{{"device_id":"d","payload":{{"seq":{seq}}}}}"#);
        let record = OutgoingRecord { topic: topic.clone(), key: None, payload: payload.into(), headers: vec![] };
        log.producer().send(record, Duration::from_secs(30)).await.unwrap();
    }

    let intake = Arc::new(Intake::new(BOUND));
    let collected = Arc::new(Collected::default());
    *collected.intake.lock().unwrap() = Some(intake.clone());
    let member = log.subscribe(&format!("{topic}-g"), std::slice::from_ref(&topic), collected.clone()).await.unwrap();
    let count = || collected.records.lock().map(|r| r.len()).unwrap_or_default();
    assert!(eventually(Duration::from_secs(60), || async { count() == BOUND }).await, "read {}", count());
    // Nothing is done, so the consumer waits for room, gives up and pauses the partition.
    assert!(eventually(Duration::from_secs(30), || async { intake.stalls() >= 1 }).await, "no pause");
    assert_eq!(count(), BOUND, "never more than the bound delivered");
    // Records done a few at a time: the held record goes first, then the paused partition
    // resumes at half the bound and the rest follow.
    let all = eventually(Duration::from_secs(90), || async {
        intake.done(intake.outstanding());
        count() as i64 == RECORDS
    })
    .await;
    member.stop().await.unwrap();
    assert!(all, "read {} of {RECORDS}", count());
    let records = collected.records.lock().unwrap().clone();
    let offsets: Vec<i64> = records.iter().map(|r| r.1).collect();
    let seqs: Vec<u64> = records.iter().map(|r| r.3).collect();
    assert_eq!(offsets, (0..RECORDS).collect::<Vec<_>>(), "every offset once, in order");
    assert_eq!(seqs, (0..RECORDS as u64).collect::<Vec<_>>());
}
