//! Consumer lag of the partitions this process owns (every group's): end offset minus
//! committed position, refreshed every second. Exported as `conveyor.partition.lag` and used by ingest to
//! refuse work (503) instead of letting the backlog grow without bound.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::ActorRef;

use crate::log::LogBackend;
use crate::metrics::{self, kv};
use crate::root::RootMsg;

/// The latest lag figures; cheap to read from request handlers.
#[derive(Default)]
pub struct Lag {
    total: AtomicI64,
    per_partition: Mutex<BTreeMap<(String, i32), i64>>,
}

impl Lag {
    pub fn total(&self) -> i64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn per_partition(&self) -> BTreeMap<(String, i32), i64> {
        self.per_partition.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// The lag of one owned partition, if known.
    pub fn of(&self, topic: &str, partition: i32) -> Option<i64> {
        self.per_partition.lock().ok().and_then(|m| m.get(&(topic.to_string(), partition)).copied())
    }

    /// Refreshes every topic's figures; `total` is `ingest_topic`'s (what back-pressure reads).
    async fn refresh(
        &self,
        log: &Arc<dyn LogBackend>,
        root: &ActorRef<RootMsg>,
        topics: &[String],
        ingest_topic: &str,
    ) {
        let Ok(statuses) = ractor::call!(root, |reply| RootMsg::Status { reply }) else { return };
        let mut map = BTreeMap::new();
        for topic in topics {
            let Ok(ends) = log.end_offsets(topic).await else { continue };
            for status in statuses.iter().filter(|s| s.tp.topic == *topic) {
                let end = ends.iter().find(|(p, _)| *p == status.tp.partition).map(|(_, e)| *e).unwrap_or(0);
                // Before the first commit the position is unknown; count what is in flight.
                let position = status.committed.unwrap_or(end - status.in_flight as i64);
                map.insert((status.tp.topic.clone(), status.tp.partition), (end - position).max(0));
            }
        }
        let total = map.iter().filter(|((t, _), _)| t == ingest_topic).map(|(_, lag)| lag).sum();
        self.total.store(total, Ordering::Relaxed);
        if let Ok(mut m) = self.per_partition.lock() {
            *m = map;
        }
    }

    /// Refreshes every second until the returned task is aborted.
    pub fn spawn_monitor(
        self: &Arc<Self>,
        log: Arc<dyn LogBackend>,
        root: ActorRef<RootMsg>,
        topics: Vec<String>,
        ingest_topic: String,
    ) -> tokio::task::JoinHandle<()> {
        let lag = self.clone();
        let gauge_source = self.clone();
        let _ = opentelemetry::global::meter("conveyor.actors")
            .i64_observable_gauge(metrics::LAG)
            .with_unit("{record}")
            .with_description("Records written but not yet committed, per owned partition")
            .with_callback(move |o| {
                for ((topic, partition), lag) in gauge_source.per_partition() {
                    o.observe(lag, &[kv(metrics::TOPIC, topic), kv(metrics::PARTITION, i64::from(partition))]);
                }
            })
            .build();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                lag.refresh(&log, &root, &topics, &ingest_topic).await;
            }
        })
    }
}
