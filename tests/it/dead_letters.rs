//! Dead-letter admin: list with filters, show, replay with a bounded replay count, purge,
//! role checks, and the `conveyor dlq` CLI against a running daemon.

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};

use crate::devices::inject;
use crate::harness::{Daemon, Opts, command, eventually, token};

async fn listed(d: &Daemon, admin: &str, query: &str) -> Vec<Value> {
    let (s, body) = d.get(&format!("/admin/dead-letters{query}"), Some(admin)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn dead_letters_are_listed_shown_replayed_and_purged() {
    let mut d = Daemon::start(Opts::new().env("CONVEYOR_DLQ__MAX_REPLAYS", "2")).await;
    inject(&mut d, b"{not json").await;
    let admin = token("ops", &["admin"]);
    let source = format!("?source_topic={}", d.names.topic_in);
    assert!(
        eventually(Duration::from_secs(60), || async { listed(&d, &admin, &source).await.len() == 1 }).await,
        "the poison record must reach the dead-letter index"
    );
    let item = listed(&d, &admin, &source).await.remove(0);
    assert_eq!(item["error_class"], "permanent");
    assert_eq!(item["key"], "poison-device");
    assert_eq!(item["source_offset"], 0);
    assert!(item["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(listed(&d, &admin, "?error_class=retries_exhausted").await.is_empty(), "filters apply");
    let id = item["id"].as_i64().unwrap();

    let (s, shown) = d.get(&format!("/admin/dead-letters/{id}"), Some(&admin)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(shown["payload_base64"], "e25vdCBqc29u", "the exact bytes, base64: {{not json");

    // Replays go back to the source topic, fail again, and come back with a replay count.
    for round in 1..=2 {
        let (s, body) = d.post(&format!("/admin/dead-letters/{id}/replay"), Some(&admin), &json!({})).await;
        assert_eq!((s, body["outcome"].as_str()), (StatusCode::OK, Some("replayed")), "{body}");
        assert_eq!(body["replay_count"], round);
        assert!(
            eventually(Duration::from_secs(60), || async { listed(&d, &admin, &source).await.len() == 1 + round })
                .await,
            "replay {round} must be dead-lettered again"
        );
    }
    let items = listed(&d, &admin, &source).await;
    assert_eq!(items.last().map(|i| i["replay_count"].clone()), Some(json!(2)), "the header carries the count");
    let (_, shown) = d.get(&format!("/admin/dead-letters/{id}"), Some(&admin)).await;
    assert_eq!(shown["replay_count"], 2, "{shown}");
    let (s, body) = d.post(&format!("/admin/dead-letters/{id}/replay"), Some(&admin), &json!({})).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("too_many_replays")), "{body}");
    let text = d.metrics().await;
    assert_eq!(crate::harness::metric_sum(&text, "conveyor_dlq_records_replayed_total", ""), 2.0, "{text}");

    let (s, _) = d.get("/admin/dead-letters", Some(&token("u", &["user", "device"]))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = d.get("/admin/dead-letters/999999", Some(&admin)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, body) = d.get("/admin/dead-letters?limit=many", Some(&admin)).await;
    assert_eq!((s, body["error"]["details"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("limit")));

    // The CLI talks to the running daemon with an admin token it signs itself.
    let out = command(&Opts::new(), &d.data_dir)
        .args(["dlq", "--url", &d.base, "list", "--source-topic", &d.names.topic_in])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["items"].as_array().map(Vec::len), Some(3));

    let (s, body) = d.post("/admin/dead-letters/purge", Some(&admin), &json!({"source_topic": d.names.topic_in})).await;
    assert_eq!((s, body["purged"].as_u64()), (StatusCode::OK, Some(3)));
    assert!(listed(&d, &admin, &source).await.is_empty());
}
