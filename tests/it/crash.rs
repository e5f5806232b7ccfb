//! `kill -9` in the middle of processing.

use crate::harness::{Daemon, Opts, eventually, metric_sum, token};
use http::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::resilience::{device_seq, metric_where};

/// Records the daemon's partition actors finished successfully.
async fn processed(d: &Daemon) -> usize {
    metric_where(&d.metrics().await, "conveyor_partition_records_processed_total", &["outcome=\"ok\""]) as usize
}

/// Sends rounds `rounds` of the 50k test: round `seq` carries event `seq` of each of
/// `devices` devices, as batches of 100 devices sent at once; the next round starts only
/// when every batch of this one got its 202, so each device's events enter the log in
/// order. Returns the first round that was not fully accepted (`rounds.end` if all were),
/// and why.
async fn send_rounds(
    d: Arc<Daemon>,
    t: String,
    devices: usize,
    rounds: std::ops::Range<usize>,
) -> (usize, Option<String>) {
    for seq in rounds.clone() {
        let mut batches = tokio::task::JoinSet::new();
        for part in 0..devices / 100 {
            let (d, t) = (d.clone(), t.clone());
            batches.spawn(async move {
                let events: Vec<Value> = (part * 100..(part + 1) * 100)
                    .map(|dev| json!({"device_id": format!("k9-{dev}"), "payload": {"seq": seq, "dev": dev}}))
                    .collect();
                d.try_post("/events/batch", Some(&t), &json!({"events": events}), Duration::from_secs(60)).await
            });
        }
        let mut failed = None;
        while let Some(answer) = batches.join_next().await {
            match answer.map_err(|e| e.to_string()).and_then(|a| a) {
                Ok((StatusCode::ACCEPTED, _)) => {}
                Ok((status, body)) => failed = Some(format!("{status}: {body}")),
                Err(err) => failed = Some(err),
            }
        }
        if failed.is_some() {
            return (seq, failed);
        }
    }
    (rounds.end, None)
}

/// 50,000 events over 1,000 devices through `/events/batch` (100 per request, 10 requests
/// at once); `kill -9` once 10,000 are processed — ingest and processing both in full
/// flow — then restart on the same log and store and send the rounds that were not fully
/// acknowledged. Every device reaches its last event and none ever moves backwards.
///
/// (Killing right after the last 202 does not land mid-processing: processing keeps up with
/// ingest, coalescing each device's queued events into one write, and is done within a
/// second of the last 202.)
///
/// Records whose processing finished after the last committed offset are delivered again
/// after the restart. Each one reaches the store as an upsert guarded by its source offset
/// (`… WHERE resources.last_offset < excluded.last_offset`, or another partition): the stored
/// row already carries that partition's offset or a later one, so the write changes nothing and is counted in
/// `conveyor_devices_stale_writes_total` — that is the number of redeliveries absorbed.
/// An *applied* duplicate would rewrite a device with an older event, which the sampled
/// devices would show as a step backwards; that count must be 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_processing_of_50k_events() {
    const DEVICES: usize = 1_000;
    const PER_DEVICE: usize = 50;
    const TOTAL: usize = DEVICES * PER_DEVICE;
    const KILL_AT: usize = 10_000;
    let started = Instant::now();
    let d = Arc::new(Daemon::start(Opts::new()).await);
    let t = token("gw", &["device", "user"]);

    let sender = tokio::spawn(send_rounds(d.clone(), t.clone(), DEVICES, 0..PER_DEVICE));
    // A floor for each sampled device, read (all at once: different devices do not race)
    // while the load runs; the kill follows as soon as KILL_AT events are processed.
    let floor_at = eventually(Duration::from_secs(120), || async { processed(&d).await >= KILL_AT / 2 }).await;
    assert!(floor_at, "fewer than {} events processed in 2 minutes: {}", KILL_AT / 2, processed(&d).await);
    let sample: Vec<String> = (0..DEVICES).step_by(20).map(|dev| format!("k9-{dev}")).collect();
    let mut reads = tokio::task::JoinSet::new();
    for id in sample.clone() {
        let (d, t) = (d.clone(), t.clone());
        reads.spawn(async move {
            let seq = device_seq(&d, &t, &id).await;
            (id, seq)
        });
    }
    let mut seen: HashMap<String, Option<u64>> = HashMap::new();
    while let Some(read) = reads.join_next().await {
        let (id, seq) = read.unwrap();
        seen.insert(id, seq);
    }
    let reached = eventually(Duration::from_secs(120), || async { processed(&d).await >= KILL_AT }).await;
    assert!(reached, "fewer than {KILL_AT} events processed in 2 minutes: {}", processed(&d).await);
    let processed_at_kill = processed(&d).await;
    d.send_kill9();
    let (resume_from, why) = sender.await.unwrap();
    let mut d = Arc::try_unwrap(d).unwrap_or_else(|_| panic!("the daemon is still shared"));
    d.kill9();
    eprintln!(
        "kill -9 after {:.1}s: {processed_at_kill} events processed, rounds 0..{resume_from} of {PER_DEVICE} fully \
         acknowledged ({why:?})",
        started.elapsed().as_secs_f64(),
    );
    assert!(processed_at_kill < TOTAL, "processing had finished before the kill; it must land mid-processing");

    let d = Arc::new(Daemon::start(Opts::restart_of(&mut d)).await);
    // The rounds not fully acknowledged before the kill are sent again (a client retrying
    // what got no 202); devices whose event of that round did land simply get it twice.
    let (done, why) = send_rounds(d.clone(), t.clone(), DEVICES, resume_from..PER_DEVICE).await;
    assert_eq!(done, PER_DEVICE, "after the restart every batch must be accepted: {why:?}");

    // Recovery: poll the sample (each must never go below what it showed before) and the
    // rest (until they hold their last event), one request at a time so that no read of
    // ours races another read of ours through the cache.
    let last = (PER_DEVICE - 1) as u64;
    let mut backwards = Vec::new();
    let mut pending: Vec<String> = (0..DEVICES).map(|dev| format!("k9-{dev}")).collect();
    let deadline = Instant::now() + Duration::from_secs(150);
    while !pending.is_empty() && Instant::now() < deadline {
        for id in &sample {
            let now = device_seq(&d, &t, id).await;
            let before = seen.get(id).copied().flatten();
            if let (Some(b), n) = (before, now)
                && n.is_none_or(|n| n < b)
            {
                backwards.push((id.clone(), b, n));
            }
            if now.is_some() {
                seen.insert(id.clone(), now);
            }
        }
        let mut still = Vec::new();
        for id in pending {
            if device_seq(&d, &t, &id).await != Some(last) {
                still.push(id);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(backwards.is_empty(), "devices moved backwards after kill -9 (id, before, after): {backwards:?}");
    assert!(
        pending.is_empty(),
        "{} devices never reached seq {last} after kill -9, e.g. {:?}",
        pending.len(),
        pending.first()
    );
    let text = d.metrics().await;
    let absorbed = metric_sum(&text, "conveyor_devices_stale_writes_total", "");
    let applied_duplicates = backwards.len();
    eprintln!(
        "kill -9 recovery done after {:.1}s: redeliveries absorbed by the offset guard (stale writes) = {absorbed}, \
         applied duplicates = {applied_duplicates}, records processed after restart = {}",
        started.elapsed().as_secs_f64(),
        metric_where(&text, "conveyor_partition_records_processed_total", &["outcome=\"ok\""])
    );
    assert_eq!(metric_sum(&text, "conveyor_dlq_records_written_total", ""), 0.0);
}
