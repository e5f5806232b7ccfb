//! Schema migrations, applied in order at start-up and by `conveyor migrate`.

mod identity;
mod resources;
mod retention;
mod saga;
mod webhooks;
mod workflows;

use sea_orm_migration::prelude::*;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(CreateResources),
            Box::new(CreateDeadLetters),
            Box::new(identity::CreateIdentity),
            Box::new(saga::CreateSagaAndLedger),
            Box::new(webhooks::CreateWebhooks),
            Box::new(workflows::CreateWorkflows),
            Box::new(retention::RetentionIndexes),
            Box::new(resources::AddLastPartition),
        ]
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

struct CreateDeadLetters;

impl MigrationName for CreateDeadLetters {
    fn name(&self) -> &str {
        "m20261123_000002_create_dead_letters"
    }
}

#[derive(DeriveIden)]
enum DeadLetters {
    Table,
    Id,
    DlqTopic,
    DlqPartition,
    DlqOffset,
    SourceTopic,
    SourcePartition,
    SourceOffset,
    Key,
    Payload,
    Headers,
    ErrorClass,
    Error,
    Attempts,
    FirstFailureMs,
    LastFailureMs,
    ReplayCount,
    ReplayedAt,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for CreateDeadLetters {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(DeadLetters::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(DeadLetters::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(DeadLetters::DlqTopic).string().not_null())
                    .col(ColumnDef::new(DeadLetters::DlqPartition).integer().not_null())
                    .col(ColumnDef::new(DeadLetters::DlqOffset).big_integer().not_null())
                    .col(ColumnDef::new(DeadLetters::SourceTopic).string().not_null())
                    .col(ColumnDef::new(DeadLetters::SourcePartition).integer().not_null())
                    .col(ColumnDef::new(DeadLetters::SourceOffset).big_integer().not_null())
                    .col(ColumnDef::new(DeadLetters::Key).string().null())
                    .col(ColumnDef::new(DeadLetters::Payload).blob().not_null())
                    .col(ColumnDef::new(DeadLetters::Headers).json_binary().not_null())
                    .col(ColumnDef::new(DeadLetters::ErrorClass).string().not_null())
                    .col(ColumnDef::new(DeadLetters::Error).text().not_null())
                    .col(ColumnDef::new(DeadLetters::Attempts).integer().not_null())
                    .col(ColumnDef::new(DeadLetters::FirstFailureMs).big_integer().not_null())
                    .col(ColumnDef::new(DeadLetters::LastFailureMs).big_integer().not_null())
                    .col(ColumnDef::new(DeadLetters::ReplayCount).integer().not_null())
                    .col(ColumnDef::new(DeadLetters::ReplayedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(DeadLetters::CreatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("dead_letters_dlq_position")
                    .table(DeadLetters::Table)
                    .col(DeadLetters::DlqTopic)
                    .col(DeadLetters::DlqPartition)
                    .col(DeadLetters::DlqOffset)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(DeadLetters::Table).to_owned()).await
    }
}
