//! Batched deletes of finished rows, for the retention actor (`crate::retention`). Each
//! call removes at most `limit` driving rows (and their children, in the same
//! transaction, before their parents) and says how many it selected, so the caller loops
//! until a batch comes back short. The queries are portable: `id IN (SELECT … LIMIT n)`
//! works on SQLite and PostgreSQL alike, and every one of them is served by an index
//! (declared with each crate's migrations).

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Condition, Query};
use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};

use super::Store;
use super::dead_letter;
use super::idempotency;
use crate::Error;

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Driving rows selected (a batch with fewer than its limit was the last one).
    pub selected: u64,
    /// Rows deleted, per table (children included); the table names are the metric's
    /// bounded `table` label.
    pub removed: Vec<(&'static str, u64)>,
}

impl Batch {
    pub fn single(table: &'static str, rows: u64) -> Self {
        Batch { selected: rows, removed: vec![(table, rows)] }
    }
}

/// A parent table whose rows own rows of a child table (deleted with them).
pub struct Family<P: EntityTrait, C: EntityTrait> {
    /// The store operation's name (breaker, query metrics).
    pub op: &'static str,
    /// The parent's string primary key.
    pub id: P::Column,
    /// The child's column naming its parent.
    pub parent_of_child: C::Column,
    /// Metric tables of (parents, children).
    pub tables: (&'static str, &'static str),
}

/// The dead-letter index's table label.
pub const DEAD_LETTERS: &str = "dead_letters";
/// The idempotency keys' table label.
pub const IDEMPOTENCY_KEYS: &str = "idempotency_keys";
/// The replay jobs' table label.
pub const REPLAY_JOBS: &str = "replay_jobs";

impl Store {
    /// Deletes up to `limit` rows of one table matching `condition`, in one statement
    /// (`id IN (SELECT id … LIMIT n)`, which SQLite and PostgreSQL both accept).
    pub async fn purge_where<E: EntityTrait>(
        &self,
        op: &'static str,
        table: &'static str,
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
    pub async fn purge_family<P, C, E>(
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
        let work = async move {
            // SQLite: a deferred transaction that reads first takes a snapshot, and if another
            // connection writes before this one's first write, that write fails at once with
            // SQLITE_BUSY (no busy wait can help). Under steady load every batch failed so. An
            // immediate transaction takes the write lock first, waiting for it as any write
            // does. PostgreSQL ignores the mode.
            let immediate = TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            };
            let txn = self.db.begin_with_options(immediate).await?;
            let ids: Vec<String> = P::find()
                .select_only()
                .column(id)
                .filter(finished())
                .order_by_asc(id)
                .limit(limit)
                .into_tuple()
                .all(&txn)
                .await?;
            if ids.is_empty() {
                txn.commit().await?;
                return Ok(Batch::default());
            }
            let child_rows =
                C::delete_many().filter(parent_of_child.is_in(ids.clone())).exec(&txn).await?.rows_affected;
            let parent_rows =
                P::delete_many().filter(id.is_in(ids.clone())).filter(finished()).exec(&txn).await?.rows_affected;
            txn.commit().await?;
            Ok(Batch { selected: ids.len() as u64, removed: vec![(parents, parent_rows), (children, child_rows)] })
        };
        self.guarded(op, work).await
    }

    /// Dead-letter index entries indexed before `cutoff`.
    pub async fn purge_dead_letters_before(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use dead_letter::{Column, Entity};
        let old = Condition::all().add(Column::CreatedAt.lt(cutoff));
        self.purge_where::<Entity>("purge_dead_letters", DEAD_LETTERS, Column::Id, old, limit).await
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
        self.purge_where::<Entity>("purge_dead_letters", DEAD_LETTERS, Column::Id, gone, limit).await
    }

    /// Idempotency keys whose window (or lapsed claim) ended before `cutoff`: they refuse
    /// and replay nothing any more.
    pub async fn purge_idempotency_keys_expired_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: u64,
    ) -> Result<Batch, Error> {
        use idempotency::{Column, Entity};
        let old = Condition::all().add(Column::ExpiresAt.lt(cutoff));
        self.purge_where::<Entity>("purge_idempotency_keys", IDEMPOTENCY_KEYS, Column::Id, old, limit).await
    }

    /// Replay jobs that completed, failed or were cancelled before `cutoff`.
    pub async fn purge_finished_replays_before(&self, cutoff: DateTime<Utc>, limit: u64) -> Result<Batch, Error> {
        use super::replay_job::{Column, Entity, ReplayStatus};
        let finished =
            Condition::all().add(Column::Status.is_in(ReplayStatus::FINAL)).add(Column::FinishedAt.lt(cutoff));
        self.purge_where::<Entity>("purge_replay_jobs", REPLAY_JOBS, Column::Id, finished, limit).await
    }

    /// The dead-letter topics the index holds entries of.
    pub async fn dead_letter_topics(&self) -> Result<Vec<String>, Error> {
        use dead_letter::{Column, Entity};
        let q = Entity::find().select_only().column(Column::DlqTopic).distinct().into_tuple::<String>().all(&self.db);
        self.guarded("dead_letter_topics", q).await
    }
}

#[cfg(test)]
pub(crate) mod tests;
