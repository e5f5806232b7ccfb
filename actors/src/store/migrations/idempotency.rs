//! `idempotency_keys` (see `crate::store::idempotency`).

use crate::store::schema::prelude::*;

pub struct CreateIdempotencyKeys;

impl MigrationName for CreateIdempotencyKeys {
    fn name(&self) -> &str {
        "m20261203_000001_create_idempotency_keys"
    }
}

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    Id,
    Scope,
    Subject,
    Key,
    RequestSha256,
    State,
    ResponseStatus,
    ResponseBody,
    CreatedAt,
    ExpiresAt,
}

#[async_trait::async_trait]
impl Migration for CreateIdempotencyKeys {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use IdempotencyKeys as K;
        manager
            .create_table(
                Table::create()
                    .table(K::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(K::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(K::Scope).string().not_null())
                    .col(ColumnDef::new(K::Subject).string().not_null())
                    .col(ColumnDef::new(K::Key).string().not_null())
                    .col(ColumnDef::new(K::RequestSha256).string().not_null())
                    .col(ColumnDef::new(K::State).string().not_null())
                    .col(ColumnDef::new(K::ResponseStatus).integer().null())
                    .col(ColumnDef::new(K::ResponseBody).json_binary().null())
                    .col(ColumnDef::new(K::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(K::ExpiresAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        // One row per key of one client for one operation (the claim's ON CONFLICT target).
        manager
            .create_index(
                Index::create()
                    .name("idempotency_keys_identity")
                    .table(K::Table)
                    .col(K::Scope)
                    .col(K::Subject)
                    .col(K::Key)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        // Retention sweeps by expiry.
        manager
            .create_index(
                Index::create()
                    .name("idempotency_keys_expires")
                    .table(K::Table)
                    .col(K::ExpiresAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(IdempotencyKeys::Table).to_owned()).await
    }
}
