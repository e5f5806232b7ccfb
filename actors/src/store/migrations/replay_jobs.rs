//! The dead-letter replay jobs' table.

use crate::store::schema::prelude::*;

pub struct CreateReplayJobs;

impl MigrationName for CreateReplayJobs {
    fn name(&self) -> &str {
        "m20261203_000001_create_replay_jobs"
    }
}

#[derive(DeriveIden)]
enum ReplayJobs {
    Table,
    Id,
    Status,
    SourceTopic,
    ErrorClass,
    SinceMs,
    UntilMs,
    MaxId,
    Cursor,
    Rate,
    Matched,
    Replayed,
    Skipped,
    Failed,
    LastError,
    LeaseOwner,
    LeaseUntil,
    CreatedAt,
    UpdatedAt,
    FinishedAt,
}

#[async_trait::async_trait]
impl Migration for CreateReplayJobs {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use ReplayJobs as J;
        manager
            .create_table(
                Table::create()
                    .table(J::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(J::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(J::Status).string().not_null())
                    .col(ColumnDef::new(J::SourceTopic).string().null())
                    .col(ColumnDef::new(J::ErrorClass).string().null())
                    .col(ColumnDef::new(J::SinceMs).big_integer().null())
                    .col(ColumnDef::new(J::UntilMs).big_integer().null())
                    .col(ColumnDef::new(J::MaxId).big_integer().not_null())
                    .col(ColumnDef::new(J::Cursor).big_integer().not_null())
                    .col(ColumnDef::new(J::Rate).integer().not_null())
                    .col(ColumnDef::new(J::Matched).big_integer().not_null())
                    .col(ColumnDef::new(J::Replayed).big_integer().not_null())
                    .col(ColumnDef::new(J::Skipped).big_integer().not_null())
                    .col(ColumnDef::new(J::Failed).big_integer().not_null())
                    .col(ColumnDef::new(J::LastError).text().null())
                    .col(ColumnDef::new(J::LeaseOwner).string().null())
                    .col(ColumnDef::new(J::LeaseUntil).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(J::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(J::UpdatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(J::FinishedAt).timestamp_with_time_zone().null())
                    .to_owned(),
            )
            .await?;
        // The runner's "running jobs" and retention's "finished before" queries.
        for (name, col) in [("replay_jobs_status", J::Status), ("replay_jobs_finished", J::FinishedAt)] {
            manager
                .create_index(Index::create().name(name).table(J::Table).col(col).if_not_exists().to_owned())
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(ReplayJobs::Table).to_owned()).await
    }
}
