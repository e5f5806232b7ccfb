//! The batched lease and outcome statements against SQLite, and PostgreSQL as well when
//! `CONVEYOR_TEST_PG_URL` is set: each is one hand-written statement per dialect.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use sea_orm::EntityTrait;

use super::*;
use conveyor_actors::config::Config;
use conveyor_actors::store::Store;

pub(crate) async fn stores(dir: &std::path::Path) -> Vec<WebhookStore> {
    let mut configs = vec![Config { data_dir: dir.to_path_buf(), ..Config::default() }];
    if let Ok(url) = std::env::var("CONVEYOR_TEST_PG_URL") {
        let mut pg = Config { data_dir: dir.to_path_buf(), ..Config::default() };
        pg.store.url = url;
        pg.store.schema = format!("unit{}", uuid::Uuid::new_v4().simple());
        configs.push(pg);
    }
    let mut stores = Vec::new();
    for config in configs {
        let store = WebhookStore::new(Store::connect(&config).await.unwrap());
        store.migrate(crate::migrations::with_runtime()).await.unwrap();
        stores.push(store);
    }
    stores
}

/// A pending delivery due at `due` (and leased until `lease` if given).
async fn pending(store: &WebhookStore, id: &str, endpoint: &str, due: DateTime<Utc>, lease: Option<DateTime<Utc>>) {
    let row = delivery::Model {
        id: id.into(),
        notification_id: format!("n-{id}"),
        endpoint_id: endpoint.into(),
        status: DeliveryStatus::Pending,
        attempts: 0,
        next_attempt_at: due,
        lease_until: lease,
        last_status_code: None,
        last_error: None,
        created_at: due,
        updated_at: due,
        ordering_key: None,
        accepted_at: Some(due),
    };
    delivery::Entity::insert(delivery::ActiveModel::from(row))
        .exec_without_returning(store.connection())
        .await
        .unwrap();
}

/// A notification as the fan-out stores it.
fn note(id: &str) -> notification::Model {
    notification::Model {
        id: id.into(),
        event_type: "t".into(),
        project: None,
        payload: format!("{{\"id\":\"{id}\"}}"),
        accepted: true,
        received_at: Utc::now(),
        fanned_out: true,
    }
}

fn ids(rows: &[delivery::Model]) -> Vec<&str> {
    rows.iter().map(|r| r.id.as_str()).collect()
}

#[tokio::test]
async fn one_statement_leases_the_endpoints_own_due_rows_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path()).await {
        let now = Utc::now();
        pending(&store, "a3", "ep-a", now - Duration::seconds(1), None).await;
        pending(&store, "a1", "ep-a", now - Duration::seconds(3), None).await;
        pending(&store, "a2", "ep-a", now - Duration::seconds(2), None).await;
        pending(&store, "a-later", "ep-a", now + Duration::minutes(5), None).await;
        pending(&store, "a-held", "ep-a", now - Duration::seconds(9), Some(now + Duration::minutes(1))).await;
        pending(&store, "a-expired", "ep-a", now - Duration::seconds(4), Some(now - Duration::seconds(1))).await;
        pending(&store, "b1", "ep-b", now - Duration::seconds(9), None).await;
        let until = now + Duration::minutes(1);

        let first = store.lease_due("ep-a", now, until, 3).await.unwrap();
        assert_eq!(ids(&first), ["a-expired", "a1", "a2"], "oldest due first, held and later rows left out");
        assert!(first.iter().all(|r| r.lease_until.is_some()));
        let rest = store.lease_due("ep-a", now, until, 10).await.unwrap();
        assert_eq!(ids(&rest), ["a3"], "leased rows are not leased twice");
        assert!(store.lease_due("ep-a", now, until, 10).await.unwrap().is_empty());
        assert_eq!(store.get_delivery("b1").await.unwrap().unwrap().lease_until, None, "another endpoint's row");
        // Once the lease has expired, the row is due again (the daemon holding it died).
        let later = until + Duration::seconds(1);
        let again = store.lease_due("ep-a", later, later + Duration::minutes(1), 10).await.unwrap();
        assert_eq!(ids(&again), ["a-held", "a-expired", "a1", "a2", "a3"]);
    }
}

#[tokio::test]
async fn one_batch_writes_every_outcome_and_releases_every_lease() {
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path()).await {
        let now = Utc::now();
        // More rows than one statement takes: the batch is split.
        let n = ROWS_PER_STATEMENT + 7;
        let until = now + Duration::minutes(1);
        for i in 0..n {
            pending(&store, &format!("d{i:05}"), "ep", now - Duration::seconds(1), Some(until)).await;
        }
        let retry_at = now + Duration::seconds(30);
        let batch: Vec<(String, DeliveryUpdate)> = (0..n)
            .map(|i| {
                let update = if i % 2 == 0 {
                    DeliveryUpdate {
                        status: DeliveryStatus::Succeeded,
                        next_attempt_at: now,
                        status_code: Some(200),
                        error: None,
                    }
                } else {
                    DeliveryUpdate {
                        status: DeliveryStatus::Pending,
                        next_attempt_at: retry_at,
                        status_code: None,
                        error: Some(format!("timeout {i}")),
                    }
                };
                (format!("d{i:05}"), update)
            })
            .collect();
        store.finish_attempts(&batch).await.unwrap();

        let ok = store.get_delivery("d00000").await.unwrap().unwrap();
        assert_eq!(
            (ok.status, ok.attempts, ok.last_status_code, ok.lease_until),
            (DeliveryStatus::Succeeded, 1, Some(200), None)
        );
        // The last retry sits in the second statement.
        let odd = if n.is_multiple_of(2) { n - 1 } else { n - 2 };
        let last = format!("d{odd:05}");
        let retry = store.get_delivery(&last).await.unwrap().unwrap();
        assert_eq!(retry.status, DeliveryStatus::Pending);
        assert_eq!((retry.attempts, retry.lease_until), (1, None));
        assert_eq!(retry.last_error, Some(format!("timeout {odd}")));
        assert_eq!(retry.next_attempt_at.timestamp_millis(), retry_at.timestamp_millis());
        // The same outcomes written again (a refused group commit retried caller by
        // caller) find no lease and count no second attempt.
        store.finish_attempts(&batch).await.unwrap();
        assert_eq!(store.get_delivery("d00000").await.unwrap().unwrap().attempts, 1);
        assert_eq!(store.get_delivery(&last).await.unwrap().unwrap().attempts, 1);
        let counts = store.delivery_counts("ep").await.unwrap();
        assert_eq!((counts.succeeded, counts.pending), (n.div_ceil(2) as u64, (n / 2) as u64));
        // The retries come due at their own time, not before.
        assert!(store.lease_due("ep", now, until, 10).await.unwrap().is_empty());
        assert_eq!(store.lease_due("ep", retry_at, until, 10_000).await.unwrap().len(), n / 2);
    }
}

#[tokio::test]
async fn deferred_deliveries_lose_their_lease_and_no_attempt() {
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path()).await {
        let now = Utc::now();
        pending(&store, "d1", "ep", now, None).await;
        pending(&store, "d2", "ep", now, None).await;
        let leased = store.lease_due("ep", now, now + Duration::minutes(1), 10).await.unwrap();
        assert_eq!(leased.len(), 2);
        let until = now + Duration::seconds(30);
        store.defer_deliveries(&["d1".to_string(), "d2".to_string()], until).await.unwrap();
        for id in ["d1", "d2"] {
            let row = store.get_delivery(id).await.unwrap().unwrap();
            assert_eq!((row.lease_until, row.attempts, row.status), (None, 0, DeliveryStatus::Pending));
        }
        assert!(store.lease_due("ep", now, now + Duration::minutes(1), 10).await.unwrap().is_empty());
        assert_eq!(store.lease_due("ep", until, until + Duration::minutes(1), 10).await.unwrap().len(), 2);
    }
}

#[tokio::test]
async fn fan_out_rows_of_many_notifications_go_in_once_each() {
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path()).await {
        store.record_notifications(vec![note("n1"), note("n2")]).await.unwrap();
        // A redelivered batch: nothing is stored twice, nothing fails.
        store.record_notifications(vec![note("n2"), note("n3")]).await.unwrap();
        for id in ["n1", "n2", "n3"] {
            assert!(store.get_notification(id).await.unwrap().is_some(), "{id}");
        }
        let pair = |n: &str, e: &str| NewDelivery {
            notification_id: n.to_string(),
            endpoint_id: e.to_string(),
            ordering_key: None,
            accepted_at: Utc::now(),
            lease_until: None,
        };
        store.create_deliveries(&[pair("n1", "ep-a"), pair("n1", "ep-b"), pair("n2", "ep-a")]).await.unwrap();
        let first = store.find_delivery("n1", "ep-a").await.unwrap().unwrap();
        store.create_deliveries(&[pair("n1", "ep-a"), pair("n3", "ep-b")]).await.unwrap();
        assert_eq!(store.find_delivery("n1", "ep-a").await.unwrap().unwrap().id, first.id, "left alone");
        let now = Utc::now() + Duration::seconds(1);
        let a = store.lease_due("ep-a", now, now + Duration::minutes(1), 10).await.unwrap();
        let b = store.lease_due("ep-b", now, now + Duration::minutes(1), 10).await.unwrap();
        let notes = |rows: &[delivery::Model]| {
            let mut n: Vec<String> = rows.iter().map(|r| r.notification_id.clone()).collect();
            n.sort();
            n
        };
        assert_eq!(notes(&a), ["n1", "n2"]);
        assert_eq!(notes(&b), ["n1", "n3"]);
        assert!(a.iter().chain(&b).all(|d| d.status == DeliveryStatus::Pending && d.attempts == 0));
    }
}

#[tokio::test]
async fn the_fan_out_answers_the_deliveries_it_wrote_leased_and_no_lease_takes_them() {
    use crate::fanout::FanoutTarget;
    let dir = tempfile::tempdir().unwrap();
    for store in stores(dir.path()).await {
        let now = Utc::now();
        let until = now + Duration::minutes(1);
        let target = |endpoint: &str, lease_until| FanoutTarget {
            endpoint_id: endpoint.into(),
            ordering_key: None,
            lease_until,
        };
        let rows = vec![
            (note("n1"), vec![target("taken", Some(until)), target("woken", None)]),
            (note("n2"), vec![target("taken", Some(until))]),
        ];
        let handed = store.fan_out(&rows).await.unwrap();
        let mut notes: Vec<(&str, &str)> =
            handed.iter().map(|d| (d.endpoint_id.as_str(), d.notification_id.as_str())).collect();
        notes.sort();
        assert_eq!(notes, [("taken", "n1"), ("taken", "n2")], "only the rows written leased are answered");
        assert!(handed.iter().all(|d| d.lease_until.is_some() && d.attempts == 0));
        // A redelivered fan-out creates nothing and hands nothing over twice.
        assert!(store.fan_out(&rows).await.unwrap().is_empty());
        let later = now + Duration::seconds(1);
        assert!(store.lease_due("taken", later, later + Duration::minutes(1), 10).await.unwrap().is_empty());
        assert_eq!(store.lease_due("woken", later, later + Duration::minutes(1), 10).await.unwrap().len(), 1);
        // Handed back (no actor took them): due at once, for the next lease.
        let ids: Vec<String> = handed.iter().map(|d| d.id.clone()).collect();
        assert_eq!(store.release_deliveries(&ids).await.unwrap(), 2);
        assert_eq!(store.lease_due("taken", later, later + Duration::minutes(1), 10).await.unwrap().len(), 2);
    }
}
