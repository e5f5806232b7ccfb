//! Keys that are not advancing: waiting out a backoff after a failure, or waiting for an
//! open downstream breaker. The operator's question "which key is stuck, since when, and
//! why" is answered from here (`/admin/stuck-keys`, `/admin/status.json`, the console).
//!
//! Bounded by construction: an entry exists only while its key task is running and has
//! failed at least once, so a partition holds at most `processing.max_concurrent_keys` of
//! them. An entry leaves as soon as the key succeeds, is dead-lettered, or its task ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use opentelemetry::KeyValue;
use serde::Serialize;
use utoipa::ToSchema;

use crate::log::TopicPartition;
use crate::metrics::{self, kv, metrics};
use crate::retry::ErrorClass;

/// Why a key is not advancing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StuckReason {
    /// The handler failed; the key waits out its backoff before the next attempt.
    Backoff,
    /// A downstream's circuit breaker is open; the key waits for it without spending attempts.
    BreakerOpen,
    /// The record exhausted its attempts but the dead-letter write is failing; it is held.
    DeadLetterWrite,
    /// A parked key's store write (parking it, holding or releasing its records) is failing.
    ParkWrite,
}

/// How the last failure of a stuck key was classified (serialized like the dead letters'
/// `error_class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StuckErrorClass {
    Retryable,
    Permanent,
    Unavailable,
}

impl From<ErrorClass> for StuckErrorClass {
    fn from(c: ErrorClass) -> Self {
        match c {
            ErrorClass::Retryable => StuckErrorClass::Retryable,
            ErrorClass::Permanent => StuckErrorClass::Permanent,
            ErrorClass::Unavailable => StuckErrorClass::Unavailable,
        }
    }
}

/// One key that is not advancing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct StuckKey {
    pub topic: String,
    pub partition: i32,
    pub key: String,
    /// The handler serving the topic (e.g. `devices`).
    pub handler: String,
    /// The offset of the record the key is stuck on.
    pub offset: i64,
    pub reason: StuckReason,
    /// First failure of this record, ms since the epoch.
    pub since_ms: i64,
    /// Attempts spent so far (waits for an open breaker spend none).
    pub attempts: u32,
    pub error_class: StuckErrorClass,
    /// The last error with its causes.
    pub error: String,
    /// When the next attempt is due (ms since the epoch); null while waiting for a breaker.
    pub next_attempt_ms: Option<i64>,
}

/// The stuck keys of one partition, shared by the partition actor and its key tasks.
#[derive(Clone)]
pub struct StuckKeys {
    inner: Arc<Mutex<HashMap<String, StuckKey>>>,
    /// `conveyor.partition.keys.stuck` labels: topic and handler (never the key).
    labels: Arc<[KeyValue; 2]>,
}

impl StuckKeys {
    pub fn new(tp: &TopicPartition, handler: &'static str) -> Self {
        StuckKeys {
            inner: Arc::default(),
            labels: Arc::new([kv(metrics::TOPIC, tp.topic.clone()), kv(metrics::HANDLER, handler)]),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, StuckKey>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records (or updates) a key that is not advancing.
    pub fn set(&self, entry: StuckKey) {
        if self.lock().insert(entry.key.clone(), entry).is_none() {
            metrics().stuck_keys.add(1, &self.labels[..]);
        }
    }

    /// The key advanced (or its task ended): it is no longer stuck.
    pub fn clear(&self, key: &str) {
        if self.lock().remove(key).is_some() {
            metrics().stuck_keys.add(-1, &self.labels[..]);
        }
    }

    /// Forgets every entry (the partition stopped).
    pub fn clear_all(&self) {
        let n = {
            let mut map = self.lock();
            let n = map.len();
            map.clear();
            n
        };
        if n > 0 {
            metrics().stuck_keys.add(-(n as i64), &self.labels[..]);
        }
    }

    /// How many keys are stuck.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key is stuck.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `limit` entries, longest stuck first, and how many there are in all.
    pub fn snapshot(&self, limit: usize) -> (Vec<StuckKey>, usize) {
        let map = self.lock();
        let mut all: Vec<StuckKey> = map.values().cloned().collect();
        drop(map);
        let total = all.len();
        sort(&mut all);
        all.truncate(limit);
        (all, total)
    }
}

/// Longest stuck first; ties by topic, partition and key so that pages are stable.
pub fn sort(keys: &mut [StuckKey]) {
    keys.sort_by(|a, b| (a.since_ms, &a.topic, a.partition, &a.key).cmp(&(b.since_ms, &b.topic, b.partition, &b.key)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, since_ms: i64) -> StuckKey {
        StuckKey {
            topic: "t".into(),
            partition: 0,
            key: key.into(),
            handler: "h".into(),
            offset: 1,
            reason: StuckReason::Backoff,
            since_ms,
            attempts: 1,
            error_class: StuckErrorClass::Retryable,
            error: "boom".into(),
            next_attempt_ms: Some(since_ms + 10),
        }
    }

    #[test]
    fn an_entry_is_kept_once_per_key_and_leaves_when_cleared() {
        let stuck = StuckKeys::new(&TopicPartition::new("t", 0), "h");
        stuck.set(entry("a", 5));
        stuck.set(StuckKey { attempts: 2, ..entry("a", 5) });
        stuck.set(entry("b", 3));
        assert_eq!(stuck.len(), 2);
        let (keys, total) = stuck.snapshot(10);
        assert_eq!(total, 2);
        assert_eq!(keys.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(), ["b", "a"], "longest stuck first");
        assert_eq!(keys[1].attempts, 2, "an update replaces the entry");
        stuck.clear("a");
        stuck.clear("a");
        assert_eq!(stuck.len(), 1);
        stuck.clear_all();
        assert!(stuck.is_empty());
    }

    #[test]
    fn a_snapshot_is_capped_but_counts_everything() {
        let stuck = StuckKeys::new(&TopicPartition::new("t", 0), "h");
        for i in 0..7 {
            stuck.set(entry(&format!("k{i}"), 100 - i));
        }
        let (keys, total) = stuck.snapshot(3);
        assert_eq!((keys.len(), total), (3, 7));
        assert_eq!(keys[0].key, "k6");
    }

    #[test]
    fn reasons_and_classes_serialize_in_snake_case() {
        let json =
            serde_json::to_value(StuckKey { reason: StuckReason::BreakerOpen, ..entry("a", 1) }).unwrap_or_default();
        assert_eq!(json["reason"], "breaker_open");
        assert_eq!(json["error_class"], "retryable");
    }
}
