//! `webhooks`: signed deliveries per second from the daemon to a local sink, against a raw
//! hyper client posting the same body to the same sink with the same concurrency; then the
//! same load with one of the ten endpoints never answering, to show what a dead endpoint
//! costs the healthy ones.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

use crate::daemon::{self, Backends, DaemonSpec};
use crate::report::{self, round, thousands};

#[derive(Debug, Args)]
pub struct WebhooksArgs {
    /// Notifications posted per run; each goes to every endpoint.
    #[arg(long, default_value_t = 1_000)]
    pub notifications: usize,
    /// Endpoints (all healthy in the first run; the last one dead in the second).
    #[arg(long, default_value_t = 10)]
    pub endpoints: usize,
    /// Requests in flight per endpoint (the daemon's `webhooks.max_in_flight_per_endpoint`);
    /// the baseline runs endpoints × this many at once.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    #[arg(long)]
    pub conveyor_bin: Option<std::path::PathBuf>,
}

/// A sink that answers 200 on every path but `/dead`, which never answers.
struct Sink {
    base: String,
    count: Arc<AtomicU64>,
}

async fn sink() -> anyhow::Result<Sink> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let counter = counter.clone();
                async move {
                    let dead = req.uri().path() == "/dead";
                    let _ = req.into_body().collect().await;
                    if dead {
                        std::future::pending::<()>().await;
                    }
                    counter.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Ok(Sink { base, count })
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

/// The daemon's API as an admin.
#[derive(Clone)]
struct Api {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    base: String,
    token: String,
}

impl Api {
    async fn post(&self, path: &str, body: Value) -> anyhow::Result<()> {
        let req = http::Request::post(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let resp = self.client.request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{path}: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }
}

struct Run {
    /// Deliveries to healthy endpoints per second, first post to last delivery.
    per_sec: f64,
    deliveries: u64,
    seconds: f64,
}

/// Starts a daemon, registers the endpoints, posts the notifications and waits for every
/// healthy delivery.
async fn conveyor(args: &WebhooksArgs, bin: &std::path::Path, dead: bool) -> anyhow::Result<Run> {
    let sink = sink().await?;
    let spec = DaemonSpec {
        bin: bin.to_path_buf(),
        backends: Backends::Embedded,
        id: report::unique_id("bench"),
        topic_in: None,
        extra_env: vec![
            ("CONVEYOR_WEBHOOKS__ALLOW_LOOPBACK".into(), "true".into()),
            ("CONVEYOR_WEBHOOKS__MAX_IN_FLIGHT_PER_ENDPOINT".into(), args.in_flight.to_string()),
            ("CONVEYOR_WEBHOOKS__REQUEST_TIMEOUT_MS".into(), "600000".into()),
        ],
    };
    let mut daemon = spec.spawn()?;
    daemon.wait_ready(Duration::from_secs(60)).await?;
    let api = Api {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base: daemon.base.clone(),
        token: daemon::token("bench-admin", &["admin"])?,
    };
    let post = |path: &str, body: Value| {
        let (api, path) = (api.clone(), path.to_string());
        async move { api.post(&path, body).await }
    };
    for i in 0..args.endpoints {
        let path = if dead && i == args.endpoints - 1 { "/dead".to_string() } else { format!("/ep{i}") };
        post("/webhooks/endpoints", json!({"url": format!("{}{path}", sink.base)})).await?;
    }
    let healthy = if dead { args.endpoints - 1 } else { args.endpoints };
    let expected = (args.notifications * healthy) as u64;
    let started = Instant::now();
    let mut posts = JoinSet::new();
    let next = Arc::new(AtomicU64::new(0));
    for _ in 0..16 {
        let (api, next, n) = (api.clone(), next.clone(), args.notifications as u64);
        posts.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                api.post("/notifications", notification(i as usize)).await?;
            }
        });
    }
    while let Some(done) = posts.join_next().await {
        done??;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while sink.count.load(Ordering::Relaxed) < expected {
        if Instant::now() > deadline {
            eprintln!("daemon log tail:\n{}", daemon.log_tail(30));
            bail!("{} of {expected} deliveries after 10 min", sink.count.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    daemon.terminate(Duration::from_secs(30)).await;
    Ok(Run { per_sec: expected as f64 / seconds, deliveries: expected, seconds })
}

pub async fn run(args: WebhooksArgs) -> anyhow::Result<()> {
    let bin = daemon::conveyor_bin(args.conveyor_bin.as_deref())?;
    let concurrency = args.endpoints * args.in_flight;
    let baseline_sink = sink().await?;
    let requests = args.notifications * args.endpoints;
    let raw = raw_hyper(&format!("{}/raw", baseline_sink.base), requests, concurrency)
        .await
        .context("baseline: raw hyper client")?;
    let healthy = conveyor(&args, &bin, false).await.context("all endpoints healthy")?;
    let with_dead = conveyor(&args, &bin, true).await.context("one endpoint dead")?;
    let ratio = healthy.per_sec / raw;
    // Per healthy endpoint, so that nine endpoints are compared with nine.
    let n = args.endpoints as f64;
    let isolation = (with_dead.per_sec / (n - 1.0)) / (healthy.per_sec / n);
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
    println!("  healthy endpoints' rate with a dead one, as a fraction of the all-healthy run: {isolation:.3}");
    let body = json!({
        "backend": "embedded",
        "notifications": args.notifications,
        "endpoints": args.endpoints,
        "in_flight_per_endpoint": args.in_flight,
        "baseline": {"name": "raw hyper 1.x client, same sink, same body, endpoints × in_flight concurrent requests", "requests": requests, "per_sec": round(raw, 1)},
        "all_healthy": {"deliveries": healthy.deliveries, "seconds": round(healthy.seconds, 3), "per_sec": round(healthy.per_sec, 1)},
        "one_dead": {"deliveries_to_healthy": with_dead.deliveries, "seconds": round(with_dead.seconds, 3), "per_sec": round(with_dead.per_sec, 1)},
        "ratio_conveyor_over_raw_hyper": round(ratio, 4),
        "isolation_fraction_per_healthy_endpoint": round(isolation, 4),
        "notes": [
            "Conveyor's clock runs from the first POST /notifications to the last delivery the sink counted: \
             ingest (fsync'd embedded log), fan-out (one delivery row per endpoint in SQLite), leasing, \
             Standard Webhooks signing, the request, and recording the attempt are all inside it.",
            "The raw client does none of that: it posts one body again and again.",
            "The dead endpoint accepts connections and never answers; the daemon's request timeout is 10 min \
             so its requests hang for the whole run, holding that endpoint's in-flight budget.",
        ],
    });
    let path = report::write("webhooks", body)?;
    println!("  wrote {}", path.display());
    Ok(())
}
