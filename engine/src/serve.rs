//! `conveyor serve`: start the actor system and the HTTP front end, then shut both down
//! in order on SIGTERM/SIGINT — stop accepting, drain requests, drain and commit the
//! partitions, flush metrics — within the grace period. A second signal exits at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use conveyor_actors::config::Config;
use conveyor_actors::store::Store;
use conveyor_http::{AppState, RateLimits, Server, ServerConfig};
use tokio::signal::unix::{SignalKind, signal};

use crate::otel_env::OtelEnv;
use crate::system::Conveyor;
use crate::telemetry;

pub async fn migrate(config: Config) -> anyhow::Result<()> {
    telemetry::init_logs(&config.telemetry);
    let store = Store::connect(&config).await.context("connecting to the store")?;
    store.migrate(crate::migrations::all()).await.context("applying migrations")?;
    println!("migrations applied");
    Ok(())
}

pub async fn serve(config: Config, otel: OtelEnv) -> anyhow::Result<()> {
    telemetry::init_logs(&config.telemetry);
    let metrics = telemetry::init_metrics(&config.telemetry, &otel).context("starting metrics and traces")?;
    let limits = RateLimits::new(&config.rate_limit);
    let _janitor = limits.spawn_janitor();
    let grace = Duration::from_millis(config.shutdown.grace_period_ms);
    let http_config = ServerConfig {
        body_limit: config.http.body_limit_bytes,
        request_timeout: Duration::from_millis(config.http.request_timeout_ms),
        header_read_timeout: Duration::from_millis(config.http.header_read_timeout_ms),
    };
    let addr = config.http.addr.clone();
    let backend = format!("{:?}", config.log.backend).to_lowercase();
    let conveyor = Arc::new(Conveyor::start(config).await.context("starting the actor system")?);
    let state =
        Arc::new(AppState { conveyor: Arc::new(conveyor.facades()), limits, render_metrics: metrics.render.clone() });
    let server = Server::bind(&addr, state, http_config).await.with_context(|| format!("binding {addr}"))?;
    let local = server.local_addr()?;
    tracing::info!(addr = %local, log = backend, "conveyor ready");
    // Tests and scripts read this line to find the port when http.addr ends in :0.
    println!("conveyor listening on http://{local}");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let signalled = Arc::new(std::sync::OnceLock::<Instant>::new());
    let signalled_at = signalled.clone();
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        let _ = signalled_at.set(Instant::now());
        tracing::info!("signal received: shutting down (send it again to exit at once)");
        let _ = first_tx.send(());
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });

    server
        .run(
            async {
                let _ = first_rx.await;
            },
            grace,
        )
        .await;
    let spent = signalled.get().map(Instant::elapsed).unwrap_or_default();
    let remaining = grace.saturating_sub(spent).max(Duration::from_secs(1));
    conveyor.shutdown(remaining).await;
    metrics.shutdown();
    tracing::info!("conveyor stopped");
    Ok(())
}
