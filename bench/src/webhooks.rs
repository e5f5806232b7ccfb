//! `webhooks`: signed deliveries per second from the daemon to a local sink, against a raw
//! hyper client posting the same body to the same sink with the same concurrency; then, in
//! the same daemon, the same load with one of the ten endpoints never answering, to show
//! what a dead endpoint costs each healthy one.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::daemon::{self, Backends, DaemonSpec, Histogram};
use crate::ingest::BackendArg;
use crate::report::{self, round, thousands};

#[derive(Debug, Args)]
pub struct WebhooksArgs {
    /// Notifications posted per phase; each goes to every endpoint. Phases of a few seconds
    /// keep the per-endpoint comparison out of the noise of a shared machine.
    #[arg(long, default_value_t = 3_000)]
    pub notifications: usize,
    /// Endpoints (all healthy in the first phase; the last one dead in the second).
    #[arg(long, default_value_t = 10)]
    pub endpoints: usize,
    /// Requests in flight per endpoint (the daemon's `webhooks.max_in_flight_per_endpoint`);
    /// the baseline runs endpoints × this many at once.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// The daemon's backends: `embedded` (the official figure) or `real` (Kafka, PostgreSQL,
    /// Redis from CONVEYOR_TEST_*), one at a time.
    #[arg(long, value_enum, default_value = "embedded")]
    pub backend: BackendArg,
    #[arg(long)]
    pub conveyor_bin: Option<std::path::PathBuf>,
}

/// A sink that answers 200 on every path, except the `dead` path once `dead_on` is set:
/// from then on that one never answers. It counts answered requests per path, with the
/// time of each path's last one.
#[derive(Clone)]
struct Sink {
    base: String,
    count: Arc<AtomicU64>,
    dead_on: Arc<AtomicBool>,
    /// While false every request waits (a backlog builds up in the daemon).
    open: Arc<tokio::sync::watch::Sender<bool>>,
    per_path: Arc<Mutex<HashMap<String, (u64, Instant)>>>,
}

const DEAD_PATH: &str = "/dead";

async fn sink() -> anyhow::Result<Sink> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink = Sink {
        base: format!("http://{}", listener.local_addr()?),
        count: Arc::new(AtomicU64::new(0)),
        dead_on: Arc::new(AtomicBool::new(false)),
        open: Arc::new(tokio::sync::watch::Sender::new(true)),
        per_path: Arc::new(Mutex::new(HashMap::new())),
    };
    let shared = sink.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let shared = shared.clone();
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let shared = shared.clone();
                async move {
                    let path = req.uri().path().to_string();
                    let _ = req.into_body().collect().await;
                    let _ = shared.open.subscribe().wait_for(|open| *open).await;
                    if path == DEAD_PATH && shared.dead_on.load(Ordering::Relaxed) {
                        std::future::pending::<()>().await;
                    }
                    if let Ok(mut per_path) = shared.per_path.lock() {
                        let entry = per_path.entry(path).or_insert((0, Instant::now()));
                        *entry = (entry.0 + 1, Instant::now());
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
    fn per_path(&self) -> HashMap<String, (u64, Instant)> {
        self.per_path.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

fn notification(i: usize) -> Value {
    json!({"object": "event", "id": format!("evt_bench_{i}"), "type": "bench.delivered", "source": "bench",
        "specversion": "1.0", "project": "bench", "time": "2026-11-23T00:00:00Z",
        "data": {"object": "subscription", "id": format!("sub_{i}"), "status": "active", "plan": {"price": 999}}})
}

/// The baseline: a raw hyper client posting `n` bodies with `concurrency` in flight.
async fn raw_hyper(url: &str, n: usize, concurrency: usize) -> anyhow::Result<f64> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let body = Bytes::from(notification(0).to_string());
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (client, body, next, url) = (client.clone(), body.clone(), next.clone(), url.to_string());
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n as u64 {
                let req = http::Request::post(&url)
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))?;
                let resp = client.request(req).await?;
                let _ = resp.into_body().collect().await;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The daemon's API as an admin (the webhook benchmarks share it).
#[derive(Clone)]
pub(crate) struct Api {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    base: String,
    token: String,
}

impl Api {
    /// One request; a status other than 2xx is an error naming the path and the body.
    pub(crate) async fn call(&self, method: http::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(bytes))?;
        let resp = self.client.request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{path}: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<()> {
        self.call(http::Method::POST, path, Some(body)).await.map(drop)
    }
}

/// A daemon for the webhook benchmarks, ready, and its API: loopback sinks allowed,
/// `in_flight` requests per endpoint, requests never timed out by the daemon.
pub(crate) async fn start_daemon(
    bin: &std::path::Path,
    backends: Backends,
    in_flight: usize,
    env: &[(String, String)],
) -> anyhow::Result<(daemon::Daemon, Api)> {
    let spec = DaemonSpec {
        bin: bin.to_path_buf(),
        backends,
        id: report::unique_id("bench"),
        topic_in: None,
        extra_env: [
            ("CONVEYOR_WEBHOOKS__ALLOW_LOOPBACK".into(), "true".into()),
            ("CONVEYOR_WEBHOOKS__MAX_IN_FLIGHT_PER_ENDPOINT".into(), in_flight.to_string()),
            ("CONVEYOR_WEBHOOKS__REQUEST_TIMEOUT_MS".into(), "600000".into()),
        ]
        .into_iter()
        .chain(env.iter().cloned())
        .collect(),
    };
    let daemon = spec.spawn()?;
    daemon.wait_ready(Duration::from_secs(60)).await?;
    let api = Api {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base: daemon.base.clone(),
        token: daemon::token("bench-admin", &["admin"])?,
    };
    Ok((daemon, api))
}

/// One phase of the run: `notifications` posted, every delivery to a healthy endpoint counted.
struct Phase {
    /// Deliveries to healthy endpoints per second, first post to last delivery.
    per_sec: f64,
    deliveries: u64,
    seconds: f64,
    /// When the last POST /notifications was answered: if close to `seconds`, ingest bounds
    /// the phase, not delivery.
    posted_seconds: f64,
    /// Each healthy endpoint's deliveries per second, first post to its own last delivery.
    per_endpoint: BTreeMap<String, f64>,
}

/// Posts notifications `first..first + n` (16 posters) and waits for every delivery to
/// the `healthy` paths.
async fn phase(api: &Api, sink: &Sink, first: usize, n: usize, healthy: &[String]) -> anyhow::Result<Phase> {
    let expected = sink.count.load(Ordering::Relaxed) + (n * healthy.len()) as u64;
    let started = Instant::now();
    let mut posts = JoinSet::new();
    let next = Arc::new(AtomicU64::new(first as u64));
    for _ in 0..16 {
        let (api, next, end) = (api.clone(), next.clone(), (first + n) as u64);
        posts.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return anyhow::Ok(());
                }
                api.post("/notifications", notification(i as usize)).await?;
            }
        });
    }
    while let Some(done) = posts.join_next().await {
        done??;
    }
    let posted_seconds = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    while sink.count.load(Ordering::Relaxed) < expected {
        if Instant::now() > deadline {
            bail!("{} of {expected} deliveries after 10 min", sink.count.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let per_path = sink.per_path();
    let per_endpoint = healthy
        .iter()
        .filter_map(|p| {
            per_path.get(p).map(|(_, last)| (p.clone(), n as f64 / last.duration_since(started).as_secs_f64()))
        })
        .collect();
    let deliveries = (n * healthy.len()) as u64;
    Ok(Phase { per_sec: deliveries as f64 / seconds, deliveries, seconds, posted_seconds, per_endpoint })
}

/// Delivery alone: `n` notifications posted while the sink holds every request, then the
/// sink opens and the backlog drains; deliveries per second from the opening to the last.
async fn drain(api: &Api, sink: &Sink, first: usize, n: usize, endpoints: usize) -> anyhow::Result<f64> {
    let expected = sink.count.load(Ordering::Relaxed) + (n * endpoints) as u64;
    sink.open.send_replace(false);
    for i in first..first + n {
        api.post("/notifications", notification(i)).await?;
    }
    // The fan-out is done well within this (it keeps up with posting).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let opened = Instant::now();
    sink.open.send_replace(true);
    let deadline = opened + Duration::from_secs(600);
    while sink.count.load(Ordering::Relaxed) < expected {
        if Instant::now() > deadline {
            bail!("{} of {expected} deliveries after 10 min", sink.count.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok((n * endpoints) as f64 / opened.elapsed().as_secs_f64())
}

/// What one daemon showed: a warm-up, then every endpoint healthy, then a backlog drained,
/// then the same load as the second with the last endpoint dead (it stops answering).
struct Runs {
    drain_per_sec: f64,
    healthy: Phase,
    with_dead: Phase,
    inside: Inside,
}

/// The daemon's own histograms over the all-healthy phase: what a `POST /notifications`
/// took, the log append it waited for, and store time per operation.
struct Inside {
    request: Histogram,
    append: Histogram,
    /// (operation, queries, seconds), largest total first.
    store: Vec<(String, f64, f64)>,
}

impl Inside {
    fn between(before: &str, after: &str) -> Self {
        let h = |family, filters: &[&str]| {
            Histogram::scrape(after, family, filters).since(&Histogram::scrape(before, family, filters))
        };
        Inside {
            request: h(
                "http_server_request_duration_seconds",
                &["http_route=\"/notifications\"", "http_response_status_class=\"2xx\""],
            ),
            append: h("conveyor_log_append_duration_seconds", &["outcome=\"ok\""]),
            store: daemon::per_label(before, after, "conveyor_store_query_duration_seconds", "operation"),
        }
    }

    fn print(&self) {
        let ms = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{:.2}", v * 1000.0));
        println!(
            "  inside the daemon (all healthy): POST /notifications mean {} ms (p99 ≤ {} ms), log append mean {} ms",
            ms(self.request.mean()),
            ms(self.request.quantile_bound(0.99)),
            ms(self.append.mean()),
        );
        for (op, count, seconds) in self.store.iter().take(10) {
            println!("    store {op}: {count} queries, mean {:.2} ms, {seconds:.2} s in all", 1000.0 * seconds / count);
        }
    }

    fn to_json(&self) -> Value {
        let ms = |v: Option<f64>| v.map(|v| round(v * 1000.0, 3));
        json!({
            "notification_requests": self.request.count,
            "notification_request_mean_ms": ms(self.request.mean()),
            "notification_request_p99_bucket_bound_ms": ms(self.request.quantile_bound(0.99)),
            "append_mean_ms": ms(self.append.mean()),
            "store_operations": self.store.iter().map(|(op, count, seconds)| json!({
                "operation": op, "queries": count, "mean_ms": round(1000.0 * seconds / count, 3), "seconds": round(*seconds, 3)
            })).collect::<Vec<_>>(),
        })
    }
}

/// Starts a daemon, registers the endpoints and runs the phases.
async fn conveyor(args: &WebhooksArgs, bin: &std::path::Path, backends: Backends) -> anyhow::Result<Runs> {
    let sink = sink().await?;
    let (mut daemon, api) = start_daemon(bin, backends, args.in_flight, &[]).await?;
    let paths: Vec<String> = (0..args.endpoints)
        .map(|i| if i + 1 == args.endpoints { DEAD_PATH.to_string() } else { format!("/ep{i}") })
        .collect();
    for path in &paths {
        api.post("/webhooks/endpoints", json!({"url": format!("{}{path}", sink.base)})).await?;
    }
    let n = args.notifications;
    let result = async {
        phase(&api, &sink, 0, n.div_ceil(5), &paths).await.context("warm-up")?;
        let before = daemon.metrics().await;
        let healthy = phase(&api, &sink, n, n, &paths).await.context("all endpoints healthy")?;
        let inside = Inside::between(&before, &daemon.metrics().await);
        let drain_per_sec = drain(&api, &sink, 2 * n, n, paths.len()).await.context("backlog drain")?;
        sink.dead_on.store(true, Ordering::Relaxed);
        let with_dead = phase(&api, &sink, 3 * n, n, &paths[..paths.len() - 1]).await.context("one endpoint dead")?;
        anyhow::Ok(Runs { drain_per_sec, healthy, with_dead, inside })
    }
    .await;
    if result.is_err() {
        eprintln!("daemon log tail:\n{}", daemon.log_tail(30));
    }
    daemon.terminate(Duration::from_secs(30)).await;
    result
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

pub async fn run(args: WebhooksArgs) -> anyhow::Result<()> {
    if args.endpoints < 2 {
        bail!("--endpoints must be at least 2 (one of them goes dead)");
    }
    let bin = daemon::conveyor_bin(args.conveyor_bin.as_deref())?;
    let backends = match args.backend {
        BackendArg::Embedded => Backends::Embedded,
        BackendArg::Real => Backends::real_from_env()?,
        BackendArg::Both => bail!("--backend: one at a time (embedded or real)"),
    };
    let backend = backends.name();
    // The embedded figure is the summary's; another backend's rows say which.
    let label = if matches!(backends, Backends::Embedded) { String::new() } else { format!(" ({backend})") };
    let concurrency = args.endpoints * args.in_flight;
    let baseline_sink = sink().await?;
    let requests = args.notifications * args.endpoints;
    let raw = raw_hyper(&format!("{}/raw", baseline_sink.base), requests, concurrency)
        .await
        .context("baseline: raw hyper client")?;
    let Runs { drain_per_sec, healthy, with_dead, inside } = conveyor(&args, &bin, backends).await?;
    let ratio = healthy.per_sec / raw;
    // Each healthy endpoint's rate beside the dead one over its own rate when all were healthy.
    let kept: BTreeMap<&String, f64> = with_dead
        .per_endpoint
        .iter()
        .filter_map(|(path, rate)| healthy.per_endpoint.get(path).map(|before| (path, rate / before)))
        .collect();
    let kept_min = kept.values().copied().fold(f64::INFINITY, f64::min);
    let rate_before = mean(kept.keys().filter_map(|p| healthy.per_endpoint.get(*p).copied()));
    let rate_after = mean(with_dead.per_endpoint.values().copied());
    let isolation = rate_after / rate_before;
    println!();
    report::table(
        &["run", "deliveries", "seconds", "deliveries/s"],
        &[
            vec!["raw hyper client (baseline)".into(), thousands(requests as f64), "".into(), thousands(raw)],
            vec![
                format!("conveyor, {} healthy endpoints", args.endpoints),
                thousands(healthy.deliveries as f64),
                format!("{:.2}", healthy.seconds),
                thousands(healthy.per_sec),
            ],
            vec![
                format!("conveyor, {} healthy + 1 dead", args.endpoints - 1),
                thousands(with_dead.deliveries as f64),
                format!("{:.2}", with_dead.seconds),
                thousands(with_dead.per_sec),
            ],
        ],
    );
    println!("  ratio conveyor/raw hyper (deliveries/s): {ratio:.3}");
    println!(
        "  all healthy: the last POST /notifications was answered after {:.2} s of {:.2} s",
        healthy.posted_seconds, healthy.seconds
    );
    inside.print();
    println!(
        "  delivery alone (a backlog of {} drained): {} deliveries/s, {:.3} of raw hyper",
        thousands(requests as f64),
        thousands(drain_per_sec),
        drain_per_sec / raw
    );
    println!(
        "  each healthy endpoint's rate beside a dead one / its rate when all were healthy (same daemon): \
         mean {isolation:.3}, min {kept_min:.3}"
    );
    let rounded = |m: &BTreeMap<String, f64>| {
        m.iter().map(|(k, v)| (k.clone(), json!(round(*v, 1)))).collect::<serde_json::Map<_, _>>()
    };
    let body = json!({
        "backend": backend,
        "notifications": args.notifications,
        "endpoints": args.endpoints,
        "in_flight_per_endpoint": args.in_flight,
        "baseline": {"name": "raw hyper 1.x client, same sink, same body, endpoints × in_flight concurrent requests", "requests": requests, "per_sec": round(raw, 1)},
        "all_healthy": {"deliveries": healthy.deliveries, "seconds": round(healthy.seconds, 3), "posted_seconds": round(healthy.posted_seconds, 3), "per_sec": round(healthy.per_sec, 1),
            "per_endpoint_per_sec": rounded(&healthy.per_endpoint)},
        "one_dead": {"deliveries_to_healthy": with_dead.deliveries, "seconds": round(with_dead.seconds, 3), "posted_seconds": round(with_dead.posted_seconds, 3), "per_sec": round(with_dead.per_sec, 1),
            "per_endpoint_per_sec": rounded(&with_dead.per_endpoint)},
        "ratio_conveyor_over_raw_hyper": round(ratio, 4),
        "inside_all_healthy": inside.to_json(),
        "backlog_drain": {"deliveries": requests, "per_sec": round(drain_per_sec, 1), "ratio_over_raw_hyper": round(drain_per_sec / raw, 4)},
        "isolation_fraction_per_healthy_endpoint": round(isolation, 4),
        "isolation_fraction_min_endpoint": round(kept_min, 4),
        "summary": [
            {"name": format!("webhooks{label}: signed deliveries/s, {} endpoints, vs raw hyper client", args.endpoints),
             "conveyor": round(healthy.per_sec, 1), "baseline": round(raw, 1), "ratio": round(ratio, 4), "target": 0.3,
             "unit": "deliveries/s"},
            {"name": format!("webhooks{label}: a healthy endpoint's rate beside 1 dead of {}, vs all healthy (mean per endpoint)", args.endpoints),
             "conveyor": round(rate_after, 1), "baseline": round(rate_before, 1), "ratio": round(isolation, 4), "target": 0.95,
             "unit": "deliveries/s"},
        ],
        "notes": [
            "One daemon: a warm-up phase (notifications / 5), then every endpoint healthy, then the last endpoint \
             stops answering and the same number of notifications is posted again. Each phase's clock runs from \
             its first POST /notifications to the last delivery the sink counted (per endpoint: to that \
             endpoint's last delivery): ingest (the log's acknowledgement), fan-out (delivery rows in the store), \
             leasing, Standard Webhooks signing, the request, and recording the attempt are all inside it.",
            "The raw client does none of that: it posts one body again and again.",
            "backlog_drain: the same notifications posted while the sink holds every request, then the \
             sink opens: delivery alone (lease, sign, send, record), without ingest in the clock.",
            "The dead endpoint accepts connections and never answers; the daemon's request timeout is 10 min \
             so its requests hang for the rest of the run, holding that endpoint's in-flight budget, and its \
             deliveries pile up in the store beside the healthy endpoints' ones.",
        ],
    });
    let path = report::write("webhooks", body)?;
    println!("  wrote {}", path.display());
    Ok(())
}
