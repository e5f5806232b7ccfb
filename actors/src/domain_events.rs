//! The seam through which one domain announces its facts to whoever subscribes: webhook
//! delivery implements [`DomainEvents`] and the engine hands it to the device pipeline and
//! the registration saga, so that no domain crate depends on another.

use async_trait::async_trait;

use crate::Error;

/// Publishes a domain's facts (`conveyor.*` event types) as notifications.
#[async_trait]
pub trait DomainEvents: Send + Sync {
    /// Publishes unless nobody subscribes; `id` must be the same each time the same fact is
    /// published again (a redelivered record), so that subscribers get it once. True if sent.
    async fn publish(&self, event_type: &'static str, id: &str, data: serde_json::Value) -> Result<bool, Error>;
}
