//! The ceiling of Kafka-mode ingest: a raw rdkafka producer with the settings Conveyor's
//! producer uses (`acks=all`, idempotent, the same `linger.ms`), writing records of the same
//! size (a device event's JSON, its key, its two headers) to a topic of the same partition
//! count on the same broker, with as many sends in flight as the HTTP load has connections
//! (each connection has one request in flight, so Conveyor can never have more).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use serde_json::{Value, json};

use conveyor_devices::DeviceEvent;

use crate::report::round;

/// Conveyor's producer settings, read from the `[log.kafka]` defaults the daemon runs with.
pub struct ProducerSettings {
    pub linger_ms: u64,
    pub batch_num_messages: u64,
    pub queue_max_messages: u64,
}

impl ProducerSettings {
    pub fn from_defaults() -> Self {
        let k = conveyor_actors::config::KafkaConfig::default();
        ProducerSettings {
            linger_ms: k.linger_ms,
            batch_num_messages: k.batch_num_messages,
            queue_max_messages: k.queue_buffering_max_messages,
        }
    }
}

pub struct RawProduceRun {
    pub records: u64,
    pub seconds: f64,
    pub per_sec: f64,
    pub in_flight: u32,
    pub record_bytes: usize,
}

impl RawProduceRun {
    pub fn to_json(&self, settings: &ProducerSettings) -> Value {
        json!({
            "records": self.records,
            "seconds": round(self.seconds, 2),
            "records_per_sec": round(self.per_sec, 1),
            "in_flight": self.in_flight,
            "payload_bytes": self.record_bytes,
            "producer": {
                "acks": "all",
                "enable.idempotence": true,
                "linger.ms": settings.linger_ms,
                "batch.num.messages": settings.batch_num_messages,
                "queue.buffering.max.messages": settings.queue_max_messages,
            },
        })
    }
}

fn config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers).set("client.id", "conveyor-bench-raw-producer");
    c
}

/// A device event as Conveyor's ingest writes it, for the record size.
fn payload(device: u64) -> anyhow::Result<(String, Vec<u8>)> {
    let mut body = serde_json::Map::new();
    body.insert("t".into(), json!(1));
    let event = DeviceEvent {
        request_id: uuid::Uuid::now_v7(),
        device_id: format!("dev-{device}"),
        payload: body,
        user_id: "bench".into(),
        received_at: chrono::Utc::now(),
    };
    Ok((event.device_id.clone(), serde_json::to_vec(&event)?))
}

/// Creates `topic`, produces to it for `seconds` with `in_flight` sends outstanding, deletes it.
pub async fn run(
    brokers: &str,
    topic: &str,
    partitions: i32,
    settings: &ProducerSettings,
    in_flight: u32,
    seconds: u32,
) -> anyhow::Result<RawProduceRun> {
    let admin: AdminClient<DefaultClientContext> = config(brokers).create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let new = [NewTopic::new(topic, partitions, TopicReplication::Fixed(1))];
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("creating topic {topic}: {code}"),
        }
    }
    let producer: FutureProducer = config(brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", settings.linger_ms.to_string())
        .set("batch.num.messages", settings.batch_num_messages.to_string())
        .set("queue.buffering.max.messages", settings.queue_max_messages.to_string())
        .set("message.timeout.ms", "30000")
        .create()?;
    let (_, sample) = payload(1)?;
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + Duration::from_secs(u64::from(seconds));
    let workers: Vec<_> = (0..in_flight)
        .map(|w| {
            let (producer, topic, sent) = (producer.clone(), topic.to_string(), sent.clone());
            tokio::spawn(async move {
                let mut n = u64::from(w);
                while Instant::now() < until {
                    let (key, body) = payload(n % 1000 + 1)?;
                    let request_id = uuid::Uuid::now_v7().to_string();
                    let traceparent = format!("00-{}-{}-01", uuid::Uuid::new_v4().simple(), "00f067aa0ba902b7");
                    let headers = OwnedHeaders::new_with_capacity(2)
                        .insert(Header { key: "traceparent", value: Some(traceparent.as_bytes()) })
                        .insert(Header { key: "x-request-id", value: Some(request_id.as_bytes()) });
                    let record = FutureRecord::to(&topic).key(key.as_str()).payload(body.as_slice()).headers(headers);
                    producer
                        .send(record, Duration::from_secs(30))
                        .await
                        .map_err(|(err, _)| err)
                        .context("raw produce")?;
                    sent.fetch_add(1, Ordering::Relaxed);
                    n += u64::from(in_flight);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.await.context("raw producer task panicked")??;
    }
    let seconds = start.elapsed().as_secs_f64();
    let records = sent.load(Ordering::Relaxed);
    if let Err(err) = admin.delete_topics(&[topic], &opts).await {
        eprintln!("  (could not delete topic {topic}: {err})");
    }
    Ok(RawProduceRun { records, seconds, per_sec: records as f64 / seconds, in_flight, record_bytes: sample.len() })
}
