//! `parked_keys` and `parked_records` (see `crate::store::parked`).

use crate::store::schema::prelude::*;

pub struct CreateParked;

impl MigrationName for CreateParked {
    fn name(&self) -> &str {
        "m20261210_000001_create_parked_keys"
    }
}

#[derive(DeriveIden)]
enum ParkedKeys {
    Table,
    Id,
    Topic,
    Partition,
    Key,
    Handler,
    OriginOffset,
    ErrorClass,
    Error,
    ParkedAt,
    ReleasedAt,
    ReleaseOffset,
}

#[derive(DeriveIden)]
enum ParkedRecords {
    Table,
    Id,
    Topic,
    Partition,
    Key,
    Offset,
    Payload,
    Headers,
    TimestampMs,
    ParkedAt,
}

#[async_trait::async_trait]
impl Migration for CreateParked {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use ParkedKeys as K;
        use ParkedRecords as R;
        manager
            .create_table(
                Table::create()
                    .table(K::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(K::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(K::Topic).string().not_null())
                    .col(ColumnDef::new(K::Partition).integer().not_null())
                    .col(ColumnDef::new(K::Key).string().not_null())
                    .col(ColumnDef::new(K::Handler).string().not_null())
                    .col(ColumnDef::new(K::OriginOffset).big_integer().not_null())
                    .col(ColumnDef::new(K::ErrorClass).string().not_null())
                    .col(ColumnDef::new(K::Error).text().not_null())
                    .col(ColumnDef::new(K::ParkedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(K::ReleasedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(K::ReleaseOffset).big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("parked_keys_key")
                    .table(K::Table)
                    .col(K::Topic)
                    .col(K::Key)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        // A partition actor loads its partition's keys when it starts.
        manager
            .create_index(
                Index::create()
                    .name("parked_keys_partition")
                    .table(K::Table)
                    .col(K::Topic)
                    .col(K::Partition)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(R::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(R::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(R::Topic).string().not_null())
                    .col(ColumnDef::new(R::Partition).integer().not_null())
                    .col(ColumnDef::new(R::Key).string().not_null())
                    .col(ColumnDef::new(R::Offset).big_integer().not_null())
                    .col(ColumnDef::new(R::Payload).blob().not_null())
                    .col(ColumnDef::new(R::Headers).json_binary().not_null())
                    .col(ColumnDef::new(R::TimestampMs).big_integer().not_null())
                    .col(ColumnDef::new(R::ParkedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("parked_records_order")
                    .table(R::Table)
                    .col(R::Topic)
                    .col(R::Key)
                    .col(R::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        // A record delivered again after a crash is parked once (the append's ON CONFLICT target).
        manager
            .create_index(
                Index::create()
                    .name("parked_records_position")
                    .table(R::Table)
                    .col(R::Topic)
                    .col(R::Partition)
                    .col(R::Offset)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(ParkedRecords::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(ParkedKeys::Table).to_owned()).await
    }
}
