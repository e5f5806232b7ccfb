//! `outbox` (records to publish, written in the same transaction as the change they
//! announce), `sagas` and `saga_steps` (each saga's history, for `GET /sagas/{id}`).

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::IdentityStore;
use crate::states::{OutboxRecordStatus, SagaKind, SagaStatus, SagaStepStatus};
use conveyor_actors::Error;

pub mod outbox {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox")]
    pub struct Model {
        /// Deterministic where the record must be written once (`credited:{user}`).
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub topic: String,
        pub key: String,
        pub payload: String,
        pub status: crate::states::OutboxRecordStatus,
        pub attempts: i32,
        pub next_attempt_at: ChronoDateTimeUtc,
        pub last_error: Option<String>,
        /// The saga step this record completes when published, if any.
        pub saga_id: Option<String>,
        pub saga_step: Option<String>,
        pub created_at: ChronoDateTimeUtc,
        pub published_at: Option<ChronoDateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod saga {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "sagas")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub kind: crate::states::SagaKind,
        pub user_id: String,
        pub status: crate::states::SagaStatus,
        pub created_at: ChronoDateTimeUtc,
        pub updated_at: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod saga_step {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "saga_steps")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub saga_id: String,
        /// Unique per saga: a step recorded twice (a redelivered event) is recorded once.
        pub step: String,
        pub status: crate::states::SagaStepStatus,
        pub detail: Option<String>,
        pub at: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A record for the outbox.
pub fn outbox_row(id: String, topic: &str, key: &str, payload: String, saga: Option<(&str, &str)>) -> outbox::Model {
    let now = Utc::now();
    outbox::Model {
        id,
        topic: topic.to_string(),
        key: key.to_string(),
        payload,
        status: OutboxRecordStatus::Pending,
        attempts: 0,
        next_attempt_at: now,
        last_error: None,
        saga_id: saga.map(|(id, _)| id.to_string()),
        saga_step: saga.map(|(_, step)| step.to_string()),
        created_at: now,
        published_at: None,
    }
}

/// Inserts an outbox record unless one with its id exists (inside a caller's transaction).
pub async fn insert_outbox(db: &impl ConnectionTrait, row: outbox::Model) -> Result<(), DbErr> {
    let active: outbox::ActiveModel = row.into();
    let on_conflict = OnConflict::column(outbox::Column::Id).do_nothing().to_owned();
    outbox::Entity::insert(active).on_conflict(on_conflict).exec_without_returning(db).await.map(drop)
}

/// Records a saga step once (inside a caller's transaction or not).
pub async fn insert_step(
    db: &impl ConnectionTrait,
    saga_id: &str,
    step: &str,
    status: SagaStepStatus,
    detail: Option<String>,
) -> Result<bool, DbErr> {
    let row = saga_step::ActiveModel {
        saga_id: Set(saga_id.to_string()),
        step: Set(step.to_string()),
        status: Set(status),
        detail: Set(detail),
        at: Set(Utc::now()),
        ..Default::default()
    };
    let on_conflict = OnConflict::columns([saga_step::Column::SagaId, saga_step::Column::Step]).do_nothing().to_owned();
    let rows = saga_step::Entity::insert(row).on_conflict(on_conflict).exec_without_returning(db).await?;
    Ok(rows > 0)
}

impl IdentityStore {
    /// Writes one outbox record on its own (no change to go with it).
    pub async fn announce(&self, row: outbox::Model) -> Result<(), Error> {
        self.guarded("announce", insert_outbox(self.connection(), row)).await
    }

    /// Outbox records due for (re)publishing, oldest first.
    pub async fn due_outbox(&self, limit: u64) -> Result<Vec<outbox::Model>, Error> {
        let query = outbox::Entity::find()
            .filter(outbox::Column::Status.is_in(OutboxRecordStatus::UNPUBLISHED))
            .filter(Expr::col(outbox::Column::NextAttemptAt).lte(Expr::value(Utc::now())))
            .order_by_asc(outbox::Column::CreatedAt)
            .limit(limit)
            .all(self.connection());
        self.guarded("due_outbox", query).await
    }

    /// Marks a record published and completes its saga step.
    pub async fn outbox_published(&self, row: &outbox::Model) -> Result<(), Error> {
        let work = async {
            outbox::Entity::update_many()
                .col_expr(outbox::Column::Status, Expr::value(OutboxRecordStatus::Published))
                .col_expr(outbox::Column::PublishedAt, Expr::value(Utc::now()))
                .col_expr(outbox::Column::Attempts, Expr::value(row.attempts + 1))
                .filter(outbox::Column::Id.eq(row.id.as_str()))
                .exec(self.connection())
                .await?;
            if let (Some(saga), Some(step)) = (&row.saga_id, &row.saga_step) {
                insert_step(
                    self.connection(),
                    saga,
                    step,
                    SagaStepStatus::Completed,
                    Some(format!("topic {}", row.topic)),
                )
                .await?;
            }
            Ok(())
        };
        self.guarded("outbox_published", work).await
    }

    /// Marks a publish attempt failed; the relay tries again at `next_attempt_at`.
    pub async fn outbox_failed(
        &self,
        id: &str,
        attempts: i32,
        next: DateTime<Utc>,
        error: String,
    ) -> Result<(), Error> {
        let query = outbox::Entity::update_many()
            .col_expr(outbox::Column::Status, Expr::value(OutboxRecordStatus::Failed))
            .col_expr(outbox::Column::Attempts, Expr::value(attempts))
            .col_expr(outbox::Column::NextAttemptAt, Expr::value(next))
            .col_expr(outbox::Column::LastError, Expr::value(error))
            .filter(outbox::Column::Id.eq(id))
            .exec(self.connection());
        self.guarded("outbox_failed", query).await.map(drop)
    }

    /// Records not yet published (for `/admin/status` and tests).
    pub async fn outbox_backlog(&self) -> Result<u64, Error> {
        use sea_orm::PaginatorTrait;
        let query = outbox::Entity::find()
            .filter(outbox::Column::Status.ne(OutboxRecordStatus::Published))
            .count(self.connection());
        self.guarded("outbox_backlog", query).await
    }

    pub async fn outbox_record(&self, id: &str) -> Result<Option<outbox::Model>, Error> {
        self.guarded("outbox_record", outbox::Entity::find_by_id(id.to_string()).one(self.connection())).await
    }

    pub async fn saga(&self, id: &str) -> Result<Option<(saga::Model, Vec<saga_step::Model>)>, Error> {
        let work = async {
            let Some(s) = saga::Entity::find_by_id(id.to_string()).one(self.connection()).await? else {
                return Ok(None);
            };
            let steps = saga_step::Entity::find()
                .filter(saga_step::Column::SagaId.eq(id))
                .order_by_asc(saga_step::Column::Id)
                .all(self.connection())
                .await?;
            Ok(Some((s, steps)))
        };
        self.guarded("saga", work).await
    }

    pub async fn saga_of_user(&self, user_id: &str, kind: SagaKind) -> Result<Option<saga::Model>, Error> {
        let query = saga::Entity::find()
            .filter(saga::Column::UserId.eq(user_id))
            .filter(saga::Column::Kind.eq(kind))
            .one(self.connection());
        self.guarded("saga_of_user", query).await
    }

    /// Records one step of a saga (once; `false` if it was already there), with the outbox
    /// record that goes with it in the same transaction.
    pub async fn record_saga_step(
        &self,
        saga_id: &str,
        step: &str,
        status: SagaStepStatus,
        detail: Option<String>,
        announce: Option<outbox::Model>,
    ) -> Result<bool, Error> {
        use sea_orm::TransactionTrait;
        let work = async {
            let txn = self.connection().begin().await?;
            let inserted = insert_step(&txn, saga_id, step, status, detail).await?;
            if let Some(row) = announce {
                insert_outbox(&txn, row).await?;
            }
            txn.commit().await?;
            Ok(inserted)
        };
        self.guarded("record_saga_step", work).await
    }

    /// Moves a saga from `started` to `status` and records `step`, atomically; a saga that
    /// already ended is left as it is (events arriving twice or late change nothing).
    pub async fn finish_saga(
        &self,
        saga_id: &str,
        status: SagaStatus,
        steps: &[(&str, SagaStepStatus, Option<String>)],
    ) -> Result<bool, Error> {
        use sea_orm::TransactionTrait;
        let work = async {
            let txn = self.connection().begin().await?;
            let moved = saga::Entity::update_many()
                .col_expr(saga::Column::Status, Expr::value(status))
                .col_expr(saga::Column::UpdatedAt, Expr::value(Utc::now()))
                .filter(saga::Column::Id.eq(saga_id))
                .filter(saga::Column::Status.eq(SagaStatus::Started))
                .exec(&txn)
                .await?
                .rows_affected;
            if moved == 0 {
                txn.rollback().await?;
                return Ok(false);
            }
            for (step, step_status, detail) in steps {
                insert_step(&txn, saga_id, step, *step_status, detail.clone()).await?;
            }
            txn.commit().await?;
            Ok(true)
        };
        self.guarded("finish_saga", work).await
    }
}
