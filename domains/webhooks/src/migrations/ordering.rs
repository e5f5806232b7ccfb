//! Per-key FIFO delivery (`crate::ordering`): the endpoint's key spec, each delivery's key
//! and acceptance time, and the fan-out watermark on notifications.

use conveyor_actors::store::schema::prelude::*;
use sea_orm::sea_query::{ConditionalStatement, DynIden};

/// `webhook_endpoints.ordering_key`, `webhook_deliveries.ordering_key` and `.accepted_at`,
/// `notifications.fanned_out`, and the indexes the head-of-key lease reads.
pub struct AddOrdering;

impl MigrationName for AddOrdering {
    fn name(&self) -> &str {
        "m20261203_000013_webhooks_ordering"
    }
}

#[derive(DeriveIden)]
enum WebhookEndpoints {
    Table,
    OrderingKey,
}

#[derive(DeriveIden)]
pub(super) enum WebhookDeliveries {
    Table,
    EndpointId,
    Status,
    OrderingKey,
    AcceptedAt,
    LeaseUntil,
    Id,
}

#[derive(DeriveIden)]
enum Notifications {
    Table,
    FannedOut,
    ReceivedAt,
}

#[async_trait::async_trait]
impl Migration for AddOrdering {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use WebhookDeliveries as D;
        // SQLite adds one column per statement.
        let add = |table: DynIden, col: ColumnDef| Table::alter().table(table).add_column(col).to_owned();
        manager
            .alter_table(add(
                WebhookEndpoints::Table.into_iden(),
                ColumnDef::new(WebhookEndpoints::OrderingKey).string().null().to_owned(),
            ))
            .await?;
        manager
            .alter_table(add(D::Table.into_iden(), ColumnDef::new(D::OrderingKey).string().null().to_owned()))
            .await?;
        // Rows from before have none and stay unordered.
        manager
            .alter_table(add(
                D::Table.into_iden(),
                ColumnDef::new(D::AcceptedAt).timestamp_with_time_zone().null().to_owned(),
            ))
            .await?;
        // Rows from before were fanned out long ago.
        manager
            .alter_table(add(
                Notifications::Table.into_iden(),
                ColumnDef::new(Notifications::FannedOut).boolean().not_null().default(true).to_owned(),
            ))
            .await?;
        // A key's pending rows in acceptance order (its head), the keys with pending rows
        // (skipped through one by one), and an ordered endpoint's unkeyed pending rows.
        let mut heads = Index::create();
        heads
            .name("webhook_deliveries_key_head")
            .table(D::Table)
            .col(D::EndpointId)
            .col(D::Status)
            .col(D::OrderingKey)
            .col(D::AcceptedAt)
            .col(D::Id)
            .if_not_exists();
        manager.create_index(heads.to_owned()).await?;
        // Whether a key has a delivery leased right now; unordered rows stay out of it.
        manager.create_index(super::lease_indexes::key_leased(false)).await?;
        // The watermark: the oldest notification not fanned out yet (few rows at any time).
        let mut unfanned = Index::create();
        unfanned
            .name("notifications_unfanned")
            .table(Notifications::Table)
            .col(Notifications::ReceivedAt)
            .and_where(Expr::col(Notifications::FannedOut).eq(false))
            .if_not_exists();
        manager.create_index(unfanned.to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, table) in [
            ("notifications_unfanned", Notifications::Table.into_iden()),
            ("webhook_deliveries_key_leased", WebhookDeliveries::Table.into_iden()),
            ("webhook_deliveries_key_head", WebhookDeliveries::Table.into_iden()),
        ] {
            manager.drop_index(Index::drop().name(name).table(table).to_owned()).await?;
        }
        let drop = |table: DynIden, col: DynIden| Table::alter().table(table).drop_column(col).to_owned();
        manager.alter_table(drop(Notifications::Table.into_iden(), Notifications::FannedOut.into_iden())).await?;
        manager
            .alter_table(drop(WebhookDeliveries::Table.into_iden(), WebhookDeliveries::AcceptedAt.into_iden()))
            .await?;
        manager
            .alter_table(drop(WebhookDeliveries::Table.into_iden(), WebhookDeliveries::OrderingKey.into_iden()))
            .await?;
        manager.alter_table(drop(WebhookEndpoints::Table.into_iden(), WebhookEndpoints::OrderingKey.into_iden())).await
    }
}
