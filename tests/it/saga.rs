//! The registration saga end to end (outbox → loyalty → identity), its failure paths, and
//! the loyalty API with concurrent withdrawals.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Daemon, Opts, eventually, metric_sum, real_only};
use crate::private::{PrivateBroker, PrivatePostgres};

pub(crate) struct User {
    pub id: String,
    pub access: String,
}

pub(crate) async fn register(d: &Daemon) -> User {
    let email = format!("saga-{}@example.com", uuid::Uuid::new_v4().simple());
    let body = json!({"email": email, "password": "correct horse", "name": "Ann", "birthday": "1990-02-03"});
    let (s, b) = d.post("/auth/registration", None, &body).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    User {
        id: b["user_id"].as_str().unwrap_or_default().to_string(),
        access: b["access_token"].as_str().unwrap_or_default().to_string(),
    }
}

/// Waits for the user's registration saga to leave `started`; returns `/auth/info`.
pub(crate) async fn saga_ends(d: &Daemon, user: &User, within: Duration) -> Value {
    let ended = eventually(within, || async {
        let (_, info) = d.get("/auth/info", Some(&user.access)).await;
        info["registration"]["status"].as_str().is_some_and(|s| s != "started")
    })
    .await;
    let (_, info) = d.get("/auth/info", Some(&user.access)).await;
    assert!(ended, "saga still running: {info}\n{}", d.log_tail(30));
    info
}

fn steps(saga: &Value) -> Vec<(String, String)> {
    saga["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| (s["step"].as_str().unwrap_or_default().into(), s["status"].as_str().unwrap_or_default().into()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

pub(crate) async fn balance(d: &Daemon, user: &User) -> (StatusCode, Value) {
    d.get(&format!("/loyalty/{}", user.id), Some(&user.access)).await
}

#[tokio::test]
async fn registration_ends_with_100_points_and_a_completed_saga() {
    let mut d = Daemon::start(Opts::new()).await;
    let user = register(&d).await;
    let info = saga_ends(&d, &user, Duration::from_secs(30)).await;
    assert_eq!(info["registration"]["status"], "completed", "{info}");
    let (s, b) = balance(&d, &user).await;
    assert_eq!((s, b.clone()), (StatusCode::OK, json!({"status": "Success", "uuid": user.id, "balance": 100})));

    let saga_id = info["registration"]["saga_id"].as_str().unwrap_or_default().to_string();
    let (s, saga) = d.get(&format!("/sagas/{saga_id}"), Some(&user.access)).await;
    assert_eq!(s, StatusCode::OK, "{saga}");
    assert_eq!(saga["status"], "completed");
    assert_eq!(
        steps(&saga),
        pairs(&[
            ("user_created", "completed"),
            ("registration_published", "completed"),
            ("loyalty_credited", "completed")
        ])
    );
    assert!(saga["steps"][2]["at"].is_string());
    let text = d.metrics().await;
    assert_eq!(metric_sum(&text, "conveyor_saga_steps_total", "step=\"loyalty_credited\""), 1.0, "{text}");
    assert_eq!(metric_sum(&text, "conveyor_loyalty_operations_total", "operation=\"welcome\""), 1.0);

    assert_eq!(metric_sum(&text, "conveyor_saga_steps_total", "outcome=\"started\""), 1.0, "{text}");
    assert_eq!(metric_sum(&text, "conveyor_saga_steps_total", "step=\"user_created\""), 1.0, "{text}");

    let other = register(&d).await;
    assert_eq!(d.get(&format!("/sagas/{saga_id}"), Some(&other.access)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(d.get(&format!("/loyalty/{}", user.id), Some(&other.access)).await.0, StatusCode::FORBIDDEN);
    // Admins read anyone's saga and balance.
    let admin = crate::harness::token("ops", &["admin"]);
    let (s, as_admin) = d.get(&format!("/sagas/{saga_id}"), Some(&admin)).await;
    assert_eq!((s, as_admin["status"].as_str()), (StatusCode::OK, Some("completed")));
    assert_eq!(d.get(&format!("/loyalty/{}", user.id), Some(&admin)).await.1["balance"], 100);
    saga_ends(&d, &other, Duration::from_secs(30)).await;

    // Every saga event delivered again, to fresh consumer groups: nothing changes.
    d.terminate(Duration::from_secs(30)).await;
    let id = d.names.id.clone();
    let opts = Opts::restart_of(&mut d)
        .env("CONVEYOR_LOG__GROUPS__LOYALTY", format!("{id}-loyalty-again"))
        .env("CONVEYOR_LOG__GROUPS__IDENTITY", format!("{id}-identity-again"));
    let d = Daemon::start(opts).await;
    let redelivered = eventually(Duration::from_secs(30), || async {
        let text = d.metrics().await;
        metric_sum(&text, "conveyor_loyalty_operations_total", "outcome=\"replayed\"") >= 2.0
    })
    .await;
    assert!(redelivered, "both registrations' events were not redelivered\n{}", d.log_tail(30));
    assert_eq!(balance(&d, &user).await.1["balance"], 100, "the bonus is credited once per user");
    let (_, page) = d.get(&format!("/loyalty/{}/transactions", user.id), Some(&user.access)).await;
    assert_eq!(page["transactions"].as_array().map(Vec::len), Some(1), "{page}");
    let (_, saga_again) = d.get(&format!("/sagas/{saga_id}"), Some(&user.access)).await;
    assert_eq!(saga_again, saga);
}

#[tokio::test]
async fn store_failures_during_the_credit_are_retried_then_completed() {
    let d = Daemon::start(Opts::new().env("CONVEYOR_FAULTS__LOYALTY_CREDIT_TRANSIENT_FAILURES", "2")).await;
    let user = register(&d).await;
    let info = saga_ends(&d, &user, Duration::from_secs(30)).await;
    assert_eq!(info["registration"]["status"], "completed", "{info}");
    assert_eq!(balance(&d, &user).await.1["balance"], 100);
    let text = d.metrics().await;
    assert!(metric_sum(&text, "conveyor_handler_retries_total", "") >= 2.0, "{text}");
}

#[tokio::test]
async fn a_permanent_failure_runs_the_compensation() {
    let d = Daemon::start(Opts::new().env("CONVEYOR_FAULTS__LOYALTY_CREDIT_PERMANENT", "true")).await;
    let user = register(&d).await;
    let info = saga_ends(&d, &user, Duration::from_secs(30)).await;
    assert_eq!(info["registration"]["status"], "compensated", "{info}");
    let saga_id = info["registration"]["saga_id"].as_str().unwrap_or_default();
    let (_, saga) = d.get(&format!("/sagas/{saga_id}"), Some(&user.access)).await;
    assert_eq!(
        steps(&saga),
        pairs(&[
            ("user_created", "completed"),
            ("registration_published", "completed"),
            ("loyalty_credit_failed", "failed"),
            ("registration_compensated", "compensated"),
        ])
    );
    // The account stays usable, without the bonus.
    let (s, b) = balance(&d, &user).await;
    assert_eq!((s, b["balance"].as_i64()), (StatusCode::OK, Some(0)), "{b}");
    assert_eq!(d.get("/auth/info", Some(&user.access)).await.0, StatusCode::OK);
    let text = d.metrics().await;
    assert_eq!(metric_sum(&text, "conveyor_saga_steps_total", "outcome=\"compensated\""), 1.0, "{text}");
}

#[tokio::test]
async fn hundred_concurrent_withdrawals_from_fifty_points() {
    let d = Daemon::start(
        Opts::new()
            .env("CONVEYOR_AUTH__BOOTSTRAP_ADMIN_EMAIL", "admin@example.com")
            .env("CONVEYOR_AUTH__BOOTSTRAP_ADMIN_PASSWORD", "admin-password"),
    )
    .await;
    let (_, login) =
        d.post("/auth/login", None, &json!({"email": "admin@example.com", "password": "admin-password"})).await;
    let admin = login["access_token"].as_str().unwrap_or_default().to_string();
    let user = register(&d).await;
    saga_ends(&d, &user, Duration::from_secs(30)).await;

    // An admin acts on any account; a user only withdraws its own points.
    let take = json!({"uuid": user.id, "operation": "w", "comment": "adjustment", "balance": 50});
    let (s, b) = d.post("/loyalty", Some(&admin), &take).await;
    assert_eq!((s, b["balance"].as_i64()), (StatusCode::OK, Some(50)), "{b}");
    let deposit = json!({"operation": "d", "comment": "gift", "balance": 5});
    assert_eq!(d.post("/loyalty", Some(&user.access), &deposit).await.0, StatusCode::FORBIDDEN);
    let other = register(&d).await;
    let theft = json!({"uuid": other.id, "operation": "w", "comment": "", "balance": 1});
    assert_eq!(d.post("/loyalty", Some(&user.access), &theft).await.0, StatusCode::FORBIDDEN);
    saga_ends(&d, &other, Duration::from_secs(30)).await;
    assert_eq!(balance(&d, &other).await.1["balance"], 100, "untouched by the refused theft");
    assert_eq!(d.get(&format!("/loyalty/{}", other.id), Some(&user.access)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(d.get(&format!("/loyalty/{}", user.id), None).await.0, StatusCode::UNAUTHORIZED);
    let (s, b) = d.post("/loyalty", Some(&user.access), &json!({"operation": "x", "balance": 0})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    // An empty uuid is invalid for everyone (found by the contract fuzzer: it used to mean "mine").
    let (s, b) = d.post("/loyalty", Some(&user.access), &json!({"uuid": "", "operation": "w", "balance": 1})).await;
    assert_eq!(
        (s, b["error"]["details"][0]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("uuid")),
        "{b}"
    );

    let one = serde_json::to_vec(&json!({"operation": "w", "comment": "coffee", "balance": 1})).unwrap_or_default();
    let requests = (0..100).map(|_| {
        let (d, one, token) = (&d, one.clone(), user.access.clone());
        async move { d.request(Method::POST, "/loyalty", Some(&token), &[], one).await }
    });
    let answers = futures::future::join_all(requests).await;
    let ok = answers.iter().filter(|(s, _, _)| *s == StatusCode::OK).count();
    let refused: Vec<&Value> =
        answers.iter().filter(|(s, _, _)| *s == StatusCode::CONFLICT).map(|(_, _, b)| b).collect();
    assert_eq!((ok, refused.len()), (50, 50), "{:?}", answers.iter().map(|a| a.0).collect::<Vec<_>>());
    assert_eq!(refused[0]["error"]["code"], "insufficient_balance", "{}", refused[0]);
    assert_eq!(balance(&d, &user).await.1["balance"], 0);

    // The ledger, read page by page, sums to the balance.
    let (mut sum, mut after, mut count) = (0i64, 0i64, 0usize);
    loop {
        let path = format!("/loyalty/{}/transactions?after_id={after}&limit=20", user.id);
        let (s, page) = d.get(&path, Some(&admin)).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        for t in page["transactions"].as_array().into_iter().flatten() {
            let amount = t["amount"].as_i64().unwrap_or_default();
            sum += if t["operation"] == "d" { amount } else { -amount };
            count += 1;
        }
        match page["next_after_id"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!((sum, count), (0, 1 + 1 + 50), "welcome, adjustment, 50 withdrawals");

    // Idempotency-Key: the same operation twice is applied once.
    let gift = serde_json::to_vec(&json!({"uuid": user.id, "operation": "d", "comment": "gift", "balance": 7}))
        .unwrap_or_default();
    let key = [("idempotency-key", "gift-1")];
    let (s1, _, first) = d.request(Method::POST, "/loyalty", Some(&admin), &key, gift.clone()).await;
    let (s2, h2, second) = d.request(Method::POST, "/loyalty", Some(&admin), &key, gift).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(first, second);
    assert_eq!(h2.get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    assert_eq!(balance(&d, &user).await.1["balance"], 7);
}

#[tokio::test]
async fn real_log_outage_during_registration_is_resent_by_the_outbox() {
    real_only("real_log_outage_during_registration_is_resent_by_the_outbox");
    let pg = PrivatePostgres::start_new(&["nisshi"]).await;
    let mut broker = PrivateBroker::start_new(&pg.url("nisshi")).await;
    let d = Daemon::start(
        Opts::new()
            .env("CONVEYOR_LOG__KAFKA__BROKERS", broker.brokers())
            .env("CONVEYOR_LOG__PRODUCE_TIMEOUT_MS", "1500")
            .env("CONVEYOR_OUTBOX__POLL_INTERVAL_MS", "200"),
    )
    .await;
    broker.kill9();
    let user = register(&d).await; // the user and its outbox record: no log needed
    let failed = eventually(Duration::from_secs(30), || async {
        metric_sum(&d.metrics().await, "conveyor_outbox_records_total", "outcome=\"failed\"") >= 1.0
    })
    .await;
    assert!(failed, "the relay never tried while the broker was down");
    let (_, info) = d.get("/auth/info", Some(&user.access)).await;
    assert_eq!(info["registration"]["status"], "started");
    broker.start().await;
    let info = saga_ends(&d, &user, Duration::from_secs(90)).await;
    assert_eq!(info["registration"]["status"], "completed", "{info}");
    assert_eq!(balance(&d, &user).await.1["balance"], 100);
}
