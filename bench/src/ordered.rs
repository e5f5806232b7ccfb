//! `ordered`: per-key FIFO webhook delivery (issue 19). One ordered endpoint (key
//! `subject`) and a sink that answers every request after a fixed delay (its round trip);
//! for K = 1, 10, 100, 1000 keys, deliveries per second against what ordering allows at
//! best: min(K ÷ the round trip, the unordered rate to the same sink in the same daemon).
//! Each phase is a backlog drained: the notifications are posted while the sink holds every
//! request, then it opens, and the clock runs from the opening to the last delivery.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::daemon::{self, Backends, Histogram};
use crate::ingest::BackendArg;
use crate::report::{self, round, thousands};
use crate::summary;
use crate::webhooks::{Api, start_daemon};

#[derive(Debug, Args)]
pub struct OrderedArgs {
    #[arg(long, value_enum, default_value = "embedded")]
    pub backend: BackendArg,
    /// The sink answers each request after this many ms (its round trip).
    #[arg(long, default_value_t = 20)]
    pub rtt_ms: u64,
    /// Requests in flight per endpoint (`webhooks.max_in_flight_per_endpoint`).
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Each phase is sized to take about this long at its expected rate.
    #[arg(long, default_value_t = 4.0)]
    pub seconds: f64,
    /// Key counts measured.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 10, 100, 1000])]
    pub keys: Vec<usize>,
    #[arg(long)]
    pub conveyor_bin: Option<std::path::PathBuf>,
    /// More daemon settings, `CONVEYOR_SECTION__KEY=value` (repeatable), for experiments.
    #[arg(long = "env", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// Answers 200 after `rtt` once open; counts deliveries per path and, per key, deliveries
/// that arrived after a later one of the same key (order violations).
#[derive(Clone)]
struct Sink {
    base: String,
    count: Arc<AtomicU64>,
    open: Arc<tokio::sync::watch::Sender<bool>>,
    /// The highest sequence number delivered per ordered path and key.
    last: Arc<Mutex<HashMap<String, u64>>>,
    violations: Arc<AtomicU64>,
    /// Per ordered path: when each key's last delivery arrived, and the gaps between a
    /// key's deliveries (its cycle: the round trip plus what ordering adds).
    gaps: Arc<Mutex<HashMap<String, KeyGaps>>>,
}

/// Each key's last delivery and the gaps (ms) between one key's deliveries.
type KeyGaps = (HashMap<String, Instant>, Vec<f64>);

async fn sink(rtt: Duration) -> anyhow::Result<Sink> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink = Sink {
        base: format!("http://{}", listener.local_addr()?),
        count: Arc::default(),
        open: Arc::new(tokio::sync::watch::Sender::new(true)),
        last: Arc::default(),
        violations: Arc::default(),
        gaps: Arc::default(),
    };
    let shared = sink.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let shared = shared.clone();
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let shared = shared.clone();
                async move {
                    let path = req.uri().path().to_string();
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let _ = shared.open.subscribe().wait_for(|open| *open).await;
                    tokio::time::sleep(rtt).await;
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    // Ordered endpoints' paths are /k{K}; each has keys of its own.
                    if let (Some(key), Some(seq)) = (v["subject"].as_str(), v["data"]["seq"].as_u64())
                        && path.starts_with("/k")
                        && let Ok(mut last) = shared.last.lock()
                    {
                        let prev = last.entry(format!("{path} {key}")).or_insert(0);
                        if seq < *prev {
                            shared.violations.fetch_add(1, Ordering::Relaxed);
                        }
                        *prev = (*prev).max(seq);
                        if let Ok(mut gaps) = shared.gaps.lock() {
                            let (last, gaps) = gaps.entry(path.clone()).or_default();
                            let now = Instant::now();
                            if let Some(before) = last.insert(key.to_string(), now) {
                                gaps.push(now.duration_since(before).as_secs_f64() * 1000.0);
                            }
                        }
                    }
                    shared.count.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Ok(sink)
}

impl Sink {
    /// p50, p99 and max of the gaps between one key's deliveries on `path`, in ms.
    fn gap_percentiles(&self, path: &str) -> (f64, f64, f64) {
        let mut gaps =
            self.gaps.lock().map(|g| g.get(path).map(|(_, v)| v.clone()).unwrap_or_default()).unwrap_or_default();
        if gaps.is_empty() {
            return (0.0, 0.0, 0.0);
        }
        gaps.sort_by(f64::total_cmp);
        let at = |q: f64| gaps[((gaps.len() - 1) as f64 * q) as usize];
        (at(0.5), at(0.99), at(1.0))
    }
}

/// Posts `n` notifications of type `kind`, notification i with key `k{i % keys}`: up to 32
/// posters, each with its own keys, posting them in sequence (each waits for its 202), so
/// a key's acceptance order is its sequence numbers' order.
async fn post(api: &Api, run: &str, kind: &str, n: usize, keys: usize) -> anyhow::Result<()> {
    let posters = keys.clamp(1, 32);
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..posters {
        let (api, run, kind) = (api.clone(), run.to_string(), kind.to_string());
        tasks.spawn(async move {
            // A key's notifications all come from one poster, in sequence.
            for i in (0..n).filter(|i| (i % keys) % posters == p) {
                let body = json!({"object": "event", "id": format!("{run}_{kind}_{i}"), "type": kind,
                    "source": "bench", "specversion": "1.0", "project": "bench", "subject": format!("k{}", i % keys),
                    "data": {"seq": i / keys + 1, "status": "active", "plan": {"price": 999}}});
                api.call(http::Method::POST, "/notifications", Some(body)).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// The store statements on a delivery's path, as the daemon times them
/// (`conveyor.store.query.duration`, by operation).
const PROFILED: [&str; 5] = ["lease_heads", "lease_successors", "lease_due", "finish_attempts", "insert_attempts"];

/// Per statement kind while a backlog drained: how many ran and their mean duration.
struct StoreProfile(Vec<(&'static str, f64, f64)>);

impl StoreProfile {
    fn between(before: &str, after: &str) -> Self {
        let profiled = PROFILED.iter().filter_map(|&name| {
            let op = format!("operation=\"{name}\"");
            let scrape = |text| Histogram::scrape(text, "conveyor_store_query_duration_seconds", &[&op]);
            let ran = scrape(after).since(&scrape(before));
            ran.mean().map(|mean| (name, ran.count, mean * 1000.0))
        });
        StoreProfile(profiled.collect())
    }

    fn line(&self) -> String {
        let parts: Vec<String> =
            self.0.iter().map(|(name, n, mean)| format!("{name} {} × {mean:.2} ms", thousands(*n))).collect();
        parts.join(", ")
    }

    fn json(&self) -> Value {
        let rows: serde_json::Map<String, Value> = self
            .0
            .iter()
            .map(|(name, n, mean)| (name.to_string(), json!({"statements": n, "mean_ms": round(*mean, 3)})))
            .collect();
        Value::Object(rows)
    }
}

/// Creates an endpoint for `kind` (ordered by `subject` or not), fills its backlog while
/// the sink holds every request, opens the sink and answers deliveries/s until the last,
/// with the store statements the drain ran.
async fn drain(
    api: &Api,
    daemon: &daemon::Daemon,
    sink: &Sink,
    run: &str,
    kind: &str,
    n: usize,
    keys: Option<usize>,
) -> anyhow::Result<(f64, StoreProfile)> {
    let mut spec = json!({"url": format!("{}/{kind}", sink.base), "event_types": [kind]});
    if keys.is_some() {
        spec["ordering_key"] = json!("subject");
    }
    let created = api.call(http::Method::POST, "/webhooks/endpoints", Some(spec)).await?;
    let id = created["id"].as_str().context("endpoint id")?.to_string();
    let expected = sink.count.load(Ordering::Relaxed) + n as u64;
    sink.open.send_replace(false);
    post(api, run, kind, n, keys.unwrap_or(1000)).await?;
    // Every delivery row exists (pending) before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let stats = api.call(http::Method::GET, &format!("/webhooks/endpoints/{id}/stats"), None).await?;
        if stats["pending"].as_u64().unwrap_or(0) >= n as u64 {
            break;
        }
        if Instant::now() > deadline {
            bail!("fan-out incomplete after 5 min: {stats}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = daemon.metrics().await;
    let opened = Instant::now();
    sink.open.send_replace(true);
    let deadline = opened + Duration::from_secs(600);
    while sink.count.load(Ordering::Relaxed) < expected {
        if Instant::now() > deadline {
            bail!("{kind}: {} of {expected} deliveries after 10 min", sink.count.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = n as f64 / opened.elapsed().as_secs_f64();
    Ok((rate, StoreProfile::between(&before, &daemon.metrics().await)))
}

/// One backend's results.
struct Measured {
    backend: &'static str,
    unordered: f64,
    /// (K, notifications, deliveries/s, the store statements it took)
    ordered: Vec<(usize, usize, f64, StoreProfile)>,
    violations: u64,
}

async fn measure(args: &OrderedArgs, bin: &std::path::Path, backends: Backends) -> anyhow::Result<Measured> {
    let rtt = Duration::from_millis(args.rtt_ms);
    let sink = sink(rtt).await?;
    let backend = backends.name();
    let (mut daemon, api) = start_daemon(bin, backends, args.in_flight, &args.env).await?;
    let run = report::unique_id("o");
    let result = async {
        // Warm-up, then the unordered rate: the ceiling with the endpoint's budget.
        drain(&api, &daemon, &sink, &run, "warm", 500, None).await.context("warm-up")?;
        let best = args.in_flight as f64 / rtt.as_secs_f64();
        let n = ((best * args.seconds) as usize).clamp(500, 8000);
        let (unordered, profile) = drain(&api, &daemon, &sink, &run, "plain", n, None).await.context("unordered")?;
        println!("  {backend}: unordered {} deliveries/s ({n} notifications); {}", thousands(unordered), profile.line());
        let mut ordered = Vec::new();
        for &k in &args.keys {
            let expected = (k as f64 / rtt.as_secs_f64()).min(unordered);
            let n = ((expected * args.seconds) as usize).max(2 * k).clamp(100, 8000);
            let (rate, profile) = drain(&api, &daemon, &sink, &run, &format!("k{k}"), n, Some(k))
                .await
                .with_context(|| format!("K={k}"))?;
            let (p50, p99, max) = sink.gap_percentiles(&format!("/k{k}"));
            println!(
                "  {backend}: K={k}: {} deliveries/s ({n} notifications); a key's cycle p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
                thousands(rate)
            );
            println!("    store: {}", profile.line());
            ordered.push((k, n, rate, profile));
        }
        anyhow::Ok(Measured { backend, unordered, ordered, violations: sink.violations.load(Ordering::Relaxed) })
    }
    .await;
    if result.is_err() {
        eprintln!("daemon log tail:\n{}", daemon.log_tail(30));
    }
    daemon.terminate(Duration::from_secs(30)).await;
    result
}

pub async fn run(args: OrderedArgs) -> anyhow::Result<()> {
    let bin = daemon::conveyor_bin(args.conveyor_bin.as_deref())?;
    let selected = match args.backend {
        BackendArg::Embedded => vec![Backends::Embedded],
        BackendArg::Real => vec![Backends::real_from_env()?],
        BackendArg::Both => vec![Backends::Embedded, Backends::real_from_env()?],
    };
    let rtt = args.rtt_ms as f64 / 1000.0;
    let mut rows = Vec::new();
    let mut table = Vec::new();
    let mut runs = Vec::new();
    for backends in selected {
        let m = measure(&args, &bin, backends).await?;
        table.push(vec![format!("{}: unordered", m.backend), "".into(), thousands(m.unordered), "".into(), "".into()]);
        let mut per_k = Vec::new();
        for &(k, n, rate, ref profile) in &m.ordered {
            let best = (k as f64 / rtt).min(m.unordered);
            table.push(vec![
                format!("{}: ordered, K = {k}", m.backend),
                thousands(n as f64),
                thousands(rate),
                thousands(best),
                format!("{:.3}", rate / best),
            ]);
            rows.push(summary::row(
                &format!(
                    "ordered webhooks ({}): K = {k} keys, {} ms sink, vs min(K/RTT, unordered)",
                    m.backend, args.rtt_ms
                ),
                rate,
                best,
                Some(0.8),
                "deliveries/s",
            ));
            per_k
                .push(json!({"keys": k, "notifications": n, "per_sec": round(rate, 1), "best_per_sec": round(best, 1),
                "ratio": round(rate / best, 4), "store_statements": profile.json()}));
        }
        rows.push(
            json!({"name": format!("ordered webhooks ({}): deliveries after a later one of their key", m.backend),
            "conveyor": m.violations, "baseline": null, "ratio": null, "target": 0, "unit": "count"}),
        );
        runs.push(json!({"backend": m.backend, "unordered_per_sec": round(m.unordered, 1), "ordered": per_k,
            "order_violations": m.violations}));
    }
    println!();
    report::table(&["run", "notifications", "deliveries/s", "best possible", "ratio"], &table);
    let body = json!({
        "rtt_ms": args.rtt_ms,
        "in_flight_per_endpoint": args.in_flight,
        "runs": runs,
        "summary": rows,
        "notes": [
            "Each phase: a new endpoint, its backlog posted while the sink holds every request (one poster per \
             key group, each key's notifications in sequence), every delivery row pending, then the sink opens; \
             deliveries/s from the opening to the last delivery. The sink answers each request after rtt_ms.",
            "best possible = min(K / rtt, the unordered rate measured to the same sink in the same daemon): one \
             key's deliveries go one at a time, and no ordering can beat the endpoint's own budget.",
            "order violations: deliveries the sink saw after a later one of the same key (target 0).",
        ],
    });
    let path = report::write("ordered", body)?;
    println!("  wrote {}", path.display());
    Ok(())
}
