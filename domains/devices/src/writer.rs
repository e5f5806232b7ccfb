//! The device pipeline's group-commit writer: the rows of every key task that is ready at
//! the same moment go to the store in one statement, and the written ones to the cache in
//! one round trip.
//!
//! ```text
//! key task ─submit(row)─▶ writer 1..N: one statement ─▶ cache stage: one EVAL, in order
//!     ◀── Upsert + ticket ─────┘                                 │
//!     ◀── ticket done ───────────────────────────────────────────┘
//! ```
//! A writer holds a store connection; the cache write needs none, so a writer hands it to
//! the cache stage and takes its next batch. The key still waits for its ticket before its
//! next record, and the stage writes batches in the order their statements ended, so a
//! device's entries reach the cache in the order its rows reached the store.

use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::Shared;
use tokio::sync::{mpsc, oneshot};

use conveyor_actors::Error;
use conveyor_actors::cache::Cache;
use conveyor_actors::metrics::{OPERATION, kv, metrics};
use conveyor_actors::store::batch::BatchWrite;

use crate::resource_cache_key;
use crate::store::{DeviceStore, ResourceRow, Upsert};

/// What the cache holds for a device: a [`crate::ResourceView`] as JSON.
#[derive(serde::Serialize)]
struct CachedView<'a> {
    id: &'a str,
    value: &'a serde_json::value::RawValue,
}

/// A row's outcome: stored or stale, and for a stored row its cache refresh.
pub struct RowWritten {
    pub upsert: Upsert,
    pub cached: Option<CacheTicket>,
}

/// Resolves once the cache holds the row's entry (or gave up on it: then the entry was
/// deleted in the background, and its TTL bounds a stale read).
pub struct CacheTicket(Shared<oneshot::Receiver<()>>);

impl CacheTicket {
    pub async fn wait(self) {
        // A stage gone before answering wrote nothing more; the TTL bounds what is left.
        let _ = self.0.await;
    }
}

/// One statement's written rows, for the cache stage.
struct CacheJob {
    entries: Vec<(String, String)>,
    done: oneshot::Sender<()>,
}

/// Jobs queued for the cache stage before writers wait for it.
const CACHE_QUEUE: usize = 64;

/// Writes [`ResourceRow`]s in batches; their cache entries follow through the cache stage.
pub struct ResourceWriter {
    store: DeviceStore,
    cache: Cache,
    /// How long the cached copy written after each update lives.
    ttl: Duration,
    stage: mpsc::Sender<CacheJob>,
}

impl ResourceWriter {
    /// Starts the cache stage; it ends when the writer is dropped.
    pub fn new(store: DeviceStore, cache: Cache, ttl: Duration) -> Self {
        let (stage, jobs) = mpsc::channel(CACHE_QUEUE);
        tokio::spawn(cache_stage(cache.clone(), ttl, jobs));
        ResourceWriter { store, cache, ttl, stage }
    }
}

#[async_trait]
impl BatchWrite for ResourceWriter {
    type Item = ResourceRow;
    type Output = RowWritten;

    fn name(&self) -> &'static str {
        "upsert_resources"
    }

    async fn write(&self, rows: Vec<ResourceRow>) -> Vec<Result<RowWritten, Error>> {
        let results = match self.store.upsert_resources(&rows).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            // A refused batch may hold one row the database cannot take: write each alone
            // so that row fails by itself and its neighbours still land.
            Err(err) if rows.len() > 1 => {
                tracing::debug!(rows = rows.len(), error = %conveyor_actors::error::chain(&err), "batch refused; row by row");
                let mut results = Vec::with_capacity(rows.len());
                for row in &rows {
                    let one = self.store.upsert_resources(std::slice::from_ref(row)).await;
                    results.push(one.map(|mut o| o.pop().unwrap_or(Upsert::Stale)));
                }
                results
            }
            Err(err) => vec![Err(err)],
        };
        let entries: Vec<(String, String)> = rows
            .iter()
            .zip(&results)
            .filter(|(_, r)| matches!(r, Ok(Upsert::Written)))
            .map(|(row, _)| {
                // A `ResourceView`, with the row's JSON text copied in rather than re-encoded.
                let view = CachedView { id: &row.id, value: &row.value };
                (resource_cache_key(&row.id), serde_json::to_string(&view).unwrap_or_default())
            })
            .collect();
        let ticket = self.refresh_later(entries).await;
        results
            .into_iter()
            .map(|result| {
                result.map(|upsert| {
                    let cached = (upsert == Upsert::Written).then(|| ticket.clone()).flatten().map(CacheTicket);
                    RowWritten { upsert, cached }
                })
            })
            .collect()
    }
}

impl ResourceWriter {
    /// Queues the entries for the cache stage; `None` when there is nothing to wait for
    /// (no entries, or the stage is gone and the entries were written here).
    async fn refresh_later(&self, entries: Vec<(String, String)>) -> Option<Shared<oneshot::Receiver<()>>> {
        if entries.is_empty() {
            return None;
        }
        let (done, ticket) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = self.stage.send(CacheJob { entries, done }).await {
            refresh(&self.cache, self.ttl, job.entries).await;
            return None;
        }
        Some(ticket.shared())
    }
}

/// Writes queued jobs' entries in the order they came, every job queued meanwhile in one
/// round trip, then answers their tickets.
async fn cache_stage(cache: Cache, ttl: Duration, mut jobs: mpsc::Receiver<CacheJob>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while let Ok(next) = jobs.try_recv() {
            batch.push(next);
        }
        let mut entries = Vec::new();
        let mut done = Vec::with_capacity(batch.len());
        for job in batch {
            // Later entries of a device overwrite earlier ones: the order of statements.
            entries.extend(job.entries);
            done.push(job.done);
        }
        if std::panic::AssertUnwindSafe(refresh(&cache, ttl, entries)).catch_unwind().await.is_err() {
            tracing::error!("cache write-through panicked; its entries expire with their TTL");
        }
        for ticket in done {
            let _ = ticket.send(());
        }
    }
}

/// Writes the new rows through to the cache. Deleting the entries instead would race with
/// a reader that fetched an old row just before the write and refills the cache after the
/// delete, leaving the old value for a whole TTL; readers only fill an absent entry
/// (`set_nx`), so whichever comes second, the newest row wins.
///
/// A failed cache write never fails the events: the entries are deleted in the background
/// (a few tries), and their TTL bounds how stale a read can be if even that fails.
async fn refresh(cache: &Cache, ttl: Duration, entries: Vec<(String, String)>) {
    if cache.set_many(&entries, ttl).await.is_ok() {
        return;
    }
    metrics().cache_errors.add(entries.len() as u64, &[kv(OPERATION, "write_through")]);
    let cache = cache.clone();
    tokio::spawn(async move {
        let mut left: Vec<String> = entries.into_iter().map(|(key, _)| key).collect();
        for attempt in 1..=3u32 {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            let mut failed = Vec::new();
            for key in left {
                if cache.delete(&key).await.is_err() {
                    failed.push(key);
                }
            }
            if failed.is_empty() {
                return;
            }
            metrics().cache_errors.add(failed.len() as u64, &[kv(OPERATION, "invalidate")]);
            left = failed;
        }
        tracing::warn!(entries = left.len(), "cache invalidation failed; the entries expire with their TTL");
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn the_cache_stage_writes_in_the_order_of_statements_and_answers_after_writing() {
        let cache = Cache::memory(100);
        let (tx, rx) = mpsc::channel(8);
        let mut tickets = Vec::new();
        // Queued before the stage runs, so it writes both jobs in one round trip.
        for value in ["older", "newer"] {
            let (done, ticket) = oneshot::channel();
            tx.send(CacheJob { entries: vec![("resource:d1".into(), value.into())], done }).await.unwrap();
            tickets.push(ticket);
        }
        drop(tx);
        cache_stage(cache.clone(), Duration::from_secs(60), rx).await;
        for ticket in tickets {
            ticket.await.unwrap();
        }
        assert_eq!(cache.get("resource:d1").await.unwrap().as_deref(), Some("newer"));
    }
}
