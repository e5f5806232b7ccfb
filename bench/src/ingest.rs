//! `ingest`: `POST /events` throughput of the real daemon against a bare hyper server,
//! both loaded by the same `wrk` command and Lua script; the p99 at half the maximum rate
//! (open loop, [`fixed_rate`]); for Kafka, a raw `acks=all` producer in the same run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::daemon::{self, Backends, DaemonSpec, Histogram};
use crate::fixed_rate::{self, FixedRateRun};
use crate::raw_produce::{self, ProducerSettings, RawProduceRun};
use crate::report::{self, CpuSample, TempDir, median, round, thousands};
use crate::wrk::{HelloServer, WrkRun, lua_script, wrk};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// Embedded log (fsync'd group commit), SQLite, in-memory cache.
    Embedded,
    /// Kafka, PostgreSQL, Redis from CONVEYOR_TEST_{KAFKA_BROKERS,PG_URL,REDIS_URL}.
    Real,
    /// Embedded, then real.
    Both,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    #[arg(long, value_enum, default_value = "embedded")]
    pub backend: BackendArg,
    /// wrk threads (-t).
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// wrk connections (-c).
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
    /// Seconds measured per target (-d).
    #[arg(long, default_value_t = 15)]
    pub duration: u32,
    /// Seconds of unmeasured load per target before the measured run (0: none).
    #[arg(long, default_value_t = 3)]
    pub warmup: u32,
    /// Measured runs per backend (hello then conveyor each time); the summary reports the
    /// median ratio.
    #[arg(long, default_value_t = 1)]
    pub runs: u32,
    /// Seconds of the fixed-rate run at half the median maximum req/s (its p99 is reported).
    #[arg(long, default_value_t = 10)]
    pub rate_seconds: u32,
    /// Distinct devices the Lua script picks from at random.
    #[arg(long, default_value_t = 1000)]
    pub devices: u32,
    #[arg(long, default_value = "wrk")]
    pub wrk: String,
    /// The `conveyor` binary (default: next to this one, or target/release/conveyor).
    #[arg(long)]
    pub conveyor_bin: Option<PathBuf>,
    /// Extra daemon environment, KEY=VALUE (repeatable), e.g. CONVEYOR_LOG__PARTITIONS=1.
    #[arg(long, value_parser = parse_env_pair)]
    pub daemon_env: Vec<(String, String)>,
}

fn parse_env_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?}: expected KEY=VALUE"))
}

/// Warm-up (discarded), then the measured run, sampling the server's CPU (`pid`) around it.
async fn load(
    args: &IngestArgs,
    script: &Path,
    base: &str,
    label: &str,
    pid: Option<u32>,
) -> anyhow::Result<(WrkRun, String)> {
    if args.warmup > 0 {
        eprintln!("  {label}: warm-up {}s", args.warmup);
        wrk(args, script, base, args.warmup).await?;
    }
    eprintln!("  {label}: measuring {}s (wrk -t{} -c{} --latency)", args.duration, args.threads, args.connections);
    let before = CpuSample::take(pid);
    let (mut run, text) = wrk(args, script, base, args.duration).await?;
    run.cpu = CpuSample::take(pid).since(&before);
    eprintln!("{}", text.trim_end());
    Ok((run, text))
}

/// One backend's measurements: every run's pair of wrk results (and the raw producer's, for
/// Kafka), the fixed-rate run at half the median maximum, and the daemon's counters.
struct BackendResult {
    backends: Backends,
    runs: Vec<RunPair>,
    half_rate: FixedRateRun,
    /// The same fixed-rate load against the hello server: what the generator and the machine
    /// add to any server's latency at that rate.
    floor: FixedRateRun,
    /// Inside the daemon during the half-rate run: the request and what it waited for.
    inside: Inside,
    /// How long processing took to catch up with ingest before the half-rate run.
    caught_up: Duration,
    metrics: Value,
    clean_exit: bool,
}

/// The daemon's own histograms over the half-rate run: `POST /events` answered 2xx, and
/// the append each one waited for (send to durable acknowledgement). Means, and the upper
/// bound of the bucket holding the p99.
struct Inside {
    request: Histogram,
    append: Histogram,
}

impl Inside {
    const REQUEST: &'static str = "http_server_request_duration_seconds";
    const REQUEST_FILTERS: &'static [&'static str] = &["http_route=\"/events\"", "http_response_status_class=\"2xx\""];
    const APPEND: &'static str = "conveyor_log_append_duration_seconds";
    const APPEND_FILTERS: &'static [&'static str] = &["outcome=\"ok\""];

    fn between(before: &str, after: &str) -> Self {
        let h = |family, filters| {
            Histogram::scrape(after, family, filters).since(&Histogram::scrape(before, family, filters))
        };
        Inside { request: h(Self::REQUEST, Self::REQUEST_FILTERS), append: h(Self::APPEND, Self::APPEND_FILTERS) }
    }

    fn line(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{:.2}", v * 1000.0));
        format!(
            "inside the daemon: POST /events mean {} ms (p99 ≤ {} ms), of which the log append mean {} ms (p99 ≤ {} ms)",
            ms(self.request.mean()),
            ms(self.request.quantile_bound(0.99)),
            ms(self.append.mean()),
            ms(self.append.quantile_bound(0.99)),
        )
    }

    fn to_json(&self) -> Value {
        let ms = |v: Option<f64>| v.map(|v| round(v * 1000.0, 3));
        json!({
            "requests": self.request.count,
            "request_mean_ms": ms(self.request.mean()),
            "request_p99_bucket_bound_ms": ms(self.request.quantile_bound(0.99)),
            "appends": self.append.count,
            "append_mean_ms": ms(self.append.mean()),
            "append_p99_bucket_bound_ms": ms(self.append.quantile_bound(0.99)),
        })
    }
}

struct RunPair {
    hello: WrkRun,
    conveyor: WrkRun,
    raw_produce: Option<RawProduceRun>,
}

impl RunPair {
    fn ratio_hello(&self) -> f64 {
        self.conveyor.requests_per_sec / self.hello.requests_per_sec
    }
    fn ratio_producer(&self) -> Option<f64> {
        self.raw_produce.as_ref().map(|raw| self.conveyor.requests_per_sec / raw.per_sec)
    }
}

fn median_of(runs: &[RunPair], f: impl Fn(&RunPair) -> Option<f64>) -> Option<f64> {
    let mut values: Vec<f64> = runs.iter().filter_map(f).collect();
    (!values.is_empty()).then(|| median(&mut values))
}

fn kafka_brokers(backends: &Backends) -> Option<&str> {
    match backends {
        Backends::Real { brokers, .. } => Some(brokers),
        Backends::Embedded => None,
    }
}

async fn measure_backend(
    args: &IngestArgs,
    backends: Backends,
    script: &Path,
    token: &str,
) -> anyhow::Result<BackendResult> {
    let bin = daemon::conveyor_bin(args.conveyor_bin.as_deref())?;
    println!(
        "ingest: POST /events, wrk -t{} -c{} -d{}s, backend {}, {} run(s)",
        args.threads,
        args.connections,
        args.duration,
        backends.name(),
        args.runs
    );
    // A fresh daemon (fresh topics, schema and data directory) for every run: the runs are
    // the same experiment three times, as the raw producer's are (a fresh topic each). On one
    // daemon each run would find its topic longer than the last, and the test broker's
    // fetches cost in proportion to a partition's length (docs/benchmarks.md).
    let spec = || DaemonSpec {
        bin: bin.clone(),
        backends: backends.clone(),
        id: report::unique_id("bench"),
        topic_in: None,
        extra_env: args.daemon_env.clone(),
    };
    let mut runs = Vec::new();
    let mut last: Option<daemon::Daemon> = None;
    for n in 1..=args.runs.max(1) {
        if let Some(mut previous) = last.take() {
            previous.terminate(Duration::from_secs(30)).await;
        }
        let mut daemon = spec().spawn()?;
        eprintln!("  run {n}/{} ({})", args.runs.max(1), backends.name());
        match one_run(args, &backends, script, &daemon).await {
            Ok(run) => runs.push(run),
            Err(e) => {
                eprintln!("daemon log tail:\n{}", daemon.log_tail(30));
                daemon.terminate(Duration::from_secs(30)).await;
                return Err(e);
            }
        }
        last = Some(daemon);
    }
    let mut daemon = last.ok_or_else(|| anyhow::anyhow!("no run"))?;
    let measured = async {
        let max = median_of(&runs, |r| Some(r.conveyor.requests_per_sec)).unwrap_or(0.0);
        let rate = (max / 2.0).max(1.0);
        // Half the rate is measured in its steady state, not while the saturating runs'
        // backlog is still being processed beside it.
        let caught_up = daemon.wait_processed(Duration::from_secs(300)).await?;
        eprintln!("  processing caught up with ingest {:.1} s after the last run", caught_up.as_secs_f64());
        eprintln!("  conveyor at a fixed {rate:.0} req/s (half the median maximum) for {}s", args.rate_seconds);
        let target = fixed_rate::Target::from_base(&daemon.base, token, args.devices);
        let before = daemon.metrics().await;
        let half_rate = fixed_rate::run(&target, rate, args.connections, args.rate_seconds).await?;
        let inside = Inside::between(&before, &daemon.metrics().await);
        eprintln!("  hello (hyper) at the same fixed rate, the generator's floor");
        let hello_server = HelloServer::spawn()?;
        let hello = fixed_rate::Target::from_base(&hello_server.base, token, args.devices);
        let floor = fixed_rate::run(&hello, rate, args.connections, args.rate_seconds).await?;
        drop(hello_server);
        anyhow::Ok((half_rate, floor, inside, caught_up))
    }
    .await;
    let metrics = daemon.metrics().await;
    let clean_exit = daemon.terminate(Duration::from_secs(30)).await;
    let (half_rate, floor, inside, caught_up) = match measured {
        Ok(r) => r,
        Err(e) => {
            eprintln!("daemon log tail:\n{}", daemon.log_tail(30));
            return Err(e);
        }
    };
    let metrics = json!({
        "ingest_accepted_incl_warmup": daemon::metric_sum(&metrics, "conveyor_ingest_accepted", &[]),
        "records_processed_incl_warmup": daemon::metric_sum(&metrics, "conveyor_partition_records_processed", &[]),
        "store_upserts_incl_warmup":
            daemon::metric_sum(&metrics, "conveyor_store_batch_rows_sum", &["upsert_resources"]),
    });
    Ok(BackendResult { backends, runs, half_rate, floor, inside, caught_up, metrics, clean_exit })
}

/// One saturating run on a fresh daemon: the hello baseline alone on the machine (the
/// daemon idle), then Conveyor, then (Kafka) the raw producer.
async fn one_run(
    args: &IngestArgs,
    backends: &Backends,
    script: &Path,
    daemon: &daemon::Daemon,
) -> anyhow::Result<RunPair> {
    daemon.wait_ready(Duration::from_secs(60)).await?;
    let hello_server = HelloServer::spawn()?;
    let (hello, _) = load(args, script, &hello_server.base, "hello (hyper)", Some(hello_server.pid())).await?;
    drop(hello_server);
    let (conveyor, _) = load(args, script, &daemon.base, "conveyor", Some(daemon.pid())).await?;
    let raw_produce = match kafka_brokers(backends) {
        None => None,
        Some(brokers) => {
            eprintln!("  raw rdkafka producer (acks=all): {}s, {} in flight", args.duration, args.connections);
            let topic = report::unique_id("bench-raw-produce-");
            let settings = ProducerSettings::from_defaults();
            let partitions = conveyor_actors::config::LogConfig::default().partitions;
            Some(raw_produce::run(brokers, &topic, partitions, &settings, args.connections, args.duration).await?)
        }
    };
    Ok(RunPair { hello, conveyor, raw_produce })
}

impl BackendResult {
    fn failures(&self) -> u64 {
        self.runs.iter().map(|r| r.conveyor.non_202 + r.conveyor.non_2xx_3xx).sum::<u64>() + self.half_rate.non_202
    }

    fn print(&self) {
        println!();
        let mut rows = Vec::new();
        for (i, r) in self.runs.iter().enumerate() {
            rows.push(row(&format!("#{} hello (hyper 1.x)", i + 1), &r.hello));
            rows.push(row(&format!("#{} conveyor ({})", i + 1, self.backends.name()), &r.conveyor));
        }
        report::table(
            &[
                "target",
                "req/s",
                "p50 ms",
                "p99 ms",
                "requests",
                "non-202",
                "sock err",
                "server CPU %",
                "machine busy %",
            ],
            &rows,
        );
        for (i, r) in self.runs.iter().enumerate() {
            print!("  #{}: conveyor/hello {:.3}", i + 1, r.ratio_hello());
            if let (Some(raw), Some(ratio)) = (&r.raw_produce, r.ratio_producer()) {
                print!("; raw producer {} rec/s, conveyor/raw producer {ratio:.3}", thousands(raw.per_sec));
            }
            println!();
        }
        for (label, h) in [("fixed rate", &self.half_rate), ("hello at the same rate", &self.floor)] {
            println!(
                "  {label} {} req/s (achieved {}): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms, non-202 {} \
                 (timer lateness left out: p50 {:.2} ms, p99 {:.2} ms)",
                thousands(h.target_rate),
                thousands(h.achieved_rate),
                h.p50_ms,
                h.p90_ms,
                h.p99_ms,
                h.max_ms,
                h.non_202,
                h.timer_late_p50_ms,
                h.timer_late_p99_ms,
            );
        }
        println!("  {}", self.inside.line());
    }

    /// Rows for the bench's `"summary"`: the median ratios and the p99 at half rate.
    fn summary(&self) -> Vec<Value> {
        let name = self.backends.name();
        let embedded = matches!(self.backends, Backends::Embedded);
        let conveyor = median_of(&self.runs, |r| Some(r.conveyor.requests_per_sec)).unwrap_or(0.0);
        let hello = median_of(&self.runs, |r| Some(r.hello.requests_per_sec)).unwrap_or(0.0);
        let ratio_hello = median_of(&self.runs, |r| Some(r.ratio_hello())).unwrap_or(0.0);
        let target_hello = if embedded { 0.3 } else { 0.2 };
        let mut rows = vec![ratio_row(
            &format!("ingest {name}: req/s vs raw hyper"),
            conveyor,
            hello,
            ratio_hello,
            Some(target_hello),
            "req/s",
        )];
        if let Some(ratio) = median_of(&self.runs, RunPair::ratio_producer) {
            let raw = median_of(&self.runs, |r| r.raw_produce.as_ref().map(|p| p.per_sec)).unwrap_or(0.0);
            rows.push(ratio_row(
                &format!("ingest {name}: req/s vs raw rdkafka producer acks=all"),
                conveyor,
                raw,
                ratio,
                Some(0.5),
                "req/s",
            ));
        }
        rows.push(json!({
            "name": format!("ingest {name}: p99 at half the max rate ({:.0} req/s)", self.half_rate.target_rate),
            "conveyor": round(self.half_rate.p99_ms, 3),
            // Not a ratio's denominator: the p99 the same load gets from the hello server.
            "baseline": round(self.floor.p99_ms, 3),
            "ratio": null,
            "target": if embedded { Some(5.0) } else { None },
            "unit": "ms (target is a ceiling)",
        }));
        rows
    }

    fn to_json(&self) -> Value {
        let durability = match self.backends {
            Backends::Embedded => {
                "Conveyor answers 202 only after the event is appended to the embedded log and fsync'd \
                 (the writer thread group-commits concurrent appends into one fsync per batch); \
                 the hello server does no I/O at all."
            }
            Backends::Real { .. } => {
                "Conveyor answers 202 only after Kafka acknowledged the record (acks=all, idempotent \
                 producer); the hello server does no I/O at all. The raw producer baseline uses the same \
                 producer settings, record size, broker and partition count, with as many sends in flight as \
                 wrk has connections."
            }
        };
        json!({
            "backend": self.backends.name(),
            "runs": self.runs.iter().map(|r| json!({
                "baseline": r.hello.to_json(),
                "conveyor": r.conveyor.to_json(),
                "ratio_conveyor_over_hello": round(r.ratio_hello(), 4),
                "raw_producer": r.raw_produce.as_ref().map(|p| p.to_json(&ProducerSettings::from_defaults())),
                "ratio_conveyor_over_raw_producer": r.ratio_producer().map(|x| round(x, 4)),
            })).collect::<Vec<_>>(),
            "median_ratio_conveyor_over_hello": median_of(&self.runs, |r| Some(r.ratio_hello())).map(|x| round(x, 4)),
            "median_ratio_conveyor_over_raw_producer": median_of(&self.runs, RunPair::ratio_producer).map(|x| round(x, 4)),
            "half_max_rate": self.half_rate.to_json(),
            "half_max_rate_inside_the_daemon": self.inside.to_json(),
            "half_max_rate_against_hello": self.floor.to_json(),
            "processing_caught_up_secs_before_half_max_rate": round(self.caught_up.as_secs_f64(), 1),
            "metrics_after_run": self.metrics,
            "clean_shutdown": self.clean_exit,
            "durability": durability,
        })
    }
}

fn ratio_row(name: &str, conveyor: f64, baseline: f64, ratio: f64, target: Option<f64>, unit: &str) -> Value {
    json!({
        "name": name,
        "conveyor": round(conveyor, 1),
        "baseline": round(baseline, 1),
        "ratio": round(ratio, 4),
        "target": target,
        "unit": unit,
    })
}

pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    let selected = match args.backend {
        BackendArg::Embedded => vec![Backends::Embedded],
        BackendArg::Real => vec![Backends::real_from_env()?],
        BackendArg::Both => vec![Backends::Embedded, Backends::real_from_env()?],
    };
    let token = daemon::token("bench", &["device"])?;
    let scratch = TempDir::new("conveyor-bench-wrk-")?;
    let script = scratch.path().join("post-events.lua");
    std::fs::write(&script, lua_script(&token, args.devices))?;
    let mut results = Vec::new();
    for backends in selected {
        let result = measure_backend(&args, backends, &script, &token).await?;
        result.print();
        results.push(result);
    }
    let summary: Vec<Value> = results.iter().flat_map(BackendResult::summary).collect();
    let failures: u64 = results.iter().map(BackendResult::failures).sum();
    let body = json!({
        "passed": failures == 0,
        "summary": summary,
        "config": {
            "wrk": { "threads": args.threads, "connections": args.connections, "seconds": args.duration, "warmup_seconds": args.warmup },
            "runs_per_backend": args.runs,
            "fixed_rate_seconds": args.rate_seconds,
            "devices": args.devices,
            "daemon_env": args.daemon_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        },
        "backends": results.iter().map(BackendResult::to_json).collect::<Vec<_>>(),
        "notes": [
            "Each run measures the hello server (raw hyper 1.x http1, 202 + small JSON) alone, then the daemon, \
             with the same wrk command and Lua script; ratios are per run and the summary shows their median.",
            "Both servers ran on the same machine as wrk; wrk, the server and (for real backends) the services \
             share the same cores.",
            "Latency percentiles of the wrk runs are wrk's (closed loop, --latency). half_max_rate is an open-loop \
             fixed-rate run (conveyor-bench's own hyper client, the same connection count) at half the median \
             maximum req/s, started once processing has caught up with everything accepted before it \
             (processing_caught_up_secs_before_half_max_rate); each latency counts from when the schedule said to send the request, so a stall \
             shows in every request scheduled during it (no coordinated omission), except on a connection that was \
             idle at its send time: there the latency counts from the actual send, leaving out the generator's \
             own timer lateness (tokio's 1 ms timer; timer_late_ms). \
             half_max_rate_against_hello is the same load against the hello server right after (the summary's \
             baseline for the p99 row): what the generator and the machine add to any server at that rate.",
            "cpu_during_run: process_pct_of_one_core is the server process's user+system CPU during the \
             measured run (100 = one full core); machine_busy_pct is all cores, steal included.",
            "While it ingests, the daemon also consumes what it accepted (partition actors upsert each \
             device's row into the store and invalidate its cache entry) in the same process, so \
             ingest shares the CPU and (embedded: SQLite) the disk with processing.",
        ],
    });
    let path = report::write("ingest", body)?;
    println!("  wrote {}", path.display());
    if failures > 0 {
        bail!("conveyor answered {failures} requests with something other than 202 (see {})", path.display());
    }
    Ok(())
}

fn row(name: &str, r: &WrkRun) -> Vec<String> {
    let socket: u64 = r.socket_errors.iter().sum();
    vec![
        name.to_string(),
        thousands(r.requests_per_sec),
        format!("{:.2}", r.p50_ms),
        format!("{:.2}", r.p99_ms),
        thousands(r.requests as f64),
        r.non_202.to_string(),
        socket.to_string(),
        r.cpu.process_pct.map(|p| format!("{p:.0}")).unwrap_or_else(|| "?".into()),
        format!("{:.0}", r.cpu.machine_busy_pct),
    ]
}
