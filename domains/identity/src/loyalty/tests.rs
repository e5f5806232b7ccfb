//! The saga's handlers against a real (SQLite) store, fed events twice and out of order.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::Utc;

use super::*;
use crate::saga::{IdentitySagaHandler, start_registration};
use crate::states::{LedgerKind, LedgerReason, SagaStatus};
use crate::store::loyalty::LedgerOp;
use crate::store::users::user;
use conveyor_actors::config::Config;
use conveyor_actors::log::TopicPartition;

fn record(offset: i64, event: &SagaEvent) -> Record {
    Record {
        tp: TopicPartition::new("t", 0),
        offset,
        key: Some("u1".into()),
        payload: event.to_json().into_bytes().into(),
        headers: vec![],
        timestamp_ms: 0,
    }
}

async fn setup(
    fail_permanently: bool,
) -> (tempfile::TempDir, IdentityStore, LoyaltyHandler, IdentitySagaHandler, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
    let store = IdentityStore::new(conveyor_actors::store::Store::connect(&config).await.unwrap());
    store.migrate(crate::migrations::with_runtime()).await.unwrap();
    let row = user::Model {
        id: "u1".into(),
        email: "u1@example.com".into(),
        password_hash: "x".into(),
        name: "u".into(),
        birthday: "1990-01-01".into(),
        roles: "user".into(),
        created_at: Utc::now(),
    };
    let (saga, announce) = start_registration("u1", "registration");
    let saga_id = saga.id.clone();
    store.insert_user(row, Some((saga, announce))).await.unwrap();
    let (ledger, _) = Ledger::start(store.clone(), Duration::from_secs(60)).await.unwrap();
    let loyalty = LoyaltyHandler {
        ledger,
        store: store.clone(),
        welcome_bonus: 100,
        loyalty_topic: "loyalty".into(),
        fail_permanently,
    };
    let identity =
        IdentitySagaHandler { store: store.clone(), registration_topic: "registration".into(), domain: None };
    (dir, store, loyalty, identity, saga_id)
}

fn registered(saga_id: &str) -> SagaEvent {
    SagaEvent::UserRegistered {
        event_id: "registered:u1".into(),
        saga_id: saga_id.into(),
        user_id: "u1".into(),
        occurred_at: Utc::now(),
    }
}

#[tokio::test]
async fn a_registration_delivered_three_times_credits_once_and_announces_once() {
    let (_dir, store, loyalty, _, saga_id) = setup(false).await;
    let event = registered(&saga_id);
    loyalty.handle("u1", &[record(1, &event), record(2, &event)]).await.unwrap();
    loyalty.handle("u1", &[record(1, &event)]).await.unwrap();
    assert_eq!(store.loyalty_account("u1").await.unwrap().map(|a| a.balance), Some(100));
    assert_eq!(store.loyalty_transactions("u1", 0, 10).await.unwrap().len(), 1);
    let announced = store.outbox_record("credited:u1").await.unwrap().unwrap();
    assert_eq!(announced.topic, "loyalty");
    // One announcement for the registration, one for the credit.
    assert_eq!(store.outbox_backlog().await.unwrap(), 2);
}

#[tokio::test]
async fn late_duplicate_and_reordered_outcomes_change_nothing() {
    let (_dir, store, _, identity, saga_id) = setup(false).await;
    let credited = SagaEvent::LoyaltyCredited {
        event_id: "credited:u1".into(),
        saga_id: saga_id.clone(),
        user_id: "u1".into(),
        amount: 100,
        occurred_at: Utc::now(),
    };
    let failed = SagaEvent::LoyaltyCreditFailed {
        event_id: "credit_failed:u1".into(),
        saga_id: saga_id.clone(),
        user_id: "u1".into(),
        reason: "late".into(),
        occurred_at: Utc::now(),
    };
    identity.handle("u1", &[record(1, &credited), record(2, &credited)]).await.unwrap();
    identity.handle("u1", &[record(3, &failed), record(4, &credited)]).await.unwrap();
    let (saga, steps) = store.saga(&saga_id).await.unwrap().unwrap();
    assert_eq!(saga.status, SagaStatus::Completed, "the first outcome wins; later ones find the saga ended");
    let names: Vec<&str> = steps.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(names, ["user_created", "loyalty_credited"]);
}

#[tokio::test]
async fn a_permanent_failure_is_announced_instead_of_credited() {
    let (_dir, store, loyalty, identity, saga_id) = setup(true).await;
    loyalty.handle("u1", &[record(1, &registered(&saga_id))]).await.unwrap();
    assert_eq!(store.loyalty_account("u1").await.unwrap().map(|a| a.balance), Some(0), "opened, without the bonus");
    let announced = store.outbox_record("credit_failed:u1").await.unwrap().unwrap();
    let event: SagaEvent = serde_json::from_str(&announced.payload).unwrap();
    identity.handle("u1", &[record(1, &event), record(2, &event)]).await.unwrap();
    let (saga, steps) = store.saga(&saga_id).await.unwrap().unwrap();
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(steps.len(), 3, "user_created, loyalty_credit_failed, registration_compensated");
}

/// The outbox record `id` as the event it carries.
async fn announced(store: &IdentityStore, id: &str) -> SagaEvent {
    let row = store.outbox_record(id).await.unwrap().unwrap_or_else(|| panic!("no outbox record {id}"));
    serde_json::from_str(&row.payload).unwrap()
}

#[tokio::test]
async fn after_a_compensation_a_redelivered_registration_credits_nothing() {
    let (_dir, store, mut loyalty, identity, saga_id) = setup(true).await;
    loyalty.handle("u1", &[record(1, &registered(&saga_id))]).await.unwrap();
    identity.handle("u1", &[record(1, &announced(&store, "credit_failed:u1").await)]).await.unwrap();
    // The fault is gone and the registration comes again (a replayed dead letter, say).
    loyalty.fail_permanently = false;
    loyalty.handle("u1", &[record(2, &registered(&saga_id))]).await.unwrap();
    assert_eq!(store.loyalty_account("u1").await.unwrap().map(|a| a.balance), Some(0));
    assert!(store.outbox_record("credited:u1").await.unwrap().is_none());
    assert_eq!(store.saga(&saga_id).await.unwrap().unwrap().0.status, SagaStatus::Compensated);
}

#[tokio::test]
async fn a_credit_landing_after_the_compensation_is_taken_back_once() {
    let (_dir, store, loyalty, identity, saga_id) = setup(false).await;
    loyalty.handle("u1", &[record(1, &registered(&saga_id))]).await.unwrap();
    let credited = announced(&store, "credited:u1").await;
    // The failure outcome reaches identity first (however that came about); then the credit.
    let failed = SagaEvent::LoyaltyCreditFailed {
        event_id: "credit_failed:u1".into(),
        saga_id: saga_id.clone(),
        user_id: "u1".into(),
        reason: "timed out".into(),
        occurred_at: Utc::now(),
    };
    identity.handle("u1", &[record(1, &failed), record(2, &credited), record(3, &credited)]).await.unwrap();
    let reversal = announced(&store, "reversal:u1").await;
    assert!(matches!(&reversal, SagaEvent::CreditReversalRequested { amount: 100, .. }), "{reversal:?}");
    assert_eq!(store.outbox_record("reversal:u1").await.unwrap().unwrap().topic, "registration");

    // The user spent 30 points meanwhile: the reversal takes back the 70 left, once.
    let spend = LedgerOp {
        user_id: "u1".into(),
        kind: LedgerKind::Withdrawal,
        amount: 30,
        comment: "coffee".into(),
        reason: LedgerReason::Manual,
        idempotency_key: None,
    };
    loyalty.ledger.apply(spend, None).await.unwrap();
    loyalty.handle("u1", &[record(4, &reversal), record(5, &reversal)]).await.unwrap();
    assert_eq!(store.loyalty_account("u1").await.unwrap().map(|a| a.balance), Some(0));
    let reasons: Vec<(LedgerReason, i64)> =
        store.loyalty_transactions("u1", 0, 10).await.unwrap().into_iter().map(|t| (t.reason, t.amount)).collect();
    assert_eq!(reasons, [(LedgerReason::WelcomeBonus, 100), (LedgerReason::Manual, 30), (LedgerReason::Reversal, 70)]);

    let reversed = announced(&store, "reversed:u1").await;
    assert!(matches!(&reversed, SagaEvent::LoyaltyCreditReversed { amount: 70, .. }), "{reversed:?}");
    identity.handle("u1", &[record(6, &reversed), record(7, &reversed)]).await.unwrap();
    let (saga, steps) = store.saga(&saga_id).await.unwrap().unwrap();
    assert_eq!(saga.status, SagaStatus::Compensated);
    let names: Vec<&str> = steps.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(
        names,
        [
            "user_created",
            "loyalty_credit_failed",
            "registration_compensated",
            "credit_reversal_requested",
            "loyalty_credit_reversed"
        ]
    );
}

/// The database refuses a negative balance by itself, whatever a writer forgets.
#[tokio::test]
async fn the_database_refuses_a_negative_balance() {
    let (_dir, store, loyalty, _, saga_id) = setup(false).await;
    loyalty.handle("u1", &[record(1, &registered(&saga_id))]).await.unwrap();
    let refused = store.execute_raw("UPDATE loyalty_accounts SET balance = -1 WHERE user_id = 'u1'").await;
    assert!(refused.is_err(), "the CHECK constraint must refuse it");
    assert_eq!(store.loyalty_account("u1").await.unwrap().map(|a| a.balance), Some(100));
}
