//! Schema migrations, applied in order at start-up and by `conveyor migrate`.

use sea_orm_migration::prelude::*;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateResources)]
    }
}

struct CreateResources;

// Named explicitly: DeriveMigrationName would use the file name, shared by every migration here.
impl MigrationName for CreateResources {
    fn name(&self) -> &str {
        "m20261123_000001_create_resources"
    }
}

#[derive(DeriveIden)]
enum Resources {
    Table,
    Id,
    Value,
    LastOffset,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for CreateResources {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Resources::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Resources::Id).string().not_null().primary_key())
                    .col(ColumnDef::new(Resources::Value).json_binary().not_null())
                    .col(ColumnDef::new(Resources::LastOffset).big_integer().not_null())
                    .col(ColumnDef::new(Resources::UpdatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Resources::Table).to_owned()).await
    }
}
