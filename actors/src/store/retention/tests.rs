//! The dead-letter purges against a real (SQLite) store.

#![allow(clippy::unwrap_used)]

use chrono::{Duration, Utc};
use sea_orm::{ActiveValue::Set, EntityTrait, PaginatorTrait};

use super::*;
use crate::config::Config;

pub(crate) async fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
    let store = Store::connect(&config).await.unwrap();
    store.migrate(crate::store::migrations::migrations()).await.unwrap();
    (dir, store)
}

fn ago(days: i64) -> DateTime<Utc> {
    Utc::now() - Duration::days(days)
}

fn cutoff() -> DateTime<Utc> {
    ago(30)
}

async fn count<E: EntityTrait<Model: Sync>>(store: &Store, _: E) -> u64 {
    E::find().count(&store.db).await.unwrap()
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
    assert_eq!(below, Batch::single(DEAD_LETTERS, 2), "offsets 0 and 1 of partition 0 are gone");
    let old = store.purge_dead_letters_before(cutoff(), 100).await.unwrap();
    assert_eq!(old, Batch::single(DEAD_LETTERS, 1));
    assert_eq!(count(&store, dead_letter::Entity).await, 2 + 4 + 1, "partition 1 and the other topic are kept");
}
