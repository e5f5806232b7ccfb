//! The Kafka backend (rdkafka): an idempotent `acks=all` producer, and group membership on a
//! dedicated thread whose rebalance callbacks drain and commit before partitions move.
//!
//! librdkafka calls the rebalance callback synchronously from `poll`. Polling a
//! `BaseConsumer` on its own OS thread lets that callback block on the async drain
//! (`Handle::block_on`) without stalling a tokio worker — the shape of vector's and
//! restate's Kafka sources.

mod consumer;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header as KHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use super::{Ack, ConsumerHandle, GroupListener, LogBackend, OutgoingRecord, Producer};
use crate::Error;
use crate::config::{KafkaConfig, LogConfig};

/// Connection settings shared by producer, consumer and admin client.
pub(crate) fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", &cfg.client_id)
        .set("security.protocol", cfg.security_protocol.as_librdkafka());
    if cfg.security_protocol.uses_sasl() {
        c.set("sasl.mechanisms", &cfg.sasl_mechanism)
            .set("sasl.username", &cfg.sasl_username)
            .set("sasl.password", cfg.sasl_password.expose());
    }
    c
}

/// The Kafka log backend.
pub struct KafkaLog {
    config: LogConfig,
    producer: Arc<KafkaProducer>,
}

impl KafkaLog {
    pub fn new(config: &LogConfig) -> Result<Self, Error> {
        let kafka = &config.kafka;
        // acks=all and idempotence are what a 202 promises; only batching is configurable.
        let producer: FutureProducer = client_config(kafka)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", kafka.linger_ms.to_string())
            .set("batch.num.messages", kafka.batch_num_messages.to_string())
            .set("queue.buffering.max.messages", kafka.queue_buffering_max_messages.to_string())
            .set("message.timeout.ms", config.produce_timeout_ms.to_string())
            .create()
            .map_err(|source| Error::Kafka { op: "create producer", source })?;
        Ok(KafkaLog { config: config.clone(), producer: Arc::new(KafkaProducer { producer }) })
    }
}

struct KafkaProducer {
    producer: FutureProducer,
}

#[async_trait]
impl Producer for KafkaProducer {
    async fn send(&self, record: OutgoingRecord, timeout: Duration) -> Result<Ack, Error> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for h in &record.headers {
            headers = headers.insert(KHeader { key: &h.name, value: Some(h.value.as_slice()) });
        }
        let mut out = FutureRecord::to(&record.topic).payload(record.payload.as_ref()).headers(headers);
        if let Some(key) = &record.key {
            out = out.key(key.as_str());
        }
        let unavailable = |source: Option<Box<dyn std::error::Error + Send + Sync>>| Error::LogUnavailable {
            op: "produce",
            topic: record.topic.clone(),
            source,
        };
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(timeout, self.producer.send(out, Timeout::After(timeout))).await {
            Ok(Ok(delivery)) => Ok(Ack { partition: delivery.partition, offset: delivery.offset }),
            Ok(Err((err, _))) => Err(unavailable(Some(Box::new(err)))),
            Err(_) => Err(unavailable(None)),
        };
        super::observe_append(&record.topic, started, &result);
        result
    }

    async fn ping(&self, timeout: Duration) -> Result<(), Error> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout).map(|_| ()))
            .await
            .map_err(|e| Error::Actor { actor: "kafka".into(), op: "ping", source: Box::new(e) })?
            .map_err(|source| Error::Kafka { op: "fetch metadata", source })
    }
}

#[async_trait]
impl LogBackend for KafkaLog {
    fn producer(&self) -> Arc<dyn Producer> {
        self.producer.clone()
    }

    async fn ensure_topics(&self, topics: &[String]) -> Result<(), Error> {
        let admin: AdminClient<DefaultClientContext> = client_config(&self.config.kafka)
            .create()
            .map_err(|source| Error::Kafka { op: "create admin client", source })?;
        let rf = self.config.kafka.replication_factor;
        let new: Vec<NewTopic<'_>> =
            topics.iter().map(|t| NewTopic::new(t, self.config.partitions, TopicReplication::Fixed(rf))).collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results =
            admin.create_topics(&new, &opts).await.map_err(|source| Error::Kafka { op: "create topics", source })?;
        for result in results {
            match result {
                Ok(topic) => tracing::info!(topic, partitions = self.config.partitions, "topic created"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    // Brokers that auto-create topics still work; say what happened.
                    tracing::warn!(topic, error = %code, "could not create topic; relying on auto-creation");
                }
            }
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
        listener: Arc<dyn GroupListener>,
    ) -> Result<Box<dyn ConsumerHandle>, Error> {
        let handle = consumer::GroupMember::start(&self.config.kafka, group, topics, listener)?;
        Ok(Box::new(handle))
    }

    async fn end_offsets(&self, topic: &str) -> Result<Vec<(i32, i64)>, Error> {
        self.watermarks(topic, "end offsets", |(_, high)| high).await
    }

    /// Low watermarks: the broker's retention moved them past what it deleted.
    async fn start_offsets(&self, topic: &str) -> Result<Vec<(i32, i64)>, Error> {
        self.watermarks(topic, "start offsets", |(low, _)| low).await
    }
}

impl KafkaLog {
    /// One watermark per partition of `topic` (`pick` chooses low or high); the client
    /// calls block, so they run on the blocking pool.
    async fn watermarks(
        &self,
        topic: &str,
        op: &'static str,
        pick: fn((i64, i64)) -> i64,
    ) -> Result<Vec<(i32, i64)>, Error> {
        let producer = self.producer.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let client = producer.producer.client();
            let timeout = Duration::from_secs(5);
            let md = client
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|source| Error::Kafka { op: "fetch metadata", source })?;
            let mut out = Vec::new();
            for t in md.topics() {
                for p in t.partitions() {
                    let marks = client
                        .fetch_watermarks(&topic, p.id(), timeout)
                        .map_err(|source| Error::Kafka { op: "fetch watermarks", source })?;
                    out.push((p.id(), pick(marks)));
                }
            }
            out.sort_unstable();
            Ok(out)
        })
        .await
        .map_err(|e| Error::Actor { actor: "kafka".into(), op, source: Box::new(e) })?
    }
}
