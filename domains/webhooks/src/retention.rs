//! Retention of finished deliveries (with their attempts) and of notifications no delivery refers to.

use chrono::{DateTime, Utc};
use sea_orm::ColumnTrait;
use sea_orm::sea_query::{Condition, Expr, ExprTrait, Query};

use crate::states::DeliveryStatus;
use crate::store::{WebhookStore, attempt, delivery, notification};
use conveyor_actors::Error;
use conveyor_actors::config::RetentionConfig;
use conveyor_actors::retention::PurgeRule;
use conveyor_actors::store::retention::{Batch, Family};

/// The tables' metric labels.
const DELIVERIES: &str = "webhook_deliveries";
const ATTEMPTS: &str = "webhook_attempts";
const NOTIFICATIONS: &str = "notifications";

/// The rules, deliveries before notifications: a notification whose last delivery goes
/// goes in the same round.
pub fn rules(store: &WebhookStore, config: &RetentionConfig, dedup_window_secs: u64) -> Vec<PurgeRule> {
    let (deliveries, notifications) = (store.clone(), store.clone());
    vec![
        PurgeRule::new("deliveries", config.deliveries(), move |cutoff, n| {
            let store = deliveries.clone();
            async move { store.purge_deliveries(cutoff, n).await }
        }),
        PurgeRule::new("notifications", config.notifications(dedup_window_secs), move |cutoff, n| {
            let store = notifications.clone();
            async move { store.purge_notifications(cutoff, n).await }
        }),
    ]
}

impl WebhookStore {
    /// Finished deliveries last changed before `cutoff`, with their attempts.
    pub async fn purge_deliveries(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use delivery::Column;
        // Checked again at the delete: a resend between the select and it made it pending.
        let finished = move || Column::Status.is_in(DeliveryStatus::FINAL).and(Column::UpdatedAt.lt(cutoff));
        let family = Family::<delivery::Entity, attempt::Entity> {
            op: "purge_deliveries",
            id: Column::Id,
            parent_of_child: attempt::Column::DeliveryId,
            tables: (DELIVERIES, ATTEMPTS),
        };
        self.purge_family(family, finished, limit).await
    }

    /// Notifications received before `cutoff` that no delivery refers to (a delivery still
    /// needs its notification's payload, a finished one for a resend).
    pub async fn purge_notifications(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use notification::{Column, Entity};
        let referenced = Query::select()
            .expr(Expr::val(1))
            .from(delivery::Entity)
            .and_where(Expr::col((delivery::Entity, delivery::Column::NotificationId)).equals((Entity, Column::Id)))
            .to_owned();
        let unreferenced = Condition::all().add(Column::ReceivedAt.lt(cutoff)).add(Expr::exists(referenced).not());
        self.purge_where::<Entity>("purge_notifications", NOTIFICATIONS, Column::Id, unreferenced, limit).await
    }
}

#[cfg(test)]
mod tests;
