//! Webhook delivery (seed 002): the 16 sample notifications fanned out by filter and signed
//! (checked by the `standardwebhooks` package), retries on the schedule, 410, duplicates,
//! dead letters and resend, isolation from a dead endpoint, domain events, bad input.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Daemon, Opts, eventually, metric_sum, token};
use crate::sink::{Hit, Script, Sink, verify_with_standardwebhooks};

/// `admin:admin`, the daemons' configured publisher.
const BASIC: &str = "Basic YWRtaW46YWRtaW4=";

fn samples() -> Vec<Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/it/fixtures/notifications");
    (1..=16)
        .map(|i| {
            let text = std::fs::read_to_string(dir.join(format!("event-{i:02}.json"))).unwrap();
            serde_json::from_str(&text).unwrap()
        })
        .collect()
}

pub(crate) async fn notify(d: &Daemon, body: &Value) -> (StatusCode, Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    let (s, _, v) = d.request(Method::POST, "/notifications", None, &[("authorization", BASIC)], bytes).await;
    (s, v)
}

/// Creates an endpoint; returns its id and secret.
pub(crate) async fn endpoint(d: &Daemon, owner: &str, body: Value) -> (String, String) {
    let (s, v) = d.post("/webhooks/endpoints", Some(owner), &body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (v["id"].as_str().unwrap().to_string(), v["secret"].as_str().unwrap().to_string())
}

pub(crate) async fn wait_hits(sink: &Sink, path: &str, n: usize, within: Duration) -> Vec<Hit> {
    let arrived = eventually(within, || async { sink.hits(path).len() >= n }).await;
    assert!(arrived, "{path}: {} of {n} deliveries arrived", sink.hits(path).len());
    sink.hits(path)
}

fn types_by_id(hits: &[Hit]) -> BTreeMap<String, String> {
    hits.iter().map(|h| (h.id(), h.json()["type"].as_str().unwrap_or_default().to_string())).collect()
}

#[tokio::test]
async fn sample_notifications_reach_exactly_their_subscribers_signed() {
    let d = Daemon::start(Opts::new()).await;
    let sink = Sink::start().await;
    let user = token("alice", &["user"]);
    let (_, subs_secret) =
        endpoint(&d, &user, json!({"url": sink.url("/subs"), "event_types": ["subscription.*"]})).await;
    let (billing, old_secret) =
        endpoint(&d, &user, json!({"url": sink.url("/billing"), "event_types": ["payment.succeeded", "tax.created"]}))
            .await;
    let (_, all_secret) = endpoint(&d, &user, json!({"url": sink.url("/all")})).await;
    endpoint(&d, &user, json!({"url": sink.url("/prod"), "projects": ["prod"]})).await;
    // Rotated with an overlap: billing's deliveries carry both signatures.
    let (s, rotated) = d.post(&format!("/webhooks/endpoints/{billing}/secret/rotate"), Some(&user), &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    assert_eq!(rotated["previous_secret"].as_str(), Some(old_secret.as_str()));

    let samples = samples();
    for n in &samples {
        let (s, v) = notify(&d, n).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        assert_eq!(v["id"], n["id"]);
    }
    let expected = |pred: &dyn Fn(&str) -> bool| -> BTreeMap<String, String> {
        samples
            .iter()
            .map(|n| (n["id"].as_str().unwrap().to_string(), n["type"].as_str().unwrap().to_string()))
            .filter(|(_, t)| pred(t))
            .collect()
    };
    let want_subs = expected(&|t| t.starts_with("subscription."));
    let want_billing = expected(&|t| t == "payment.succeeded" || t == "tax.created");
    let all = wait_hits(&sink, "/all", 16, Duration::from_secs(30)).await;
    let subs = wait_hits(&sink, "/subs", want_subs.len(), Duration::from_secs(30)).await;
    let billing_hits = wait_hits(&sink, "/billing", want_billing.len(), Duration::from_secs(30)).await;
    // A later marker proves nothing else was on its way to any of them.
    let marker = json!({"id": "evt_marker", "type": "marker.sent", "source": "it", "specversion": "1.0", "project": "prod", "data": {}});
    assert_eq!(notify(&d, &marker).await.0, StatusCode::ACCEPTED);
    wait_hits(&sink, "/prod", 1, Duration::from_secs(30)).await;
    wait_hits(&sink, "/all", 17, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(types_by_id(&subs), want_subs, "subscription.* endpoint");
    assert_eq!(types_by_id(&billing_hits), want_billing, "billing endpoint");
    assert_eq!(sink.hits("/subs").len(), want_subs.len(), "each once");
    assert_eq!(sink.hits("/billing").len(), want_billing.len(), "each once");
    assert_eq!(sink.hits("/all").len(), 17);
    assert_eq!(sink.hits("/prod").iter().map(Hit::id).collect::<Vec<_>>(), ["evt_marker"], "project filter");
    // The body is the envelope as posted.
    let first = all.iter().find(|h| h.id() == samples[0]["id"].as_str().unwrap()).unwrap();
    assert_eq!(first.json(), samples[0]);
    assert!(billing_hits.iter().all(|h| h.headers["webhook-signature"].split(' ').count() == 2));

    let mut checks = Vec::new();
    for h in all.iter().take(16) {
        checks.push((format!("all {}", h.id()), vec![all_secret.clone()], h.clone(), true));
    }
    for h in &subs {
        checks.push((format!("subs {}", h.id()), vec![subs_secret.clone()], h.clone(), true));
    }
    for h in &billing_hits {
        checks.push((format!("billing {} new", h.id()), vec![new_secret.clone()], h.clone(), true));
        checks.push((format!("billing {} old", h.id()), vec![old_secret.clone()], h.clone(), true));
    }
    let mut tampered = all[0].clone();
    tampered.body = tampered.body.replacen("event", "evil", 1);
    checks.push(("tampered body".into(), vec![all_secret.clone()], tampered, false));
    checks.push(("someone else's secret".into(), vec![subs_secret.clone()], all[0].clone(), false));
    verify_with_standardwebhooks(&checks);

    // The metrics API counts what was forwarded; the records API shows the attempts.
    let (_, stats) = d.get(&format!("/webhooks/endpoints/{billing}/stats"), Some(&user)).await;
    assert_eq!(stats["forwarded"], want_billing.len(), "{stats}");
    assert_eq!((stats["failed"].as_u64(), stats["pending"].as_u64()), (Some(0), Some(0)));
    let id = samples[2]["id"].as_str().unwrap();
    let ok = eventually(Duration::from_secs(10), || async {
        let (_, v) = d.get(&format!("/notifications/{id}"), Some(&user)).await;
        v["attempts"].as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    let (_, records) = d.get(&format!("/notifications/{id}"), Some(&user)).await;
    assert!(ok, "payment.succeeded went to billing and all, one attempt each: {records}");
    assert!(
        records["attempts"].as_array().unwrap().iter().all(|a| a["status_code"] == 200 && a["outcome"] == "succeeded")
    );
    // Another user sees neither the endpoints nor the records.
    let bob = token("bob", &["user"]);
    assert_eq!(d.get(&format!("/webhooks/endpoints/{billing}"), Some(&bob)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(d.get(&format!("/notifications/{id}"), Some(&bob)).await.0, StatusCode::NOT_FOUND);
    let (_, listed) = d.get("/webhooks/endpoints", Some(&bob)).await;
    assert_eq!(listed, json!([]));
}

#[tokio::test]
async fn failures_are_retried_on_schedule_and_410_disables() {
    let d = Daemon::start(Opts::new()).await;
    let sink = Sink::start().await;
    let user = token("alice", &["user"]);
    sink.script("/flaky", Script::FailThenOk(500, 3));
    sink.script("/gone", Script::Always(410, None));
    let (flaky, _) = endpoint(&d, &user, json!({"url": sink.url("/flaky")})).await;
    let (gone, _) = endpoint(&d, &user, json!({"url": sink.url("/gone")})).await;
    let n = json!({"id": "evt_retry", "type": "t.one", "source": "it", "specversion": "1.0", "data": {}});
    assert_eq!(notify(&d, &n).await.0, StatusCode::ACCEPTED);

    let hits = wait_hits(&sink, "/flaky", 4, Duration::from_secs(20)).await;
    // The schedule is [0, 100, 100, …] ms without jitter: no retry came sooner.
    for pair in hits.windows(2) {
        assert!(
            pair[1].at - pair[0].at >= Duration::from_millis(100),
            "retried too soon: {:?}",
            pair[1].at - pair[0].at
        );
    }
    let ok = eventually(Duration::from_secs(10), || async {
        let (_, v) = d.get(&format!("/webhooks/endpoints/{flaky}/attempts"), Some(&user)).await;
        v.as_array().is_some_and(|a| a.len() == 4)
    })
    .await;
    let (_, attempts) = d.get(&format!("/webhooks/endpoints/{flaky}/attempts"), Some(&user)).await;
    assert!(ok, "{attempts}");
    let codes: Vec<_> = attempts.as_array().unwrap().iter().rev().map(|a| a["status_code"].as_i64()).collect();
    assert_eq!(codes, [Some(500), Some(500), Some(500), Some(200)]);
    assert_eq!(attempts[0]["attempt"], 4);
    assert_eq!(attempts[1]["error_class"], "http_5xx");
    assert_eq!(attempts[1]["response_excerpt"], "{\"answer\":500}");
    let (_, stats) = d.get(&format!("/webhooks/endpoints/{flaky}/stats"), Some(&user)).await;
    assert_eq!(stats["forwarded"], 1, "{stats}");

    // 410: disabled at once, after one attempt, and skipped from then on.
    let disabled = eventually(Duration::from_secs(10), || async {
        let (_, v) = d.get(&format!("/webhooks/endpoints/{gone}"), Some(&user)).await;
        v["disabled"] == true
    })
    .await;
    let (_, ep) = d.get(&format!("/webhooks/endpoints/{gone}"), Some(&user)).await;
    assert!(disabled, "{ep}");
    assert_eq!(ep["disabled_reason"], "gone");
    let next = json!({"id": "evt_after", "type": "t.two", "source": "it", "specversion": "1.0", "data": {}});
    assert_eq!(notify(&d, &next).await.0, StatusCode::ACCEPTED);
    wait_hits(&sink, "/flaky", 5, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.hits("/gone").len(), 1, "a disabled endpoint gets nothing more");
    let metrics = d.metrics().await;
    assert!(
        metrics.contains("conveyor_webhook_endpoints_disabled_total{") && metrics.contains("reason=\"gone\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_repeated_id_is_refused_and_delivered_once() {
    let d = Daemon::start(Opts::new()).await;
    let sink = Sink::start().await;
    endpoint(&d, &token("alice", &["user"]), json!({"url": sink.url("/hook")})).await;
    let n = json!({"id": "evt_dup", "type": "t.dup", "source": "it", "specversion": "1.0", "data": {"n": 1}});
    assert_eq!(notify(&d, &n).await.0, StatusCode::ACCEPTED);
    let (s, v) = notify(&d, &n).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "duplicate_notification");
    let marker = json!({"id": "evt_dup_marker", "type": "t.dup", "source": "it", "specversion": "1.0", "data": {}});
    assert_eq!(notify(&d, &marker).await.0, StatusCode::ACCEPTED);
    wait_hits(&sink, "/hook", 2, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: BTreeSet<_> = sink.hits("/hook").iter().map(Hit::id).collect();
    assert_eq!(sink.hits("/hook").len(), 2);
    assert_eq!(ids, BTreeSet::from(["evt_dup".to_string(), "evt_dup_marker".to_string()]));
}

#[tokio::test]
async fn bad_input_gets_a_clear_error() {
    let d = Daemon::start(Opts::new()).await;
    let user = token("alice", &["user"]);
    let raw = |body: &'static str, auth: Option<&'static str>| {
        let d = &d;
        async move {
            let headers: Vec<(&str, &str)> = auth.map(|a| vec![("authorization", a)]).unwrap_or_default();
            d.request(Method::POST, "/notifications", None, &headers, body.as_bytes().to_vec()).await
        }
    };
    let (s, _, v) = raw("{not json", Some(BASIC)).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_notification")), "{v}");
    let (s, _, v) = raw(r#"{"id": "x", "source": "s", "specversion": "1.0", "data": []}"#, Some(BASIC)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let fields: Vec<_> = v["error"]["details"].as_array().unwrap().iter().map(|f| f["field"].clone()).collect();
    assert_eq!(fields, [json!("type"), json!("data")], "{v}");
    let good = r#"{"id": "evt_auth", "type": "t", "source": "s", "specversion": "1.0", "data": {}}"#;
    let (s, headers, _) = raw(good, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(headers["www-authenticate"].to_str().unwrap().starts_with("Basic realm="));
    assert_eq!(raw(good, Some("Basic YWRtaW46d3Jvbmc=")).await.0, StatusCode::UNAUTHORIZED);
    let bearer = format!("Bearer {user}");
    let (s, _, _) = d.request(Method::POST, "/notifications", None, &[("authorization", &bearer)], good.into()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a user token may not publish");
    let publisher = format!("Bearer {}", token("gwook", &["publisher"]));
    let (s, _, v) =
        d.request(Method::POST, "/notifications", None, &[("authorization", &publisher)], good.into()).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");

    // Endpoints: unsafe or malformed fields are named.
    for (body, field) in [
        (json!({"url": "http://10.0.0.7/hook"}), "url"),
        (json!({"url": "http://169.254.169.254/latest/meta-data/"}), "url"),
        (json!({"url": "ftp://example.com/"}), "url"),
        (json!({"url": "https://example.com/", "event_types": ["a*b"]}), "event_types"),
        (json!({"url": "https://example.com/", "secret": "plain"}), "secret"),
        (json!({"url": "https://example.com/", "colour": "red"}), "colour"),
    ] {
        let (s, v) = d.post("/webhooks/endpoints", Some(&user), &body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert_eq!(v["error"]["details"][0]["field"], field, "{v}");
    }
    assert_eq!(d.get("/webhooks/endpoints/ep_nope", Some(&user)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(d.get("/webhooks/endpoints", Some(&token("dev-1", &["device"]))).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn exhausted_deliveries_are_dead_lettered_and_can_be_resent() {
    let d = Daemon::start(Opts::new().env("CONVEYOR_WEBHOOKS__RETRY_SCHEDULE_MS", "[0, 50]")).await;
    let sink = Sink::start().await;
    let user = token("alice", &["user"]);
    let admin = token("root", &["admin"]);
    sink.script("/down", Script::Always(503, None));
    let (ep, _) = endpoint(&d, &user, json!({"url": sink.url("/down")})).await;
    let n = json!({"id": "evt_dead", "type": "t.dead", "source": "it", "specversion": "1.0", "data": {}});
    assert_eq!(notify(&d, &n).await.0, StatusCode::ACCEPTED);
    wait_hits(&sink, "/down", 2, Duration::from_secs(20)).await;
    let indexed = eventually(Duration::from_secs(20), || async {
        let (_, v) = d.get("/admin/dead-letters", Some(&admin)).await;
        v.to_string().contains("evt_dead")
    })
    .await;
    let (_, letters) = d.get("/admin/dead-letters", Some(&admin)).await;
    assert!(indexed, "{letters}");
    let (_, records) = d.get("/notifications/evt_dead", Some(&user)).await;
    let delivery = records["deliveries"][0].clone();
    assert_eq!((delivery["status"].as_str(), delivery["attempts"].as_i64()), (Some("failed"), Some(2)), "{records}");

    // Resend through the API once the endpoint is back.
    sink.script("/down", Script::Ok);
    let (s, v) = d
        .post(&format!("/webhooks/deliveries/{}/resend", delivery["id"].as_str().unwrap()), Some(&user), &json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    wait_hits(&sink, "/down", 3, Duration::from_secs(20)).await;
    let done = eventually(Duration::from_secs(10), || async {
        let (_, v) = d.get(&format!("/webhooks/endpoints/{ep}/stats"), Some(&user)).await;
        v["forwarded"] == 1
    })
    .await;
    assert!(done);

    // Replaying the dead letter sends it to that endpoint once more (and only to it).
    let other = Sink::start().await;
    endpoint(&d, &user, json!({"url": other.url("/late")})).await;
    let items = letters["items"].as_array().unwrap();
    let dl_id = items.iter().find(|l| l.to_string().contains("evt_dead")).map(|l| l["id"].clone()).unwrap();
    let (s, v) = d.post(&format!("/admin/dead-letters/{dl_id}/replay"), Some(&admin), &json!({})).await;
    assert!(s.is_success(), "{s}: {v}");
    wait_hits(&sink, "/down", 4, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(other.hits("/late").is_empty(), "a replay goes to the failed endpoint only");
}

#[tokio::test]
async fn a_dead_endpoint_does_not_hold_up_the_others() {
    // A long timeout: the hung requests are still hanging when the healthy ones are done.
    let d = Daemon::start(Opts::new().env("CONVEYOR_WEBHOOKS__REQUEST_TIMEOUT_MS", "60000")).await;
    let sink = Sink::start().await;
    let user = token("alice", &["user"]);
    sink.script("/dead", Script::Hang);
    endpoint(&d, &user, json!({"url": sink.url("/dead")})).await;
    endpoint(&d, &user, json!({"url": sink.url("/healthy")})).await;
    for i in 0..40 {
        let n =
            json!({"id": format!("evt_iso_{i}"), "type": "t.iso", "source": "it", "specversion": "1.0", "data": {}});
        assert_eq!(notify(&d, &n).await.0, StatusCode::ACCEPTED);
    }
    wait_hits(&sink, "/healthy", 40, Duration::from_secs(30)).await;
    // The dead one holds only its own in-flight budget (4 by default).
    let dead = sink.hits("/dead").len();
    assert!((1..=4).contains(&dead), "{dead} requests to the dead endpoint");
}

#[tokio::test]
async fn an_endpoint_with_work_takes_new_deliveries_without_a_lease_statement() {
    let d = Daemon::start(Opts::new()).await;
    let sink = Sink::start().await;
    endpoint(&d, &token("alice", &["user"]), json!({"url": sink.url("/taken")})).await;
    let post = |i: usize| json!({"id": format!("evt_taken_{i}"), "type": "t.taken", "source": "it", "specversion": "1.0", "data": {}});
    // The first wakes the endpoint's actor, which leases it; from then on it takes them.
    assert_eq!(notify(&d, &post(0)).await.0, StatusCode::ACCEPTED);
    wait_hits(&sink, "/taken", 1, Duration::from_secs(20)).await;
    let leases =
        |text: &str| metric_sum(text, "conveyor_store_query_duration_seconds_count", "operation=\"lease_due\"");
    let before = leases(&d.metrics().await);
    let n = 60;
    for i in 1..=n {
        assert_eq!(notify(&d, &post(i)).await.0, StatusCode::ACCEPTED);
    }
    let hits = wait_hits(&sink, "/taken", n + 1, Duration::from_secs(30)).await;
    let ids: BTreeSet<String> = hits.iter().map(Hit::id).collect();
    assert_eq!(ids.len(), n + 1, "each delivered once");
    // One post at a time, so a wake per post would lease once per post.
    let leased = leases(&d.metrics().await) - before;
    assert!(leased < (n / 4) as f64, "{leased} lease statements for {n} deliveries handed over");
}

#[tokio::test]
async fn domain_events_reach_admin_endpoints_only() {
    let d = Daemon::start(Opts::new()).await;
    let sink = Sink::start().await;
    let admin = token("root", &["admin"]);
    let user = token("alice", &["user"]);
    endpoint(&d, &admin, json!({"url": sink.url("/ops"), "event_types": ["conveyor.resource.*"]})).await;
    endpoint(&d, &user, json!({"url": sink.url("/nosy"), "event_types": ["conveyor.*"]})).await;
    let device = token("dev-1", &["device"]);
    let (s, v) = d.post("/events", Some(&device), &json!({"device_id": "dev-1", "payload": {"temp": 21}})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let hits = wait_hits(&sink, "/ops", 1, Duration::from_secs(30)).await;
    let event = hits[0].json();
    assert_eq!(event["type"], "conveyor.resource.updated");
    assert_eq!(event["data"]["device_id"], "dev-1");
    assert_eq!(event["data"]["value"], json!({"temp": 21}));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sink.hits("/nosy").is_empty(), "a user's endpoint does not see other users' domain events");
}

#[tokio::test]
async fn an_endpoint_failing_too_long_is_disabled_and_says_so() {
    let d = Daemon::start(
        Opts::new()
            .env("CONVEYOR_WEBHOOKS__DISABLE_AFTER_FAILING_SECS", "1")
            .env("CONVEYOR_WEBHOOKS__RETRY_SCHEDULE_MS", "[0, 1500, 100, 100]"),
    )
    .await;
    let sink = Sink::start().await;
    let admin = token("root", &["admin"]);
    sink.script("/broken", Script::Always(500, None));
    let (broken, _) = endpoint(&d, &admin, json!({"url": sink.url("/broken"), "event_types": ["t.*"]})).await;
    endpoint(&d, &admin, json!({"url": sink.url("/ops"), "event_types": ["conveyor.endpoint.disabled"]})).await;
    let n = json!({"id": "evt_broken", "type": "t.x", "source": "it", "specversion": "1.0", "data": {}});
    assert_eq!(notify(&d, &n).await.0, StatusCode::ACCEPTED);
    let hits = wait_hits(&sink, "/ops", 1, Duration::from_secs(30)).await;
    let event = hits[0].json();
    assert_eq!(event["type"], "conveyor.endpoint.disabled");
    assert_eq!(event["data"]["endpoint_id"], broken.as_str());
    assert_eq!(event["data"]["reason"], "failing");
    let (_, ep) = d.get(&format!("/webhooks/endpoints/{broken}"), Some(&admin)).await;
    assert_eq!((ep["disabled"].as_bool(), ep["disabled_reason"].as_str()), (Some(true), Some("failing")), "{ep}");
    assert_eq!(sink.hits("/broken").len(), 2, "disabled on the attempt after the limit, not retried after");
    // Enabling it again sends what waited (the delivery still had attempts left).
    sink.script("/broken", Script::Ok);
    let (s, _) = d.post(&format!("/webhooks/endpoints/{broken}/enable"), Some(&admin), &json!({})).await;
    assert_eq!(s, StatusCode::OK);
    wait_hits(&sink, "/broken", 3, Duration::from_secs(20)).await;
    let delivered = eventually(Duration::from_secs(10), || async {
        let (_, v) = d.get("/notifications/evt_broken", Some(&admin)).await;
        v["deliveries"][0]["status"] == "succeeded"
    })
    .await;
    assert!(delivered);
}

#[tokio::test]
async fn the_registration_saga_announces_its_credit_and_completion() {
    let d = Daemon::start(Opts::new()).await;
    let sink = Sink::start().await;
    let admin = token("root", &["admin"]);
    endpoint(
        &d,
        &admin,
        json!({"url": sink.url("/saga"), "event_types": ["conveyor.loyalty.credited", "conveyor.saga.*"]}),
    )
    .await;
    let body =
        json!({"email": "hooked@example.com", "password": "correct horse", "name": "Ann", "birthday": "1990-02-03"});
    let (s, user) = d.post("/auth/registration", None, &body).await;
    assert_eq!(s, StatusCode::CREATED, "{user}");
    let hits = wait_hits(&sink, "/saga", 2, Duration::from_secs(30)).await;
    let by_type: BTreeMap<String, Value> = hits
        .iter()
        .map(|h| (h.json()["type"].as_str().unwrap_or_default().to_string(), h.json()["data"].clone()))
        .collect();
    let credited = &by_type["conveyor.loyalty.credited"];
    assert_eq!((&credited["user_id"], &credited["amount"]), (&user["user_id"], &json!(100)));
    assert_eq!(by_type["conveyor.saga.completed"]["status"], "completed");
    assert!(!hits.iter().any(|h| h.body.contains("hooked@example.com")), "no email in domain events");
}

/// Proxy variables would route deliveries around the address guard (the proxy resolves the
/// name, not Conveyor): the webhook client ignores them and connects to the endpoint itself.
#[tokio::test]
async fn deliveries_ignore_proxy_variables() {
    let proxy = Sink::start().await;
    let proxy_url = proxy.url("");
    let mut opts = Opts::new();
    for var in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
        opts = opts.env(var, proxy_url.clone());
    }
    let d = Daemon::start(opts.env("NO_PROXY", "").env("no_proxy", "")).await;
    let sink = Sink::start().await;
    endpoint(&d, &token("alice", &["user"]), json!({"url": sink.url("/direct")})).await;
    let n = json!({"id": "evt_proxy", "type": "t.proxy", "source": "it", "specversion": "1.0", "data": {}});
    assert_eq!(notify(&d, &n).await.0, StatusCode::ACCEPTED);
    let hits = wait_hits(&sink, "/direct", 1, Duration::from_secs(20)).await;
    assert_eq!(hits[0].id(), "evt_proxy");
    assert!(proxy.hits("/direct").is_empty(), "a delivery went through the proxy");
}
