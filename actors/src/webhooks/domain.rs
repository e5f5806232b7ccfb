//! Conveyor's own domain events, published as notifications so that webhook endpoints can
//! subscribe to them like to any posted type. They describe other users' data, so only
//! admins' endpoints receive them ([`super::filter::DOMAIN_PREFIX`]). Nothing is produced
//! for a type no endpoint wants: the device pipeline pays for this only when it is used.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::directory::Directory;
use crate::Error;
use crate::log::{OutgoingRecord, Producer};

pub const RESOURCE_UPDATED: &str = "conveyor.resource.updated";
pub const LOYALTY_CREDITED: &str = "conveyor.loyalty.credited";
pub const SAGA_COMPLETED: &str = "conveyor.saga.completed";
pub const SAGA_COMPENSATED: &str = "conveyor.saga.compensated";
pub const ENDPOINT_DISABLED: &str = "conveyor.endpoint.disabled";
/// The `project` of every domain event.
pub const PROJECT: &str = "conveyor";

/// Publishes domain events to the notifications topic; cheap to clone.
#[derive(Clone)]
pub struct DomainEvents {
    producer: Arc<dyn Producer>,
    topic: String,
    timeout: Duration,
    directory: Directory,
}

impl DomainEvents {
    pub fn new(producer: Arc<dyn Producer>, topic: String, timeout: Duration, directory: Directory) -> Self {
        DomainEvents { producer, topic, timeout, directory }
    }

    /// Publishes unless nobody subscribes; `id` must be the same each time the same fact is
    /// published again (a redelivered record), so that endpoints get it once. True if sent.
    pub async fn publish(&self, event_type: &str, id: &str, data: serde_json::Value) -> Result<bool, Error> {
        if self.directory.matching(event_type, Some(PROJECT)).await?.is_empty() {
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
