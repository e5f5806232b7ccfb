//! The loyalty reads the API serves: balances, ledgers and sagas, as views rather than rows.

use serde::Serialize;
use utoipa::ToSchema;

use conveyor_actors::Error;

use crate::saga::SagaView;
use crate::store::IdentityStore;
use crate::store::loyalty::transaction;

/// One ledger entry.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TransactionView {
    pub id: i64,
    pub operation: crate::states::LedgerKind,
    pub amount: i64,
    pub comment: String,
    pub reason: crate::states::LedgerReason,
    pub balance_after: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<&transaction::Model> for TransactionView {
    fn from(t: &transaction::Model) -> Self {
        TransactionView {
            id: t.id,
            operation: t.kind,
            amount: t.amount,
            comment: t.comment.clone(),
            reason: t.reason,
            balance_after: t.balance_after,
            created_at: t.created_at,
        }
    }
}

/// Reads of accounts and sagas; cheap to clone.
#[derive(Clone)]
pub struct LoyaltyReads {
    store: IdentityStore,
}

impl LoyaltyReads {
    pub fn new(store: IdentityStore) -> Self {
        LoyaltyReads { store }
    }

    /// The account's balance, if it has an account.
    pub async fn balance(&self, user_id: &str) -> Result<Option<i64>, Error> {
        Ok(self.store.loyalty_account(user_id).await?.map(|a| a.balance))
    }

    /// Up to `limit` ledger entries after `after_id`, oldest first.
    pub async fn transactions(&self, user_id: &str, after_id: i64, limit: u64) -> Result<Vec<TransactionView>, Error> {
        let rows = self.store.loyalty_transactions(user_id, after_id, limit).await?;
        Ok(rows.iter().map(TransactionView::from).collect())
    }

    pub async fn saga(&self, id: &str) -> Result<Option<SagaView>, Error> {
        Ok(self.store.saga(id).await?.map(|(s, steps)| SagaView::new(s, steps)))
    }
}
