//! `workflows` (definitions), `workflow_runs` (with a lease, so one daemon runs a run) and
//! `workflow_run_steps` (each step's checkpoint: a resumed run starts at the first step
//! that is not `succeeded` or `skipped`).

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};

use conveyor_actors::Error;

use crate::states::{RunStatus, StepStatus, TriggerKind};
use conveyor_actors::store::Store;

/// The store, with the workflow tables; cheap to clone.
#[derive(Clone)]
pub struct WorkflowStore(Store);

impl WorkflowStore {
    pub fn new(store: Store) -> Self {
        WorkflowStore(store)
    }
}

impl std::ops::Deref for WorkflowStore {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.0
    }
}

pub mod workflow {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "workflows")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub owner: String,
        /// Unique per owner.
        pub name: String,
        pub description: String,
        pub is_active: bool,
        pub trigger_kind: crate::states::TriggerKind,
        /// The event trigger's type pattern, for matching without parsing the spec.
        pub event_type: Option<String>,
        /// The `WorkflowSpec` as JSON.
        pub spec: String,
        /// The schedule's last fire time (missed fires coalesce from here).
        pub last_fired_at: Option<ChronoDateTimeUtc>,
        pub created_at: ChronoDateTimeUtc,
        pub updated_at: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod run {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "workflow_runs")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub workflow_id: String,
        pub owner: String,
        pub status: crate::states::RunStatus,
        pub trigger_kind: crate::states::TriggerKind,
        /// The trigger's input as JSON (the manual input, or the event's envelope).
        pub input: String,
        /// The workflow's spec when the run started: later edits do not change a run.
        pub spec: String,
        /// The first step not finished.
        pub step_index: i32,
        /// Not to be picked up before this (a delay or a backoff in progress).
        pub next_at: ChronoDateTimeUtc,
        pub lease_until: Option<ChronoDateTimeUtc>,
        /// Times a daemon picked it up again after another let go mid-run.
        pub resumes: i32,
        pub error: Option<String>,
        pub created_at: ChronoDateTimeUtc,
        pub started_at: Option<ChronoDateTimeUtc>,
        pub finished_at: Option<ChronoDateTimeUtc>,
        pub updated_at: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod step {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "workflow_run_steps")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub run_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub idx: i32,
        pub name: String,
        pub kind: crate::states::StepKind,
        pub status: crate::states::StepStatus,
        pub attempts: i32,
        pub response_code: Option<i32>,
        /// `{"status", "body"}` for http, `{"value"}` for a condition.
        pub output: Option<String>,
        pub error: Option<String>,
        pub started_at: Option<ChronoDateTimeUtc>,
        pub finished_at: Option<ChronoDateTimeUtc>,
        pub duration_ms: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Runs per status for one owner (the dashboard).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunCounts {
    pub succeeded: u64,
    pub failed: u64,
    pub pending: u64,
    pub cancelled: u64,
}

#[derive(FromQueryResult)]
struct StatusCount {
    status: RunStatus,
    n: i64,
}

impl WorkflowStore {
    /// Inserts a workflow; a taken name is a `workflow_name_taken` conflict.
    pub async fn insert_workflow(&self, row: workflow::Model) -> Result<(), Error> {
        let active: workflow::ActiveModel = row.into();
        let q = workflow::Entity::insert(active)
            .on_conflict(OnConflict::columns([workflow::Column::Owner, workflow::Column::Name]).do_nothing().to_owned())
            .exec_without_returning(self.connection());
        if self.guarded("insert_workflow", q).await? == 0 {
            return Err(name_taken());
        }
        Ok(())
    }

    pub async fn replace_workflow(&self, row: workflow::Model) -> Result<(), Error> {
        let taken = workflow::Entity::find()
            .filter(workflow::Column::Owner.eq(row.owner.clone()))
            .filter(workflow::Column::Name.eq(row.name.clone()))
            .filter(workflow::Column::Id.ne(row.id.clone()))
            .one(self.connection());
        if self.guarded("workflow_name", taken).await?.is_some() {
            return Err(name_taken());
        }
        let active = sea_orm::IntoActiveModel::into_active_model(row).reset_all();
        self.guarded("replace_workflow", workflow::Entity::update(active).exec(self.connection())).await.map_err(|e| {
            if matches!(&e, Error::Store { source, .. } if matches!(source.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_)))) {
                name_taken()
            } else {
                e
            }
        })?;
        Ok(())
    }

    pub async fn get_workflow(&self, id: &str) -> Result<Option<workflow::Model>, Error> {
        self.guarded("get_workflow", workflow::Entity::find_by_id(id.to_string()).one(self.connection())).await
    }

    pub async fn list_workflows(&self, owner: Option<&str>) -> Result<Vec<workflow::Model>, Error> {
        let mut q =
            workflow::Entity::find().order_by_asc(workflow::Column::CreatedAt).order_by_asc(workflow::Column::Id);
        if let Some(owner) = owner {
            q = q.filter(workflow::Column::Owner.eq(owner));
        }
        self.guarded("list_workflows", q.all(self.connection())).await
    }

    /// Active workflows with this trigger kind.
    pub async fn active_workflows(&self, kind: TriggerKind) -> Result<Vec<workflow::Model>, Error> {
        let q = workflow::Entity::find()
            .filter(workflow::Column::IsActive.eq(true))
            .filter(workflow::Column::TriggerKind.eq(kind))
            .all(self.connection());
        self.guarded("active_workflows", q).await
    }

    pub async fn delete_workflow(&self, id: &str) -> Result<bool, Error> {
        let q = workflow::Entity::delete_by_id(id.to_string()).exec(self.connection());
        Ok(self.guarded("delete_workflow", q).await?.rows_affected == 1)
    }

    /// Moves a schedule's last fire time forward; false if another daemon already did.
    pub async fn mark_fired(&self, id: &str, at: DateTime<Utc>) -> Result<bool, Error> {
        use workflow::Column;
        let q = workflow::Entity::update_many()
            .col_expr(Column::LastFiredAt, Expr::value(at))
            .filter(Column::Id.eq(id))
            .filter(Condition::any().add(Column::LastFiredAt.is_null()).add(Column::LastFiredAt.lt(at)))
            .exec(self.connection());
        Ok(self.guarded("mark_fired", q).await?.rows_affected == 1)
    }

    /// Creates a run unless one with its id exists (a redelivered trigger); true if created.
    pub async fn insert_run(&self, row: run::Model) -> Result<bool, Error> {
        let active: run::ActiveModel = row.into();
        let q = run::Entity::insert(active)
            .on_conflict(OnConflict::column(run::Column::Id).do_nothing().to_owned())
            .exec_without_returning(self.connection());
        Ok(self.guarded("insert_run", q).await? == 1)
    }

    pub async fn get_run(&self, id: &str) -> Result<Option<run::Model>, Error> {
        self.guarded("get_run", run::Entity::find_by_id(id.to_string()).one(self.connection())).await
    }

    pub async fn delete_run(&self, id: &str) -> Result<(), Error> {
        self.guarded("delete_run", run::Entity::delete_by_id(id.to_string()).exec(self.connection())).await.map(|_| ())
    }

    /// Runs ready to go (new, resumed after a delay, or abandoned by a daemon that died).
    pub async fn due_runs(&self, now: DateTime<Utc>, limit: u64) -> Result<Vec<run::Model>, Error> {
        use run::Column;
        let q = run::Entity::find()
            .filter(Column::Status.is_in(RunStatus::LIVE))
            .filter(Column::NextAt.lte(now))
            .filter(Condition::any().add(Column::LeaseUntil.is_null()).add(Column::LeaseUntil.lt(now)))
            .order_by_asc(Column::NextAt)
            .limit(limit)
            .all(self.connection());
        self.guarded("due_runs", q).await
    }

    /// Takes (or renews) a run's lease; false if someone else holds it or it finished.
    pub async fn lease_run(
        &self,
        id: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        renew: bool,
    ) -> Result<bool, Error> {
        use run::Column;
        let mut q = run::Entity::update_many()
            .col_expr(Column::LeaseUntil, Expr::value(until))
            .col_expr(Column::UpdatedAt, Expr::value(now))
            .filter(Column::Id.eq(id))
            .filter(Column::Status.is_in(RunStatus::LIVE));
        if !renew {
            q = q.filter(Condition::any().add(Column::LeaseUntil.is_null()).add(Column::LeaseUntil.lt(now)));
        }
        Ok(self.guarded("lease_run", q.exec(self.connection())).await?.rows_affected == 1)
    }

    /// Clears the leases of these runs (a graceful shutdown hands back what it held), so the
    /// next poll of any daemon takes them at once. Finished runs are left alone; the
    /// checkpoints stay as they are. Answers how many leases were cleared.
    pub async fn release_runs(&self, ids: &[String]) -> Result<u64, Error> {
        use run::Column;
        let q = run::Entity::update_many()
            .col_expr(Column::LeaseUntil, Expr::value(Option::<DateTime<Utc>>::None))
            .filter(Column::Id.is_in(ids.iter().cloned()))
            .filter(Column::Status.is_in(RunStatus::LIVE))
            .filter(Column::LeaseUntil.is_not_null())
            .exec(self.connection());
        Ok(self.guarded("release_runs", q).await?.rows_affected)
    }

    /// Writes the run's row as the runner holds it (status, step index, times, error). The
    /// lease is the heartbeat's to extend: it is written only when `release` lets it go.
    /// Writes the run's row unless it was cancelled meanwhile (a cancel is never
    /// overwritten); `false` when it was (or the run is gone).
    pub async fn save_run(&self, row: run::Model, release: bool) -> Result<bool, Error> {
        let q = unless_cancelled(row, release).exec(self.connection());
        Ok(self.guarded("save_run", q).await?.rows_affected == 1)
    }

    /// Cancels a pending or running run: `cancelled`, finished now, its lease cleared, so no
    /// daemon picks it up again. `false` if it was not live (finished, cancelled or unknown).
    pub async fn cancel_run(&self, id: &str, now: DateTime<Utc>) -> Result<bool, Error> {
        use run::Column;
        let q = run::Entity::update_many()
            .col_expr(Column::Status, Expr::value(RunStatus::Cancelled))
            .col_expr(Column::FinishedAt, Expr::value(now))
            .col_expr(Column::LeaseUntil, Expr::value(Option::<DateTime<Utc>>::None))
            .col_expr(Column::UpdatedAt, Expr::value(now))
            .filter(Column::Id.eq(id))
            .filter(Column::Status.is_in(RunStatus::LIVE))
            .exec(self.connection());
        Ok(self.guarded("cancel_run", q).await?.rows_affected == 1)
    }

    /// A step's checkpoint and the run's position, in one transaction: after a crash the
    /// run is either before the step or after it, never half way. `false` when the run was
    /// cancelled meanwhile: the step's row is kept (it ran), the run does not move on.
    pub async fn checkpoint(&self, step_row: step::Model, run_row: Option<run::Model>) -> Result<bool, Error> {
        let work = self.connection().transaction::<_, bool, sea_orm::DbErr>(|txn| {
            Box::pin(async move {
                let active: step::ActiveModel = step_row.into();
                step::Entity::insert(active)
                    .on_conflict(
                        OnConflict::columns([step::Column::RunId, step::Column::Idx])
                            .update_columns([
                                step::Column::Status,
                                step::Column::Attempts,
                                step::Column::ResponseCode,
                                step::Column::Output,
                                step::Column::Error,
                                step::Column::StartedAt,
                                step::Column::FinishedAt,
                                step::Column::DurationMs,
                            ])
                            .to_owned(),
                    )
                    .exec_without_returning(txn)
                    .await?;
                match run_row {
                    Some(run_row) => Ok(unless_cancelled(run_row, false).exec(txn).await?.rows_affected == 1),
                    None => Ok(true),
                }
            })
        });
        self.guarded("checkpoint", async {
            work.await.map_err(|e| match e {
                sea_orm::TransactionError::Connection(e) | sea_orm::TransactionError::Transaction(e) => e,
            })
        })
        .await
    }

    /// Makes a failed run resumable at its failed step, with fresh attempts; false if the
    /// run is not `failed` (a replay that came twice).
    pub async fn retry_failed_run(&self, id: &str) -> Result<bool, Error> {
        use run::Column;
        let now = chrono::Utc::now();
        let q = run::Entity::update_many()
            .col_expr(Column::Status, Expr::value(RunStatus::Pending))
            .col_expr(Column::Error, Expr::value(Option::<String>::None))
            .col_expr(Column::FinishedAt, Expr::value(Option::<DateTime<Utc>>::None))
            .col_expr(Column::LeaseUntil, Expr::value(Option::<DateTime<Utc>>::None))
            .col_expr(Column::NextAt, Expr::value(now))
            .col_expr(Column::UpdatedAt, Expr::value(now))
            .filter(Column::Id.eq(id))
            .filter(Column::Status.eq(RunStatus::Failed))
            .exec(self.connection());
        if self.guarded("retry_failed_run", q).await?.rows_affected != 1 {
            return Ok(false);
        }
        let failed = step::Entity::delete_many()
            .filter(step::Column::RunId.eq(id))
            .filter(step::Column::Status.eq(StepStatus::Failed))
            .exec(self.connection());
        self.guarded("retry_failed_run", failed).await?;
        Ok(true)
    }

    pub async fn run_steps(&self, run_id: &str) -> Result<Vec<step::Model>, Error> {
        let q = step::Entity::find().filter(step::Column::RunId.eq(run_id)).order_by_asc(step::Column::Idx);
        self.guarded("run_steps", q.all(self.connection())).await
    }

    /// A workflow's runs, newest first.
    pub async fn runs_of_workflow(&self, workflow_id: &str, limit: u64) -> Result<Vec<run::Model>, Error> {
        let q = run::Entity::find()
            .filter(run::Column::WorkflowId.eq(workflow_id))
            .order_by_desc(run::Column::CreatedAt)
            .order_by_desc(run::Column::Id)
            .limit(limit);
        self.guarded("runs_of_workflow", q.all(self.connection())).await
    }

    /// An owner's most recent runs (every owner's for `None`).
    pub async fn recent_runs(&self, owner: Option<&str>, limit: u64) -> Result<Vec<run::Model>, Error> {
        let mut q =
            run::Entity::find().order_by_desc(run::Column::CreatedAt).order_by_desc(run::Column::Id).limit(limit);
        if let Some(owner) = owner {
            q = q.filter(run::Column::Owner.eq(owner));
        }
        self.guarded("recent_runs", q.all(self.connection())).await
    }

    pub async fn run_counts(&self, owner: Option<&str>) -> Result<RunCounts, Error> {
        let mut q = run::Entity::find()
            .select_only()
            .column(run::Column::Status)
            .column_as(run::Column::Id.count(), "n")
            .group_by(run::Column::Status);
        if let Some(owner) = owner {
            q = q.filter(run::Column::Owner.eq(owner));
        }
        let mut counts = RunCounts::default();
        for row in self.guarded("run_counts", q.into_model::<StatusCount>().all(self.connection())).await? {
            let n = Ord::max(row.n, 0) as u64;
            match row.status {
                RunStatus::Succeeded => counts.succeeded += n,
                RunStatus::Failed => counts.failed += n,
                RunStatus::Pending | RunStatus::Running => counts.pending += n,
                RunStatus::Cancelled => counts.cancelled += n,
            }
        }
        Ok(counts)
    }
}

/// Every column but the lease (unless `release`, which clears it), of a run that was not
/// cancelled.
fn unless_cancelled(row: run::Model, release: bool) -> sea_orm::UpdateMany<run::Entity> {
    let id = row.id.clone();
    let mut active = sea_orm::IntoActiveModel::into_active_model(row).reset_all();
    active.id = sea_orm::ActiveValue::NotSet;
    if release {
        active.lease_until = sea_orm::ActiveValue::Set(None);
    } else {
        active.lease_until = sea_orm::ActiveValue::NotSet;
    }
    run::Entity::update_many()
        .set(active)
        .filter(run::Column::Id.eq(id))
        .filter(run::Column::Status.ne(RunStatus::Cancelled))
}

fn name_taken() -> Error {
    Error::Conflict { code: "workflow_name_taken", message: "you already have a workflow with this name".into() }
}

#[cfg(test)]
#[path = "store_cancel_tests.rs"]
mod cancel_tests;
