//! Each purge against a real (SQLite) store: rows that are finished and old go, with
//! their children; rows that are unfinished or recent stay; batches are bounded.

#![allow(clippy::unwrap_used)]

use chrono::{Duration, Utc};
use sea_orm::{ActiveValue::Set, EntityTrait, PaginatorTrait};

use super::*;
use crate::config::Config;
use crate::store::sagas::{insert_outbox, insert_step, outbox_row};

pub(crate) async fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
    let store = Store::connect(&config).await.unwrap();
    store.migrate().await.unwrap();
    (dir, store)
}

fn ago(days: i64) -> DateTime<Utc> {
    Utc::now() - Duration::days(days)
}

fn cutoff() -> DateTime<Utc> {
    ago(30)
}

pub(crate) async fn delivery(store: &Store, id: &str, notification: &str, status: &str, updated: DateTime<Utc>) {
    let row = delivery::Model {
        id: id.into(),
        notification_id: notification.into(),
        endpoint_id: format!("ep-{id}"),
        status: status.into(),
        attempts: 1,
        next_attempt_at: updated,
        lease_until: None,
        last_status_code: None,
        last_error: None,
        created_at: updated,
        updated_at: updated,
    };
    delivery::Entity::insert(delivery::ActiveModel::from(row)).exec_without_returning(&store.db).await.unwrap();
    let attempts = (1..=2)
        .map(|n| attempt::Model {
            id: 0,
            delivery_id: id.into(),
            notification_id: notification.into(),
            endpoint_id: format!("ep-{id}"),
            attempt: n,
            outcome: "failed".into(),
            error_class: "timeout".into(),
            status_code: None,
            latency_ms: 1,
            response_excerpt: None,
            error: None,
            created_at: updated,
        })
        .collect();
    store.insert_attempts(attempts).await.unwrap();
}

pub(crate) async fn notification(store: &Store, id: &str, received: DateTime<Utc>) {
    let row = notification::Model {
        id: id.into(),
        event_type: "t".into(),
        project: None,
        payload: "{}".into(),
        accepted: true,
        received_at: received,
    };
    store.record_notification(row).await.unwrap();
}

async fn count<E: EntityTrait<Model: Sync>>(store: &Store, _: E) -> u64 {
    E::find().count(&store.db).await.unwrap()
}

#[tokio::test]
async fn finished_old_deliveries_go_with_their_attempts_and_pending_or_recent_ones_stay() {
    let (_dir, store) = store().await;
    delivery(&store, "old-ok", "n1", "succeeded", ago(40)).await;
    delivery(&store, "old-failed", "n1", "failed", ago(40)).await;
    delivery(&store, "old-discarded", "n1", "discarded", ago(31)).await;
    delivery(&store, "old-pending", "n1", "pending", ago(90)).await;
    delivery(&store, "recent-ok", "n1", "succeeded", ago(29)).await;
    let batch = store.purge_deliveries(cutoff(), 100).await.unwrap();
    assert_eq!(batch.selected, 3);
    assert_eq!(batch.removed, vec![(Table::WebhookDeliveries, 3), (Table::WebhookAttempts, 6)]);
    for kept in ["old-pending", "recent-ok"] {
        assert!(store.get_delivery(kept).await.unwrap().is_some(), "{kept} kept");
    }
    assert!(store.get_delivery("old-ok").await.unwrap().is_none());
    assert_eq!(count(&store, attempt::Entity).await, 4, "the kept deliveries keep their attempts");
    assert_eq!(store.purge_deliveries(cutoff(), 100).await.unwrap(), Batch::default(), "nothing left to purge");
}

#[tokio::test]
async fn deliveries_go_in_bounded_batches() {
    let (_dir, store) = store().await;
    for i in 0..5 {
        delivery(&store, &format!("d{i}"), "n", "succeeded", ago(40)).await;
    }
    let sizes: Vec<u64> = [
        store.purge_deliveries(cutoff(), 2).await.unwrap(),
        store.purge_deliveries(cutoff(), 2).await.unwrap(),
        store.purge_deliveries(cutoff(), 2).await.unwrap(),
    ]
    .iter()
    .map(|b| b.selected)
    .collect();
    assert_eq!(sizes, vec![2, 2, 1], "the last batch comes back short");
    assert_eq!(count(&store, delivery::Entity).await, 0);
    assert_eq!(count(&store, attempt::Entity).await, 0);
}

#[tokio::test]
async fn notifications_go_after_their_window_unless_a_delivery_still_refers_to_them() {
    let (_dir, store) = store().await;
    notification(&store, "old-alone", ago(2)).await;
    notification(&store, "old-delivered", ago(2)).await;
    notification(&store, "old-pending", ago(2)).await;
    notification(&store, "recent", Utc::now()).await;
    delivery(&store, "d-done", "old-delivered", "succeeded", ago(2)).await;
    delivery(&store, "d-pending", "old-pending", "pending", ago(2)).await;
    let window = Utc::now() - Duration::days(1);
    let batch = store.purge_notifications(window, 100).await.unwrap();
    assert_eq!(batch, Batch::single(Table::Notifications, 1));
    assert!(store.get_notification("old-alone").await.unwrap().is_none());
    for kept in ["old-delivered", "old-pending", "recent"] {
        assert!(store.get_notification(kept).await.unwrap().is_some(), "{kept} kept");
    }
    // Once its finished delivery is purged, the notification follows.
    store.purge_deliveries(window, 100).await.unwrap();
    assert_eq!(store.purge_notifications(window, 100).await.unwrap().selected, 1);
    assert!(store.get_notification("old-delivered").await.unwrap().is_none());
    assert!(store.get_notification("old-pending").await.unwrap().is_some());
}

async fn run(store: &Store, id: &str, status: &str, finished: Option<DateTime<Utc>>) {
    let created = ago(100);
    let row = run::Model {
        id: id.into(),
        workflow_id: "wf".into(),
        owner: "alice".into(),
        status: status.into(),
        trigger_kind: "manual".into(),
        input: "{}".into(),
        spec: "{}".into(),
        step_index: 1,
        next_at: created,
        lease_until: None,
        resumes: 0,
        error: None,
        created_at: created,
        started_at: Some(created),
        finished_at: finished,
        updated_at: finished.unwrap_or(created),
    };
    assert!(store.insert_run(row).await.unwrap());
    for idx in 0..2 {
        let step = step::Model {
            run_id: id.into(),
            idx,
            name: format!("s{idx}"),
            kind: "http".into(),
            status: "succeeded".into(),
            attempts: 1,
            response_code: Some(200),
            output: None,
            error: None,
            started_at: Some(created),
            finished_at: Some(created),
            duration_ms: Some(1),
        };
        store.checkpoint(step, None).await.unwrap();
    }
}

#[tokio::test]
async fn finished_old_runs_go_with_their_steps_and_unfinished_or_recent_ones_stay() {
    let (_dir, store) = store().await;
    run(&store, "ok", "succeeded", Some(ago(31))).await;
    run(&store, "failed", "failed", Some(ago(31))).await;
    run(&store, "running", "running", None).await;
    run(&store, "pending", "pending", None).await;
    run(&store, "recent", "succeeded", Some(ago(1))).await;
    let batch = store.purge_runs(cutoff(), 100).await.unwrap();
    assert_eq!(batch.removed, vec![(Table::WorkflowRuns, 2), (Table::WorkflowRunSteps, 4)]);
    for gone in ["ok", "failed"] {
        assert!(store.get_run(gone).await.unwrap().is_none());
        assert!(store.run_steps(gone).await.unwrap().is_empty());
    }
    for kept in ["running", "pending", "recent"] {
        assert!(store.get_run(kept).await.unwrap().is_some(), "{kept} kept");
        assert_eq!(store.run_steps(kept).await.unwrap().len(), 2, "{kept} keeps its steps");
    }
}

async fn saga_row(store: &Store, id: &str, status: &str, updated: DateTime<Utc>) {
    let row = saga::Model {
        id: id.into(),
        kind: "registration".into(),
        user_id: format!("u-{id}"),
        status: status.into(),
        created_at: updated,
        updated_at: updated,
    };
    saga::Entity::insert(saga::ActiveModel::from(row)).exec_without_returning(&store.db).await.unwrap();
    insert_step(&store.db, id, "user_created", "completed", None).await.unwrap();
    insert_step(&store.db, id, "registration_published", "completed", None).await.unwrap();
}

#[tokio::test]
async fn finished_old_sagas_go_with_their_steps_and_started_or_recent_ones_stay() {
    let (_dir, store) = store().await;
    saga_row(&store, "completed", "completed", ago(31)).await;
    saga_row(&store, "compensated", "compensated", ago(31)).await;
    saga_row(&store, "started", "started", ago(90)).await;
    saga_row(&store, "recent", "completed", ago(1)).await;
    let batch = store.purge_sagas(cutoff(), 100).await.unwrap();
    assert_eq!(batch.removed, vec![(Table::Sagas, 2), (Table::SagaSteps, 4)]);
    assert!(store.saga("completed").await.unwrap().is_none());
    assert!(store.saga("compensated").await.unwrap().is_none());
    for kept in ["started", "recent"] {
        let (_, steps) = store.saga(kept).await.unwrap().unwrap();
        assert_eq!(steps.len(), 2, "{kept} keeps its steps");
    }
    assert_eq!(count(&store, saga_step::Entity).await, 4, "no orphaned steps are left");
}

#[tokio::test]
async fn published_old_outbox_records_go_and_unpublished_ones_stay() {
    let (_dir, store) = store().await;
    let mut published = outbox_row("published".into(), "t", "k", "{}".into(), None);
    published.status = "published".into();
    published.published_at = Some(ago(8));
    let mut recent = outbox_row("recent".into(), "t", "k", "{}".into(), None);
    recent.status = "published".into();
    recent.published_at = Some(ago(1));
    let mut failed = outbox_row("failed".into(), "t", "k", "{}".into(), None);
    failed.status = "failed".into();
    failed.created_at = ago(60);
    let mut pending = outbox_row("pending".into(), "t", "k", "{}".into(), None);
    pending.created_at = ago(60);
    for row in [published, recent, failed, pending] {
        insert_outbox(&store.db, row).await.unwrap();
    }
    let batch = store.purge_outbox(ago(7), 100).await.unwrap();
    assert_eq!(batch, Batch::single(Table::Outbox, 1));
    assert!(store.outbox_record("published").await.unwrap().is_none());
    for kept in ["recent", "failed", "pending"] {
        assert!(store.outbox_record(kept).await.unwrap().is_some(), "{kept} kept");
    }
}

pub(crate) async fn dead_letter(store: &Store, topic: &str, partition: i32, offset: i64, created: DateTime<Utc>) {
    let row = dead_letter::ActiveModel {
        dlq_topic: Set(topic.into()),
        dlq_partition: Set(partition),
        dlq_offset: Set(offset),
        source_topic: Set("in".into()),
        source_partition: Set(0),
        source_offset: Set(offset),
        key: Set(None),
        payload: Set(b"x".to_vec()),
        headers: Set(serde_json::json!([])),
        error_class: Set("permanent".into()),
        error: Set("bad".into()),
        attempts: Set(1),
        first_failure_ms: Set(0),
        last_failure_ms: Set(0),
        replay_count: Set(0),
        replayed_at: Set(None),
        created_at: Set(created),
        ..Default::default()
    };
    dead_letter::Entity::insert(row).exec_without_returning(&store.db).await.unwrap();
}

#[tokio::test]
async fn dead_letters_go_below_their_log_start_or_past_their_age() {
    let (_dir, store) = store().await;
    for offset in 0..4 {
        dead_letter(&store, "dlq", 0, offset, Utc::now()).await;
        dead_letter(&store, "dlq", 1, offset, Utc::now()).await;
    }
    dead_letter(&store, "dlq", 1, 10, ago(31)).await;
    dead_letter(&store, "other", 0, 0, Utc::now()).await;
    let mut topics = store.dead_letter_topics().await.unwrap();
    topics.sort();
    assert_eq!(topics, vec!["dlq".to_string(), "other".to_string()]);
    let below = store.purge_dead_letters_below("dlq", 0, 2, 100).await.unwrap();
    assert_eq!(below, Batch::single(Table::DeadLetters, 2), "offsets 0 and 1 of partition 0 are gone");
    let old = store.purge_dead_letters_before(cutoff(), 100).await.unwrap();
    assert_eq!(old, Batch::single(Table::DeadLetters, 1));
    assert_eq!(count(&store, dead_letter::Entity).await, 2 + 4 + 1, "partition 1 and the other topic are kept");
}

#[tokio::test]
async fn expired_refresh_tokens_and_revocations_go() {
    let (_dir, store) = store().await;
    store.insert_refresh_token("expired", "f", "u", ago(2)).await.unwrap();
    store.insert_refresh_token("live", "f", "u", Utc::now() + Duration::days(1)).await.unwrap();
    for (id, expires) in [("gone", ago(2)), ("live", Utc::now() + Duration::days(1))] {
        let row = revocation::ActiveModel { id: Set(id.into()), expires_at: Set(expires) };
        revocation::Entity::insert(row).exec_without_returning(&store.db).await.unwrap();
    }
    let cutoff = ago(1);
    assert_eq!(store.purge_refresh_tokens(cutoff, 100).await.unwrap(), Batch::single(Table::RefreshTokens, 1));
    assert_eq!(store.purge_revocations(cutoff, 100).await.unwrap(), Batch::single(Table::RevokedTokens, 1));
    assert!(store.use_refresh_token("live").await.unwrap(), "the live token still works once");
    assert!(store.revoked_until("live").await.unwrap().is_some());
    assert!(store.revoked_until("gone").await.unwrap().is_none());
}

#[tokio::test]
async fn seconds_count_a_delivery_finished_just_now_is_not_past_a_short_retention() {
    let (_dir, store) = store().await;
    delivery(&store, "just-now", "n", "succeeded", Utc::now() - Duration::seconds(2)).await;
    delivery(&store, "a-minute-ago", "n", "succeeded", Utc::now() - Duration::seconds(60)).await;
    let batch = store.purge_deliveries(Utc::now() - Duration::seconds(5), 100).await.unwrap();
    assert_eq!(batch.selected, 1, "{batch:?}");
    assert!(store.get_delivery("just-now").await.unwrap().is_some());
}
