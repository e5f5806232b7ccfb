//! What every endpoint actor shares: the store, the HTTP client, the attempt log, the
//! dead-letter topic, and the notification payloads (read once, then cached briefly, since
//! one notification usually goes to several endpoints at about the same time).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::attempts::AttemptLog;
use super::client::{Response, WebhookClient};
use super::domain::DomainEventPublisher;
use super::intake::Intake;
use crate::store::{DeliveryUpdate, WebhookStore};
use crate::store::{delivery, endpoint};
use conveyor_actors::config::WebhooksConfig;
use conveyor_actors::consumer::DeadLetterMeta;
use conveyor_actors::domain_events::DomainEvents;
use conveyor_actors::log::{Header, OutgoingRecord, Producer};
use conveyor_actors::metrics::{ERROR_CLASS, kv, metrics};
use conveyor_actors::store::batch::{Batcher, Grouped, WholeWrite};

/// Header naming the endpoint on a dead-lettered delivery; replaying that dead letter
/// resends the delivery to this endpoint only.
pub const ENDPOINT_HEADER: &str = "conveyor.webhook.endpoint";

pub struct DeliveryContext {
    pub store: WebhookStore,
    pub client: WebhookClient,
    pub attempts: AttemptLog,
    pub config: WebhooksConfig,
    pub producer: Arc<dyn Producer>,
    pub dlq_topic: String,
    pub notifications_topic: String,
    pub produce_timeout: Duration,
    pub domain: DomainEventPublisher,
    pub payloads: moka::future::Cache<String, Bytes>,
    /// Every endpoint actor's outcome writes, written together ([`Self::outcome_writer`]).
    pub outcomes: Batcher<Grouped<OutcomeWriter>>,
    /// Which endpoint actors take new deliveries from the fan-out, leased at insert.
    pub intake: Intake,
}

/// Endpoint actors' outcome batches per write at most.
const OUTCOME_CALLERS: usize = 256;

/// Writes attempts' outcomes (delivery id, new state).
pub struct OutcomeWriter(pub WebhookStore);

#[async_trait::async_trait]
impl WholeWrite for OutcomeWriter {
    type Row = (String, DeliveryUpdate);

    fn name(&self) -> &'static str {
        "finish_attempts"
    }

    async fn write_all(&self, rows: &[(String, DeliveryUpdate)]) -> Result<(), conveyor_actors::Error> {
        self.0.finish_attempts(rows).await
    }
}

impl DeliveryContext {
    /// Bounded by bytes, not entries: a body may be as large as the HTTP body limit. Least
    /// recently used goes first: under a steady load a frequency-based admission (moka's
    /// default) keeps the bodies already delivered ten times and refuses the new ones, so
    /// every delivery would read its body back from the store.
    pub fn payload_cache(config: &WebhooksConfig) -> moka::future::Cache<String, Bytes> {
        moka::future::Cache::builder()
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|id: &String, body: &Bytes| u32::try_from(id.len() + body.len()).unwrap_or(u32::MAX))
            .max_capacity(config.payload_cache_bytes)
            .time_to_live(Duration::from_secs(60))
            .build()
    }

    /// One statement (per 1,000 rows) for the outcomes every endpoint actor has ready:
    /// each actor has at most a few attempts in flight, together they make a batch.
    pub fn outcome_writer(store: WebhookStore) -> Batcher<Grouped<OutcomeWriter>> {
        Batcher::spawn(Grouped(OutcomeWriter(store)), OUTCOME_CALLERS, 1)
    }

    /// The body every endpoint receives for this notification: the envelope as posted.
    pub async fn payload(&self, notification_id: &str) -> Result<Bytes, conveyor_actors::Error> {
        if let Some(payload) = self.payloads.get(notification_id).await {
            return Ok(payload);
        }
        let row = self
            .store
            .get_notification(notification_id)
            .await?
            .ok_or(conveyor_actors::Error::NotFound { what: "notification" })?;
        let payload = Bytes::from(row.payload);
        self.payloads.insert(notification_id.to_string(), payload.clone()).await;
        Ok(payload)
    }

    /// A delivery that exhausted its schedule (or met a 410) goes to the dead-letter topic
    /// as its notification, naming the endpoint; the delivery row already says `failed`,
    /// so a failed write here loses nothing the resend API cannot find.
    pub async fn dead_letter(&self, delivery: &delivery::Model, attempts: i32, response: &Response) {
        let Ok(payload) = self.payload(&delivery.notification_id).await else { return };
        let now_ms = chrono::Utc::now().timestamp_millis();
        let error_class = format!("webhook_{}", response.class.as_str());
        let mut headers =
            vec![Header { name: ENDPOINT_HEADER.to_string(), value: delivery.endpoint_id.clone().into_bytes() }];
        DeadLetterMeta {
            source_topic: &self.notifications_topic,
            source_partition: -1,
            source_offset: -1,
            error_class: &error_class,
            error: response.error.as_deref().unwrap_or("delivery failed"),
            attempts: u32::try_from(attempts).unwrap_or(0),
            first_failure_ms: delivery.created_at.timestamp_millis(),
            last_failure_ms: now_ms,
        }
        .append_to(&mut headers);
        let record = OutgoingRecord {
            topic: self.dlq_topic.clone(),
            key: Some(delivery.notification_id.clone()),
            payload,
            headers,
        };
        match self.producer.send(record, self.produce_timeout).await {
            Ok(_) => metrics().dead_letters.add(1, &[kv(ERROR_CLASS, "webhook")]),
            Err(err) => tracing::error!(error = %err, delivery = %delivery.id, "writing a webhook dead letter"),
        }
    }

    /// Tells subscribers (admins' endpoints) that an endpoint was disabled.
    pub async fn announce_disabled(&self, endpoint: &endpoint::Model, reason: crate::states::DisabledReason) {
        let data = serde_json::json!({"endpoint_id": endpoint.id, "reason": reason, "url": endpoint.url});
        let id = format!("evt_endpoint_disabled_{}_{}", endpoint.id, chrono::Utc::now().timestamp_millis());
        if let Err(err) = self.domain.publish(super::domain::ENDPOINT_DISABLED, &id, data).await {
            tracing::warn!(error = %err, "announcing a disabled webhook endpoint");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn new_bodies_displace_old_ones_however_often_those_were_read() {
        let config = WebhooksConfig { payload_cache_bytes: 10 * 1_000, ..WebhooksConfig::default() };
        let cache = DeliveryContext::payload_cache(&config);
        let body = Bytes::from(vec![b'x'; 990]);
        // Ten bodies, each read by ten deliveries: the cache is full of popular entries.
        for i in 0..10 {
            cache.insert(format!("old-{i:02}"), body.clone()).await;
        }
        for _ in 0..10 {
            for i in 0..10 {
                cache.get(&format!("old-{i:02}")).await;
            }
        }
        cache.run_pending_tasks().await;
        for i in 0..10 {
            cache.insert(format!("new-{i:02}"), body.clone()).await;
            cache.run_pending_tasks().await;
        }
        for i in 0..10 {
            assert!(cache.get(&format!("new-{i:02}")).await.is_some(), "new-{i:02} was refused");
        }
        assert!(cache.weighted_size() <= config.payload_cache_bytes);
    }
}
