//! The operator console (`/admin/console`) clicked through in headless Chromium over
//! WebDriver: a stuck key shows up, a failed webhook delivery is resent, a dead letter is
//! replayed, a workflow run is cancelled; each effect is checked through the JSON API.
//! Screenshots: `target/screenshots/console-*.png`.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use crate::harness::{Daemon, eventually, token};
use crate::sink::{Script, Sink};
use crate::webdriver::Browser;
use crate::webhooks::{endpoint, notify, wait_hits};

#[tokio::test]
async fn the_console_resends_replays_cancels_and_shows_stuck_keys() {
    let opts = crate::workflow_cancel::opts()
        .env("CONVEYOR_FAULTS__ALLOW_PANIC_INJECTION", "true")
        .env("CONVEYOR_RETRY__MAX_ATTEMPTS", "1000")
        .env("CONVEYOR_RETRY__BASE_MS", "200")
        .env("CONVEYOR_RETRY__CAP_MS", "500")
        .env("CONVEYOR_WEBHOOKS__RETRY_SCHEDULE_MS", "[0, 50]");
    let d = Daemon::start(opts).await;
    let sink = Sink::start().await;
    let admin = token("ops", &["admin"]);
    let device = token("gw", &["device"]);

    // A webhook delivery that exhausted its attempts: failed, and dead-lettered.
    sink.script("/down", Script::Always(503, None));
    let (ep, _) = endpoint(&d, &admin, json!({"url": sink.url("/down"), "description": "console test"})).await;
    let evt = format!("evt_{}", d.names.id);
    let n = json!({"id": evt, "type": "t.console", "source": "it", "specversion": "1.0", "data": {}});
    assert_eq!(notify(&d, &n).await.0, StatusCode::ACCEPTED);
    wait_hits(&sink, "/down", 2, Duration::from_secs(20)).await;
    let indexed = eventually(Duration::from_secs(20), || async {
        d.get("/admin/dead-letters", Some(&admin)).await.1.to_string().contains(&evt)
    })
    .await;
    let (_, letters) = d.get("/admin/dead-letters", Some(&admin)).await;
    assert!(indexed, "{letters}");
    let dead_letter = letters["items"].as_array().into_iter().flatten().find(|l| l.to_string().contains(&evt)).cloned();
    let dl_id = dead_letter.and_then(|l| l["id"].as_i64()).unwrap_or_default();
    let failed = eventually(Duration::from_secs(20), || async {
        d.get(&format!("/notifications/{evt}"), Some(&admin)).await.1["deliveries"][0]["status"] == "failed"
    })
    .await;
    let (_, records) = d.get(&format!("/notifications/{evt}"), Some(&admin)).await;
    assert!(failed, "{records}");
    let delivery = records["deliveries"][0]["id"].as_str().unwrap_or_default().to_string();

    // A workflow run waiting in a delay, long enough that a slow machine cannot finish the
    // run before the test clicks cancel.
    let wf = crate::workflow_cancel::delayed_workflow(&d, &admin, &sink, 3600).await;
    let run_id = crate::workflows::start(&d, &admin, &wf, json!({})).await;
    assert!(crate::workflow_cancel::in_delay(&d, &admin, &wf, &run_id).await, "{}", d.log_tail(20));

    // A key held in backoff.
    let key = format!("{}-stuck", d.names.id);
    crate::stuck_keys::fail_key(&d, &admin, &key, false).await;
    let body = json!({"device_id": key, "payload": {"n": 1}});
    assert_eq!(d.post("/events", Some(&device), &body).await.0, StatusCode::ACCEPTED);
    let stuck = eventually(Duration::from_secs(20), || async {
        crate::stuck_keys::stuck_entry(&d, &admin, &key).await.is_some()
    })
    .await;
    assert!(stuck, "the key is stuck before the console looks");

    let browser = Browser::start().await;
    browser.navigate(&format!("{}/admin/console#token={admin}", d.base)).await;
    browser.wait_text("[data-testid=readiness]", |t| t == "ready").await;
    assert_eq!(browser.title().await, "Conveyor console");
    browser.wait_for("[data-testid=partition-row]").await;
    browser.screenshot("console-status").await;

    // Stuck keys: the held key, with its last error.
    browser.click_on("[data-testid=tab-stuck]").await;
    let row = format!("tr[data-testid=stuck-row][data-key=\"{key}\"]");
    let error = browser.wait_text(&format!("{row} [data-testid=stuck-error]"), |t| t.contains("fault injected")).await;
    assert!(error.contains("retryable"), "{error}");
    let reason = browser.wait_text(&format!("{row} [data-testid=stuck-reason]"), |t| !t.is_empty()).await;
    assert_eq!(reason, "backoff");
    browser.wait_text("[data-testid=stuck-count]", |t| t.parse::<u32>().is_ok_and(|n| n >= 1)).await;
    browser.screenshot("console-stuck-keys").await;

    // Webhooks: the endpoint is back; resend the failed delivery from its attempts.
    sink.script("/down", Script::Ok);
    browser.click_on("[data-testid=tab-webhooks]").await;
    browser.click_on(&format!("tr[data-testid=endpoint-row][data-id=\"{ep}\"] [data-testid=endpoint-open]")).await;
    let resend = format!("tr[data-testid=attempt-row][data-delivery=\"{delivery}\"] [data-testid=attempt-resend]");
    browser.click_on(&resend).await;
    browser.wait_text("[data-testid=toast]", |t| t.contains("queued again")).await;
    let forwarded = eventually(Duration::from_secs(20), || async {
        d.get(&format!("/webhooks/endpoints/{ep}/stats"), Some(&admin)).await.1["forwarded"] == 1
    })
    .await;
    assert!(forwarded, "the resent delivery arrived: {:?}", sink.hits("/down").len());
    browser.click_on("[data-testid=attempts-refresh]").await;
    browser.wait_for("tr[data-testid=attempt-row][data-outcome=succeeded]").await;
    browser.screenshot("console-webhooks").await;

    // Dead letters: open one, replay it.
    browser.click_on("[data-testid=tab-dead-letters]").await;
    let dl_row = format!("tr[data-testid=dl-row][data-id=\"{dl_id}\"]");
    browser.click_on(&dl_row).await;
    browser.wait_text("[data-testid=dl-detail-source]", |t| !t.is_empty()).await;
    browser.wait_text("[data-testid=dl-detail-payload]", |t| t.contains(&evt)).await;
    browser.click_on(&format!("{dl_row} [data-testid=dl-replay]")).await;
    browser.wait_text("[data-testid=toast]", |t| t.contains("replayed")).await;
    let (_, letter) = d.get(&format!("/admin/dead-letters/{dl_id}"), Some(&admin)).await;
    assert_eq!(letter["replay_count"], 1, "{letter}");
    browser.wait_text("[data-testid=dl-detail-replays]", |t| t.starts_with('1')).await;
    browser.screenshot("console-dead-letters").await;

    // Workflows: cancel the waiting run (two clicks: arm, confirm).
    browser.click_on("[data-testid=tab-workflows]").await;
    browser.click_on(&format!("tr[data-testid=workflow-row][data-id=\"{wf}\"] [data-testid=workflow-open]")).await;
    let run_row = format!("tr[data-testid=run-row][data-id=\"{run_id}\"]");
    browser.click_on(&run_row).await;
    browser.wait_for("[data-testid=step-row]").await;
    let cancel = browser.wait_for(&format!("{run_row} [data-testid=run-cancel]")).await;
    browser.click(&cancel).await;
    assert_eq!(browser.text(&cancel).await, "Confirm cancel", "the first click only arms the button");
    let (_, still) = d.get(&format!("/workflows/{wf}/runs/{run_id}"), Some(&admin)).await;
    assert_eq!(still["status"], "running", "not cancelled by one click: {still}");
    browser.click(&cancel).await;
    browser.wait_text("[data-testid=toast]", |t| t.contains("cancelled")).await;
    let (_, run) = d.get(&format!("/workflows/{wf}/runs/{run_id}"), Some(&admin)).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    browser.wait_text("[data-testid=run-detail-status]", |t| t == "cancelled").await;
    browser.screenshot("console-workflows").await;
    browser.quit().await;
}

/// A parked key in the console: listed with its dead letter and held count, and released
/// by Skip (two clicks) — its held events then apply.
#[tokio::test]
async fn the_console_lists_a_parked_key_and_skips_it() {
    use crate::parked::{ctx, park_d1, parked_entry, parked_with, post, reaches};
    let d = Daemon::start(crate::parked::opts()).await;
    let c = ctx(&d);
    park_d1(&d, &c).await;
    post(&d, &c, &c.d1, 2..=3).await;
    parked_with(&d, &c, &c.d1, 2).await;
    crate::stuck_keys::fail_key(&d, &c.admin, &c.d1, true).await;
    let (_, status) = d.get("/admin/status.json", Some(&c.admin)).await;
    let listed = status["parked_keys"].as_array().into_iter().flatten().any(|k| k["key"] == c.d1.as_str());
    assert!(listed, "the status page's JSON carries the parked key: {}", status["parked_keys"]);

    let browser = Browser::start().await;
    browser.navigate(&format!("{}/admin/console#token={}&tab=parked", d.base, c.admin)).await;
    let row = format!("tr[data-testid=parked-row][data-key=\"{}\"]", c.d1);
    browser.wait_text(&format!("{row} [data-testid=parked-held]"), |t| t == "2").await;
    let letter =
        browser.wait_text(&format!("{row} [data-testid=parked-dead-letter]"), |t| t.contains("fault injected")).await;
    assert!(letter.contains("retryable"), "{letter}");
    browser.wait_text("[data-testid=parked-count]", |t| t == "1").await;
    browser.screenshot("console-parked-keys").await;
    let skip = browser.wait_for(&format!("{row} [data-testid=parked-skip]")).await;
    browser.click(&skip).await;
    assert_eq!(browser.text(&skip).await, "Confirm skip", "the first click only arms the button");
    assert!(parked_entry(&d, &c, &c.d1).await.is_some(), "not released by one click");
    browser.click(&skip).await;
    browser.wait_text("[data-testid=toast]", |t| t.contains("Skipped")).await;
    assert!(reaches(&d, &c, &c.d1, 3).await, "the held events applied after the skip");
    browser.quit().await;
}
