//! Loyalty (seed 004): accounts and their ledger, the welcome bonus credited exactly
//! once per user when `user.registered` arrives, and the operations of `POST /loyalty`.

mod accounts;

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::Utc;

pub use accounts::{AccountActor, AccountMsg, Ledger, LedgerArgs, LedgerMsg, LedgerState, LedgerSupervisor};

use crate::config::FaultsConfig;
use crate::consumer::KeyHandler;
use crate::devices::classify;
use crate::log::Record;
use crate::retry::{ErrorClass, HandlerError};
use crate::saga::{SagaEvent, step, step_metric};
use crate::store::Store;
use crate::store::loyalty::LedgerOp;
use crate::store::sagas::outbox_row;

/// An injected failure (see `[faults]`).
#[derive(Debug, thiserror::Error)]
#[error("injected {0} failure (faults configuration)")]
struct Injected(&'static str);

/// Loyalty's side of the registration saga (topic `registration`, keyed by user).
pub struct LoyaltyHandler {
    pub ledger: Ledger,
    pub store: Store,
    pub welcome_bonus: i64,
    /// Where `loyalty.*` events go.
    pub loyalty_topic: String,
    pub faults: FaultsConfig,
    /// Injected transient failures spent so far, per user.
    pub injected: Mutex<HashMap<String, u32>>,
}

impl LoyaltyHandler {
    fn inject_transient(&self, user_id: &str) -> bool {
        let Ok(mut spent) = self.injected.lock() else { return false };
        let n = spent.entry(user_id.to_string()).or_default();
        if *n < self.faults.loyalty_credit_transient_failures {
            *n += 1;
            return true;
        }
        false
    }

    /// Announces a permanent failure; the identity side compensates.
    async fn credit_failed(&self, saga_id: &str, user_id: &str, reason: String) -> Result<(), HandlerError> {
        let event = SagaEvent::LoyaltyCreditFailed {
            event_id: format!("credit_failed:{user_id}"),
            saga_id: saga_id.to_string(),
            user_id: user_id.to_string(),
            reason,
            occurred_at: Utc::now(),
        };
        let row = outbox_row(format!("credit_failed:{user_id}"), &self.loyalty_topic, user_id, event.to_json(), None);
        self.store.announce(row).await.map_err(classify)?;
        step_metric(step::LOYALTY_CREDIT_FAILED, "failed");
        Ok(())
    }

    async fn credit(&self, saga_id: &str, user_id: &str) -> Result<(), HandlerError> {
        if self.faults.loyalty_credit_permanent {
            return self.credit_failed(saga_id, user_id, Injected("permanent").to_string()).await;
        }
        if self.inject_transient(user_id) {
            return Err(HandlerError::retryable(Injected("transient")));
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
            kind: "d",
            amount: self.welcome_bonus,
            comment: "welcome bonus".into(),
            reason: "welcome_bonus",
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
}

#[async_trait]
impl KeyHandler for LoyaltyHandler {
    fn name(&self) -> &'static str {
        "loyalty"
    }

    fn breakers(&self) -> Vec<std::sync::Arc<crate::breaker::Breaker>> {
        vec![self.store.breaker().clone()]
    }

    async fn handle(&self, _key: &str, records: &[Record]) -> Result<(), HandlerError> {
        for record in records {
            let event: SagaEvent = serde_json::from_slice(&record.payload).map_err(HandlerError::permanent)?;
            if let SagaEvent::UserRegistered { saga_id, user_id, .. } = event {
                self.credit(&saga_id, &user_id).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
