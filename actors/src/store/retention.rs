//! Batched deletes of finished rows, for the retention actor (`crate::retention`). Each
//! call removes at most `limit` driving rows (and their children, in the same
//! transaction, before their parents) and says how many it selected, so the caller loops
//! until a batch comes back short. The queries are portable: `id IN (SELECT … LIMIT n)`
//! works on SQLite and PostgreSQL alike, and every one of them is served by an index
//! (see `migrations/retention.rs`).

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Condition, Expr, ExprTrait, Query};
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

/// A parent table whose rows own rows of a child table (deleted with them).
struct Family<P: EntityTrait, C: EntityTrait> {
    /// The store operation's name (breaker, query metrics).
    op: &'static str,
    /// The parent's string primary key.
    id: P::Column,
    /// The child's column naming its parent.
    parent_of_child: C::Column,
    /// Metric tables of (parents, children).
    tables: (Table, Table),
}

fn txn_err(e: sea_orm::TransactionError<sea_orm::DbErr>) -> sea_orm::DbErr {
    match e {
        sea_orm::TransactionError::Connection(e) | sea_orm::TransactionError::Transaction(e) => e,
    }
}

impl Store {
    /// Finished deliveries last changed before `cutoff`, with their attempts.
    pub async fn purge_deliveries(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use delivery::Column;
        // Checked again at the delete: a resend between the select and it made it pending.
        let finished = move || Column::Status.is_in(FINAL_DELIVERY).and(Column::UpdatedAt.lt(cutoff));
        let family = Family::<delivery::Entity, attempt::Entity> {
            op: "purge_deliveries",
            id: Column::Id,
            parent_of_child: attempt::Column::DeliveryId,
            tables: (Table::WebhookDeliveries, Table::WebhookAttempts),
        };
        self.purge_family(family, finished, limit).await
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
        let unreferenced = Condition::all().add(Column::ReceivedAt.lt(cutoff)).add(Expr::exists(referenced).not());
        self.purge_where::<Entity>("purge_notifications", Table::Notifications, Column::Id, unreferenced, limit).await
    }

    /// Finished workflow runs that finished before `cutoff`, with their steps.
    pub async fn purge_runs(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use run::Column;
        // Checked again at the delete: a replayed failure may have made the run pending.
        let finished = move || Column::Status.is_in(FINAL_RUN).and(Column::FinishedAt.lt(cutoff));
        let family = Family::<run::Entity, step::Entity> {
            op: "purge_runs",
            id: Column::Id,
            parent_of_child: step::Column::RunId,
            tables: (Table::WorkflowRuns, Table::WorkflowRunSteps),
        };
        self.purge_family(family, finished, limit).await
    }

    /// Finished sagas last changed before `cutoff`, with their steps.
    pub async fn purge_sagas(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use saga::Column;
        let finished = move || Column::Status.is_in(FINAL_SAGA).and(Column::UpdatedAt.lt(cutoff));
        let family = Family::<saga::Entity, saga_step::Entity> {
            op: "purge_sagas",
            id: Column::Id,
            parent_of_child: saga_step::Column::SagaId,
            tables: (Table::Sagas, Table::SagaSteps),
        };
        self.purge_family(family, finished, limit).await
    }

    /// Deletes up to `limit` rows of one table matching `condition`, in one statement
    /// (`id IN (SELECT id … LIMIT n)`, which SQLite and PostgreSQL both accept).
    async fn purge_where<E: EntityTrait>(
        &self,
        op: &'static str,
        table: Table,
        id: E::Column,
        condition: Condition,
        limit: u64,
    ) -> Result<Batch, Error> {
        let ids = Query::select().column(id).from(E::default()).cond_where(condition).limit(limit).to_owned();
        let q = E::delete_many().filter(id.in_subquery(ids)).exec(&self.db);
        Ok(Batch::single(table, self.guarded(op, q).await?.rows_affected))
    }

    /// Deletes up to `limit` parents matching `finished` (string ids) and their children,
    /// children first, in one transaction. `finished` is applied again at the parents'
    /// delete, so a parent revived between the select and the delete stays (its children
    /// are gone by then).
    async fn purge_family<P, C, E>(
        &self,
        family: Family<P, C>,
        finished: impl Fn() -> E + Send + Sync + 'static,
        limit: u64,
    ) -> Result<Batch, Error>
    where
        P: EntityTrait,
        C: EntityTrait,
        E: sea_orm::sea_query::IntoCondition,
    {
        let Family { op, id, parent_of_child, tables: (parents, children) } = family;
        let work = self.db.transaction::<_, Batch, sea_orm::DbErr>(move |txn| {
            Box::pin(async move {
                let ids: Vec<String> = P::find()
                    .select_only()
                    .column(id)
                    .filter(finished())
                    .order_by_asc(id)
                    .limit(limit)
                    .into_tuple()
                    .all(txn)
                    .await?;
                if ids.is_empty() {
                    return Ok(Batch::default());
                }
                let child_rows =
                    C::delete_many().filter(parent_of_child.is_in(ids.clone())).exec(txn).await?.rows_affected;
                let parent_rows =
                    P::delete_many().filter(id.is_in(ids.clone())).filter(finished()).exec(txn).await?.rows_affected;
                Ok(Batch { selected: ids.len() as u64, removed: vec![(parents, parent_rows), (children, child_rows)] })
            })
        });
        self.guarded(op, async { work.await.map_err(txn_err) }).await
    }

    /// Outbox records published before `cutoff`; pending and failed ones stay.
    pub async fn purge_outbox(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use outbox::{Column, Entity};
        let published = Condition::all().add(Column::Status.eq(PUBLISHED)).add(Column::PublishedAt.lt(cutoff));
        self.purge_where::<Entity>("purge_outbox", Table::Outbox, Column::Id, published, limit).await
    }

    /// Dead-letter index entries indexed before `cutoff`.
    pub async fn purge_dead_letters_before(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use dead_letter::{Column, Entity};
        let old = Condition::all().add(Column::CreatedAt.lt(cutoff));
        self.purge_where::<Entity>("purge_dead_letters", Table::DeadLetters, Column::Id, old, limit).await
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
        let gone = Condition::all()
            .add(Column::DlqTopic.eq(topic))
            .add(Column::DlqPartition.eq(partition))
            .add(Column::DlqOffset.lt(start));
        self.purge_where::<Entity>("purge_dead_letters", Table::DeadLetters, Column::Id, gone, limit).await
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
        let expired = Condition::all().add(Column::ExpiresAt.lt(cutoff));
        self.purge_where::<Entity>("purge_refresh_tokens", Table::RefreshTokens, Column::Jti, expired, limit).await
    }

    /// Revocations that expired before `cutoff` (every token they covered has expired).
    pub async fn purge_revocations(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use revocation::{Column, Entity};
        let expired = Condition::all().add(Column::ExpiresAt.lt(cutoff));
        self.purge_where::<Entity>("purge_revocations", Table::RevokedTokens, Column::Id, expired, limit).await
    }
}

#[cfg(test)]
pub(crate) mod tests;
