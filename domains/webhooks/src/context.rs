//! What every endpoint actor shares: the store, the HTTP client, the attempt log, the
//! dead-letter topic, and the notification payloads (read once, then cached briefly, since
//! one notification usually goes to several endpoints at about the same time).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::attempts::AttemptLog;
use super::client::{Response, WebhookClient};
use super::domain::DomainEventPublisher;
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
    pub fn payload_cache() -> moka::future::Cache<String, Bytes> {
        moka::future::Cache::builder().max_capacity(10_000).time_to_live(Duration::from_secs(60)).build()
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
