//! `soak`: millions of events through one embedded daemon with small retention settings,
//! sampling what a long-running daemon keeps — resident memory, open files, the data
//! directory's size and every table's row count — every few seconds. After warm-up each
//! should stay flat; the slope per million events is reported (the goal is 0).
//!
//! Load: `POST /events` from wrk in bursts over `--devices` devices (the `resources` table
//! is bounded by them), plus a trickle of notifications delivered to a local sink, so that
//! notifications, deliveries and attempts pass through their retention too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::{Value, json};

use crate::daemon::{self, Backends, DaemonSpec};
use crate::ingest::{BackendArg, IngestArgs};
use crate::report::{self, TempDir, round, thousands};
use crate::wrk::{HelloServer, lua_script, wrk};

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Events to accept in all.
    #[arg(long, default_value_t = 3_000_000)]
    pub events: u64,
    /// Events before the slopes are measured (caches fill, retention starts deleting).
    #[arg(long, default_value_t = 1_000_000)]
    pub warmup_events: u64,
    /// Distinct devices.
    #[arg(long, default_value_t = 10_000)]
    pub devices: u32,
    /// Seconds per wrk burst.
    #[arg(long, default_value_t = 20)]
    pub burst: u32,
    /// Seconds between samples.
    #[arg(long, default_value_t = 3)]
    pub sample_every: u64,
    /// Notifications per second posted beside the events (0: none).
    #[arg(long, default_value_t = 50)]
    pub notifications_per_sec: u32,
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
    #[arg(long, default_value = "wrk")]
    pub wrk: String,
    #[arg(long)]
    pub conveyor_bin: Option<PathBuf>,
}

/// Small retention, so that a few minutes of load cycle through it many times.
fn daemon_env() -> Vec<(String, String)> {
    [
        ("CONVEYOR_LOG__EMBEDDED__SEGMENT_BYTES", "4194304"),
        ("CONVEYOR_LOG__EMBEDDED__RETENTION_BYTES", "16777216"),
        ("CONVEYOR_LOG__EMBEDDED__RETENTION_MS", "30000"),
        ("CONVEYOR_LOG__EMBEDDED__RETENTION_CHECK_MS", "1000"),
        ("CONVEYOR_LOG__EMBEDDED__MAX_DISK_BYTES", "268435456"),
        ("CONVEYOR_RETENTION__INTERVAL_MS", "2000"),
        ("CONVEYOR_RETENTION__DELIVERIES_SECS", "10"),
        ("CONVEYOR_WEBHOOKS__ALLOW_LOOPBACK", "true"),
        ("CONVEYOR_WEBHOOKS__DEDUP_WINDOW_SECS", "10"),
        ("CONVEYOR_WEBHOOKS__BASIC_AUTH_USERNAME", "soak"),
        ("CONVEYOR_WEBHOOKS__BASIC_AUTH_PASSWORD", "soak"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// One reading.
#[derive(Debug, Clone)]
struct Sample {
    secs: f64,
    /// Events accepted so far (202s counted by the daemon).
    events: f64,
    rss_bytes: f64,
    open_files: f64,
    data_dir_bytes: f64,
    rows: Vec<(String, f64)>,
}

impl Sample {
    fn series(&self) -> Vec<(String, f64)> {
        let mut all = vec![
            ("rss_bytes".to_string(), self.rss_bytes),
            ("open_files".to_string(), self.open_files),
            ("data_dir_bytes".to_string(), self.data_dir_bytes),
        ];
        all.extend(self.rows.iter().map(|(t, n)| (format!("rows.{t}"), *n)));
        all
    }

    fn to_json(&self) -> Value {
        json!({
            "secs": round(self.secs, 1),
            "events": self.events,
            "rss_bytes": self.rss_bytes,
            "open_files": self.open_files,
            "data_dir_bytes": self.data_dir_bytes,
            "rows": self.rows.iter().map(|(t, n)| (t.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

fn rss_bytes(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok());
    kb.unwrap_or(0.0) * 1024.0
}

fn open_files(pid: u32) -> f64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as f64).unwrap_or(0.0)
}

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

async fn row_counts(db: &DatabaseConnection) -> Vec<(String, f64)> {
    let tables = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE 'seaql_%' ORDER BY name",
        ))
        .await
        .unwrap_or_default();
    let mut counts = Vec::new();
    for row in tables {
        let Ok(name) = row.try_get::<String>("", "name") else { continue };
        let sql = format!("SELECT COUNT(*) AS n FROM \"{name}\"");
        let n = db
            .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
            .await
            .ok()
            .flatten()
            .and_then(|r| r.try_get::<i64>("", "n").ok())
            .unwrap_or(0);
        counts.push((name, n as f64));
    }
    counts
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let var: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if var == 0.0 {
        return 0.0;
    }
    points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / var
}

/// Posts notifications at `per_sec` until `stop`, counting the accepted ones.
async fn notifications(base: String, per_sec: u32, stop: Arc<AtomicU64>, accepted: Arc<AtomicU64>) {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_sec.max(1));
    let mut n = 0u64;
    while stop.load(Ordering::Relaxed) == 0 {
        tick.tick().await;
        n += 1;
        let body = json!({"id": format!("evt_soak_{n}_{}", uuid::Uuid::new_v4().simple()), "type": "soak.tick",
            "source": "soak", "specversion": "1.0", "data": {"n": n}});
        let Ok(req) = http::Request::post(format!("{base}/notifications"))
            .header("content-type", "application/json")
            .header("authorization", "Basic c29hazpzb2Fr")
            .body(Full::new(bytes::Bytes::from(body.to_string())))
        else {
            continue;
        };
        if let Ok(resp) = client.request(req).await {
            if resp.status() == http::StatusCode::ACCEPTED {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            let _ = resp.into_body().collect().await;
        }
    }
}

async fn create_endpoint(base: &str, sink: &str) -> anyhow::Result<()> {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let token = daemon::token("soak", &["user"])?;
    let req = http::Request::post(format!("{base}/webhooks/endpoints"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(bytes::Bytes::from(json!({"url": format!("{sink}/hook")}).to_string())))?;
    let resp = client.request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    anyhow::ensure!(status.is_success(), "creating the soak endpoint: {status} {}", String::from_utf8_lossy(&body));
    Ok(())
}

pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    let bin = daemon::conveyor_bin(args.conveyor_bin.as_deref())?;
    let spec = DaemonSpec {
        bin,
        backends: Backends::Embedded,
        id: report::unique_id("soak"),
        topic_in: None,
        extra_env: daemon_env(),
    };
    let d = spec.spawn()?;
    d.wait_ready(Duration::from_secs(60)).await?;
    let pid = d.pid();
    let data_dir = d.data_dir.path().to_path_buf();
    let sink = HelloServer::spawn()?;
    create_endpoint(&d.base, &sink.base).await?;
    let db_path = data_dir.join("conveyor.db");
    let db = Database::connect(format!("sqlite://{}?mode=ro", db_path.display()))
        .await
        .with_context(|| format!("opening {} read-only", db_path.display()))?;

    let scratch = TempDir::new("conveyor-soak-wrk-")?;
    let script = scratch.path().join("soak.lua");
    std::fs::write(&script, lua_script(&daemon::token("soak", &["device"])?, args.devices))?;
    let wrk_args = IngestArgs {
        backend: BackendArg::Embedded,
        threads: 2,
        connections: args.connections,
        duration: args.burst,
        warmup: 0,
        runs: 1,
        rate_seconds: 0,
        devices: args.devices,
        wrk: args.wrk.clone(),
        conveyor_bin: None,
        daemon_env: vec![],
    };

    let stop = Arc::new(AtomicU64::new(0));
    let accepted_notifications = Arc::new(AtomicU64::new(0));
    let trickle = (args.notifications_per_sec > 0).then(|| {
        tokio::spawn(notifications(
            d.base.clone(),
            args.notifications_per_sec,
            stop.clone(),
            accepted_notifications.clone(),
        ))
    });
    let accepted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let sampler = {
        let (stop, accepted, data_dir) = (stop.clone(), accepted.clone(), data_dir.clone());
        let every = Duration::from_secs(args.sample_every);
        let db = db.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while stop.load(Ordering::Relaxed) == 0 {
                let dir = data_dir.clone();
                let data_dir_bytes = tokio::task::spawn_blocking(move || dir_bytes(&dir)).await.unwrap_or(0) as f64;
                samples.push(Sample {
                    secs: started.elapsed().as_secs_f64(),
                    events: accepted.load(Ordering::Relaxed) as f64,
                    rss_bytes: rss_bytes(pid),
                    open_files: open_files(pid),
                    data_dir_bytes,
                    rows: row_counts(&db).await,
                });
                tokio::time::sleep(every).await;
            }
            samples
        })
    };

    let mut non_202 = 0;
    let mut bursts = Vec::new();
    while accepted.load(Ordering::Relaxed) < args.events {
        let (run, _) = wrk(&wrk_args, &script, &d.base, args.burst).await?;
        let ok = run.requests.saturating_sub(run.non_202);
        non_202 += run.non_202;
        let total = accepted.fetch_add(ok, Ordering::Relaxed) + ok;
        eprintln!(
            "  burst {}: {} req/s, {} accepted so far, rss {} MB, data dir {} MB",
            bursts.len() + 1,
            thousands(run.requests_per_sec),
            thousands(total as f64),
            thousands(rss_bytes(pid) / 1e6),
            thousands(dir_bytes(&data_dir) as f64 / 1e6)
        );
        bursts.push(run.requests_per_sec);
    }
    stop.store(1, Ordering::Relaxed);
    if let Some(t) = trickle {
        let _ = t.await;
    }
    let samples = sampler.await.context("sampler")?;
    let measured: Vec<&Sample> = samples.iter().filter(|s| s.events >= args.warmup_events as f64).collect();
    let first = measured.first().map(|s| s.series()).unwrap_or_default();
    let mut rows = Vec::new();
    let mut slopes = serde_json::Map::new();
    for (i, (name, _)) in first.iter().enumerate() {
        let points: Vec<(f64, f64)> =
            measured.iter().filter_map(|s| s.series().get(i).map(|(_, v)| (s.events / 1e6, *v))).collect();
        let per_million = slope(&points);
        let (lo, hi) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
        slopes.insert(name.clone(), json!({"per_million_events": round(per_million, 1), "min": lo, "max": hi}));
        rows.push(vec![name.clone(), thousands(lo), thousands(hi), format!("{:.1}", per_million)]);
    }
    println!(
        "\nsoak: {} events accepted in {:.0} s ({} notifications), {} samples after {} warm-up events",
        thousands(accepted.load(Ordering::Relaxed) as f64),
        started.elapsed().as_secs_f64(),
        thousands(accepted_notifications.load(Ordering::Relaxed) as f64),
        measured.len(),
        thousands(args.warmup_events as f64)
    );
    report::table(&["series (after warm-up)", "min", "max", "slope per million events"], &rows);
    let path = report::write(
        "soak",
        json!({
            "backend": "embedded",
            "events_accepted": accepted.load(Ordering::Relaxed),
            "notifications_accepted": accepted_notifications.load(Ordering::Relaxed),
            "non_202": non_202,
            "seconds": round(started.elapsed().as_secs_f64(), 1),
            "warmup_events": args.warmup_events,
            "devices": args.devices,
            "daemon_env": daemon_env().into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "burst_requests_per_sec": bursts.iter().map(|r| round(*r, 0)).collect::<Vec<_>>(),
            "slopes": slopes,
            "samples": samples.iter().map(Sample::to_json).collect::<Vec<_>>(),
        }),
    )?;
    println!("wrote {}", path.display());
    drop(sink);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_a_flat_series() {
        assert!((slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) - 2.0).abs() < 1e-9);
        assert_eq!(slope(&[(0.0, 7.0), (1.0, 7.0), (2.0, 7.0)]), 0.0);
        assert_eq!(slope(&[(1.0, 7.0)]), 0.0);
    }
}
