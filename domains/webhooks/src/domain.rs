//! Conveyor's own domain events, published as notifications so that webhook endpoints can
//! subscribe to them like to any posted type. They describe other users' data, so only
//! admins' endpoints receive them ([`super::filter::DOMAIN_PREFIX`]). Nothing is produced
//! for a type no endpoint wants: the device pipeline pays for this only when it is used.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::directory::Directory;
use conveyor_actors::Error;
use conveyor_actors::domain_events::DomainEvents;
use conveyor_actors::log::{OutgoingRecord, Producer};

pub const ENDPOINT_DISABLED: &str = "conveyor.endpoint.disabled";
/// The `project` of every domain event.
pub const PROJECT: &str = "conveyor";

/// Publishes domain events to the notifications topic; cheap to clone.
#[derive(Clone)]
pub struct DomainEventPublisher {
    producer: Arc<dyn Producer>,
    topic: String,
    timeout: Duration,
    directory: Directory,
}

impl DomainEventPublisher {
    pub fn new(producer: Arc<dyn Producer>, topic: String, timeout: Duration, directory: Directory) -> Self {
        DomainEventPublisher { producer, topic, timeout, directory }
    }
}

#[async_trait]
impl DomainEvents for DomainEventPublisher {
    async fn wanted(&self, event_type: &'static str) -> Result<bool, Error> {
        self.directory.any_matching(event_type, Some(PROJECT)).await
    }

    async fn publish(&self, event_type: &'static str, id: &str, data: serde_json::Value) -> Result<bool, Error> {
        if !self.wanted(event_type).await? {
            return Ok(false);
        }
        let envelope = serde_json::json!({
            "object": "event",
            "id": id,
            "type": event_type,
            "source": "conveyor",
            "specversion": "1.0",
            "project": PROJECT,
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "datacontenttype": "application/json",
            "data": data,
        });
        let record = OutgoingRecord {
            topic: self.topic.clone(),
            key: Some(id.to_string()),
            payload: Bytes::from(envelope.to_string()),
            headers: Vec::new(),
        };
        self.producer.send(record, self.timeout).await?;
        Ok(true)
    }
}
