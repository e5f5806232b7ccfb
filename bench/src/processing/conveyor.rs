//! One Conveyor run: the daemon consumes the pre-filled topic into PostgreSQL while its
//! processed-records counter is sampled, so start-up and steady state are told apart.

use std::time::{Duration, Instant};

use crate::daemon::{self, Backends, DaemonSpec};
use crate::report::{CpuSample, CpuUsage};

use super::ProcessingArgs;
use super::pg::{connect_pg, drop_schema, progress};

/// What one run measured; times are seconds from spawning the daemon.
pub struct ConveyorRun {
    /// Until every device's row holds its last event.
    pub total_s: f64,
    /// Until the daemon listened (store connected, migrations run).
    pub startup_s: f64,
    /// Until the first record was processed (consumer group joined, first fetch).
    pub first_record_s: Option<f64>,
    /// Events/s between 10% and 90% of the events processed: the rate once running.
    pub steady_rate: Option<f64>,
    /// Rows the batch writer wrote (fewer than events when a device's events coalesce).
    pub rows_written: Option<f64>,
    /// Store statements those rows took.
    pub statements: Option<f64>,
    pub clean_exit: bool,
    /// From the listening line until done.
    pub cpu: CpuUsage,
}

/// The rate between the samples where 10% and 90% of `events` were processed.
fn steady_rate(samples: &[(f64, f64)], events: f64) -> Option<f64> {
    let at = |share: f64| samples.iter().find(|(_, n)| *n >= share * events).copied();
    let ((t1, n1), (t2, n2)) = (at(0.1)?, at(0.9)?);
    (t2 > t1).then(|| (n2 - n1) / (t2 - t1))
}

pub async fn run(
    args: &ProcessingArgs,
    id: &str,
    topic: &str,
    events: usize,
    devices: usize,
) -> anyhow::Result<ConveyorRun> {
    let last_seq = events / devices;
    let spec = DaemonSpec {
        bin: daemon::conveyor_bin(args.conveyor_bin.as_deref())?,
        backends: Backends::Real {
            brokers: args.brokers.clone(),
            pg_url: args.pg_url.clone(),
            redis_url: args.redis_url.clone(),
        },
        id: id.to_string(),
        topic_in: Some(topic.to_string()),
        extra_env: vec![("CONVEYOR_LOG__PARTITIONS".into(), args.partitions.to_string())],
    };
    let poll_db = connect_pg(&args.pg_url, 2).await?;
    let started = Instant::now();
    let mut daemon = spec.spawn()?;
    let startup_s = daemon.startup.as_secs_f64();
    let cpu_before = CpuSample::take(Some(daemon.pid()));
    let limit = Duration::from_secs(args.timeout);
    let mut samples = Vec::new();
    let done = loop {
        let n = daemon.processed().await;
        samples.push((started.elapsed().as_secs_f64(), n));
        // The counter says when to look; the table says when it is done.
        if n >= events as f64 {
            let (rows, at_last) = progress(&poll_db, id, last_seq).await;
            if at_last as usize >= devices {
                break Ok(started.elapsed().as_secs_f64());
            }
            if started.elapsed() > limit {
                break Err(anyhow::anyhow!(
                    "{n} records processed but {at_last} of {devices} final rows ({rows} rows) within {limit:?}"
                ));
            }
        } else if started.elapsed() > limit {
            break Err(anyhow::anyhow!(
                "conveyor processed {n} of {events} records within {limit:?}; log tail:\n{}",
                daemon.log_tail(30)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cpu = CpuSample::take(Some(daemon.pid())).since(&cpu_before);
    let metrics = daemon.metrics().await;
    let clean_exit = daemon.terminate(Duration::from_secs(30)).await;
    drop(daemon);
    drop_schema(&poll_db, id).await;
    if let Some(url) = &args.redis_url {
        // Left to expire, the run's entries would be expired by Redis during the next run.
        match forget_cache(url, &format!("{id}:")).await {
            Ok(n) => println!("    removed the run's {n} cache entries"),
            Err(err) => println!("    the run's cache entries were not removed: {err:#}"),
        }
    }
    let _ = poll_db.close().await;
    Ok(ConveyorRun {
        total_s: done?,
        startup_s,
        first_record_s: samples.iter().find(|(_, n)| *n > 0.0).map(|(t, _)| *t),
        steady_rate: steady_rate(&samples, events as f64),
        rows_written: daemon::metric_sum(&metrics, "conveyor_store_batch_rows_sum", &["upsert_resources"]),
        statements: daemon::metric_sum(&metrics, "conveyor_store_batch_rows_count", &["upsert_resources"]),
        clean_exit,
        cpu,
    })
}

/// Deletes every cache entry under `prefix` (what one daemon run wrote); their expiry would
/// otherwise take Redis's CPU during the next run. Returns how many went.
async fn forget_cache(url: &str, prefix: &str) -> anyhow::Result<usize> {
    use fred::prelude::*;
    use futures::TryStreamExt;
    const PAGE: usize = 1000;
    let client = Builder::from_config(Config::from_url(url)?).build()?;
    client.init().await?;
    let mut keys = client.scan_buffered(format!("{prefix}*"), Some(PAGE as u32), None);
    let (mut batch, mut removed) = (Vec::with_capacity(PAGE), 0);
    while let Some(key) = keys.try_next().await? {
        batch.push(key);
        if batch.len() == PAGE {
            removed += client.unlink::<i64, _>(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        removed += client.unlink::<i64, _>(batch).await?;
    }
    client.quit().await?;
    Ok(removed as usize)
}

#[cfg(test)]
mod tests {
    use super::steady_rate;

    #[test]
    fn the_steady_rate_leaves_out_the_start_and_the_tail() {
        // Nothing for 2 s (start-up), then 100/s, then a slow tail.
        let samples = [(0.0, 0.0), (2.0, 0.0), (3.0, 100.0), (4.0, 200.0), (10.0, 900.0), (20.0, 1000.0)];
        assert_eq!(steady_rate(&samples, 1000.0), Some(800.0 / 7.0));
        assert_eq!(steady_rate(&samples[..3], 1000.0), None, "never reached 90%");
    }
}
