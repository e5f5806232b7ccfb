//! The head-of-key lease against SQLite, and PostgreSQL as well when
//! `CONVEYOR_TEST_PG_URL` is set.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use sea_orm::{ConnectionTrait, EntityTrait};

use super::super::leases::tests::stores;
use super::*;
use crate::store::{DeliveryUpdate, notification};

const EP: &str = "ep-ordered";

fn policy() -> OrderedLease {
    OrderedLease { stale_after: Duration::seconds(10), settle: Duration::seconds(30) }
}

/// A pending delivery of `key` (or unkeyed), accepted at `accepted`, due at once.
async fn keyed(store: &WebhookStore, id: &str, key: Option<&str>, accepted: DateTime<Utc>) {
    let row = delivery::Model {
        id: id.into(),
        notification_id: format!("n-{id}"),
        endpoint_id: EP.into(),
        status: DeliveryStatus::Pending,
        attempts: 0,
        next_attempt_at: accepted,
        lease_until: None,
        last_status_code: None,
        last_error: None,
        created_at: accepted,
        updated_at: accepted,
        ordering_key: key.map(str::to_string),
        accepted_at: Some(accepted),
    };
    delivery::Entity::insert(delivery::ActiveModel::from(row))
        .exec_without_returning(store.connection())
        .await
        .unwrap();
}

/// Inserts a notification row as given (no fan-out runs for it).
async fn insert_notification(store: &WebhookStore, row: notification::Model) {
    notification::Entity::insert(notification::ActiveModel::from(row))
        .exec_without_returning(store.connection())
        .await
        .unwrap();
}

async fn lease(store: &WebhookStore, now: DateTime<Utc>) -> Vec<String> {
    let leased = store.lease_heads(EP, now, now + Duration::minutes(1), 100, policy()).await.unwrap();
    let mut ids: Vec<String> = leased.into_iter().map(|r| r.id).collect();
    ids.sort();
    ids
}

async fn finish(store: &WebhookStore, id: &str, status: DeliveryStatus, next: DateTime<Utc>) {
    let update = DeliveryUpdate { status, next_attempt_at: next, status_code: None, error: None };
    store.finish_attempts(&[(id.to_string(), update)]).await.unwrap();
}

#[tokio::test]
async fn only_each_keys_head_is_leased_and_a_retrying_head_holds_back_only_its_key() {
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path()).await {
        let t = Utc::now() - Duration::seconds(5);
        let ms = Duration::milliseconds;
        // Inserted out of order: acceptance order decides, not ids or insertion.
        keyed(&store, "a3", Some("a"), t + ms(3)).await;
        keyed(&store, "a1", Some("a"), t + ms(1)).await;
        keyed(&store, "a2", Some("a"), t + ms(2)).await;
        keyed(&store, "b2", Some("b"), t + ms(5)).await;
        keyed(&store, "b1", Some("b"), t + ms(4)).await;
        keyed(&store, "u1", None, t + ms(6)).await;
        keyed(&store, "u2", None, t + ms(7)).await;
        let now = Utc::now();
        assert_eq!(lease(&store, now).await, ["a1", "b1", "u1", "u2"]);
        assert!(lease(&store, now).await.is_empty(), "a leased head holds its key");
        finish(&store, "a1", DeliveryStatus::Succeeded, now).await;
        // Right after an outcome, only the keys named: b1 is still leased, so a2 alone.
        let keys = ["a".to_string(), "b".to_string()];
        let next = store.lease_successors(EP, &keys, now, now + Duration::minutes(1), policy()).await.unwrap();
        assert_eq!(next.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a2"]);
        store.release_deliveries(&["a2".to_string()]).await.unwrap();
        // b1 fails and retries in a minute: b waits, a goes on.
        finish(&store, "b1", DeliveryStatus::Pending, now + Duration::minutes(1)).await;
        assert_eq!(lease(&store, now).await, ["a2"]);
        finish(&store, "a2", DeliveryStatus::Failed, now).await;
        assert_eq!(lease(&store, now).await, ["a3"], "a dead head no longer holds its key");
        // The dead a2 resent while a3 is leased: it waits for a3's outcome, then goes first.
        assert!(store.resend_delivery("a2").await.unwrap());
        assert!(lease(&store, now).await.is_empty());
        finish(&store, "a3", DeliveryStatus::Pending, now).await;
        // (The resend made it due at the wall clock's now.)
        let later = Utc::now() + Duration::seconds(1);
        assert_eq!(lease(&store, later).await, ["a2"], "the resent delivery is its key's head again");
        // Past its backoff (and every other lease): b's head goes, a's resent head again.
        assert_eq!(lease(&store, now + Duration::minutes(2)).await, ["a2", "b1", "u1", "u2"]);
    }
}

#[tokio::test]
async fn keyed_deliveries_wait_for_notifications_accepted_before_them_to_be_fanned_out() {
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path()).await {
        let now = Utc::now();
        let claim = |id: &str, at: DateTime<Utc>, accepted: bool| notification::Model {
            id: id.into(),
            event_type: "t".into(),
            project: None,
            payload: "{}".into(),
            accepted,
            received_at: at,
            fanned_out: false,
        };
        // Accepted 2 s ago and not fanned out yet: later keyed deliveries wait.
        insert_notification(&store, claim("slow", now - Duration::seconds(2), true)).await;
        // An abandoned claim (never accepted, beyond the stale limit) holds nothing.
        insert_notification(&store, claim("dead", now - Duration::seconds(20), false)).await;
        keyed(&store, "early", Some("a"), now - Duration::seconds(3)).await;
        keyed(&store, "late", Some("b"), now - Duration::seconds(1)).await;
        keyed(&store, "free", None, now - Duration::seconds(1)).await;
        assert_eq!(lease(&store, now).await, ["early", "free"]);
        let mut slow = claim("slow", now - Duration::seconds(2), true);
        slow.fanned_out = true;
        store.record_notifications(vec![slow]).await.unwrap();
        assert_eq!(lease(&store, now).await, ["late"]);
        // Past the settle time an unfanned notification holds nothing back, and says so.
        insert_notification(&store, claim("stuck", now - Duration::seconds(40), true)).await;
        keyed(&store, "after", Some("c"), now - Duration::seconds(1)).await;
        assert_eq!(lease(&store, now).await, ["after"]);
        assert!(store.overdue_fan_out(now, policy()).await.unwrap().is_some());
    }
}

/// SQLite's plan for both leases looks each head up by id: it never walks the pending
/// deliveries by due time, whose number is the backlog's, not the keys'.
#[tokio::test]
async fn sqlite_finds_heads_by_id_not_by_walking_the_backlog() {
    #[derive(sea_orm::FromQueryResult)]
    struct Step {
        detail: String,
    }
    let dir = tempfile::tempdir().unwrap();
    let store = stores(dir.path()).await.remove(0);
    let now = Utc::now();
    let keys = ["a".to_string(), "b".to_string()];
    for only in [None, Some(&keys[..])] {
        let mut stmt = heads_statement(DbBackend::Sqlite, EP, only, now, now, policy(), 10);
        stmt.sql = format!("EXPLAIN QUERY PLAN {}", stmt.sql);
        let plan: Vec<String> = Step::find_by_statement(stmt)
            .all(store.connection())
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.detail)
            .collect();
        let plan = plan.join("\n");
        assert!(plan.contains("SEARCH d USING INDEX sqlite_autoindex_webhook_deliveries_1 (id=?)"), "{plan}");
        assert!(!plan.contains("webhook_deliveries_due"), "{plan}");
    }
}

/// PostgreSQL, with statistics taken while the table was empty (a new endpoint's backlog
/// arrives in seconds, autovacuum analyzes a minute later): the heads are found by primary
/// key and the leased-key check reads the leased-rows index, never an endpoint's backlog.
#[tokio::test]
async fn postgres_finds_heads_by_id_with_stale_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = stores(dir.path()).await.into_iter().nth(1) else { return };
    store.connection().execute_unprepared("ANALYZE webhook_deliveries").await.unwrap();
    let t = Utc::now() - Duration::minutes(1);
    for n in 0..2_000 {
        let key = format!("k{}", n % 40);
        keyed(&store, &format!("d{n:05}"), Some(&key), t + Duration::milliseconds(n)).await;
    }
    let now = Utc::now();
    let keys: Vec<String> = (0..10).map(|k| format!("k{k}")).collect();
    for only in [None, Some(&keys[..])] {
        let mut stmt = heads_statement(DbBackend::Postgres, EP, only, now, now, policy(), 100);
        stmt.sql = format!("EXPLAIN {}", stmt.sql);
        let rows = store.connection().query_all_raw(stmt).await.unwrap();
        let plan: Vec<String> = rows.iter().map(|row| row.try_get_by_index::<String>(0).unwrap()).collect();
        let plan = plan.join("\n");
        // Each head by its key's first index entry, then by primary key; the leased-key check
        // in the leased-rows index; never the global due index, never a sort of a key's rows.
        assert!(plan.contains("using webhook_deliveries_key_head on webhook_deliveries h"), "{plan}");
        assert!(plan.contains("using webhook_deliveries_pkey on webhook_deliveries d"), "{plan}");
        assert!(plan.contains("webhook_deliveries_key_leased"), "{plan}");
        assert!(!plan.contains("webhook_deliveries_due"), "{plan}");
        assert!(!plan.contains("Sort Key: h.accepted_at"), "{plan}");
        // (The outer UPDATE may hash-join a table this small; it finds rows by id either way.)
    }
}
