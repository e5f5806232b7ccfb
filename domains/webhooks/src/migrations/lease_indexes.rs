//! Leaves the ordered lease's PostgreSQL plans one right index to choose. With statistics that
//! lag behind a table that just grew (a new endpoint's backlog of thousands, written in
//! seconds), the planner estimates one row for anything and takes the smallest index that
//! matches: `(endpoint_id, status)` for the key skip scan, so each step read the endpoint's
//! whole backlog (1 s per full lease at 8,000 pending in a benchmark), and the leased-key index
//! for a key's head, sorting the key's rows instead of reading its first. The first is a prefix
//! of `webhook_deliveries_endpoint_due` and `webhook_deliveries_key_head`, so it goes; the
//! second holds only leased rows now (an outcome clears the lease), which is all its `NOT EXISTS`
//! asks about, and no query without `lease_until` can use it.

use conveyor_actors::store::schema::prelude::*;
use sea_orm::sea_query::{ConditionalStatement, IndexDropStatement};

use super::ordering::WebhookDeliveries;

pub struct LeaseIndexes;

impl MigrationName for LeaseIndexes {
    fn name(&self) -> &str {
        "m20261204_000014_webhooks_lease_indexes"
    }
}

const ENDPOINT: &str = "webhook_deliveries_endpoint";
const KEY_LEASED: &str = "webhook_deliveries_key_leased";

fn drop(name: &str) -> IndexDropStatement {
    Index::drop().name(name).table(WebhookDeliveries::Table).if_exists().to_owned()
}

/// `webhook_deliveries_key_leased`, with or without the `lease_until IS NOT NULL` condition
/// (without: as `ordering::AddOrdering` created it, so that statement must never change).
pub(super) fn key_leased(only_leased: bool) -> IndexCreateStatement {
    use WebhookDeliveries as D;
    let mut index = Index::create();
    index
        .name(KEY_LEASED)
        .table(D::Table)
        .col(D::EndpointId)
        .col(D::OrderingKey)
        .col(D::LeaseUntil)
        .and_where(Expr::col(D::OrderingKey).is_not_null())
        .if_not_exists();
    if only_leased {
        index.and_where(Expr::col(D::LeaseUntil).is_not_null());
    }
    index.to_owned()
}

#[async_trait::async_trait]
impl Migration for LeaseIndexes {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(drop(ENDPOINT)).await?;
        manager.drop_index(drop(KEY_LEASED)).await?;
        manager.create_index(key_leased(true)).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use WebhookDeliveries as D;
        manager.drop_index(drop(KEY_LEASED)).await?;
        manager.create_index(key_leased(false)).await?;
        manager.create_index(super::index(ENDPOINT, D::Table, vec![D::EndpointId, D::Status])).await
    }
}
