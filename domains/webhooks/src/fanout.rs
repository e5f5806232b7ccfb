//! The notifications topic's handler: each notification becomes one delivery per matching
//! endpoint (written before the record counts as done, so none is lost; concurrent
//! notifications' rows in one write). An endpoint whose actor takes new deliveries
//! ([`Intake`]) gets its rows written leased and handed over in memory; every other
//! endpoint's actor is woken and leases them.

use std::sync::Arc;

use async_trait::async_trait;

use super::context::ENDPOINT_HEADER;
use super::directory::Directory;
use super::dispatcher::Dispatcher;
use super::endpoint_actor::hand_back;
use super::envelope;
use super::intake::Intake;
use super::ordering::OrderingKey;
use crate::metrics::metrics;
use crate::store::WebhookStore;
use crate::store::{delivery, notification};
use conveyor_actors::breaker::Breaker;
use conveyor_actors::consumer::KeyHandler;
use conveyor_actors::log::Record;
use conveyor_actors::retry::HandlerError;
use conveyor_actors::store::batch::{Batcher, Grouped, WholeWrite};

/// A notification and the endpoints it goes to.
pub type FanoutRows = (notification::Model, Vec<FanoutTarget>);

/// One endpoint a notification goes to.
#[derive(Debug, Clone)]
pub struct FanoutTarget {
    pub endpoint_id: String,
    /// On an ordered endpoint, the notification's key (as stored: hashed when long).
    pub ordering_key: Option<String>,
    /// Written leased until then and handed to the endpoint's actor ([`Intake`]); `None`:
    /// written due, and the actor is woken to lease it.
    pub lease_until: Option<chrono::DateTime<chrono::Utc>>,
}

/// Notifications per fan-out write at most; more wait for the next one.
const FANOUT_BATCH: usize = 500;

/// The fan-out's writer: stores each notification (unless stored already: a posted one was,
/// by the ingest) and one pending delivery per endpoint (unless created already), for every
/// notification handled meanwhile in one statement each, then hands the deliveries it
/// wrote leased to their endpoints' actors.
pub struct FanoutWriter {
    pub store: WebhookStore,
    pub dispatcher: Dispatcher,
}

#[async_trait]
impl WholeWrite for FanoutWriter {
    type Row = FanoutRows;

    fn name(&self) -> &'static str {
        "fan_out"
    }

    async fn write_all(&self, rows: &[FanoutRows]) -> Result<(), conveyor_actors::Error> {
        let leased = self.store.fan_out(rows).await?;
        self.hand_over(leased).await;
        Ok(())
    }
}

impl FanoutWriter {
    /// What the dispatcher could not take (it is restarting, or shutting down) goes back
    /// at once, due for the next lease; should that fail too, the leases expire.
    async fn hand_over(&self, leased: Vec<delivery::Model>) {
        let refused: Vec<String> = self.dispatcher.hand(leased).into_iter().map(|d| d.id).collect();
        hand_back(&self.store, &refused).await;
    }
}

/// Starts the fan-out's writer task.
pub fn writer(store: WebhookStore, dispatcher: Dispatcher) -> Batcher<Grouped<FanoutWriter>> {
    Batcher::spawn(Grouped(FanoutWriter { store, dispatcher }), FANOUT_BATCH, 1)
}

pub struct FanoutHandler {
    pub store: WebhookStore,
    /// Writes the notification and its delivery rows together with concurrent ones'
    /// ([`writer`]).
    pub writer: Batcher<Grouped<FanoutWriter>>,
    pub directory: Directory,
    pub dispatcher: Dispatcher,
    /// Endpoints whose actors take their deliveries leased at insert.
    pub intake: Intake,
    /// How long such a lease lasts ([`crate::endpoint_actor::lease_span`]).
    pub lease_span: chrono::Duration,
    /// Workflows with event triggers start their runs here too.
    pub workflows: Option<Arc<dyn NotificationTriggers>>,
    /// The delivery path's payload cache ([`super::context::DeliveryContext::payloads`]):
    /// filled here, so that no delivery reads its notification back from the store.
    pub payloads: moka::future::Cache<String, bytes::Bytes>,
}

/// Whatever else a notification may start (workflow runs with an event trigger). The
/// workflows crate implements it and the engine wires it in, so that webhook delivery
/// depends on no other domain.
#[async_trait]
pub trait NotificationTriggers: Send + Sync {
    /// Starts what `event_type` triggers; the notification id makes a redelivery start
    /// nothing twice. Answers how many were started.
    async fn on_event(
        &self,
        notification_id: &str,
        event_type: &str,
        envelope: &serde_json::Value,
    ) -> Result<usize, conveyor_actors::Error>;
}

/// Why a record on the notifications topic cannot be fanned out.
#[derive(Debug, thiserror::Error)]
#[error("not a notification envelope: {reason}")]
pub struct NotAnEnvelope {
    reason: String,
}

#[async_trait]
impl KeyHandler for FanoutHandler {
    fn name(&self) -> &'static str {
        "webhooks-fanout"
    }

    fn breakers(&self) -> Vec<Arc<Breaker>> {
        vec![self.store.breaker().clone()]
    }

    async fn handle(&self, _key: &str, records: &[Record]) -> Result<(), HandlerError> {
        for record in records {
            self.fan_out(record).await?;
        }
        Ok(())
    }
}

impl FanoutHandler {
    async fn fan_out(&self, record: &Record) -> Result<(), HandlerError> {
        let value: serde_json::Value = serde_json::from_slice(&record.payload)
            .map_err(|e| HandlerError::permanent(NotAnEnvelope { reason: e.to_string() }))?;
        let envelope = envelope::validate(&value).map_err(|issues| {
            let reason = issues.iter().map(|i| format!("{}: {}", i.field, i.message)).collect::<Vec<_>>().join("; ");
            HandlerError::permanent(NotAnEnvelope { reason })
        })?;
        // A replayed dead letter names its endpoint: send that one delivery again.
        if let Some(endpoint_id) = record.header(ENDPOINT_HEADER).and_then(|v| std::str::from_utf8(v).ok()) {
            return self.resend(&envelope.id, endpoint_id).await;
        }
        // Posted notifications are stored by the ingest; domain events arrive only here.
        let row = notification::Model {
            id: envelope.id.clone(),
            event_type: envelope.event_type.clone(),
            project: envelope.project.clone(),
            payload: String::from_utf8_lossy(&record.payload).into_owned(),
            accepted: true,
            received_at: chrono::Utc::now(),
            fanned_out: true,
        };
        let lease_until = chrono::Utc::now() + self.lease_span;
        let targets: Vec<FanoutTarget> = self
            .directory
            .matching(&envelope.event_type, envelope.project.as_deref())
            .await
            .map_err(HandlerError::retryable)?
            .into_iter()
            .map(|(endpoint_id, ordering)| match ordering {
                // Ordered endpoints lease each key's head themselves (`store::ordered`).
                Some(spec) => FanoutTarget {
                    ordering_key: keyed(&spec, &value, &envelope.id, &endpoint_id),
                    endpoint_id,
                    lease_until: None,
                },
                None => FanoutTarget {
                    lease_until: self.intake.takes(&endpoint_id).then_some(lease_until),
                    endpoint_id,
                    ordering_key: None,
                },
            })
            .collect();
        // Before the write: a delivery handed over may be sent at once.
        if !targets.is_empty() {
            self.payloads.insert(envelope.id.clone(), record.payload.clone()).await;
        }
        let woken: Vec<String> =
            targets.iter().filter(|t| t.lease_until.is_none()).map(|t| t.endpoint_id.clone()).collect();
        self.writer.submit(vec![(row, targets)]).await.map_err(HandlerError::retryable)?;
        for endpoint in woken {
            self.dispatcher.wake(endpoint);
        }
        if let Some(workflows) = &self.workflows {
            workflows.on_event(&envelope.id, &envelope.event_type, &value).await.map_err(HandlerError::retryable)?;
        }
        Ok(())
    }

    async fn resend(&self, notification_id: &str, endpoint_id: &str) -> Result<(), HandlerError> {
        match self.store.find_delivery(notification_id, endpoint_id).await.map_err(HandlerError::retryable)? {
            Some(delivery) => {
                self.store.resend_delivery(&delivery.id).await.map_err(HandlerError::retryable)?;
                self.dispatcher.wake(endpoint_id.to_string());
            }
            None => tracing::warn!("a replayed webhook dead letter names a delivery that no longer exists"),
        }
        Ok(())
    }
}

/// The notification's key for an ordered endpoint, or `None` (then it goes unordered to
/// that endpoint: counted and logged, never dropped).
fn keyed(spec: &OrderingKey, envelope: &serde_json::Value, id: &str, endpoint_id: &str) -> Option<String> {
    let key = spec.extract(envelope).map(OrderingKey::stored);
    if key.is_none() {
        metrics().webhook_deliveries_unkeyed.add(1, &[]);
        tracing::debug!(
            notification = id,
            endpoint = endpoint_id,
            ordering_key = spec.as_str(),
            "the notification has no ordering key for this endpoint; delivered unordered"
        );
    }
    key
}
