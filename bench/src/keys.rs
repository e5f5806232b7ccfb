//! `keys`: key-level concurrency inside ONE partition, in-process. An embedded log with one
//! partition is pre-filled with records over K keys; the real consumer supervisor and
//! partition actor feed them to a handler that sleeps 5 ms per call. With one record per
//! call, the ceiling is `min(K, max_concurrent_keys) / 5 ms`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use bytes::Bytes;
use clap::Args;
use conveyor_actors::config::{ProcessingConfig, RetryConfig};
use conveyor_actors::consumer::{ConsumerSupervisorHandle, DeadLetters, KeyHandler};
use conveyor_actors::log::embedded::EmbeddedLog;
use conveyor_actors::log::{LogBackend, OutgoingRecord, Record};
use conveyor_actors::retry::{HandlerError, RetryPolicy};
use serde_json::json;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use crate::report::{self, TempDir, round, thousands};

const TOPIC: &str = "keys-bench";
const DLQ: &str = "keys-bench-dlq";
const GROUP: &str = "keys-bench";

#[derive(Debug, Args)]
pub struct KeysArgs {
    /// Key counts to run, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    pub keys: Vec<usize>,
    /// Target seconds per run: records = ideal rate × this (clamped by --min/--max-records).
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 400)]
    pub min_records: usize,
    #[arg(long, default_value_t = 150_000)]
    pub max_records: usize,
    /// What one handler call sleeps (tokio::time::sleep).
    #[arg(long, default_value_t = 5)]
    pub sleep_ms: u64,
    #[arg(long, default_value_t = 256)]
    pub max_concurrent_keys: usize,
}

/// Sleeps per call and checks the per-key promises: records of a key in order, one call
/// at a time per key.
struct SleepHandler {
    sleep: Duration,
    target: u64,
    records: AtomicU64,
    calls: AtomicU64,
    order_violations: AtomicU64,
    overlap_violations: AtomicU64,
    bad_payloads: AtomicU64,
    running: AtomicUsize,
    max_running: AtomicUsize,
    last_seq: Mutex<HashMap<String, u64>>,
    busy_keys: Mutex<HashSet<String>>,
    done: Notify,
}

impl SleepHandler {
    fn new(sleep: Duration, target: u64) -> Self {
        SleepHandler {
            sleep,
            target,
            records: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            order_violations: AtomicU64::new(0),
            overlap_violations: AtomicU64::new(0),
            bad_payloads: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
            last_seq: Mutex::new(HashMap::new()),
            busy_keys: Mutex::new(HashSet::new()),
            done: Notify::new(),
        }
    }

    fn check_order(&self, key: &str, records: &[Record]) {
        let mut last = self.last_seq.lock().unwrap_or_else(PoisonError::into_inner);
        for record in records {
            let seq = std::str::from_utf8(&record.payload).ok().and_then(|s| s.parse::<u64>().ok());
            let Some(seq) = seq else {
                self.bad_payloads.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            match last.get_mut(key) {
                Some(prev) if seq <= *prev => {
                    self.order_violations.fetch_add(1, Ordering::Relaxed);
                }
                Some(prev) => *prev = seq,
                None => {
                    last.insert(key.to_string(), seq);
                }
            }
        }
    }
}

#[async_trait]
impl KeyHandler for SleepHandler {
    fn name(&self) -> &'static str {
        "keys-bench"
    }

    async fn handle(&self, key: &str, records: &[Record]) -> Result<(), HandlerError> {
        let overlapping = !self.busy_keys.lock().unwrap_or_else(PoisonError::into_inner).insert(key.to_string());
        if overlapping {
            self.overlap_violations.fetch_add(1, Ordering::Relaxed);
        }
        let now = self.running.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_running.fetch_max(now, Ordering::Relaxed);
        self.check_order(key, records);
        tokio::time::sleep(self.sleep).await;
        self.running.fetch_sub(1, Ordering::Relaxed);
        if !overlapping {
            self.busy_keys.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        let seen = self.records.fetch_add(records.len() as u64, Ordering::Relaxed) + records.len() as u64;
        if seen >= self.target {
            self.done.notify_one();
        }
        Ok(())
    }
}

fn key_name(k: usize) -> String {
    format!("key-{k:05}")
}

/// Appends `per_key` records for each of `keys` keys; each key's records are sent in order
/// (one awaited send after the other), keys concurrently so appends group-commit.
async fn prefill(log: &EmbeddedLog, keys: usize, per_key: usize) -> anyhow::Result<()> {
    let producer = log.producer();
    let mut tasks = JoinSet::new();
    for k in 0..keys {
        let producer = producer.clone();
        tasks.spawn(async move {
            let key = key_name(k);
            for seq in 1..=per_key {
                let record = OutgoingRecord {
                    topic: TOPIC.to_string(),
                    key: Some(key.clone()),
                    payload: Bytes::from(seq.to_string()),
                    headers: Vec::new(),
                };
                producer.send(record, Duration::from_secs(30)).await?;
            }
            Ok::<_, conveyor_actors::Error>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(())
}

/// What one run measured.
struct KeysRun {
    keys: usize,
    records: usize,
    prefill_s: f64,
    elapsed_s: f64,
    calls: u64,
    ideal_per_sec: f64,
    order_violations: u64,
    overlap_violations: u64,
    bad_payloads: u64,
    incomplete_keys: usize,
    max_running: usize,
    baseline_elapsed_s: f64,
}

impl KeysRun {
    fn per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed_s
    }
    fn baseline_per_sec(&self) -> f64 {
        self.records as f64 / self.baseline_elapsed_s
    }
    fn failed(&self) -> bool {
        self.order_violations > 0 || self.overlap_violations > 0 || self.bad_payloads > 0 || self.incomplete_keys > 0
    }
}

/// The same work with no log and no actors: per key one task calling the same 5 ms sleep
/// record after record, at most `max_concurrent` calls at once (a fair semaphore).
async fn tokio_baseline(keys: usize, per_key: usize, sleep: Duration, max_concurrent: usize) -> anyhow::Result<f64> {
    let slots = Arc::new(Semaphore::new(max_concurrent));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..keys {
        let slots = slots.clone();
        tasks.spawn(async move {
            for _ in 0..per_key {
                let _permit = slots.acquire().await?;
                tokio::time::sleep(sleep).await;
            }
            Ok::<_, tokio::sync::AcquireError>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(started.elapsed().as_secs_f64())
}

async fn run_one(args: &KeysArgs, keys: usize) -> anyhow::Result<KeysRun> {
    let sleep = Duration::from_millis(args.sleep_ms);
    let ideal = keys.min(args.max_concurrent_keys) as f64 / sleep.as_secs_f64();
    let wanted = ((ideal * args.seconds) as usize).clamp(args.min_records, args.max_records);
    let per_key = wanted.div_ceil(keys).max(1);
    let records = per_key * keys;

    let dir = TempDir::new("conveyor-bench-keys-")?;
    let log = EmbeddedLog::open(dir.path(), 1)?;
    log.ensure_topics(&[TOPIC.to_string(), DLQ.to_string()]).await?;
    let prefill_started = Instant::now();
    prefill(&log, keys, per_key).await.context("pre-filling the log")?;
    let prefill_s = prefill_started.elapsed().as_secs_f64();

    let handler = Arc::new(SleepHandler::new(sleep, records as u64));
    let processing = ProcessingConfig {
        max_concurrent_keys: args.max_concurrent_keys,
        max_coalesce: 1,
        max_in_flight_per_partition: 10_000,
        ..Default::default()
    };
    let dead_letters =
        DeadLetters { producer: log.producer(), topic: DLQ.to_string(), timeout: Duration::from_secs(10) };
    let policy = RetryPolicy::from(&RetryConfig::default());
    let supervisor = ConsumerSupervisorHandle::spawn(
        GROUP.to_string(),
        handler.clone() as Arc<dyn KeyHandler>,
        dead_letters,
        policy,
        processing,
        None,
        None,
    )
    .await?;

    let started = Instant::now();
    let consumer = log.subscribe(GROUP, &[TOPIC.to_string()], Arc::new(supervisor.clone())).await?;
    let expected = Duration::from_secs_f64(records as f64 / ideal);
    let limit = expected * 20 + Duration::from_secs(30);
    let finished = tokio::time::timeout(limit, async {
        while handler.records.load(Ordering::Relaxed) < records as u64 {
            // notify_one stores a permit, so a notification between the check and the
            // wait is not lost; the timeout is a safety net only.
            let _ = tokio::time::timeout(Duration::from_millis(50), handler.done.notified()).await;
        }
    })
    .await;
    let elapsed_s = started.elapsed().as_secs_f64();
    consumer.stop().await?;
    supervisor.actor().stop(None);
    if finished.is_err() {
        bail!(
            "keys={keys}: only {} of {records} records handled within {limit:?}",
            handler.records.load(Ordering::Relaxed)
        );
    }

    let incomplete_keys = {
        let last = handler.last_seq.lock().unwrap_or_else(PoisonError::into_inner);
        (0..keys).filter(|k| last.get(&key_name(*k)).copied() != Some(per_key as u64)).count()
    };
    let baseline_elapsed_s = tokio_baseline(keys, per_key, sleep, args.max_concurrent_keys).await?;
    Ok(KeysRun {
        keys,
        records,
        prefill_s,
        elapsed_s,
        calls: handler.calls.load(Ordering::Relaxed),
        ideal_per_sec: ideal,
        order_violations: handler.order_violations.load(Ordering::Relaxed),
        overlap_violations: handler.overlap_violations.load(Ordering::Relaxed),
        bad_payloads: handler.bad_payloads.load(Ordering::Relaxed),
        incomplete_keys,
        max_running: handler.max_running.load(Ordering::Relaxed),
        baseline_elapsed_s,
    })
}

pub async fn run(args: KeysArgs) -> anyhow::Result<()> {
    if args.keys.is_empty() || args.keys.contains(&0) {
        bail!("--keys needs positive key counts");
    }
    println!(
        "keys: one partition, handler sleeps {} ms per call, max_concurrent_keys {}, max_coalesce 1",
        args.sleep_ms, args.max_concurrent_keys
    );
    let mut runs = Vec::new();
    for &keys in &args.keys {
        eprintln!("  keys={keys}: pre-filling and consuming…");
        let run = run_one(&args, keys).await?;
        eprintln!(
            "  keys={keys}: {} records in {:.2}s → {} rec/s ({:.1}% of ideal)",
            run.records,
            run.elapsed_s,
            thousands(run.per_sec()),
            100.0 * run.per_sec() / run.ideal_per_sec
        );
        runs.push(run);
    }

    println!();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.keys.to_string(),
                thousands(r.records as f64),
                format!("{:.2}", r.elapsed_s),
                thousands(r.per_sec()),
                thousands(r.ideal_per_sec),
                format!("{:.3}", r.per_sec() / r.ideal_per_sec),
                thousands(r.baseline_per_sec()),
                format!("{:.3}", r.per_sec() / r.baseline_per_sec()),
                r.max_running.to_string(),
                r.order_violations.to_string(),
            ]
        })
        .collect();
    report::table(
        &[
            "keys",
            "records",
            "seconds",
            "rec/s",
            "ideal rec/s",
            "of ideal",
            "tokio rec/s",
            "vs tokio",
            "max conc",
            "order viol.",
        ],
        &rows,
    );

    let failed = runs.iter().any(KeysRun::failed);
    // The slowest key count is the one the target is about.
    let worst = runs
        .iter()
        .min_by(|a, b| (a.per_sec() / a.baseline_per_sec()).total_cmp(&(b.per_sec() / b.baseline_per_sec())));
    let mut summary = Vec::new();
    if let Some(w) = worst {
        summary.push(crate::summary::row(
            &format!("keys: rec/s vs plain tokio (worst of {} key counts: {} keys)", runs.len(), w.keys),
            w.per_sec(),
            w.baseline_per_sec(),
            Some(0.95),
            "records/s",
        ));
    }
    let violations: u64 = runs.iter().map(|r| r.order_violations + r.overlap_violations).sum();
    summary.push(json!({
        "name": "keys: order violations + same-key overlaps (all runs)",
        "conveyor": violations,
        "baseline": null,
        "ratio": null,
        "target": 0,
        "unit": "count",
    }));
    let body = json!({
        "passed": !failed,
        "summary": summary,
        "config": {
            "partitions": 1,
            "sleep_ms_per_call": args.sleep_ms,
            "max_concurrent_keys": args.max_concurrent_keys,
            "max_coalesce": 1,
            "max_in_flight_per_partition": 10_000,
            "target_seconds_per_run": args.seconds,
        },
        "runs": runs.iter().map(|r| json!({
            "keys": r.keys,
            "records": r.records,
            "records_per_key": r.records / r.keys,
            "prefill_s": round(r.prefill_s, 3),
            "elapsed_s": round(r.elapsed_s, 3),
            "records_per_sec": round(r.per_sec(), 1),
            "handler_calls": r.calls,
            "ideal_records_per_sec": round(r.ideal_per_sec, 1),
            "fraction_of_ideal": round(r.per_sec() / r.ideal_per_sec, 4),
            "baseline_tokio_records_per_sec": round(r.baseline_per_sec(), 1),
            "ratio_conveyor_over_tokio_baseline": round(r.per_sec() / r.baseline_per_sec(), 4),
            "max_concurrent_calls_observed": r.max_running,
            "order_violations": r.order_violations,
            "same_key_overlaps": r.overlap_violations,
            "bad_payloads": r.bad_payloads,
            "keys_missing_their_last_record": r.incomplete_keys,
        })).collect::<Vec<_>>(),
        "notes": [
            "In-process: EmbeddedLog (1 partition) → ConsumerSupervisor → one PartitionActor → key tasks → a \
             handler that sleeps per call; no daemon, no HTTP, no store.",
            "ideal = min(keys, max_concurrent_keys) / sleep. tokio::time::sleep has millisecond \
             granularity and always rounds up, so a 5 ms sleep takes a bit over 5 ms and even a perfect \
             scheduler stays below the ideal; the tokio baseline (the same sleeps from plain tasks under a \
             256-permit semaphore, measured right after each run) shows that ceiling.",
            "Timing starts at subscribe (the log is pre-filled) and ends when the handler has seen every record.",
            "order_violations counts records whose per-key sequence number was not greater than the last one \
             seen for that key; same_key_overlaps counts calls that started while another call for the same key \
             was running. Both must be 0.",
        ],
    });
    let path = report::write("keys", body)?;
    println!("  wrote {}", path.display());
    if failed {
        bail!("per-key ordering broken: see {}", path.display());
    }
    Ok(())
}
