//! The key operations against a real (SQLite) store.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::*;
use crate::store::retention::tests::store;
use crate::store::retention::{Batch, IDEMPOTENCY_KEYS};

const WINDOW: Duration = Duration::from_secs(3_600);
const LEASE: Duration = Duration::from_secs(60);

fn req(key: &str, body: &str) -> KeyedRequest {
    KeyedRequest { scope: "events".into(), subject: "dev-1".into(), key: key.into(), request_sha256: body.into() }
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}

fn answer() -> StoredAnswer {
    StoredAnswer { status: 202, body: json!({"request_id": "r-1", "status": "accepted"}) }
}

#[tokio::test]
async fn a_completed_key_replays_its_answer_and_refuses_another_body() {
    let (_dir, store) = store().await;
    let keys = IdempotencyKeys::new(store, WINDOW, LEASE);
    assert_eq!(keys.begin(&req("k", "aa"), at(0)).await.unwrap(), Begin::Started);
    assert_eq!(keys.begin(&req("k", "aa"), at(1)).await.unwrap(), Begin::InProgress);
    assert_eq!(keys.begin(&req("k", "bb"), at(1)).await.unwrap(), Begin::OtherBody);
    assert!(keys.complete(&req("k", "aa"), at(0), &answer()).await.unwrap());
    assert_eq!(keys.begin(&req("k", "aa"), at(2)).await.unwrap(), Begin::Replay(answer()));
    assert_eq!(keys.begin(&req("k", "bb"), at(2)).await.unwrap(), Begin::OtherBody);
    // Another client, or another operation, has keys of its own.
    let other = KeyedRequest { subject: "dev-2".into(), ..req("k", "bb") };
    assert_eq!(keys.begin(&other, at(2)).await.unwrap(), Begin::Started);
    let batch = KeyedRequest { scope: "events-batch".into(), ..req("k", "bb") };
    assert_eq!(keys.begin(&batch, at(2)).await.unwrap(), Begin::Started);
}

#[tokio::test]
async fn an_abandoned_key_is_free_again_and_a_lapsed_claim_is_taken_over() {
    let (_dir, store) = store().await;
    let keys = IdempotencyKeys::new(store, WINDOW, LEASE);
    assert_eq!(keys.begin(&req("k", "aa"), at(0)).await.unwrap(), Begin::Started);
    keys.abandon(&req("k", "aa")).await.unwrap();
    assert_eq!(keys.begin(&req("k", "bb"), at(1)).await.unwrap(), Begin::Started, "abandoned: any body may claim it");
    // The claimant died: its claim lapses after the lease and the key is claimed afresh.
    assert_eq!(keys.begin(&req("k", "cc"), at(30)).await.unwrap(), Begin::OtherBody);
    assert_eq!(keys.begin(&req("k", "cc"), at(61)).await.unwrap(), Begin::Started);
    // The dead claimant's late answer does not overwrite the new claim.
    assert!(!keys.complete(&req("k", "bb"), at(1), &answer()).await.unwrap());
    assert!(keys.complete(&req("k", "cc"), at(61), &answer()).await.unwrap());
    assert_eq!(keys.begin(&req("k", "cc"), at(62)).await.unwrap(), Begin::Replay(answer()));
}

#[tokio::test]
async fn a_window_ends_and_retention_sweeps_the_expired_keys() {
    let (_dir, store) = store().await;
    let keys = IdempotencyKeys::new(store.clone(), WINDOW, LEASE);
    for (key, claimed) in [("old", 0), ("new", 3_000)] {
        assert_eq!(keys.begin(&req(key, "aa"), at(claimed)).await.unwrap(), Begin::Started);
        assert!(keys.complete(&req(key, "aa"), at(claimed), &answer()).await.unwrap());
    }
    // Past its window a key starts afresh, with any body.
    assert_eq!(keys.begin(&req("old", "bb"), at(3_601)).await.unwrap(), Begin::Started);
    assert!(keys.complete(&req("old", "bb"), at(3_601), &answer()).await.unwrap());
    // "new" expires at 6,600 s, "old" (taken over) at 7,201 s.
    let swept = store.purge_idempotency_keys_expired_before(at(7_000), 100).await.unwrap();
    assert_eq!(swept, Batch::single(IDEMPOTENCY_KEYS, 1));
    assert_eq!(keys.begin(&req("new", "bb"), at(7_000)).await.unwrap(), Begin::Started);
    assert_eq!(keys.begin(&req("old", "aa"), at(7_000)).await.unwrap(), Begin::OtherBody);
}
