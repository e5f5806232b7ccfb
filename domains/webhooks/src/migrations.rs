//! Webhook endpoints, posted notifications, deliveries (one per notification and endpoint)
//! and their attempts.

use conveyor_actors::store::migrations::Indexes;
use conveyor_actors::store::schema::prelude::*;

mod lease_indexes;
mod ordering;

/// This crate's migrations, in order (the engine lists every crate's).
pub fn migrations() -> Vec<Box<dyn Migration>> {
    vec![
        Box::new(CreateWebhooks),
        // Indexes the retention purges use (once made by one migration for every crate).
        Box::new(Indexes {
            name: "m20261202_000011_webhooks_retention_indexes",
            indexes: &[
                ("webhook_deliveries_finished", "webhook_deliveries", &["status", "updated_at"]),
                ("webhook_attempts_delivery", "webhook_attempts", &["delivery_id"]),
                ("notifications_received", "notifications", &["received_at"]),
            ],
        }),
        // An endpoint's due-delivery lease reads only its own pending rows, in due order:
        // another endpoint's backlog (a dead one's) is never scanned.
        Box::new(Indexes {
            name: "m20261203_000012_webhooks_endpoint_due_index",
            indexes: &[(
                "webhook_deliveries_endpoint_due",
                "webhook_deliveries",
                &["endpoint_id", "status", "next_attempt_at", "id"],
            )],
        }),
        Box::new(ordering::AddOrdering),
        Box::new(lease_indexes::LeaseIndexes),
    ]
}

/// The runtime's migrations and this crate's: for a store of its own in tests.
pub fn with_runtime() -> Vec<Box<dyn Migration>> {
    let mut all = conveyor_actors::store::migrations::migrations();
    all.extend(migrations());
    all
}

pub struct CreateWebhooks;

impl MigrationName for CreateWebhooks {
    fn name(&self) -> &str {
        "m20261123_000005_create_webhooks"
    }
}

#[derive(DeriveIden)]
enum WebhookEndpoints {
    Table,
    Id,
    Owner,
    OwnerIsAdmin,
    Url,
    Description,
    EventTypes,
    Projects,
    RateLimitPerSec,
    Secret,
    PreviousSecret,
    PreviousSecretUntil,
    Disabled,
    DisabledReason,
    FailingSince,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Notifications {
    Table,
    Id,
    EventType,
    Project,
    Payload,
    Accepted,
    ReceivedAt,
}

#[derive(DeriveIden)]
enum WebhookDeliveries {
    Table,
    Id,
    NotificationId,
    EndpointId,
    Status,
    Attempts,
    NextAttemptAt,
    LeaseUntil,
    LastStatusCode,
    LastError,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum WebhookAttempts {
    Table,
    Id,
    DeliveryId,
    NotificationId,
    EndpointId,
    Attempt,
    Outcome,
    ErrorClass,
    StatusCode,
    LatencyMs,
    ResponseExcerpt,
    Error,
    CreatedAt,
}

fn index(name: &str, table: impl IntoIden, cols: Vec<impl IntoIden>) -> IndexCreateStatement {
    let mut index = Index::create();
    index.name(name).table(table).if_not_exists();
    for col in cols {
        index.col(col);
    }
    index.to_owned()
}

#[async_trait::async_trait]
impl Migration for CreateWebhooks {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use WebhookAttempts as A;
        use WebhookDeliveries as D;
        use WebhookEndpoints as E;
        manager
            .create_table(
                Table::create()
                    .table(E::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(E::Id).string().not_null().primary_key())
                    .col(ColumnDef::new(E::Owner).string().not_null())
                    .col(ColumnDef::new(E::OwnerIsAdmin).boolean().not_null())
                    .col(ColumnDef::new(E::Url).text().not_null())
                    .col(ColumnDef::new(E::Description).text().not_null())
                    .col(ColumnDef::new(E::EventTypes).text().not_null())
                    .col(ColumnDef::new(E::Projects).text().not_null())
                    .col(ColumnDef::new(E::RateLimitPerSec).integer().null())
                    .col(ColumnDef::new(E::Secret).string().not_null())
                    .col(ColumnDef::new(E::PreviousSecret).string().null())
                    .col(ColumnDef::new(E::PreviousSecretUntil).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(E::Disabled).boolean().not_null())
                    .col(ColumnDef::new(E::DisabledReason).string().null())
                    .col(ColumnDef::new(E::FailingSince).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(E::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(E::UpdatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager.create_index(index("webhook_endpoints_owner", E::Table, vec![E::Owner])).await?;
        manager
            .create_table(
                Table::create()
                    .table(Notifications::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Notifications::Id).string().not_null().primary_key())
                    .col(ColumnDef::new(Notifications::EventType).string().not_null())
                    .col(ColumnDef::new(Notifications::Project).string().null())
                    .col(ColumnDef::new(Notifications::Payload).text().not_null())
                    .col(ColumnDef::new(Notifications::Accepted).boolean().not_null())
                    .col(ColumnDef::new(Notifications::ReceivedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(D::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(D::Id).string().not_null().primary_key())
                    .col(ColumnDef::new(D::NotificationId).string().not_null())
                    .col(ColumnDef::new(D::EndpointId).string().not_null())
                    .col(ColumnDef::new(D::Status).string().not_null())
                    .col(ColumnDef::new(D::Attempts).integer().not_null())
                    .col(ColumnDef::new(D::NextAttemptAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(D::LeaseUntil).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(D::LastStatusCode).integer().null())
                    .col(ColumnDef::new(D::LastError).text().null())
                    .col(ColumnDef::new(D::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(D::UpdatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        // One delivery per notification and endpoint: a redelivered notification fans out once.
        let mut unique = index("webhook_deliveries_once", D::Table, vec![D::NotificationId, D::EndpointId]);
        manager.create_index(unique.unique().to_owned()).await?;
        manager.create_index(index("webhook_deliveries_due", D::Table, vec![D::Status, D::NextAttemptAt])).await?;
        manager.create_index(index("webhook_deliveries_endpoint", D::Table, vec![D::EndpointId, D::Status])).await?;
        manager
            .create_table(
                Table::create()
                    .table(A::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(A::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(A::DeliveryId).string().not_null())
                    .col(ColumnDef::new(A::NotificationId).string().not_null())
                    .col(ColumnDef::new(A::EndpointId).string().not_null())
                    .col(ColumnDef::new(A::Attempt).integer().not_null())
                    .col(ColumnDef::new(A::Outcome).string().not_null())
                    .col(ColumnDef::new(A::ErrorClass).string().not_null())
                    .col(ColumnDef::new(A::StatusCode).integer().null())
                    .col(ColumnDef::new(A::LatencyMs).big_integer().not_null())
                    .col(ColumnDef::new(A::ResponseExcerpt).text().null())
                    .col(ColumnDef::new(A::Error).text().null())
                    .col(ColumnDef::new(A::CreatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager.create_index(index("webhook_attempts_endpoint", A::Table, vec![A::EndpointId, A::Id])).await?;
        manager.create_index(index("webhook_attempts_notification", A::Table, vec![A::NotificationId])).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            WebhookAttempts::Table.into_iden(),
            WebhookDeliveries::Table.into_iden(),
            Notifications::Table.into_iden(),
            WebhookEndpoints::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
