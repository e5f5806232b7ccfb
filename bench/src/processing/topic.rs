//! The input topic: pre-built device events, produced the way Conveyor's front end does,
//! and the raw consumer baseline that reads them back.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use conveyor_devices::DeviceEvent;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

fn kafka_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers).set("client.id", "conveyor-bench");
    c
}

/// One pre-built record: key, Conveyor's JSON payload, and its headers' values.
pub struct Prepared {
    pub key: String,
    pub payload: Vec<u8>,
    traceparent: String,
    request_id: String,
}

/// Event `n` goes to device `n % devices` with that device's sequence number `n / devices + 1`,
/// so every device gets the same count and its last seq is `events / devices`.
pub fn prepare(events: usize, devices: usize) -> anyhow::Result<Vec<Prepared>> {
    let mut out = Vec::with_capacity(events);
    for n in 0..events {
        let device = n % devices;
        let seq = n / devices + 1;
        let mut payload = serde_json::Map::new();
        payload.insert("seq".into(), json!(seq));
        let event = DeviceEvent {
            request_id: uuid::Uuid::now_v7(),
            device_id: format!("dev-{device:05}"),
            payload,
            user_id: "bench".into(),
            received_at: chrono::Utc::now(),
        };
        let trace = uuid::Uuid::new_v4().simple().to_string();
        let span = uuid::Uuid::new_v4().simple().to_string();
        out.push(Prepared {
            key: event.device_id.clone(),
            payload: serde_json::to_vec(&event)?,
            traceparent: format!("00-{trace}-{}-01", span.get(..16).unwrap_or("0000000000000000")),
            request_id: uuid::Uuid::new_v4().to_string(),
        });
    }
    Ok(out)
}

pub async fn create_topics(brokers: &str, topics: &[String], partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka_config(brokers).create()?;
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}

pub async fn delete_topics(brokers: &str, topics: &[String]) {
    let Ok(admin) = kafka_config(brokers).create::<AdminClient<DefaultClientContext>>() else { return };
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    if let Err(err) = admin.delete_topics(&names, &opts).await {
        eprintln!("  (could not delete topics {names:?}: {err})");
    }
}

/// Produces every record the way Conveyor's producer does (acks=all, idempotent, key =
/// device_id, its two headers) and waits for every acknowledgement.
pub async fn prefill(brokers: &str, topic: &str, records: &[Prepared]) -> anyhow::Result<()> {
    let producer: FutureProducer = kafka_config(brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()?;
    let mut pending = Vec::with_capacity(records.len());
    for r in records {
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header { key: "traceparent", value: Some(r.traceparent.as_bytes()) })
            .insert(Header { key: "x-request-id", value: Some(r.request_id.as_bytes()) });
        let mut record = FutureRecord::to(topic).key(r.key.as_str()).payload(r.payload.as_slice()).headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((err, _)) => return Err(err.into()),
            }
        }
    }
    for delivery in pending {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((err, _))) => return Err(err).context("producing a pre-fill record"),
            Err(_) => bail!("the producer dropped a pre-fill record"),
        }
    }
    Ok(())
}

/// The raw consumer baseline: a fresh group reading every partition, decoding each payload as
/// a [`DeviceEvent`]. Returns (seconds until all seen, seconds until the first one).
pub fn raw_consume(
    brokers: &str,
    topic: &str,
    group: &str,
    expected: usize,
    limit: Duration,
) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let consumer: BaseConsumer = kafka_config(brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut seen = 0usize;
    let mut first = None;
    while seen < expected {
        if started.elapsed() > limit {
            bail!("raw consumer saw only {seen} of {expected} records within {limit:?}");
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(err)) => return Err(err).context("raw consumer poll"),
            Some(Ok(msg)) => {
                let payload = msg.payload().context("record without payload")?;
                let event: DeviceEvent = serde_json::from_slice(payload)?;
                std::hint::black_box(event);
                seen += 1;
                first.get_or_insert_with(|| started.elapsed().as_secs_f64());
            }
        }
    }
    let total = started.elapsed().as_secs_f64();
    consumer.unsubscribe();
    Ok((total, first.unwrap_or(total)))
}
