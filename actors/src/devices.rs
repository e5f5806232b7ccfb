//! Seed 003's job: a device event becomes the device's resource row, and the cached copy
//! is invalidated; reads go cache → store → cache.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::cache::Cache;
use crate::consumer::KeyHandler;
use crate::log::Record;
use crate::metrics::{OPERATION, kv, metrics};
use crate::retry::HandlerError;
use crate::store::{Store, Upsert};

/// The record `POST /events` writes to `events-input`, keyed by `device_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEvent {
    pub request_id: uuid::Uuid,
    pub device_id: String,
    pub payload: serde_json::Map<String, serde_json::Value>,
    pub user_id: String,
    pub received_at: chrono::DateTime<chrono::Utc>,
}

/// What `GET /resource/{id}` answers (and what the cache holds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceView {
    pub id: String,
    pub value: serde_json::Value,
}

pub fn resource_cache_key(id: &str) -> String {
    format!("resource:{id}")
}

/// Classifies a store error: data problems are permanent, everything else (connection,
/// pool, timeout, deadlock, serialization) is worth retrying.
pub(crate) fn classify(err: Error) -> HandlerError {
    if matches!(err, Error::BreakerOpen { .. }) {
        return HandlerError::unavailable(err);
    }
    let permanent = matches!(&err, Error::Store { source, .. } if matches!(
        source.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_) | sea_orm::SqlErr::ForeignKeyConstraintViolation(_))
    ));
    if permanent { HandlerError::permanent(err) } else { HandlerError::retryable(err) }
}

/// The `events-input` handler.
pub struct DeviceHandler {
    pub store: Store,
    pub cache: Cache,
}

#[async_trait]
impl KeyHandler for DeviceHandler {
    fn name(&self) -> &'static str {
        "devices"
    }

    fn breakers(&self) -> Vec<std::sync::Arc<crate::breaker::Breaker>> {
        vec![self.store.breaker().clone()]
    }

    async fn handle(&self, _key: &str, records: &[Record]) -> Result<(), HandlerError> {
        // Decode all first: an undecodable record must fail the call so that it, alone,
        // reaches the dead-letter topic (the partition actor retries record by record).
        let mut events = Vec::with_capacity(records.len());
        for record in records {
            let event: DeviceEvent = serde_json::from_slice(&record.payload).map_err(HandlerError::permanent)?;
            events.push((record.offset, event));
        }
        // Several queued events of one device coalesce into one write: the last one wins,
        // exactly as writing each in order would.
        let Some((offset, last)) = events.pop() else { return Ok(()) };
        let value = serde_json::Value::Object(last.payload);
        let written = self.store.upsert_resource(&last.device_id, value, offset).await.map_err(classify)?;
        match written {
            Upsert::Written => self.invalidate(&last.device_id).await,
            Upsert::Stale => metrics().stale_writes.add(1, &[]),
        }
        Ok(())
    }
}

impl DeviceHandler {
    /// A failed invalidation never fails the event: the row is written, the cache entry's
    /// TTL bounds how stale a read can be, and we try a few more times in the background.
    async fn invalidate(&self, id: &str) {
        let key = resource_cache_key(id);
        if self.cache.delete(&key).await.is_ok() {
            return;
        }
        metrics().cache_errors.add(1, &[kv(OPERATION, "invalidate")]);
        let cache = self.cache.clone();
        tokio::spawn(async move {
            for attempt in 1..=3u32 {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                if cache.delete(&key).await.is_ok() {
                    return;
                }
                metrics().cache_errors.add(1, &[kv(OPERATION, "invalidate")]);
            }
            tracing::warn!("cache invalidation failed; the entry expires with its TTL");
        });
    }
}

/// Reads of device resources: cache first, then the store, then fill the cache.
#[derive(Clone)]
pub struct Resources {
    pub store: Store,
    pub cache: Cache,
    pub ttl: Duration,
}

impl Resources {
    /// The resource, if any. Cache failures are counted and fall through to the store.
    pub async fn get(&self, id: &str) -> Result<Option<ResourceView>, Error> {
        let key = resource_cache_key(id);
        let m = metrics();
        match self.cache.get(&key).await {
            Ok(Some(hit)) => {
                if let Ok(view) = serde_json::from_str::<ResourceView>(&hit) {
                    m.cache_hits.add(1, &[kv(OPERATION, "resource")]);
                    return Ok(Some(view));
                }
            }
            Ok(None) => {}
            Err(err) => {
                m.cache_errors.add(1, &[kv(OPERATION, "get")]);
                tracing::debug!(error = &err as &dyn std::error::Error, "cache read failed; using the store");
            }
        }
        m.cache_misses.add(1, &[kv(OPERATION, "resource")]);
        let Some(row) = self.store.get_resource(id).await? else { return Ok(None) };
        let view = ResourceView { id: row.id, value: row.value };
        if let Ok(text) = serde_json::to_string(&view)
            && self.cache.set(&key, &text, self.ttl).await.is_err()
        {
            m.cache_errors.add(1, &[kv(OPERATION, "fill")]);
        }
        Ok(Some(view))
    }
}
