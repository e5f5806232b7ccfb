//! Loyalty (seed 004): accounts and their ledger, the welcome bonus credited exactly
//! once per user when `user.registered` arrives, and the operations of `POST /loyalty`.

mod accounts;
pub mod views;

use async_trait::async_trait;
use chrono::Utc;

pub use crate::store::loyalty::{LedgerOp, LedgerOutcome};
pub use accounts::{AccountActor, AccountMsg, Ledger, LedgerArgs, LedgerMsg, LedgerState, LedgerSupervisor};
pub use views::{LoyaltyReads, TransactionView};

use crate::saga::SagaEvent;
use crate::states::{LedgerKind, LedgerReason};
use crate::store::IdentityStore;
use crate::store::sagas::outbox_row;
use conveyor_actors::consumer::KeyHandler;
use conveyor_actors::log::Record;
use conveyor_actors::retry::{ErrorClass, HandlerError};
use conveyor_actors::store::classify;

/// An injected failure (see `[faults]`).
#[derive(Debug, thiserror::Error)]
#[error("injected {0} failure (faults configuration)")]
struct Injected(&'static str);

/// Loyalty's side of the registration saga (topic `registration`, keyed by user).
pub struct LoyaltyHandler {
    pub ledger: Ledger,
    pub store: IdentityStore,
    pub welcome_bonus: i64,
    /// Where `loyalty.*` events go.
    pub loyalty_topic: String,
    /// `faults.loyalty_credit_permanent`: every credit fails permanently (the saga compensates).
    pub fail_permanently: bool,
}

fn failed_id(user_id: &str) -> String {
    format!("credit_failed:{user_id}")
}

impl LoyaltyHandler {
    /// Announces a permanent failure; the identity side compensates. The account is opened
    /// at 0 (best effort: the failure may be the store's) so that it is usable without the bonus.
    async fn credit_failed(&self, saga_id: &str, user_id: &str, reason: String) -> Result<(), HandlerError> {
        if let Err(err) = self.store.open_loyalty_account(user_id).await {
            tracing::warn!(error = %conveyor_actors::error::chain(&err), "no loyalty account opened after a failed credit");
        }
        let event = SagaEvent::LoyaltyCreditFailed {
            event_id: failed_id(user_id),
            saga_id: saga_id.to_string(),
            user_id: user_id.to_string(),
            reason,
            occurred_at: Utc::now(),
        };
        let row = outbox_row(failed_id(user_id), &self.loyalty_topic, user_id, event.to_json(), None);
        self.store.announce(row).await.map_err(classify)
    }

    async fn credit(&self, saga_id: &str, user_id: &str) -> Result<(), HandlerError> {
        // Once this side has announced a failure, the failure stands: a redelivered or
        // replayed registration must not credit a user whose saga is being compensated.
        if self.store.outbox_record(&failed_id(user_id)).await.map_err(classify)?.is_some() {
            return Ok(());
        }
        if self.fail_permanently {
            return self.credit_failed(saga_id, user_id, Injected("permanent").to_string()).await;
        }
        let event = SagaEvent::LoyaltyCredited {
            event_id: format!("credited:{user_id}"),
            saga_id: saga_id.to_string(),
            user_id: user_id.to_string(),
            amount: self.welcome_bonus,
            occurred_at: Utc::now(),
        };
        let announce = outbox_row(format!("credited:{user_id}"), &self.loyalty_topic, user_id, event.to_json(), None);
        if self.welcome_bonus <= 0 {
            return self.store.announce(announce).await.map_err(classify);
        }
        let op = LedgerOp {
            user_id: user_id.to_string(),
            kind: LedgerKind::Deposit,
            amount: self.welcome_bonus,
            comment: "welcome bonus".into(),
            reason: LedgerReason::WelcomeBonus,
            // Once per user, however often the event is delivered.
            idempotency_key: Some(format!("welcome:{user_id}")),
        };
        match self.ledger.apply(op, Some(announce)).await {
            Ok(_) => Ok(()),
            Err(err) => {
                let failure = classify(err);
                if failure.class == ErrorClass::Permanent {
                    self.credit_failed(saga_id, user_id, failure.describe()).await
                } else {
                    Err(failure)
                }
            }
        }
    }

    /// The compensating entry for a credit that landed after the saga compensated: takes
    /// back `amount`, or what is left of it if the user already spent some, once per user.
    async fn reverse(&self, saga_id: &str, user_id: &str, amount: i64) -> Result<(), HandlerError> {
        let announce = |taken: i64| {
            let event = SagaEvent::LoyaltyCreditReversed {
                event_id: format!("reversed:{user_id}"),
                saga_id: saga_id.to_string(),
                user_id: user_id.to_string(),
                amount: taken,
                occurred_at: Utc::now(),
            };
            outbox_row(format!("reversed:{user_id}"), &self.loyalty_topic, user_id, event.to_json(), None)
        };
        let mut take = amount;
        // The account's actor serialises operations, but a withdrawal may still come between
        // reading "insufficient" and trying again: a few rounds settle it.
        for _ in 0..3 {
            if take <= 0 {
                return self.store.announce(announce(0)).await.map_err(classify);
            }
            let op = LedgerOp {
                user_id: user_id.to_string(),
                kind: LedgerKind::Withdrawal,
                amount: take,
                comment: "welcome bonus reversed: it landed after the registration was compensated".into(),
                reason: LedgerReason::Reversal,
                idempotency_key: Some(format!("reversal:{user_id}")),
            };
            match self.ledger.apply(op, Some(announce(take))).await.map_err(classify)? {
                LedgerOutcome::Applied(_) | LedgerOutcome::Replayed(_) => return Ok(()),
                LedgerOutcome::Insufficient { balance } => take = balance.min(amount),
            }
        }
        Err(HandlerError::retryable(conveyor_actors::Error::Conflict {
            code: "reversal_raced",
            message: "the balance kept changing under the reversal; it is retried".into(),
        }))
    }
}

#[async_trait]
impl KeyHandler for LoyaltyHandler {
    fn name(&self) -> &'static str {
        "loyalty"
    }

    fn breakers(&self) -> Vec<std::sync::Arc<conveyor_actors::breaker::Breaker>> {
        vec![self.store.breaker().clone()]
    }

    async fn handle(&self, _key: &str, records: &[Record]) -> Result<(), HandlerError> {
        for record in records {
            let event: SagaEvent = serde_json::from_slice(&record.payload).map_err(HandlerError::permanent)?;
            match event {
                SagaEvent::UserRegistered { saga_id, user_id, .. } => self.credit(&saga_id, &user_id).await?,
                SagaEvent::CreditReversalRequested { saga_id, user_id, amount, .. } => {
                    self.reverse(&saga_id, &user_id, amount).await?;
                }
                // Loyalty's own announcements travel on the other topic.
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
