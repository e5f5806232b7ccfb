//! The retention actor over a real (SQLite) store: rounds drain every rule in batches,
//! dead letters below the log's start go, and a store error never stops the actor.

#![allow(clippy::unwrap_used)]

use async_trait::async_trait;
use chrono::Duration as Age;
use sea_orm::EntityTrait;

use super::*;
use crate::log::embedded::EmbeddedLog;
use crate::log::{ConsumerHandle, GroupListener, Producer};
use crate::store::retention::tests::{dead_letter, delivery, notification, store};

/// The embedded log, except that retention has deleted the start of some partitions.
struct TrimmedLog {
    inner: EmbeddedLog,
    starts: Vec<(i32, i64)>,
}

#[async_trait]
impl LogBackend for TrimmedLog {
    fn producer(&self) -> Arc<dyn Producer> {
        self.inner.producer()
    }
    async fn ensure_topics(&self, topics: &[String]) -> Result<(), Error> {
        self.inner.ensure_topics(topics).await
    }
    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
        listener: Arc<dyn GroupListener>,
    ) -> Result<Box<dyn ConsumerHandle>, Error> {
        self.inner.subscribe(group, topics, listener).await
    }
    async fn end_offsets(&self, topic: &str) -> Result<Vec<(i32, i64)>, Error> {
        self.inner.end_offsets(topic).await
    }
    async fn start_offsets(&self, _topic: &str) -> Result<Vec<(i32, i64)>, Error> {
        Ok(self.starts.clone())
    }
}

fn rules(batch_size: u64) -> Rules {
    let day = Duration::from_secs(86_400);
    Rules {
        interval: Duration::from_secs(3_600),
        batch_size,
        batch_pause: Duration::from_millis(1),
        deliveries: Some(day * 30),
        notifications: Some(day),
        runs: Some(day * 30),
        sagas: Some(day * 30),
        outbox: Some(day * 7),
        dead_letters: Some(day * 30),
        tokens: Some(Duration::from_secs(3_600)),
    }
}

fn ago(days: i64) -> DateTime<Utc> {
    Utc::now() - Age::days(days)
}

fn log(dir: &tempfile::TempDir, starts: Vec<(i32, i64)>) -> Arc<dyn LogBackend> {
    Arc::new(TrimmedLog { inner: EmbeddedLog::open(&dir.path().join("log"), 2).unwrap(), starts })
}

#[tokio::test]
async fn a_round_drains_every_rule_in_batches_until_one_comes_back_short() {
    let (dir, store) = store().await;
    for i in 0..7 {
        let id = format!("n{i}");
        notification(&store, &id, ago(40)).await;
        delivery(&store, &format!("d{i}"), &id, "succeeded", ago(40)).await;
    }
    delivery(&store, "pending", "n-pending", "pending", ago(40)).await;
    notification(&store, "n-pending", ago(40)).await;
    let args = RetentionArgs { store: store.clone(), log: log(&dir, vec![]), rules: rules(3) };
    let report = round(&args, Utc::now()).await;
    assert_eq!(report.of(Table::WebhookDeliveries), 7);
    assert_eq!(report.of(Table::WebhookAttempts), 14);
    assert_eq!(report.of(Table::Notifications), 7, "deliveries go first, so their notifications follow at once");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    // Deliveries: 3 + 3 + 1; notifications: 3 + 3 + 1; every other rule: one empty batch.
    assert_eq!(report.batches, 3 + 3 + 6, "{report:?}");
    assert!(store.get_delivery("pending").await.unwrap().is_some());
    assert!(store.get_notification("n-pending").await.unwrap().is_some());
    assert_eq!(report.to_string(), "notifications=7 webhook_deliveries=7 webhook_attempts=14");
    let again = round(&args, Utc::now()).await;
    assert_eq!(again.total(), 0, "a second round finds nothing");
}

#[tokio::test]
async fn dead_letters_whose_record_the_log_deleted_are_purged_whatever_their_age() {
    let (dir, store) = store().await;
    for offset in 0..5 {
        dead_letter(&store, "dlq", 0, offset, Utc::now()).await;
        dead_letter(&store, "dlq", 1, offset, Utc::now()).await;
    }
    let args = RetentionArgs { store: store.clone(), log: log(&dir, vec![(0, 3), (1, 0)]), rules: rules(2) };
    let report = round(&args, Utc::now()).await;
    assert_eq!(report.of(Table::DeadLetters), 3, "offsets 0..3 of partition 0");
    let left = crate::store::dead_letter::Entity::find().all(store.connection()).await.unwrap();
    assert!(left.iter().all(|r| r.dlq_partition == 1 || r.dlq_offset >= 3), "{left:?}");
    assert_eq!(left.len(), 7);
}

#[tokio::test]
async fn the_actor_answers_purge_now_and_survives_a_store_error() {
    let (dir, store) = store().await;
    delivery(&store, "old", "n", "failed", ago(40)).await;
    store.execute_raw("DROP TABLE outbox").await.unwrap();
    let args = RetentionArgs { store: store.clone(), log: log(&dir, vec![]), rules: rules(100) };
    let retention = spawn(args, None).await.unwrap();
    let report = retention.purge_now().await.unwrap();
    assert_eq!(report.failed, vec![Rule::Outbox], "the failing rule is reported, the others ran");
    assert_eq!(report.of(Table::WebhookDeliveries), 1);
    let again = retention.purge_now().await.unwrap();
    assert_eq!(again.failed, vec![Rule::Outbox], "still alive and trying");
    retention.stop();
}

#[tokio::test]
async fn ticks_run_rounds_on_their_own() {
    let (dir, store) = store().await;
    let mut rules = rules(100);
    rules.interval = Duration::from_millis(50);
    let args = RetentionArgs { store: store.clone(), log: log(&dir, vec![]), rules };
    let retention = spawn(args, None).await.unwrap();
    delivery(&store, "old", "n", "succeeded", ago(40)).await;
    let mut gone = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if store.get_delivery("old").await.unwrap().is_none() {
            gone = true;
            break;
        }
    }
    assert!(gone, "a timer's round purged the delivery without being asked");
    retention.stop();
}
