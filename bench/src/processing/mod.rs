//! `processing`: events/s from a pre-filled Kafka topic to rows in PostgreSQL. Two
//! scenarios in one invocation — unique keys (one event per device: nothing coalesces, every
//! event is a row) and coalescing (several events per device) — each against three baselines
//! measured on the same topic in the same run: a raw rdkafka consumer, raw single-row
//! upserts, and raw batched upserts (Conveyor's own multi-row statement, a few connections:
//! the ceiling of the store side). `--runs N` repeats each and reports medians.

mod conveyor;
mod pg;
mod topic;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::report::{self, CpuSample, median, round, thousands};
use crate::summary;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Unique,
    Coalescing,
    Both,
}

#[derive(Debug, Args)]
pub struct ProcessingArgs {
    #[arg(long, env = "CONVEYOR_TEST_KAFKA_BROKERS")]
    pub brokers: String,
    #[arg(long, env = "CONVEYOR_TEST_PG_URL")]
    pub pg_url: String,
    /// Redis for the daemon's cache; without it the daemon uses its in-memory cache.
    #[arg(long, env = "CONVEYOR_TEST_REDIS_URL")]
    pub redis_url: Option<String>,
    #[arg(long, value_enum, default_value_t = Scenario::Both)]
    pub scenario: Scenario,
    /// Events (= devices) of the unique-keys scenario.
    #[arg(long, default_value_t = 400_000)]
    pub unique_events: usize,
    /// Events of the coalescing scenario (long enough that 100 ms samples find a steady state).
    #[arg(long, default_value_t = 200_000)]
    pub coalescing_events: usize,
    /// Events per device in the coalescing scenario.
    #[arg(long, default_value_t = 10)]
    pub events_per_device: usize,
    /// Partitions of the topic (and the daemon's log.partitions).
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Concurrent tasks (and pool size) of the single-row PostgreSQL baseline.
    #[arg(long, default_value_t = 16)]
    pub pg_tasks: usize,
    /// Connections of the batched PostgreSQL baseline.
    #[arg(long, default_value_t = 4)]
    pub batch_tasks: usize,
    /// Events per statement of the batched baseline (Conveyor's processing.batch_max_rows).
    #[arg(long, default_value_t = 500)]
    pub batch_rows: usize,
    /// Skip the single-row PostgreSQL baseline (the batched one always runs).
    #[arg(long)]
    pub no_single_row: bool,
    /// Runs of each scenario; the report shows medians.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// The `conveyor` binary (default: next to this one, or target/release/conveyor).
    #[arg(long)]
    pub conveyor_bin: Option<std::path::PathBuf>,
}

/// Events/s of one run of everything, on one topic.
struct Run {
    raw_consumer: f64,
    single_row: Option<f64>,
    batched: f64,
    /// From the daemon's listening line to the last row.
    conveyor: f64,
    conveyor_from_spawn: f64,
    conveyor_steady: Option<f64>,
    detail: Value,
}

async fn one_run(
    args: &ProcessingArgs,
    topic: &str,
    records: &Arc<Vec<topic::Prepared>>,
    devices: usize,
) -> anyhow::Result<Run> {
    let events = records.len();
    let id = report::unique_id("bench");
    let limit = Duration::from_secs(args.timeout);

    eprintln!("    raw rdkafka consumer…");
    let (brokers, t, group) = (args.brokers.clone(), topic.to_string(), format!("{id}-raw-consumer"));
    let before = CpuSample::take(None);
    let (raw_s, raw_first_s) =
        tokio::task::spawn_blocking(move || topic::raw_consume(&brokers, &t, &group, events, limit)).await??;
    let raw_cpu = CpuSample::take(None).since(&before);

    let single_s = if args.no_single_row {
        None
    } else {
        eprintln!("    raw single-row upserts ({} connections)…", args.pg_tasks);
        let schema = format!("{id}_single");
        let result = pg::single_rows(&args.pg_url, &schema, records.clone(), devices, args.pg_tasks).await;
        pg::drop_schema_at(&args.pg_url, &schema).await;
        Some(result?)
    };

    eprintln!("    raw batched upserts ({} connections, {} events per statement)…", args.batch_tasks, args.batch_rows);
    let schema = format!("{id}_batched");
    let before = CpuSample::take(None);
    let result = pg::batched(&args.pg_url, &schema, records.clone(), devices, args.batch_tasks, args.batch_rows).await;
    let batched_cpu = CpuSample::take(None).since(&before);
    pg::drop_schema_at(&args.pg_url, &schema).await;
    let batched_s = result?;

    eprintln!("    conveyor daemon…");
    let dlq = format!("{id}-events-dlq");
    topic::create_topics(&args.brokers, std::slice::from_ref(&dlq), args.partitions).await?;
    let c = conveyor::run(args, &id, topic, events, devices).await;
    topic::delete_topics(&args.brokers, &[dlq]).await;
    let c = c?;

    let n = events as f64;
    let run = Run {
        raw_consumer: n / raw_s,
        single_row: single_s.map(|s| n / s),
        batched: n / batched_s,
        conveyor: n / (c.total_s - c.startup_s).max(1e-9),
        conveyor_from_spawn: n / c.total_s,
        conveyor_steady: c.steady_rate,
        detail: json!({
            "raw_consumer": {"seconds": round(raw_s, 3), "seconds_to_first_record": round(raw_first_s, 3),
                             "cpu": raw_cpu.to_json()},
            "raw_single_row_s": single_s.map(|s| round(s, 3)),
            "raw_batched": {"seconds": round(batched_s, 3), "cpu": batched_cpu.to_json()},
            "conveyor": {
                "seconds_from_spawn": round(c.total_s, 3),
                "seconds_to_listening": round(c.startup_s, 3),
                "seconds_to_first_record": c.first_record_s.map(|s| round(s, 3)),
                "steady_events_per_sec": c.steady_rate.map(|r| round(r, 1)),
                "rows_written": c.rows_written,
                "statements": c.statements,
                "clean_shutdown": c.clean_exit,
                "cpu_after_listening": c.cpu.to_json(),
            },
        }),
    };
    println!(
        "    raw consumer {} /s · single-row {} /s · batched {} /s · conveyor {} /s (steady {} /s, from spawn {} /s)",
        thousands(run.raw_consumer),
        run.single_row.map(thousands).unwrap_or_else(|| "-".into()),
        thousands(run.batched),
        thousands(run.conveyor),
        run.conveyor_steady.map(thousands).unwrap_or_else(|| "-".into()),
        thousands(run.conveyor_from_spawn),
    );
    Ok(run)
}

/// The median of one field over the runs (`None` when no run has it).
fn med(runs: &[Run], f: impl Fn(&Run) -> Option<f64>) -> Option<f64> {
    let mut values: Vec<f64> = runs.iter().filter_map(f).collect();
    (!values.is_empty()).then(|| median(&mut values))
}

/// Prefills a topic with `events` over `devices` and runs everything `args.runs` times.
async fn scenario(
    args: &ProcessingArgs,
    name: &str,
    events: usize,
    devices: usize,
) -> anyhow::Result<(Value, Vec<Value>)> {
    anyhow::ensure!(
        devices > 0 && events > 0 && events.is_multiple_of(devices),
        "{name}: events ({events}) must be a positive multiple of devices ({devices})"
    );
    println!(
        "\n  {name}: {events} events over {devices} devices, {} partitions, {} run(s)",
        args.partitions, args.runs
    );
    let topic = format!("{}-events-input", report::unique_id("bench"));
    topic::create_topics(&args.brokers, std::slice::from_ref(&topic), args.partitions).await?;
    let records = Arc::new(topic::prepare(events, devices)?);
    let prefill_started = Instant::now();
    let filled = topic::prefill(&args.brokers, &topic, &records).await;
    let prefill_s = prefill_started.elapsed().as_secs_f64();
    let mut runs = Vec::new();
    let mut failure = filled.err();
    for r in 0..args.runs {
        if failure.is_some() {
            break;
        }
        eprintln!("  {name}, run {} of {}", r + 1, args.runs);
        match one_run(args, &topic, &records, devices).await {
            Ok(run) => runs.push(run),
            Err(err) => failure = Some(err),
        }
    }
    topic::delete_topics(&args.brokers, std::slice::from_ref(&topic)).await;
    if let Some(err) = failure {
        return Err(err);
    }

    let (raw, batched) = (med(&runs, |r| Some(r.raw_consumer)), med(&runs, |r| Some(r.batched)));
    let (conveyor, steady) = (med(&runs, |r| Some(r.conveyor)), med(&runs, |r| r.conveyor_steady));
    let single = med(&runs, |r| r.single_row);
    let spawn = med(&runs, |r| Some(r.conveyor_from_spawn));
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| round(a / b, 4));
    let cell = |v: Option<f64>| v.map(thousands).unwrap_or_else(|| "-".into());
    let of = |v: Option<f64>, base: Option<f64>| ratio(v, base).map(|r| format!("{r:.3}")).unwrap_or_default();
    report::table(
        &["median of runs", "events/s", "vs raw consumer", "vs raw batched"],
        &[
            vec!["raw rdkafka consumer".into(), cell(raw), "1.000".into(), String::new()],
            vec![
                format!("raw single-row upserts ({})", args.pg_tasks),
                cell(single),
                of(single, raw),
                of(single, batched),
            ],
            vec![
                format!("raw batched upserts ({}×{})", args.batch_tasks, args.batch_rows),
                cell(batched),
                of(batched, raw),
                "1.000".into(),
            ],
            vec!["conveyor (listening → last row)".into(), cell(conveyor), of(conveyor, raw), of(conveyor, batched)],
            vec!["conveyor steady state (10%→90%)".into(), cell(steady), of(steady, raw), of(steady, batched)],
            vec!["conveyor (spawn → last row)".into(), cell(spawn), of(spawn, raw), of(spawn, batched)],
        ],
    );

    let unique = name == "unique_keys";
    let targets = |batched_target: f64, raw_target: f64| {
        if unique { (Some(batched_target), Some(raw_target)) } else { (None, None) }
    };
    let (t_batched, t_raw) = targets(0.8, 0.35);
    let label = if unique { "processing, unique keys" } else { "processing, coalescing" };
    let mut summary_rows = vec![
        summary::row(
            &format!("{label}: vs raw batched upserts"),
            conveyor.unwrap_or(0.0),
            batched.unwrap_or(0.0),
            t_batched,
            "events/s",
        ),
        summary::row(
            &format!("{label}: vs raw consumer"),
            conveyor.unwrap_or(0.0),
            raw.unwrap_or(0.0),
            t_raw,
            "events/s",
        ),
    ];
    if let Some(single) = single {
        summary_rows.push(summary::row(
            &format!("{label}: vs raw single-row upserts"),
            conveyor.unwrap_or(0.0),
            single,
            None,
            "events/s",
        ));
    }
    if let Some(steady) = steady {
        summary_rows.push(summary::row(
            &format!("{label}, steady state: vs raw batched upserts"),
            steady,
            batched.unwrap_or(0.0),
            None,
            "events/s",
        ));
    }
    let doc = json!({
        "events": events,
        "devices": devices,
        "events_per_device": events / devices,
        "prefill_s": round(prefill_s, 3),
        "median_events_per_sec": {
            "raw_consumer": raw.map(|v| round(v, 1)),
            "raw_single_row": single.map(|v| round(v, 1)),
            "raw_batched": batched.map(|v| round(v, 1)),
            "conveyor_after_listening": conveyor.map(|v| round(v, 1)),
            "conveyor_steady_state": steady.map(|v| round(v, 1)),
            "conveyor_from_spawn": spawn.map(|v| round(v, 1)),
        },
        "ratio_conveyor_over_raw_batched": ratio(conveyor, batched),
        "ratio_conveyor_over_raw_consumer": ratio(conveyor, raw),
        "ratio_conveyor_over_raw_single_row": ratio(conveyor, single),
        "runs": runs.iter().map(|r| r.detail.clone()).collect::<Vec<_>>(),
    });
    Ok((doc, summary_rows))
}

pub async fn run(args: ProcessingArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    println!(
        "processing: brokers {}, cache {}",
        args.brokers,
        if args.redis_url.is_some() { "redis" } else { "memory" }
    );
    let mut scenarios = serde_json::Map::new();
    let mut summary_rows = Vec::new();
    if matches!(args.scenario, Scenario::Unique | Scenario::Both) {
        let (doc, rows) = scenario(&args, "unique_keys", args.unique_events, args.unique_events).await?;
        scenarios.insert("unique_keys".into(), doc);
        summary_rows.extend(rows);
    }
    if matches!(args.scenario, Scenario::Coalescing | Scenario::Both) {
        let devices = args.coalescing_events / args.events_per_device.max(1);
        let (doc, rows) = scenario(&args, "coalescing", args.coalescing_events, devices).await?;
        scenarios.insert("coalescing".into(), doc);
        summary_rows.extend(rows);
    }
    let body = json!({
        "passed": true,
        "config": {
            "partitions": args.partitions,
            "runs": args.runs,
            "brokers": args.brokers,
            "cache": if args.redis_url.is_some() { "redis" } else { "memory" },
            "single_row_connections": args.pg_tasks,
            "batched_connections": args.batch_tasks,
            "batched_events_per_statement": args.batch_rows,
            "record_format": "conveyor_devices::DeviceEvent as JSON, key = device_id, headers traceparent + x-request-id, payload {\"seq\": n}",
        },
        "scenarios": scenarios,
        "summary": summary_rows,
        "notes": [
            "Every rate runs over the same pre-filled topic. Conveyor's main rate runs from the daemon's listening \
             line (store connected, migrations run) until every device's row holds its last event, which includes \
             joining the consumer group, as the raw consumer's time does; 'from spawn' adds process start-up.",
            "Steady state: events/s between the moments 10% and 90% of the records were processed, from the \
             daemon's processed-records counter sampled every 100 ms.",
            "The batched baseline issues Conveyor's statement (UNNEST, guard in the WHERE, RETURNING id) and, like \
             Conveyor, keeps only a device's last event within one statement; the single-row baseline writes every event.",
            "Conveyor also writes each written row through to the cache (Redis when configured); the baselines do not.",
        ],
    });
    let path = report::write("processing", body)?;
    println!("\n  wrote {}", path.display());
    Ok(())
}
