//! A graceful shutdown hands back the leases this daemon holds: a restarted daemon resumes
//! a leased workflow run and a leased webhook delivery at once, instead of waiting for the
//! leases (30 s for runs, the request timeout + 30 s for deliveries, by default) to expire.

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Daemon, Opts, eventually, token};
use crate::sink::{Script, Sink};
use crate::webhooks::notify;

/// The daemon's JSON log lines with this message.
fn logged(d: &Daemon, message: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(d.data_dir.join("daemon.log")).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|l| l["message"] == message).collect()
}

#[tokio::test]
async fn after_sigterm_a_restarted_daemon_resumes_leased_runs_and_deliveries_at_once() {
    let sink = Sink::start().await;
    sink.script("/run", Script::Hang);
    sink.script("/hook", Script::Hang);
    // The default lease durations: only a hand-back lets the restart resume within seconds.
    let mut d = Daemon::start(Opts::new().env("CONVEYOR_WORKFLOWS__ALLOW_LOOPBACK", "true")).await;
    let user = token("alice", &["user"]);

    let (s, wf) = d
        .post(
            "/workflows",
            Some(&user),
            &json!({"name": "hangs", "trigger": {"type": "manual"}, "steps": [
                {"type": "http", "name": "call", "url": sink.url("/run")}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{wf}");
    let wf = wf["id"].as_str().unwrap().to_string();
    let (s, run) = d.post(&format!("/workflows/{wf}/runs"), Some(&user), &json!({"input": {}})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{run}");
    let run_id = run["id"].as_str().unwrap().to_string();

    let (s, ep) = d.post("/webhooks/endpoints", Some(&user), &json!({"url": sink.url("/hook")})).await;
    assert_eq!(s, StatusCode::CREATED, "{ep}");
    let n = json!({"id": "evt_lease", "type": "t.lease", "source": "it", "specversion": "1.0", "data": {}});
    let (s, v) = notify(&d, &n).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");

    // Both requests are in flight, holding their leases, when the daemon is told to stop.
    let in_flight =
        eventually(Duration::from_secs(30), || async { sink.hits("/run").len() == 1 && sink.hits("/hook").len() == 1 })
            .await;
    assert!(
        in_flight,
        "run hits {}, hook hits {}; log:\n{}",
        sink.hits("/run").len(),
        sink.hits("/hook").len(),
        d.log_tail(30)
    );
    sink.script("/run", Script::Ok);
    sink.script("/hook", Script::Ok);
    // Well inside the 15 s grace period: hanging requests do not hold the shutdown.
    assert!(d.terminate(Duration::from_secs(10)).await.success());
    let released = |message: &str| logged(&d, message).iter().filter_map(|l| l["released"].as_u64()).sum::<u64>();
    assert_eq!(released("workflow run leases handed back"), 1, "{}", d.log_tail(30));
    assert_eq!(released("webhook delivery leases handed back"), 1, "{}", d.log_tail(30));

    let restarted = Instant::now();
    let d = Daemon::start(Opts::restart_of(&mut d)).await;
    let resumed =
        eventually(Duration::from_secs(15), || async { sink.hits("/run").len() == 2 && sink.hits("/hook").len() == 2 })
            .await;
    assert!(resumed, "run and delivery not resumed; log:\n{}", d.log_tail(30));
    // The deadline counts from the restart (spawning the process), whatever the readiness
    // wait took; without the hand-back both would wait for their leases (30 s and more).
    let since = |path: &str| sink.hits(path)[1].at.duration_since(restarted);
    let (run_at, hook_at) = (since("/run"), since("/hook"));
    assert!(run_at <= Duration::from_secs(5), "the run resumed {run_at:?} after the restart");
    assert!(hook_at <= Duration::from_secs(5), "the delivery was sent {hook_at:?} after the restart");
    eprintln!("resumed after the restart: run {run_at:?}, delivery {hook_at:?}");

    // The run finishes from its checkpoint; the delivery spent no attempt on the cut-off request.
    let done = eventually(Duration::from_secs(20), || async {
        let (_, run) = d.get(&format!("/workflows/{wf}/runs/{run_id}"), Some(&user)).await;
        let (_, records) = d.get("/notifications/evt_lease", Some(&user)).await;
        run["status"] == "succeeded"
            && records["deliveries"][0]["status"] == "succeeded"
            && records["attempts"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    let (_, run) = d.get(&format!("/workflows/{wf}/runs/{run_id}"), Some(&user)).await;
    let (_, records) = d.get("/notifications/evt_lease", Some(&user)).await;
    assert!(done, "{run}\n{records}");
    assert!(run["resumes"].as_i64().is_some_and(|n| n >= 1), "{run}");
    let delivery = &records["deliveries"][0];
    assert_eq!(delivery["attempts"], 1, "the cut-off request cost no attempt: {records}");
    assert_eq!(records["attempts"].as_array().map(Vec::len), Some(1), "{records}");
}

/// `kill -9` while an endpoint's actor holds leased deliveries (its whole in-flight budget
/// hanging, more queued behind): nothing is handed back, and the restarted daemon sends every
/// notification again — the queued ones at once, the cut-off ones when their leases (request
/// timeout + 30 s) run out.
#[tokio::test]
async fn after_kill_9_the_deliveries_held_in_memory_are_sent_when_their_leases_expire() {
    const NOTIFICATIONS: usize = 30;
    let sink = Sink::start().await;
    sink.script("/held", Script::Hang);
    let mut d = Daemon::start(Opts::new().env("CONVEYOR_WEBHOOKS__REQUEST_TIMEOUT_MS", "2000")).await;
    let user = token("alice", &["user"]);
    let (s, ep) = d.post("/webhooks/endpoints", Some(&user), &json!({"url": sink.url("/held")})).await;
    assert_eq!(s, StatusCode::CREATED, "{ep}");
    let ids: Vec<String> = (0..NOTIFICATIONS).map(|i| format!("evt_held_{i}")).collect();
    for id in &ids {
        let n = json!({"id": id, "type": "t.held", "source": "it", "specversion": "1.0", "data": {}});
        let (s, v) = notify(&d, &n).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    }
    // The endpoint's whole budget hangs: the other deliveries are leased and held.
    let busy = eventually(Duration::from_secs(30), || async { sink.hits("/held").len() >= 4 }).await;
    assert!(busy, "{} requests in flight; log:\n{}", sink.hits("/held").len(), d.log_tail(30));
    let last = format!("/notifications/{}", ids[NOTIFICATIONS - 1]);
    let fanned_out = eventually(Duration::from_secs(30), || async {
        d.get(&last, Some(&user)).await.1["deliveries"].as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    assert!(fanned_out, "every delivery row exists before the kill; log:\n{}", d.log_tail(30));
    d.kill9();
    sink.script("/held", Script::Ok);
    let cut_off: Vec<String> = sink.hits("/held").iter().map(|h| h.id()).collect();

    let d = Daemon::start(Opts::restart_of(&mut d)).await;
    // Only what arrives after the restart counts: the cut-off requests were never answered.
    let after_restart = || -> std::collections::BTreeSet<String> {
        sink.hits("/held").iter().skip(cut_off.len()).map(|h| h.id()).collect()
    };
    let all = eventually(Duration::from_secs(90), || async { ids.iter().all(|id| after_restart().contains(id)) }).await;
    let seen = after_restart();
    let missing: Vec<&String> = ids.iter().filter(|id| !seen.contains(*id)).collect();
    assert!(all, "never delivered after kill -9: {missing:?} (cut off: {cut_off:?}); log:\n{}", d.log_tail(30));
}
