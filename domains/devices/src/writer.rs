//! The device pipeline's group-commit writer: the rows of every key task that is ready at
//! the same moment go to the store in one statement, and the written ones to the cache in
//! one round trip.

use std::time::Duration;

use async_trait::async_trait;

use conveyor_actors::Error;
use conveyor_actors::cache::Cache;
use conveyor_actors::metrics::{OPERATION, kv, metrics};
use conveyor_actors::store::batch::BatchWrite;

use crate::store::{DeviceStore, ResourceRow, Upsert};
use crate::{ResourceView, resource_cache_key};

/// Writes [`ResourceRow`]s in batches, then refreshes their cache entries.
pub struct ResourceWriter {
    pub store: DeviceStore,
    pub cache: Cache,
    /// How long the cached copy written after each update lives.
    pub ttl: Duration,
}

#[async_trait]
impl BatchWrite for ResourceWriter {
    type Item = ResourceRow;
    type Output = Upsert;

    fn name(&self) -> &'static str {
        "upsert_resources"
    }

    async fn write(&self, rows: Vec<ResourceRow>) -> Vec<Result<Upsert, Error>> {
        let results = match self.store.upsert_resources(&rows).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            // A refused batch may hold one row the database cannot take: write each alone
            // so that row fails by itself and its neighbours still land.
            Err(err) if rows.len() > 1 => {
                tracing::debug!(rows = rows.len(), error = &err as &dyn std::error::Error, "batch refused; row by row");
                let mut results = Vec::with_capacity(rows.len());
                for row in &rows {
                    let one = self.store.upsert_resources(std::slice::from_ref(row)).await;
                    results.push(one.map(|mut o| o.pop().unwrap_or(Upsert::Stale)));
                }
                results
            }
            Err(err) => vec![Err(err)],
        };
        let written: Vec<ResourceView> = rows
            .into_iter()
            .zip(&results)
            .filter(|(_, r)| matches!(r, Ok(Upsert::Written)))
            .map(|(row, _)| ResourceView { id: row.id, value: row.value })
            .collect();
        self.refresh_cache(written).await;
        results
    }
}

impl ResourceWriter {
    /// Writes the new rows through to the cache. Deleting the entries instead would race
    /// with a reader that fetched an old row just before the write and refills the cache
    /// after the delete, leaving the old value for a whole TTL; readers only fill an absent
    /// entry (`set_nx`), so whichever comes second, the newest row wins.
    ///
    /// A failed cache write never fails the events: the entries are deleted in the
    /// background (a few tries), and their TTL bounds how stale a read can be if even that
    /// fails.
    async fn refresh_cache(&self, views: Vec<ResourceView>) {
        let entries: Vec<(String, String)> = views
            .iter()
            .map(|view| (resource_cache_key(&view.id), serde_json::to_string(view).unwrap_or_default()))
            .collect();
        if self.cache.set_many(&entries, self.ttl).await.is_ok() {
            return;
        }
        metrics().cache_errors.add(entries.len() as u64, &[kv(OPERATION, "write_through")]);
        let cache = self.cache.clone();
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
}
