//! The registration saga, choreographed: no orchestrator, each side reacts to the other's
//! events and compensates its own step.
//!
//! ```text
//! identity                         registration topic          loyalty
//! ────────                         ──────────────────          ───────
//! user + saga(started) + outbox ──▶ user.registered ─────────▶ account + welcome bonus (once)
//!   (one transaction)               (outbox relay, retried)     + outbox (one transaction)
//!                                                                   │
//! saga completed ◀──────────────── loyalty.credited ◀───────────────┤
//! saga compensated ◀────────────── loyalty.credit_failed ◀──────────┘ (permanent failure;
//!   (account kept, no bonus)        loyalty topic                      account opened at 0)
//!
//! a credit that lands after the compensation (a replayed dead letter, say):
//! saga compensated + ─────────────▶ loyalty.reversal_requested ─▶ compensating ledger entry
//!   step credit_reversal_requested                                 (`reversal:{user}`, once)
//! step loyalty_credit_reversed ◀─── loyalty.credit_reversed ◀──────┘
//! ```
//!
//! Every step is idempotent: the bonus is keyed `welcome:{user}` and its reversal
//! `reversal:{user}` in the ledger, outbox records have deterministic ids, saga steps are
//! unique per saga, and a saga leaves `started` once — later or repeated events find it
//! ended and change nothing, except a credit arriving after a compensation, which is taken
//! back. Loyalty also remembers its own announced failure (`credit_failed:{user}`), so a
//! redelivered registration never credits a user whose saga it has already failed.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::metrics::metrics;
use crate::states::{SagaKind, SagaStatus, SagaStepStatus};
use crate::store::IdentityStore;
use crate::store::sagas::{outbox, outbox_row, saga, saga_step};
use conveyor_actors::consumer::KeyHandler;
use conveyor_actors::domain_events::DomainEvents;
use conveyor_actors::log::Record;
use conveyor_actors::metrics::{OUTCOME, kv};
use conveyor_actors::retry::HandlerError;
use conveyor_actors::store::classify;

/// Published (when an endpoint subscribes) once the welcome bonus is credited.
pub const LOYALTY_CREDITED: &str = "conveyor.loyalty.credited";
/// Published when a registration saga ends, either way.
pub const SAGA_COMPLETED: &str = "conveyor.saga.completed";
pub const SAGA_COMPENSATED: &str = "conveyor.saga.compensated";

/// Step names (a bounded set: they label metrics).
pub mod step {
    pub const USER_CREATED: &str = "user_created";
    pub const REGISTRATION_PUBLISHED: &str = "registration_published";
    pub const LOYALTY_CREDITED: &str = "loyalty_credited";
    pub const LOYALTY_CREDIT_FAILED: &str = "loyalty_credit_failed";
    pub const REGISTRATION_COMPENSATED: &str = "registration_compensated";
    pub const CREDIT_REVERSAL_REQUESTED: &str = "credit_reversal_requested";
    pub const LOYALTY_CREDIT_REVERSED: &str = "loyalty_credit_reversed";

    /// The constant for a step name read back from the store (metric labels stay bounded).
    pub fn named(name: &str) -> Option<&'static str> {
        [
            USER_CREATED,
            REGISTRATION_PUBLISHED,
            LOYALTY_CREDITED,
            LOYALTY_CREDIT_FAILED,
            REGISTRATION_COMPENSATED,
            CREDIT_REVERSAL_REQUESTED,
            LOYALTY_CREDIT_REVERSED,
        ]
        .into_iter()
        .find(|s| *s == name)
    }
}

/// The saga's events. No email or other private data: ids only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum SagaEvent {
    #[serde(rename = "user.registered")]
    UserRegistered { event_id: String, saga_id: String, user_id: String, occurred_at: DateTime<Utc> },
    #[serde(rename = "loyalty.credited")]
    LoyaltyCredited { event_id: String, saga_id: String, user_id: String, amount: i64, occurred_at: DateTime<Utc> },
    #[serde(rename = "loyalty.credit_failed")]
    LoyaltyCreditFailed {
        event_id: String,
        saga_id: String,
        user_id: String,
        reason: String,
        occurred_at: DateTime<Utc>,
    },
    /// Identity asks loyalty to take back a credit that landed after the saga compensated.
    #[serde(rename = "loyalty.reversal_requested")]
    CreditReversalRequested {
        event_id: String,
        saga_id: String,
        user_id: String,
        amount: i64,
        occurred_at: DateTime<Utc>,
    },
    /// Loyalty took back `amount` (less than asked if the points were already spent).
    #[serde(rename = "loyalty.credit_reversed")]
    LoyaltyCreditReversed {
        event_id: String,
        saga_id: String,
        user_id: String,
        amount: i64,
        occurred_at: DateTime<Utc>,
    },
}

impl SagaEvent {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

pub(crate) fn step_metric(step: &'static str, outcome: SagaStepStatus) {
    let saga = SagaKind::Registration.as_str();
    metrics().saga_steps.add(1, &[kv("saga", saga), kv("step", step), kv(OUTCOME, outcome.as_str())]);
}

/// The saga row and the outbox record that a registration writes with the user.
pub fn start_registration(user_id: &str, topic: &str) -> (saga::Model, outbox::Model) {
    let now = Utc::now();
    let saga_id = uuid::Uuid::now_v7().to_string();
    let event_id = format!("registered:{user_id}");
    let event = SagaEvent::UserRegistered {
        event_id: event_id.clone(),
        saga_id: saga_id.clone(),
        user_id: user_id.to_string(),
        occurred_at: now,
    };
    let row = saga::Model {
        id: saga_id.clone(),
        kind: SagaKind::Registration,
        user_id: user_id.to_string(),
        status: SagaStatus::Started,
        created_at: now,
        updated_at: now,
    };
    let announce =
        outbox_row(event_id, topic, user_id, event.to_json(), Some((&saga_id, step::REGISTRATION_PUBLISHED)));
    (row, announce)
}

/// `GET /sagas/{id}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SagaView {
    pub id: String,
    pub kind: SagaKind,
    pub user_id: String,
    pub status: SagaStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub steps: Vec<StepView>,
}

/// One step of a saga (`SagaStepView` in the API document: workflows have a `StepView` too).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = SagaStepView)]
pub struct StepView {
    pub step: String,
    pub status: SagaStepStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
}

impl SagaView {
    pub fn new(s: saga::Model, steps: Vec<saga_step::Model>) -> Self {
        SagaView {
            id: s.id,
            kind: s.kind,
            user_id: s.user_id,
            status: s.status,
            created_at: s.created_at,
            updated_at: s.updated_at,
            steps: steps
                .into_iter()
                .map(|st| StepView { step: st.step, status: st.status, detail: st.detail, at: st.at })
                .collect(),
        }
    }
}

/// Counts a registration saga that its transaction committed.
pub fn registration_started() {
    step_metric(step::USER_CREATED, SagaStepStatus::Completed);
    step_metric(step::REGISTRATION_PUBLISHED, SagaStepStatus::Started);
}

/// The identity side's reactions to loyalty's events (topic `loyalty`, keyed by user).
pub struct IdentitySagaHandler {
    pub store: IdentityStore,
    /// Where identity's requests to loyalty go (`loyalty.reversal_requested`).
    pub registration_topic: String,
    /// Publishes `conveyor.loyalty.credited` and `conveyor.saga.*` to subscribed endpoints.
    pub domain: Option<Arc<dyn DomainEvents>>,
}

#[async_trait]
impl KeyHandler for IdentitySagaHandler {
    fn name(&self) -> &'static str {
        "identity-saga"
    }

    fn breakers(&self) -> Vec<std::sync::Arc<conveyor_actors::breaker::Breaker>> {
        vec![self.store.breaker().clone()]
    }

    async fn handle(&self, _key: &str, records: &[Record]) -> Result<(), HandlerError> {
        for record in records {
            let event: SagaEvent = serde_json::from_slice(&record.payload).map_err(HandlerError::permanent)?;
            match event {
                SagaEvent::LoyaltyCredited { saga_id, amount, user_id, .. } => {
                    self.on_credited(saga_id, user_id, amount).await?;
                }
                SagaEvent::LoyaltyCreditFailed { saga_id, reason, .. } => {
                    // Compensation: the registration is marked compensated; the account
                    // stays usable, without the bonus.
                    let steps = [
                        (step::LOYALTY_CREDIT_FAILED, SagaStepStatus::Failed, Some(reason)),
                        (
                            step::REGISTRATION_COMPENSATED,
                            SagaStepStatus::Compensated,
                            Some("account kept without the welcome bonus".to_string()),
                        ),
                    ];
                    if self.store.finish_saga(&saga_id, SagaStatus::Compensated, &steps).await.map_err(classify)? {
                        step_metric(step::LOYALTY_CREDIT_FAILED, SagaStepStatus::Failed);
                        step_metric(step::REGISTRATION_COMPENSATED, SagaStepStatus::Compensated);
                    }
                    let saga =
                        json!({"saga_id": saga_id, "kind": SagaKind::Registration, "status": SagaStatus::Compensated});
                    self.announce(SAGA_COMPENSATED, format!("evt_saga_{saga_id}"), saga).await?;
                }
                SagaEvent::LoyaltyCreditReversed { saga_id, amount, .. } => {
                    let detail = Some(format!("{amount} points taken back"));
                    if self
                        .store
                        .record_saga_step(
                            &saga_id,
                            step::LOYALTY_CREDIT_REVERSED,
                            SagaStepStatus::Compensated,
                            detail,
                            None,
                        )
                        .await
                        .map_err(classify)?
                    {
                        step_metric(step::LOYALTY_CREDIT_REVERSED, SagaStepStatus::Compensated);
                    }
                }
                // Not ours (the registration topic's events are loyalty's to handle).
                SagaEvent::UserRegistered { .. } | SagaEvent::CreditReversalRequested { .. } => {}
            }
        }
        Ok(())
    }
}

impl IdentitySagaHandler {
    async fn on_credited(&self, saga_id: String, user_id: String, amount: i64) -> Result<(), HandlerError> {
        let detail = Some(format!("{amount} points"));
        let steps = [(step::LOYALTY_CREDITED, SagaStepStatus::Completed, detail)];
        if self.store.finish_saga(&saga_id, SagaStatus::Completed, &steps).await.map_err(classify)? {
            step_metric(step::LOYALTY_CREDITED, SagaStepStatus::Completed);
        } else {
            let current = self.store.saga(&saga_id).await.map_err(classify)?.map(|(saga, _)| saga.status);
            if current == Some(SagaStatus::Compensated) {
                // The saga already gave up on the bonus: the credit is taken back.
                return self.request_reversal(saga_id, user_id, amount).await;
            }
        }
        // Announced again on a redelivery too (same ids): a crash between the saga's update
        // and these announcements must not lose them.
        let credited = json!({"user_id": user_id, "amount": amount, "saga_id": saga_id});
        self.announce(LOYALTY_CREDITED, format!("evt_credited_{saga_id}"), credited).await?;
        let saga = json!({"saga_id": saga_id, "kind": SagaKind::Registration, "status": SagaStatus::Completed, "user_id": user_id});
        self.announce(SAGA_COMPLETED, format!("evt_saga_{saga_id}"), saga).await
    }

    async fn request_reversal(&self, saga_id: String, user_id: String, amount: i64) -> Result<(), HandlerError> {
        let event = SagaEvent::CreditReversalRequested {
            event_id: format!("reversal:{user_id}"),
            saga_id: saga_id.clone(),
            user_id: user_id.clone(),
            amount,
            occurred_at: Utc::now(),
        };
        let row = outbox_row(format!("reversal:{user_id}"), &self.registration_topic, &user_id, event.to_json(), None);
        let detail = Some(format!("{amount} points credited after the compensation"));
        if self
            .store
            .record_saga_step(&saga_id, step::CREDIT_REVERSAL_REQUESTED, SagaStepStatus::Started, detail, Some(row))
            .await
            .map_err(classify)?
        {
            step_metric(step::CREDIT_REVERSAL_REQUESTED, SagaStepStatus::Started);
        }
        Ok(())
    }

    /// The ids are the saga's: a redelivered event announces nothing new.
    async fn announce(
        &self,
        event_type: &'static str,
        id: String,
        data: serde_json::Value,
    ) -> Result<(), HandlerError> {
        if let Some(domain) = &self.domain {
            domain.publish(event_type, &id, data).await.map_err(classify)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_ids_only_and_round_trip() {
        let (saga, announce) = start_registration("u-1", "registration");
        assert_eq!(
            (saga.status, announce.key.as_str(), announce.id.as_str()),
            (SagaStatus::Started, "u-1", "registered:u-1")
        );
        let event: SagaEvent = serde_json::from_str(&announce.payload).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(&event, SagaEvent::UserRegistered { user_id, .. } if user_id == "u-1"));
        let value: serde_json::Value = serde_json::from_str(&announce.payload).unwrap_or_default();
        assert_eq!(value["type"], "user.registered");
        let keys: Vec<&String> = value.as_object().map(|o| o.keys().collect()).unwrap_or_default();
        assert_eq!(keys.len(), 5, "type, event_id, saga_id, user_id, occurred_at only: {value}");
    }
}
