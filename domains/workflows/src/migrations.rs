//! Workflows, their runs, and each run's steps (the checkpoints a resumed run starts from).

use conveyor_actors::store::migrations::Indexes;
use conveyor_actors::store::schema::prelude::*;

/// This crate's migrations, in order (the engine lists every crate's).
pub fn migrations() -> Vec<Box<dyn Migration>> {
    vec![
        Box::new(CreateWorkflows),
        // Indexes the retention purges use (once made by one migration for every crate).
        Box::new(Indexes {
            name: "m20261202_000011_workflows_retention_indexes",
            indexes: &[("workflow_runs_finished", "workflow_runs", &["status", "finished_at"])],
        }),
    ]
}

/// The runtime's migrations and this crate's: for a store of its own in tests.
pub fn with_runtime() -> Vec<Box<dyn Migration>> {
    let mut all = conveyor_actors::store::migrations::migrations();
    all.extend(migrations());
    all
}

pub struct CreateWorkflows;

impl MigrationName for CreateWorkflows {
    fn name(&self) -> &str {
        "m20261123_000006_create_workflows"
    }
}

#[derive(DeriveIden)]
enum Workflows {
    Table,
    Id,
    Owner,
    Name,
    Description,
    IsActive,
    TriggerKind,
    EventType,
    Spec,
    LastFiredAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum WorkflowRuns {
    Table,
    Id,
    WorkflowId,
    Owner,
    Status,
    TriggerKind,
    Input,
    Spec,
    StepIndex,
    NextAt,
    LeaseUntil,
    Resumes,
    Error,
    CreatedAt,
    StartedAt,
    FinishedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum WorkflowRunSteps {
    Table,
    RunId,
    Idx,
    Name,
    Kind,
    Status,
    Attempts,
    ResponseCode,
    Output,
    Error,
    StartedAt,
    FinishedAt,
    DurationMs,
}

#[async_trait::async_trait]
impl Migration for CreateWorkflows {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use WorkflowRunSteps as S;
        use WorkflowRuns as R;
        use Workflows as W;
        manager
            .create_table(
                Table::create()
                    .table(W::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(W::Id).string().not_null().primary_key())
                    .col(ColumnDef::new(W::Owner).string().not_null())
                    .col(ColumnDef::new(W::Name).string().not_null())
                    .col(ColumnDef::new(W::Description).text().not_null())
                    .col(ColumnDef::new(W::IsActive).boolean().not_null())
                    .col(ColumnDef::new(W::TriggerKind).string().not_null())
                    .col(ColumnDef::new(W::EventType).string().null())
                    .col(ColumnDef::new(W::Spec).text().not_null())
                    .col(ColumnDef::new(W::LastFiredAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(W::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(W::UpdatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("workflows_owner_name")
                    .table(W::Table)
                    .col(W::Owner)
                    .col(W::Name)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(R::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(R::Id).string().not_null().primary_key())
                    .col(ColumnDef::new(R::WorkflowId).string().not_null())
                    .col(ColumnDef::new(R::Owner).string().not_null())
                    .col(ColumnDef::new(R::Status).string().not_null())
                    .col(ColumnDef::new(R::TriggerKind).string().not_null())
                    .col(ColumnDef::new(R::Input).text().not_null())
                    .col(ColumnDef::new(R::Spec).text().not_null())
                    .col(ColumnDef::new(R::StepIndex).integer().not_null())
                    .col(ColumnDef::new(R::NextAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(R::LeaseUntil).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(R::Resumes).integer().not_null())
                    .col(ColumnDef::new(R::Error).text().null())
                    .col(ColumnDef::new(R::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(R::StartedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(R::FinishedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(R::UpdatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        for (name, cols) in [
            ("workflow_runs_due", vec![R::Status, R::NextAt]),
            ("workflow_runs_workflow", vec![R::WorkflowId, R::CreatedAt]),
            ("workflow_runs_owner", vec![R::Owner, R::Status]),
        ] {
            let mut index = Index::create();
            index.name(name).table(R::Table).if_not_exists();
            for col in cols {
                index.col(col);
            }
            manager.create_index(index.to_owned()).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(S::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(S::RunId).string().not_null())
                    .col(ColumnDef::new(S::Idx).integer().not_null())
                    .col(ColumnDef::new(S::Name).string().not_null())
                    .col(ColumnDef::new(S::Kind).string().not_null())
                    .col(ColumnDef::new(S::Status).string().not_null())
                    .col(ColumnDef::new(S::Attempts).integer().not_null())
                    .col(ColumnDef::new(S::ResponseCode).integer().null())
                    .col(ColumnDef::new(S::Output).text().null())
                    .col(ColumnDef::new(S::Error).text().null())
                    .col(ColumnDef::new(S::StartedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(S::FinishedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(S::DurationMs).big_integer().null())
                    .primary_key(Index::create().col(S::RunId).col(S::Idx))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(WorkflowRunSteps::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(WorkflowRuns::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(Workflows::Table).to_owned()).await
    }
}
