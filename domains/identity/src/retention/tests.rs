//! Identity retention against a real (SQLite) store: finished sagas with their steps, published outbox records, expired tokens and revocations.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use sea_orm::{ActiveValue::Set, EntityTrait, PaginatorTrait};

use super::*;
use crate::states::{SagaKind, SagaStepStatus};
use crate::store::sagas::{insert_outbox, insert_step, outbox_row, saga, saga_step};
use crate::store::users::revocation;
use conveyor_actors::config::Config;
use conveyor_actors::store::Store;
use conveyor_actors::store::retention::Batch;

pub(crate) async fn store() -> (tempfile::TempDir, IdentityStore) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
    let store = IdentityStore::new(Store::connect(&config).await.unwrap());
    store.migrate(crate::migrations::with_runtime()).await.unwrap();
    (dir, store)
}

fn ago(days: i64) -> DateTime<Utc> {
    Utc::now() - Duration::days(days)
}

fn cutoff() -> DateTime<Utc> {
    ago(30)
}

async fn count<E: EntityTrait<Model: Sync>>(store: &IdentityStore, _: E) -> u64 {
    E::find().count(store.connection()).await.unwrap()
}

async fn saga_row(store: &IdentityStore, id: &str, status: SagaStatus, updated: DateTime<Utc>) {
    let row = saga::Model {
        id: id.into(),
        kind: SagaKind::Registration,
        user_id: format!("u-{id}"),
        status,
        created_at: updated,
        updated_at: updated,
    };
    saga::Entity::insert(saga::ActiveModel::from(row)).exec_without_returning(store.connection()).await.unwrap();
    insert_step(store.connection(), id, "user_created", SagaStepStatus::Completed, None).await.unwrap();
    insert_step(store.connection(), id, "registration_published", SagaStepStatus::Completed, None).await.unwrap();
}

#[tokio::test]
async fn finished_old_sagas_go_with_their_steps_and_started_or_recent_ones_stay() {
    let (_dir, store) = store().await;
    saga_row(&store, "completed", SagaStatus::Completed, ago(31)).await;
    saga_row(&store, "compensated", SagaStatus::Compensated, ago(31)).await;
    saga_row(&store, "started", SagaStatus::Started, ago(90)).await;
    saga_row(&store, "recent", SagaStatus::Completed, ago(1)).await;
    let batch = store.purge_sagas(cutoff(), 100).await.unwrap();
    assert_eq!(batch.removed, vec![(SAGAS, 2), (SAGA_STEPS, 4)]);
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
    published.status = OutboxRecordStatus::Published;
    published.published_at = Some(ago(8));
    let mut recent = outbox_row("recent".into(), "t", "k", "{}".into(), None);
    recent.status = OutboxRecordStatus::Published;
    recent.published_at = Some(ago(1));
    let mut failed = outbox_row("failed".into(), "t", "k", "{}".into(), None);
    failed.status = OutboxRecordStatus::Failed;
    failed.created_at = ago(60);
    let mut pending = outbox_row("pending".into(), "t", "k", "{}".into(), None);
    pending.created_at = ago(60);
    for row in [published, recent, failed, pending] {
        insert_outbox(store.connection(), row).await.unwrap();
    }
    let batch = store.purge_outbox(ago(7), 100).await.unwrap();
    assert_eq!(batch, Batch::single(OUTBOX, 1));
    assert!(store.outbox_record("published").await.unwrap().is_none());
    for kept in ["recent", "failed", "pending"] {
        assert!(store.outbox_record(kept).await.unwrap().is_some(), "{kept} kept");
    }
}

#[tokio::test]
async fn expired_refresh_tokens_and_revocations_go() {
    let (_dir, store) = store().await;
    store.insert_refresh_token("expired", "f", "u", ago(2)).await.unwrap();
    store.insert_refresh_token("live", "f", "u", Utc::now() + Duration::days(1)).await.unwrap();
    for (id, expires) in [("gone", ago(2)), ("live", Utc::now() + Duration::days(1))] {
        let row = revocation::ActiveModel { id: Set(id.into()), expires_at: Set(expires) };
        revocation::Entity::insert(row).exec_without_returning(store.connection()).await.unwrap();
    }
    let cutoff = ago(1);
    assert_eq!(store.purge_refresh_tokens(cutoff, 100).await.unwrap(), Batch::single(REFRESH_TOKENS, 1));
    assert_eq!(store.purge_revocations(cutoff, 100).await.unwrap(), Batch::single(REVOKED_TOKENS, 1));
    assert!(store.use_refresh_token("live").await.unwrap(), "the live token still works once");
    assert!(store.revoked_until("live").await.unwrap().is_some());
    assert!(store.revoked_until("gone").await.unwrap().is_none());
}
