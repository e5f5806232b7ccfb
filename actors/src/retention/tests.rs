//! The retention actor over a real (SQLite) store: rounds drain every rule in batches,
//! dead letters below the log's start go, and a failing rule never stops the actor. The
//! domains' rules are tested beside their queries; here a rule is a counter.

#![allow(clippy::unwrap_used)]

use async_trait::async_trait;
use chrono::Duration as Age;
use sea_orm::EntityTrait;

use super::*;
use crate::log::embedded::EmbeddedLog;
use crate::log::{ConsumerHandle, GroupListener, Producer};
use crate::store::retention::DEAD_LETTERS;
use crate::store::retention::tests::{dead_letter, store};
use std::sync::atomic::{AtomicU64, Ordering};

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

/// A rule over `rows` fake rows older than its cutoff: each batch takes up to its limit.
fn counting(name: &'static str, rows: u64) -> (PurgeRule, Arc<AtomicU64>) {
    let left = Arc::new(AtomicU64::new(rows));
    let remaining = left.clone();
    let rule = PurgeRule::new(name, Some(Duration::from_secs(86_400)), move |_cutoff, limit| {
        let left = remaining.clone();
        async move {
            let taken = left.load(Ordering::Acquire).min(limit);
            left.fetch_sub(taken, Ordering::AcqRel);
            Ok(Batch { selected: taken, removed: vec![(name, taken), ("children", taken * 2)] })
        }
    });
    (rule, left)
}

/// A rule whose table is gone.
fn failing(name: &'static str) -> PurgeRule {
    PurgeRule::new(name, Some(Duration::from_secs(1)), |_, _| async {
        Err(Error::Timeout { op: "purge", after: Duration::from_secs(1) })
    })
}

fn rules(store: &Store, batch_size: u64, owned: Vec<PurgeRule>) -> Rules {
    let config = RetentionConfig {
        interval_ms: 3_600_000,
        batch_size,
        batch_pause_ms: 1,
        dead_letters_secs: 30 * 86_400,
        ..RetentionConfig::default()
    };
    Rules::new(&config, store, owned)
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
    let (parents, left) = counting("parents", 7);
    let (others, _) = counting("others", 0);
    dead_letter(&store, "dlq", 0, 0, ago(40)).await;
    let args =
        RetentionArgs { store: store.clone(), log: log(&dir, vec![]), rules: rules(&store, 3, vec![parents, others]) };
    let report = round(&args, Utc::now()).await;
    assert_eq!((report.of("parents"), report.of("children")), (7, 14));
    assert_eq!(report.of(DEAD_LETTERS), 1, "the runtime's own age rule runs after the owned ones");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    // parents: 3 + 3 + 1; others: one empty batch; dead letters by age, expired idempotency
    // keys and finished replay jobs: one short batch each.
    assert_eq!(report.batches, 3 + 1 + 1 + 1 + 1, "{report:?}");
    assert_eq!(left.load(Ordering::Acquire), 0);
    assert_eq!(report.to_string(), "children=14 dead_letters=1 parents=7");
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
    let args =
        RetentionArgs { store: store.clone(), log: log(&dir, vec![(0, 3), (1, 0)]), rules: rules(&store, 2, vec![]) };
    let report = round(&args, Utc::now()).await;
    assert_eq!(report.of(DEAD_LETTERS), 3, "offsets 0..3 of partition 0");
    let left = crate::store::dead_letter::Entity::find().all(store.connection()).await.unwrap();
    assert!(left.iter().all(|r| r.dlq_partition == 1 || r.dlq_offset >= 3), "{left:?}");
    assert_eq!(left.len(), 7);
}

#[tokio::test]
async fn the_actor_answers_purge_now_and_survives_a_failing_rule() {
    let (dir, store) = store().await;
    let (parents, _) = counting("parents", 1);
    let owned = vec![failing("broken"), parents];
    let args = RetentionArgs { store: store.clone(), log: log(&dir, vec![]), rules: rules(&store, 100, owned) };
    let retention = spawn(args, None).await.unwrap();
    let report = retention.purge_now().await.unwrap();
    assert_eq!(report.failed, vec!["broken"], "the failing rule is reported, the others ran");
    assert_eq!(report.of("parents"), 1);
    let again = retention.purge_now().await.unwrap();
    assert_eq!(again.failed, vec!["broken"], "still alive and trying");
    retention.stop();
}

#[tokio::test]
async fn ticks_run_rounds_on_their_own() {
    let (dir, store) = store().await;
    let (parents, left) = counting("parents", 1);
    let mut rules = rules(&store, 100, vec![parents]);
    rules.interval = Duration::from_millis(50);
    let args = RetentionArgs { store: store.clone(), log: log(&dir, vec![]), rules };
    let retention = spawn(args, None).await.unwrap();
    let mut gone = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if left.load(Ordering::Acquire) == 0 {
            gone = true;
            break;
        }
    }
    assert!(gone, "a timer's round purged the rows without being asked");
    retention.stop();
}

#[tokio::test]
async fn idempotency_keys_go_once_their_window_and_the_grace_after_it_end() {
    use crate::store::idempotency::{Begin, IdempotencyKeys, KeyedRequest, StoredAnswer};
    use crate::store::retention::IDEMPOTENCY_KEYS;
    let (dir, store) = store().await;
    let window = Duration::from_secs(86_400);
    let keys = IdempotencyKeys::new(store.clone(), window, Duration::from_secs(60));
    let answer = StoredAnswer { status: 202, body: serde_json::json!({"status": "accepted"}) };
    // Answered 3 days, 1 day + 30 minutes, and now: windows ended 2 days ago, 30 minutes ago, not yet.
    for (key, claimed) in [("old", ago(3)), ("recent", Utc::now() - Age::minutes(24 * 60 + 30)), ("live", Utc::now())] {
        let req = KeyedRequest { scope: "s".into(), subject: "u".into(), key: key.into(), request_sha256: "h".into() };
        assert_eq!(keys.begin(&req, claimed).await.unwrap(), Begin::Started);
        assert!(keys.complete(&req, claimed, &answer).await.unwrap());
    }
    // The default grace (retention.idempotency_keys_secs) is an hour: only "old" is past it.
    let args = RetentionArgs { store: store.clone(), log: log(&dir, vec![]), rules: rules(&store, 100, vec![]) };
    let report = round(&args, Utc::now()).await;
    assert_eq!(report.of(IDEMPOTENCY_KEYS), 1, "{report:?}");
    let left = crate::store::idempotency::Entity::find().all(store.connection()).await.unwrap();
    let mut left: Vec<String> = left.into_iter().map(|r| r.key).collect();
    left.sort();
    assert_eq!(left, vec!["live".to_string(), "recent".to_string()]);
}
