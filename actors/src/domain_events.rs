//! The seam through which one domain announces its facts to whoever subscribes: webhook
//! delivery implements [`DomainEvents`] and the engine hands it to the device pipeline and
//! the registration saga, so that no domain crate depends on another.

use async_trait::async_trait;

use crate::Error;

/// Publishes a domain's facts (`conveyor.*` event types) as notifications.
#[async_trait]
pub trait DomainEvents: Send + Sync {
    /// Whether any subscriber wants `event_type` now: a publisher asks before it builds an
    /// event's data, so that a fact nobody wants costs nothing but this question.
    async fn wanted(&self, event_type: &'static str) -> Result<bool, Error>;

    /// Publishes unless nobody subscribes; `id` must be the same each time the same fact is
    /// published again (a redelivered record), so that subscribers get it once. True if sent.
    async fn publish(&self, event_type: &'static str, id: &str, data: serde_json::Value) -> Result<bool, Error>;
}
