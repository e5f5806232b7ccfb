//! Batched deletes of finished rows, for the retention actor (`crate::retention`). Each
//! call removes at most `limit` driving rows (and their children, in the same
//! transaction, before their parents) and says how many it selected, so the caller loops
//! until a batch comes back short. The queries are portable: `id IN (SELECT … LIMIT n)`
//! works on SQLite and PostgreSQL alike, and every one of them is served by an index
//! (see `migrations/retention.rs`).

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait};

use super::Store;
use super::dead_letter;
use super::sagas::{outbox, saga, saga_step};
use super::users::{refresh_token, revocation};
use super::webhooks::{attempt, delivery, notification};
use super::workflows::{run, step};
use crate::Error;

/// A table retention purges; its name is the metric's (bounded) `table` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Notifications,
    WebhookDeliveries,
    WebhookAttempts,
    WorkflowRuns,
    WorkflowRunSteps,
    Sagas,
    SagaSteps,
    Outbox,
    DeadLetters,
    RefreshTokens,
    RevokedTokens,
}

impl Table {
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Notifications => "notifications",
            Table::WebhookDeliveries => "webhook_deliveries",
            Table::WebhookAttempts => "webhook_attempts",
            Table::WorkflowRuns => "workflow_runs",
            Table::WorkflowRunSteps => "workflow_run_steps",
            Table::Sagas => "sagas",
            Table::SagaSteps => "saga_steps",
            Table::Outbox => "outbox",
            Table::DeadLetters => "dead_letters",
            Table::RefreshTokens => "refresh_tokens",
            Table::RevokedTokens => "revoked_tokens",
        }
    }
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Driving rows selected (a batch with fewer than its limit was the last one).
    pub selected: u64,
    /// Rows deleted, per table (children included).
    pub removed: Vec<(Table, u64)>,
}

impl Batch {
    fn single(table: Table, rows: u64) -> Self {
        Batch { selected: rows, removed: vec![(table, rows)] }
    }
}

/// Delivery statuses no worker will touch again (only an admin's resend revives one).
const FINAL_DELIVERY: [&str; 3] = ["succeeded", "failed", "discarded"];
/// Run statuses after which no runner holds the run (`failed` can be retried by a replay).
const FINAL_RUN: [&str; 2] = ["succeeded", "failed"];
/// Saga statuses after which nothing but a late, idempotent event arrives.
const FINAL_SAGA: [&str; 2] = ["completed", "compensated"];
const PUBLISHED: &str = "published";

fn txn_err(e: sea_orm::TransactionError<sea_orm::DbErr>) -> sea_orm::DbErr {
    match e {
        sea_orm::TransactionError::Connection(e) | sea_orm::TransactionError::Transaction(e) => e,
    }
}

impl Store {
    /// Finished deliveries last changed before `cutoff`, with their attempts.
    pub async fn purge_deliveries(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use delivery::{Column, Entity};
        let finished = move || Column::Status.is_in(FINAL_DELIVERY).and(Column::UpdatedAt.lt(cutoff));
        let work = self.db.transaction::<_, Batch, sea_orm::DbErr>(move |txn| {
            Box::pin(async move {
                let ids: Vec<String> = Entity::find()
                    .select_only()
                    .column(Column::Id)
                    .filter(finished())
                    .order_by_asc(Column::Id)
                    .limit(limit)
                    .into_tuple()
                    .all(txn)
                    .await?;
                if ids.is_empty() {
                    return Ok(Batch::default());
                }
                let attempts = attempt::Entity::delete_many()
                    .filter(attempt::Column::DeliveryId.is_in(ids.clone()))
                    .exec(txn)
                    .await?
                    .rows_affected;
                // Checked again: a resend between the select and here made it pending.
                let deliveries =
                    Entity::delete_many().filter(Column::Id.is_in(ids.clone())).filter(finished()).exec(txn).await?;
                Ok(Batch {
                    selected: ids.len() as u64,
                    removed: vec![
                        (Table::WebhookDeliveries, deliveries.rows_affected),
                        (Table::WebhookAttempts, attempts),
                    ],
                })
            })
        });
        self.guarded("purge_deliveries", async { work.await.map_err(txn_err) }).await
    }

    /// Notifications received before `cutoff` that no delivery refers to (a delivery still
    /// needs its notification's payload, a finished one for a resend).
    pub async fn purge_notifications(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use notification::{Column, Entity};
        let referenced = Query::select()
            .expr(Expr::val(1))
            .from(delivery::Entity)
            .and_where(Expr::col((delivery::Entity, delivery::Column::NotificationId)).equals((Entity, Column::Id)))
            .to_owned();
        let ids = Query::select()
            .column(Column::Id)
            .from(Entity)
            .and_where(Column::ReceivedAt.lt(cutoff))
            .and_where(Expr::exists(referenced).not())
            .limit(limit)
            .to_owned();
        let q = Entity::delete_many().filter(Column::Id.in_subquery(ids)).exec(&self.db);
        let rows = self.guarded("purge_notifications", q).await?.rows_affected;
        Ok(Batch::single(Table::Notifications, rows))
    }

    /// Finished workflow runs that finished before `cutoff`, with their steps.
    pub async fn purge_runs(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use run::{Column, Entity};
        let finished = move || Column::Status.is_in(FINAL_RUN).and(Column::FinishedAt.lt(cutoff));
        let work = self.db.transaction::<_, Batch, sea_orm::DbErr>(move |txn| {
            Box::pin(async move {
                let ids: Vec<String> = Entity::find()
                    .select_only()
                    .column(Column::Id)
                    .filter(finished())
                    .order_by_asc(Column::Id)
                    .limit(limit)
                    .into_tuple()
                    .all(txn)
                    .await?;
                if ids.is_empty() {
                    return Ok(Batch::default());
                }
                let steps =
                    step::Entity::delete_many().filter(step::Column::RunId.is_in(ids.clone())).exec(txn).await?;
                // Checked again: a replayed failure may have made the run pending meanwhile.
                let runs =
                    Entity::delete_many().filter(Column::Id.is_in(ids.clone())).filter(finished()).exec(txn).await?;
                Ok(Batch {
                    selected: ids.len() as u64,
                    removed: vec![
                        (Table::WorkflowRuns, runs.rows_affected),
                        (Table::WorkflowRunSteps, steps.rows_affected),
                    ],
                })
            })
        });
        self.guarded("purge_runs", async { work.await.map_err(txn_err) }).await
    }

    /// Finished sagas last changed before `cutoff`, with their steps.
    pub async fn purge_sagas(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use saga::{Column, Entity};
        let finished = move || Column::Status.is_in(FINAL_SAGA).and(Column::UpdatedAt.lt(cutoff));
        let work = self.db.transaction::<_, Batch, sea_orm::DbErr>(move |txn| {
            Box::pin(async move {
                let ids: Vec<String> = Entity::find()
                    .select_only()
                    .column(Column::Id)
                    .filter(finished())
                    .order_by_asc(Column::Id)
                    .limit(limit)
                    .into_tuple()
                    .all(txn)
                    .await?;
                if ids.is_empty() {
                    return Ok(Batch::default());
                }
                let steps = saga_step::Entity::delete_many()
                    .filter(saga_step::Column::SagaId.is_in(ids.clone()))
                    .exec(txn)
                    .await?;
                let sagas =
                    Entity::delete_many().filter(Column::Id.is_in(ids.clone())).filter(finished()).exec(txn).await?;
                Ok(Batch {
                    selected: ids.len() as u64,
                    removed: vec![(Table::Sagas, sagas.rows_affected), (Table::SagaSteps, steps.rows_affected)],
                })
            })
        });
        self.guarded("purge_sagas", async { work.await.map_err(txn_err) }).await
    }

    /// Outbox records published before `cutoff`; pending and failed ones stay.
    pub async fn purge_outbox(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use outbox::{Column, Entity};
        let ids = Query::select()
            .column(Column::Id)
            .from(Entity)
            .and_where(Column::Status.eq(PUBLISHED))
            .and_where(Column::PublishedAt.lt(cutoff))
            .limit(limit)
            .to_owned();
        let q = Entity::delete_many().filter(Column::Id.in_subquery(ids)).exec(&self.db);
        Ok(Batch::single(Table::Outbox, self.guarded("purge_outbox", q).await?.rows_affected))
    }

    /// Dead-letter index entries indexed before `cutoff`.
    pub async fn purge_dead_letters_before(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use dead_letter::{Column, Entity};
        let ids = Query::select()
            .column(Column::Id)
            .from(Entity)
            .and_where(Column::CreatedAt.lt(cutoff))
            .limit(limit)
            .to_owned();
        let q = Entity::delete_many().filter(Column::Id.in_subquery(ids)).exec(&self.db);
        Ok(Batch::single(Table::DeadLetters, self.guarded("purge_dead_letters", q).await?.rows_affected))
    }

    /// Dead-letter index entries of one partition whose record lies below `start` (the
    /// first offset the log still holds): the record they describe is gone.
    pub async fn purge_dead_letters_below(
        &self,
        topic: &str,
        partition: i32,
        start: i64,
        limit: u64,
    ) -> Result<Batch, Error> {
        use dead_letter::{Column, Entity};
        let ids = Query::select()
            .column(Column::Id)
            .from(Entity)
            .and_where(Column::DlqTopic.eq(topic))
            .and_where(Column::DlqPartition.eq(partition))
            .and_where(Column::DlqOffset.lt(start))
            .limit(limit)
            .to_owned();
        let q = Entity::delete_many().filter(Column::Id.in_subquery(ids)).exec(&self.db);
        Ok(Batch::single(Table::DeadLetters, self.guarded("purge_dead_letters", q).await?.rows_affected))
    }

    /// The dead-letter topics the index holds entries of.
    pub async fn dead_letter_topics(&self) -> Result<Vec<String>, Error> {
        use dead_letter::{Column, Entity};
        let q = Entity::find().select_only().column(Column::DlqTopic).distinct().into_tuple::<String>().all(&self.db);
        self.guarded("dead_letter_topics", q).await
    }

    /// Refresh tokens that expired before `cutoff` (an expired token fails verification
    /// before its row is looked up).
    pub async fn purge_refresh_tokens(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use refresh_token::{Column, Entity};
        let ids = Query::select()
            .column(Column::Jti)
            .from(Entity)
            .and_where(Column::ExpiresAt.lt(cutoff))
            .limit(limit)
            .to_owned();
        let q = Entity::delete_many().filter(Column::Jti.in_subquery(ids)).exec(&self.db);
        Ok(Batch::single(Table::RefreshTokens, self.guarded("purge_refresh_tokens", q).await?.rows_affected))
    }

    /// Revocations that expired before `cutoff` (every token they covered has expired).
    pub async fn purge_revocations(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use revocation::{Column, Entity};
        let ids = Query::select()
            .column(Column::Id)
            .from(Entity)
            .and_where(Column::ExpiresAt.lt(cutoff))
            .limit(limit)
            .to_owned();
        let q = Entity::delete_many().filter(Column::Id.in_subquery(ids)).exec(&self.db);
        Ok(Batch::single(Table::RevokedTokens, self.guarded("purge_revocations", q).await?.rows_affected))
    }
}

#[cfg(test)]
pub(crate) mod tests;
