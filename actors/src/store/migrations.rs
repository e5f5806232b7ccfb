//! The runtime's schema migrations and the index-only migration every crate uses.

mod idempotency;
mod indexes;
mod parked;
mod replay_jobs;

use crate::store::schema::prelude::*;
pub use indexes::Indexes;

/// The runtime's own tables: the dead-letter index, the idempotency keys, the replay jobs and the parked keys. The engine lists these with every
/// domain's migrations (names are what a database records, so the order across crates
/// only matters within one crate).
pub fn migrations() -> Vec<Box<dyn Migration>> {
    vec![
        Box::new(CreateDeadLetters),
        // The name of the migration that once made every crate's retention index.
        Box::new(Indexes {
            name: "m20261202_000010_retention_indexes",
            indexes: &[("dead_letters_created", "dead_letters", &["created_at"])],
        }),
        Box::new(idempotency::CreateIdempotencyKeys),
        Box::new(replay_jobs::CreateReplayJobs),
        Box::new(parked::CreateParked),
    ]
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
impl Migration for CreateDeadLetters {
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
