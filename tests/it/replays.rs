//! Dead-letter replay jobs: thousands of dead letters replayed at a set rate across a
//! daemon restart, each exactly once more, with progress that never goes backwards; dry
//! runs, pause, resume, cancel, the refusals (404, 409, 422) and the CLI.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use conveyor_actors::log::OutgoingRecord;
use http::StatusCode;
use serde_json::{Value, json};

use crate::devices::open_log;
use crate::harness::{Backend, Daemon, Opts, eventually, token};

/// Writes `n` records the device handler refuses for good (not JSON), keys `replay-{i}`,
/// to the daemon's input topic (the embedded log is written with the daemon stopped).
async fn poison(d: &mut Daemon, n: usize) {
    let embedded = d.backend() == Backend::Embedded;
    if embedded {
        assert!(d.terminate(Duration::from_secs(20)).await.success());
    }
    let log = open_log(&d.names, embedded.then_some(d.data_dir.as_path())).await;
    let producer = log.producer();
    let sends = (0..n).map(|i| {
        let record = OutgoingRecord {
            topic: d.names.topic_in.clone(),
            key: Some(format!("replay-{i}")),
            payload: Bytes::from_static(b"{not json"),
            headers: vec![],
        };
        let producer = producer.clone();
        async move { producer.send(record, Duration::from_secs(30)).await }
    });
    for ack in futures::future::join_all(sends).await {
        ack.unwrap();
    }
    drop(producer);
    drop(log);
    if embedded {
        *d = Daemon::start(Opts::restart_of(d)).await;
    }
}

/// What a job over the daemon's input topic would replay now (a dry run).
async fn matched(d: &Daemon, admin: &str) -> u64 {
    let (s, body) =
        d.post("/admin/replays", Some(admin), &json!({"source_topic": d.names.topic_in, "dry_run": true})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["dry_run"], true);
    body["matched"].as_u64().unwrap()
}

async fn until_indexed(d: &Daemon, admin: &str, n: u64) {
    let indexed = eventually(Duration::from_secs(120), || async { matched(d, admin).await >= n }).await;
    assert!(indexed, "only {} of {n} dead letters indexed", matched(d, admin).await);
}

async fn job(d: &Daemon, admin: &str, id: i64) -> Value {
    let (s, body) = d.get(&format!("/admin/replays/{id}"), Some(admin)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body
}

/// Every dead letter of the input topic, by paging the admin list.
async fn all_dead_letters(d: &Daemon, admin: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let path = format!("/admin/dead-letters?source_topic={}&limit=1000&after_id={after}", d.names.topic_in);
        let (s, body) = d.get(&path, Some(admin)).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let items = body["items"].as_array().cloned().unwrap_or_default();
        let Some(last) = body["next_after_id"].as_i64() else { return all };
        all.extend(items);
        after = last;
    }
}

/// Progress as GET shows it, checked never to go backwards.
#[derive(Default)]
struct Progress {
    handled: [i64; 3],
    cursor: i64,
}

impl Progress {
    fn see(&mut self, job: &Value) {
        let now = ["replayed", "skipped", "failed"].map(|k| job[k].as_i64().unwrap());
        let cursor = job["cursor"].as_i64().unwrap();
        for (before, after) in self.handled.iter().zip(now) {
            assert!(after >= *before, "progress went backwards: {:?} → {now:?} in {job}", self.handled);
        }
        assert!(cursor >= self.cursor, "the cursor went backwards: {} → {cursor}", self.cursor);
        let left = job["remaining"].as_i64().unwrap();
        assert!(left >= 0 && left <= job["matched"].as_i64().unwrap(), "{job}");
        (self.handled, self.cursor) = (now, cursor);
    }
}

const RECORDS: usize = 5_000;

/// The acceptance test: 5,000 dead letters replayed at 1,000/s, the daemon restarted in the
/// middle, and every record processed (dead-lettered again) exactly once more.
#[tokio::test]
async fn a_replay_job_resumes_after_a_restart_and_replays_each_dead_letter_exactly_once_more() {
    let mut d = Daemon::start(Opts::new()).await;
    let admin = token("ops", &["admin"]);
    poison(&mut d, RECORDS).await;
    until_indexed(&d, &admin, RECORDS as u64).await;

    let body = json!({"source_topic": d.names.topic_in, "rate": 1000});
    let (s, created) = d.post("/admin/replays", Some(&admin), &body).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!((created["matched"].as_u64(), created["status"].as_str()), (Some(RECORDS as u64), Some("running")));
    assert_eq!(created["rate"], 1000);
    let id = created["id"].as_i64().unwrap();
    let mut progress = Progress::default();

    // Well into the job, but not done: restart the daemon (SIGTERM, same data dir).
    let midway = eventually(Duration::from_secs(30), || {
        let job = job(&d, &admin, id);
        async { job.await["replayed"].as_i64().unwrap() >= 1_000 }
    })
    .await;
    assert!(midway, "the job never got going: {}", job(&d, &admin, id).await);
    let before = job(&d, &admin, id).await;
    progress.see(&before);
    assert_eq!(before["status"], "running", "restarted mid-replay: {before}");
    assert!(d.terminate(Duration::from_secs(30)).await.success(), "{}", d.log_tail(30));
    let d = Daemon::start(Opts::restart_of(&mut d)).await;

    // It resumes on its own, from its cursor, and never goes backwards.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let done = loop {
        let job = job(&d, &admin, id).await;
        progress.see(&job);
        if job["status"] == "completed" {
            break job;
        }
        assert!(std::time::Instant::now() < deadline, "the job did not complete: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let counts = ["matched", "replayed", "skipped", "failed", "remaining"].map(|k| done[k].as_i64().unwrap());
    assert_eq!(counts, [RECORDS as i64, RECORDS as i64, 0, 0, 0], "{done}");
    assert!(done["finished_at"].is_string() && done["last_error"].is_null(), "{done}");

    // Each replay failed again and came back to the dead-letter topic exactly once: the
    // originals are marked replayed once, and the new entries carry each key once.
    let settled =
        eventually(Duration::from_secs(90), || async { all_dead_letters(&d, &admin).await.len() >= 2 * RECORDS }).await;
    let all = all_dead_letters(&d, &admin).await;
    assert!(settled, "{} dead letters, expected {}", all.len(), 2 * RECORDS);
    // The originals are the first RECORDS ids; the job never went past them.
    let mut ids: Vec<i64> = all.iter().map(|i| i["id"].as_i64().unwrap()).collect();
    ids.sort_unstable();
    let boundary = ids[RECORDS - 1];
    assert_eq!(done["cursor"].as_i64(), Some(boundary), "{done}");
    let mut replays_per_key: HashMap<String, usize> = HashMap::new();
    for item in &all {
        let key = item["key"].as_str().unwrap().to_string();
        if item["id"].as_i64().unwrap() <= boundary {
            assert_eq!(item["replay_count"], 1, "an original replayed once, no more: {item}");
        } else {
            assert_eq!(item["replay_count"], 1, "a replay carries its count: {item}");
            *replays_per_key.entry(key).or_default() += 1;
        }
    }
    assert_eq!(replays_per_key.len(), RECORDS, "every record came back once");
    assert!(replays_per_key.values().all(|n| *n == 1), "no record replayed twice");
    assert_eq!(all.len(), 2 * RECORDS, "nothing more arrived");
}

#[tokio::test]
async fn replay_jobs_dry_run_pause_resume_cancel_and_refusals() {
    let mut d = Daemon::start(Opts::new()).await;
    let admin = token("ops", &["admin"]);
    poison(&mut d, 300).await;
    until_indexed(&d, &admin, 300).await;
    let source = d.names.topic_in.clone();

    // A dry run counts and creates nothing.
    let (s, dry) = d.post("/admin/replays", Some(&admin), &json!({"source_topic": source, "dry_run": true})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (dry["matched"].as_u64(), dry["would_replay"].as_u64(), dry["would_skip"].as_u64()),
        (Some(300), Some(300), Some(0))
    );
    let (_, list) = d.get("/admin/replays", Some(&admin)).await;
    assert_eq!(list["items"], json!([]), "a dry run creates no job");

    // Bad fields are named (422); unknown jobs are 404; other roles are refused.
    for (body, field) in [
        (json!({"rate": 0}), "rate"),
        (json!({"rate": "fast"}), "rate"),
        (json!({"rate": 1_000_000}), "rate"),
        (json!({"source_topic": " "}), "source_topic"),
        (json!({"since_ms": "yesterday"}), "since_ms"),
        (json!({"colour": "red"}), "colour"),
    ] {
        let (s, err) = d.post("/admin/replays", Some(&admin), &body).await;
        assert_eq!(
            (s, err["error"]["details"][0]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field)),
            "{body}: {err}"
        );
    }
    let (s, err) = d.get("/admin/replays/999999", Some(&admin)).await;
    assert_eq!((s, err["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (s, _) = d.post("/admin/replays/999999/pause", Some(&admin), &json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = d.get("/admin/replays", Some(&token("u", &["user", "device"]))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // The synchronous filtered replay no longer cuts a large set short: it points to the jobs.
    let (s, err) = d.post("/admin/dead-letters/replay", Some(&admin), &json!({"source_topic": source})).await;
    assert_eq!((s, err["error"]["details"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("filter")));
    assert!(err["error"]["message"].as_str().is_some_and(|m| m.contains("/admin/replays")), "{err}");

    // The CLI: a dry run over the last two hours through the running daemon.
    let out = d
        .cli(&["dlq", "--url", &d.base, "replay", "--dry-run", "--since", "2h", "--source-topic", &source])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((printed["dry_run"].as_bool(), printed["matched"].as_u64()), (Some(true), Some(300)), "{printed}");
    let out = d
        .cli(&[
            "dlq",
            "--url",
            &d.base,
            "replay",
            "--dry-run",
            "--since",
            "2026-01-01T00:00:00Z",
            "--until",
            "1h",
            "--source-topic",
            &source,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["matched"].as_u64(), Some(0), "nothing failed before an hour ago: {printed}");

    // A slow job: pause stops it, resume continues it, cancel ends it.
    let (s, created) = d.post("/admin/replays", Some(&admin), &json!({"source_topic": source, "rate": 40})).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["id"].as_i64().unwrap();
    let replayed = |job: Value| job["replayed"].as_i64().unwrap();
    assert!(eventually(Duration::from_secs(20), || async { replayed(job(&d, &admin, id).await) > 0 }).await);
    let (s, paused) = d.post(&format!("/admin/replays/{id}/pause"), Some(&admin), &json!({})).await;
    assert_eq!((s, paused["status"].as_str()), (StatusCode::OK, Some("paused")), "{paused}");
    let (s, err) = d.post(&format!("/admin/replays/{id}/pause"), Some(&admin), &json!({})).await;
    assert_eq!(
        (s, err["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("replay_transition_not_allowed")),
        "{err}"
    );
    // The page in progress stops before its next record; then nothing moves (at 40/s a
    // second of running would show).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = replayed(job(&d, &admin, id).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(replayed(job(&d, &admin, id).await), held, "a paused job does not move");
    let (_, list) = d.get("/admin/replays", Some(&admin)).await;
    assert_eq!(list["items"][0]["status"], "paused", "{list}");

    let (s, resumed) = d.post(&format!("/admin/replays/{id}/resume"), Some(&admin), &json!({})).await;
    assert_eq!((s, resumed["status"].as_str()), (StatusCode::OK, Some("running")), "{resumed}");
    assert!(eventually(Duration::from_secs(20), || async { replayed(job(&d, &admin, id).await) > held }).await);
    let (s, cancelled) = d.post(&format!("/admin/replays/{id}/cancel"), Some(&admin), &json!({})).await;
    assert_eq!((s, cancelled["status"].as_str()), (StatusCode::OK, Some("cancelled")), "{cancelled}");
    assert!(cancelled["finished_at"].is_string(), "{cancelled}");
    for action in ["cancel", "resume", "pause"] {
        let (s, err) = d.post(&format!("/admin/replays/{id}/{action}"), Some(&admin), &json!({})).await;
        assert_eq!(s, StatusCode::CONFLICT, "{action} after cancel: {err}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ended = job(&d, &admin, id).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = job(&d, &admin, id).await;
    assert_eq!(replayed(later.clone()), replayed(ended), "a cancelled job does not move");
    assert!(later["remaining"].as_i64().unwrap() > 0, "it stopped short of the end: {later}");

    // `conveyor dlq jobs` lists it; `cancel` through the CLI refuses an ended job.
    let out = d.cli(&["dlq", "--url", &d.base, "jobs"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["items"][0]["id"].as_i64(), Some(id), "{printed}");
    let out = d.cli(&["dlq", "--url", &d.base, "cancel", &id.to_string()]).output().unwrap();
    assert!(!out.status.success(), "cancelling a cancelled job fails");
}
