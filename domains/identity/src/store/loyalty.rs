//! The loyalty ledger: `loyalty_accounts` (balance, never below zero — the database
//! checks it too) and `loyalty_transactions` (every deposit and withdrawal; the balance is
//! their sum). Writes come from one account actor at a time.

use chrono::Utc;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, SqlErr, TransactionTrait,
};

use super::IdentityStore;
use super::sagas::{insert_outbox, outbox};
use crate::states::{LedgerKind, LedgerReason};
use conveyor_actors::Error;

pub mod account {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "loyalty_accounts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: String,
        pub balance: i64,
        pub created_at: ChronoDateTimeUtc,
        pub updated_at: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod transaction {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "loyalty_transactions")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub user_id: String,
        pub kind: crate::states::LedgerKind,
        /// Always positive.
        pub amount: i64,
        pub comment: String,
        pub reason: crate::states::LedgerReason,
        /// Unique: the same operation applied twice is applied once.
        pub idempotency_key: Option<String>,
        pub balance_after: i64,
        pub created_at: ChronoDateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One change to an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerOp {
    pub user_id: String,
    pub kind: LedgerKind,
    pub amount: i64,
    pub comment: String,
    pub reason: LedgerReason,
    pub idempotency_key: Option<String>,
}

/// How an operation ended: with the ledger entry `T` (a row inside the crate, a view at
/// its API).
#[derive(Debug, Clone, PartialEq)]
pub enum LedgerOutcome<T = transaction::Model> {
    Applied(T),
    /// The idempotency key was used before; this is the transaction it made.
    Replayed(T),
    /// A withdrawal larger than the balance; nothing changed.
    Insufficient {
        balance: i64,
    },
}

impl<T> LedgerOutcome<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> LedgerOutcome<U> {
        match self {
            LedgerOutcome::Applied(t) => LedgerOutcome::Applied(f(t)),
            LedgerOutcome::Replayed(t) => LedgerOutcome::Replayed(f(t)),
            LedgerOutcome::Insufficient { balance } => LedgerOutcome::Insufficient { balance },
        }
    }
}

enum Attempt {
    Done(LedgerOutcome),
    Duplicate,
}

impl IdentityStore {
    /// Applies `op` in one transaction, with `announce` (an outbox record) written in the
    /// same transaction when the operation is applied or replayed.
    pub async fn apply_ledger(&self, op: &LedgerOp, announce: Option<outbox::Model>) -> Result<LedgerOutcome, Error> {
        if self.injected_ledger_failure() {
            // Through the breaker and the error classification, like a real dropped connection.
            let dropped = DbErr::Conn(sea_orm::RuntimeErr::Internal("injected ledger failure ([faults])".into()));
            return self.guarded("apply_ledger", async { Err(dropped) }).await;
        }
        let work = async {
            // A repeat is answered before the balance is looked at: replaying a withdrawal
            // that emptied the account must not turn into "insufficient".
            if let Some(existing) = self.by_idempotency_key(op).await? {
                if let Some(row) = announce {
                    insert_outbox(self.connection(), row).await?;
                }
                return Ok(LedgerOutcome::Replayed(existing));
            }
            match self.try_apply(op, announce.clone()).await? {
                Attempt::Done(outcome) => Ok(outcome),
                // Another process applied the same key between the check and the insert.
                Attempt::Duplicate => {
                    let existing = self
                        .by_idempotency_key(op)
                        .await?
                        .ok_or_else(|| DbErr::RecordNotFound("transaction of a used idempotency key".into()))?;
                    if let Some(row) = announce {
                        insert_outbox(self.connection(), row).await?;
                    }
                    Ok(LedgerOutcome::Replayed(existing))
                }
            }
        };
        self.guarded("apply_ledger", work).await
    }

    async fn by_idempotency_key(&self, op: &LedgerOp) -> Result<Option<transaction::Model>, DbErr> {
        let Some(key) = &op.idempotency_key else { return Ok(None) };
        transaction::Entity::find()
            .filter(transaction::Column::IdempotencyKey.eq(key.as_str()))
            .one(self.connection())
            .await
    }

    async fn try_apply(&self, op: &LedgerOp, announce: Option<outbox::Model>) -> Result<Attempt, DbErr> {
        let txn = self.connection().begin().await?;
        let now = Utc::now();
        let new_account = account::ActiveModel {
            user_id: Set(op.user_id.clone()),
            balance: Set(0),
            created_at: Set(now),
            updated_at: Set(now),
        };
        account::Entity::insert(new_account)
            .on_conflict(OnConflict::column(account::Column::UserId).do_nothing().to_owned())
            .exec_without_returning(&txn)
            .await?;
        let delta = match op.kind {
            LedgerKind::Withdrawal => -op.amount,
            LedgerKind::Deposit => op.amount,
        };
        // Conditional: a withdrawal that would go below zero changes no row. The CHECK
        // constraint backs this up for any writer that forgets.
        let moved = account::Entity::update_many()
            .col_expr(account::Column::Balance, Expr::col(account::Column::Balance).add(delta))
            .col_expr(account::Column::UpdatedAt, Expr::value(now))
            .filter(account::Column::UserId.eq(op.user_id.as_str()))
            .filter(Expr::col(account::Column::Balance).add(delta).gte(0))
            .exec(&txn)
            .await?
            .rows_affected;
        let balance = account::Entity::find_by_id(op.user_id.clone()).one(&txn).await?.map(|a| a.balance).unwrap_or(0);
        if moved == 0 {
            txn.rollback().await?;
            return Ok(Attempt::Done(LedgerOutcome::Insufficient { balance }));
        }
        let row = transaction::ActiveModel {
            user_id: Set(op.user_id.clone()),
            kind: Set(op.kind),
            amount: Set(op.amount),
            comment: Set(op.comment.clone()),
            reason: Set(op.reason),
            idempotency_key: Set(op.idempotency_key.clone()),
            balance_after: Set(balance),
            created_at: Set(now),
            ..Default::default()
        };
        let inserted = match transaction::Entity::insert(row).exec_with_returning(&txn).await {
            Ok(model) => model,
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                txn.rollback().await?;
                return Ok(Attempt::Duplicate);
            }
            Err(e) => return Err(e),
        };
        if let Some(row) = announce {
            insert_outbox(&txn, row).await?;
        }
        txn.commit().await?;
        Ok(Attempt::Done(LedgerOutcome::Applied(inserted)))
    }

    /// Opens the account at 0 unless it exists.
    pub async fn open_loyalty_account(&self, user_id: &str) -> Result<(), Error> {
        let now = Utc::now();
        let row = account::ActiveModel {
            user_id: Set(user_id.to_string()),
            balance: Set(0),
            created_at: Set(now),
            updated_at: Set(now),
        };
        let on_conflict = OnConflict::column(account::Column::UserId).do_nothing().to_owned();
        let insert = account::Entity::insert(row).on_conflict(on_conflict).exec_without_returning(self.connection());
        self.guarded("open_loyalty_account", insert).await.map(drop)
    }

    pub async fn loyalty_account(&self, user_id: &str) -> Result<Option<account::Model>, Error> {
        self.guarded("loyalty_account", account::Entity::find_by_id(user_id.to_string()).one(self.connection())).await
    }

    /// A page of an account's transactions, oldest first, after `after_id`.
    pub async fn loyalty_transactions(
        &self,
        user_id: &str,
        after_id: i64,
        limit: u64,
    ) -> Result<Vec<transaction::Model>, Error> {
        let query = transaction::Entity::find()
            .filter(transaction::Column::UserId.eq(user_id))
            .filter(transaction::Column::Id.gt(after_id))
            .order_by_asc(transaction::Column::Id)
            .limit(limit)
            .all(self.connection());
        self.guarded("loyalty_transactions", query).await
    }
}
