//! Stuck keys: a key held in backoff is listed with its last error — in `/admin/stuck-keys`,
//! `/admin/status.json` and the `conveyor.partition.keys.stuck` gauge — and leaves the list
//! as soon as it succeeds.

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Daemon, Opts, eventually, metric_sum, token};

/// A daemon whose fault hooks are on and whose retries outlast the test: a failing key stays
/// in backoff (never dead-lettered) until it is healed.
pub fn opts() -> Opts {
    Opts::new()
        .env("CONVEYOR_FAULTS__ALLOW_PANIC_INJECTION", "true")
        .env("CONVEYOR_RETRY__MAX_ATTEMPTS", "1000")
        .env("CONVEYOR_RETRY__BASE_MS", "200")
        .env("CONVEYOR_RETRY__CAP_MS", "500")
}

/// The stuck-key entry for `key`, if listed.
pub async fn stuck_entry(d: &Daemon, admin: &str, key: &str) -> Option<Value> {
    let (_, list) = d.get("/admin/stuck-keys", Some(admin)).await;
    list["keys"].as_array()?.iter().find(|k| k["key"] == key).cloned()
}

/// Makes every handler call for `key` fail retryably (`heal` ends it).
pub async fn fail_key(d: &Daemon, admin: &str, key: &str, heal: bool) {
    let path = format!("/admin/faults/keys/{key}/{}", if heal { "heal" } else { "fail" });
    let (s, body) = d.post(&path, Some(admin), &json!({})).await;
    assert!(s.is_success(), "{path}: {s} {body}");
}

#[tokio::test]
async fn a_key_held_in_backoff_is_listed_with_its_last_error_until_it_succeeds() {
    let d = Daemon::start(opts()).await;
    let admin = token("ops", &["admin"]);
    let device = token("gw", &["device"]);
    let key = format!("{}-stuck", d.names.id);
    let healthy = format!("{}-fine", d.names.id);
    assert_eq!(d.get("/admin/stuck-keys", Some(&device)).await.0, StatusCode::FORBIDDEN);
    let (s, body) = d.get("/admin/stuck-keys?limit=0", Some(&admin)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    fail_key(&d, &admin, &key, false).await;
    let before = crate::harness::chrono_now() * 1000;
    for id in [&key, &healthy] {
        let body = json!({"device_id": id, "payload": {"n": 1}});
        assert_eq!(d.post("/events", Some(&device), &body).await.0, StatusCode::ACCEPTED);
    }
    let listed = eventually(Duration::from_secs(30), || async {
        stuck_entry(&d, &admin, &key).await.is_some_and(|e| e["attempts"].as_u64() >= Some(2))
    })
    .await;
    let entry = stuck_entry(&d, &admin, &key).await.unwrap_or_default();
    assert!(listed, "the failing key is listed: {entry}");
    assert_eq!(entry["topic"], d.names.topic_in.as_str());
    assert_eq!(entry["handler"], "devices");
    assert_eq!(entry["reason"], "backoff");
    assert_eq!(entry["error_class"], "retryable");
    assert!(entry["error"].as_str().is_some_and(|e| e.contains("fault injected")), "{entry}");
    let since = entry["since_ms"].as_i64().unwrap_or_default();
    assert!(since >= before - 1000, "since the first failure: {since} vs {before}");
    assert!(entry["next_attempt_ms"].as_i64().is_some_and(|n| n >= since), "{entry}");
    assert!(entry["partition"].as_i64().is_some() && entry["offset"].as_i64().is_some());
    // The healthy key went through meanwhile: only the failing one is stuck.
    let fine = eventually(Duration::from_secs(30), || async {
        d.get(&format!("/resource/{healthy}"), Some(&device)).await.0 == StatusCode::OK
    })
    .await;
    assert!(fine, "a stuck key holds up no other key");
    assert!(stuck_entry(&d, &admin, &healthy).await.is_none());

    // The same in the status snapshot, per partition and as a list; and in the gauge.
    let (_, status) = d.get("/admin/status.json", Some(&admin)).await;
    assert!(status["stuck_keys"]["total"].as_u64() >= Some(1), "{}", status["stuck_keys"]);
    assert!(status["stuck_keys"]["keys"].as_array().into_iter().flatten().any(|k| k["key"] == key.as_str()));
    let partition = entry["partition"].as_i64();
    let row = status["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["topic"] == d.names.topic_in.as_str() && p["partition"].as_i64() == partition)
        .cloned()
        .unwrap_or_default();
    assert_eq!(row["stuck_keys"], 1, "{row}");
    let filtered = d.get(&format!("/admin/stuck-keys?topic={}-nope&limit=5", d.names.id), Some(&admin)).await.1;
    assert_eq!(filtered["total"], 0, "another topic has none: {filtered}");
    let gauge =
        |text: &str| metric_sum(text, "conveyor_partition_keys_stuck", &format!("topic=\"{}\"", d.names.topic_in));
    assert_eq!(gauge(&d.metrics().await), 1.0);

    // Healed: the next attempt succeeds, and the key leaves the list.
    fail_key(&d, &admin, &key, true).await;
    let gone = eventually(Duration::from_secs(30), || async { stuck_entry(&d, &admin, &key).await.is_none() }).await;
    assert!(gone, "the key left the list once it succeeded");
    let written = d.get(&format!("/resource/{key}"), Some(&device)).await;
    assert_eq!(written.0, StatusCode::OK, "{}", written.1);
    assert_eq!(d.get("/admin/stuck-keys", Some(&admin)).await.1["total"], 0);
    assert_eq!(gauge(&d.metrics().await), 0.0);
    let (_, dlq) = d.get("/admin/dead-letters", Some(&admin)).await;
    assert_eq!(dlq["items"].as_array().map(Vec::len), Some(0), "nothing was dead-lettered: {dlq}");
}
