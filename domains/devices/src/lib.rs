//! Seed 003's job: a device event becomes the device's resource row, written through to
//! the cache; reads go cache → store → cache.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use conveyor_actors::Error;
use conveyor_actors::cache::Cache;
use conveyor_actors::config::ProcessingConfig;
use conveyor_actors::consumer::KeyHandler;
use conveyor_actors::domain_events::DomainEvents;
use conveyor_actors::log::Record;
use conveyor_actors::metrics::{OPERATION, kv, metrics};
use conveyor_actors::retry::HandlerError;
use conveyor_actors::store::batch::Batcher;
use conveyor_actors::store::classify;

pub mod ingest;
pub mod metrics;
pub mod migrations;
pub mod resource;
pub mod store;
pub mod writer;

pub use ingest::Ingest;
pub use store::{DeviceStore, ResourceRow, Upsert};
pub use writer::ResourceWriter;

/// Published (when an endpoint subscribes) after a device's resource changed.
pub const RESOURCE_UPDATED: &str = "conveyor.resource.updated";

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"id": "device-123", "value": {"status": "online", "temp_c": 37.2}}))]
pub struct ResourceView {
    pub id: String,
    pub value: serde_json::Value,
}

pub fn resource_cache_key(id: &str) -> String {
    format!("resource:{id}")
}

/// The `events-input` handler.
pub struct DeviceHandler {
    store: DeviceStore,
    /// Group commit: this key's row goes to the store with those of every other ready key.
    writer: Batcher<ResourceWriter>,
    /// Publishes `conveyor.resource.updated` when a webhook endpoint subscribes to it.
    domain: Option<Arc<dyn DomainEvents>>,
}

impl DeviceHandler {
    /// Starts the handler's group-commit writers (`processing.batch_*`).
    pub fn new(
        store: DeviceStore,
        cache: Cache,
        ttl: Duration,
        domain: Option<Arc<dyn DomainEvents>>,
        processing: &ProcessingConfig,
    ) -> Self {
        let writer = ResourceWriter::new(store.clone(), cache, ttl);
        let writer = Batcher::spawn(writer, processing.batch_max_rows, processing.batch_writers);
        DeviceHandler { store, writer, domain }
    }
}

#[async_trait]
impl KeyHandler for DeviceHandler {
    fn name(&self) -> &'static str {
        "devices"
    }

    fn breakers(&self) -> Vec<std::sync::Arc<conveyor_actors::breaker::Breaker>> {
        vec![self.store.breaker().clone()]
    }

    async fn handle(&self, _key: &str, records: &[Record]) -> Result<(), HandlerError> {
        // Check all first: an undecodable or mis-keyed record must fail the call so that
        // it, alone, reaches the dead-letter topic (the partition actor retries record by
        // record). Keyless records share the partition actor's empty key and come here too.
        // Several queued events of one device coalesce into one write: the last one wins,
        // exactly as writing each in order would.
        let mut last = None;
        for record in records {
            last = Some((record, decode(record)?));
        }
        let Some((record, last)) = last else { return Ok(()) };
        let (tp, offset) = (&record.tp, record.offset);
        // The announcement's data is built only when an endpoint subscribes.
        let announce = match &self.domain {
            Some(domain) if domain.wanted(RESOURCE_UPDATED).await.map_err(classify)? => {
                let value: serde_json::Value =
                    serde_json::from_str(last.payload.get()).map_err(HandlerError::permanent)?;
                Some((domain, value))
            }
            _ => None,
        };
        let device_id = last.device_id.into_owned();
        let value = last.payload.to_owned();
        let row = ResourceRow { id: device_id.clone(), value, partition: tp.partition, offset };
        // The row waits for its batch inside a span of its own, so the record's trace shows
        // its write (queue, statement and cache) as the child of its processing span. The
        // key's next record waits for the cache too: its entries stay in order.
        let write = async {
            let written = self.writer.submit(row).await?;
            if let Some(cached) = written.cached {
                cached.wait().await;
            }
            Ok::<_, Error>(written.upsert)
        };
        let written = conveyor_actors::trace::child_span("upsert_resource", write).await;
        if written.map_err(classify)? == Upsert::Stale {
            crate::metrics::metrics().stale_writes.add(1, &[]);
            tracing::debug!(
                topic = %tp.topic, partition = tp.partition, offset,
                "stale write discarded: the row holds this partition's offset or a later one"
            );
        }
        // Also after a stale write: a retry of a record whose announcement failed must
        // announce it; the id is the record's, so subscribers get it once.
        if let Some((domain, value)) = announce {
            let id = format!("evt_resource_{}_{}_{offset}", tp.topic, tp.partition);
            let data = serde_json::json!({"device_id": device_id, "value": value, "offset": offset});
            domain.publish(RESOURCE_UPDATED, &id, data).await.map_err(classify)?;
        }
        Ok(())
    }
}

/// A [`DeviceEvent`] as the handler reads it: every field checked as for a `DeviceEvent`,
/// the strings borrowed from the record, and the payload kept as the text it arrived in,
/// which is what the store and the cache take (parsing it into a map only to write it out
/// again was a tenth of the daemon's processing CPU).
#[derive(Deserialize)]
struct EventRef<'a> {
    #[serde(rename = "request_id")]
    _request_id: uuid::Uuid,
    #[serde(borrow)]
    device_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    payload: &'a RawValue,
    #[serde(borrow, rename = "user_id")]
    _user_id: std::borrow::Cow<'a, str>,
    #[serde(rename = "received_at")]
    _received_at: chrono::DateTime<chrono::Utc>,
}

/// A record's event, if it decodes and is keyed by its own `device_id`. A record keyed
/// otherwise (or not at all) lives on a partition that is not its device's: its offset
/// says nothing about the device's order, so it is refused for good instead of applied.
fn decode(record: &Record) -> Result<EventRef<'_>, HandlerError> {
    let event: EventRef<'_> = serde_json::from_slice(&record.payload).map_err(HandlerError::permanent)?;
    // A `DeviceEvent`'s payload is a map; the raw text starts at its first byte. Reading it
    // raw only skims it, so it is walked once more as strictly as parsing it would be.
    if !event.payload.get().starts_with('{') {
        let err = <serde_json::Error as serde::de::Error>::custom("payload: expected a JSON object");
        return Err(HandlerError::permanent(err));
    }
    serde_json::from_str::<StrictJson>(event.payload.get()).map_err(HandlerError::permanent)?;
    if record.key.as_deref() != Some(&*event.device_id) {
        return Err(HandlerError::permanent(Error::KeyMismatch {
            topic: record.tp.topic.clone(),
            partition: record.tp.partition,
            offset: record.offset,
            key: record.key.clone(),
            device_id: event.device_id.into_owned(),
        }));
    }
    Ok(event)
}

/// A JSON value walked as strictly as parsing it into a `serde_json::Value` (string escapes
/// such as a lone surrogate, numbers out of range), building nothing. It also refuses the NUL
/// character, which PostgreSQL's `jsonb` cannot hold: stored as it came, such a payload would
/// fail its statement on every retry instead of going to the dead-letter topic at once.
struct StrictJson;

impl<'de> Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictJson)
    }
}

impl<'de> serde::de::Visitor<'de> for StrictJson {
    type Value = StrictJson;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(StrictJson)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(StrictJson)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(StrictJson)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(StrictJson)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(StrictJson)
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self, E> {
        if s.contains('\0') {
            return Err(E::custom("a NUL character (\\u0000), which the store cannot hold"));
        }
        Ok(StrictJson)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<StrictJson>()?.is_some() {}
        Ok(StrictJson)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_key::<StrictJson>()?.is_some() {
            map.next_value::<StrictJson>()?;
        }
        Ok(StrictJson)
    }
}

/// Reads of device resources: cache first, then the store, then fill the cache.
#[derive(Clone)]
pub struct Resources {
    pub store: DeviceStore,
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
                tracing::debug!(error = %conveyor_actors::error::chain(&err), "cache read failed; using the store");
            }
        }
        m.cache_misses.add(1, &[kv(OPERATION, "resource")]);
        let Some(row) = self.store.get_resource(id).await? else { return Ok(None) };
        let view = ResourceView { id: row.id, value: row.value };
        // Only into an empty slot: a writer may have put a newer row there meanwhile.
        if let Ok(text) = serde_json::to_string(&view)
            && self.cache.set_nx(&key, &text, self.ttl).await.is_err()
        {
            m.cache_errors.add(1, &[kv(OPERATION, "fill")]);
        }
        Ok(Some(view))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use conveyor_actors::config::Config;
    use conveyor_actors::log::TopicPartition;

    fn event(offset: i64, seq: u64) -> Record {
        keyed(Some("d1"), "d1", offset, seq)
    }

    /// An event of `device` on partition 0, written under `key` (as a producer might).
    fn keyed(key: Option<&str>, device: &str, offset: i64, seq: u64) -> Record {
        let e = DeviceEvent {
            request_id: uuid::Uuid::now_v7(),
            device_id: device.into(),
            payload: serde_json::json!({"seq": seq}).as_object().cloned().unwrap(),
            user_id: "u".into(),
            received_at: chrono::Utc::now(),
        };
        Record {
            tp: TopicPartition::new("events-input", 0),
            offset,
            key: key.map(str::to_string),
            payload: serde_json::to_vec(&e).unwrap().into(),
            headers: vec![],
            timestamp_ms: 0,
        }
    }

    async fn handler() -> (DeviceHandler, Resources, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
        let store = DeviceStore::new(conveyor_actors::store::Store::connect(&config).await.unwrap());
        store.migrate(crate::migrations::with_runtime()).await.unwrap();
        let cache = Cache::memory(100);
        let ttl = Duration::from_secs(60);
        let reads = Resources { store: store.clone(), cache: cache.clone(), ttl };
        let handler = DeviceHandler::new(store, cache.clone(), ttl, None, &ProcessingConfig::default());
        (handler, reads, dir)
    }

    #[tokio::test]
    async fn reads_see_each_write_at_once_and_replays_change_nothing() {
        let (handler, reads, _dir) = handler().await;
        let (cache, ttl) = (reads.cache.clone(), reads.ttl);
        let seq = |v: Option<ResourceView>| v.and_then(|v| v.value["seq"].as_u64());

        handler.handle("d1", &[event(10, 1)]).await.unwrap();
        assert_eq!(seq(reads.get("d1").await.unwrap()), Some(1));
        // The cached copy is replaced by the write, not left for the TTL.
        handler.handle("d1", &[event(11, 2), event(12, 3)]).await.unwrap();
        assert_eq!(seq(reads.get("d1").await.unwrap()), Some(3), "coalesced: the last event wins");
        // A reader that fetched an older row fills only an empty slot.
        let stale = serde_json::json!({"id": "d1", "value": {"seq": 1}}).to_string();
        assert!(!cache.set_nx(&resource_cache_key("d1"), &stale, ttl).await.unwrap());
        assert_eq!(seq(reads.get("d1").await.unwrap()), Some(3));
        // A redelivered older event is refused by the store and leaves the cache alone.
        handler.handle("d1", &[event(11, 2)]).await.unwrap();
        assert_eq!(seq(reads.get("d1").await.unwrap()), Some(3));
        assert!(reads.get("nobody").await.unwrap().is_none());
    }

    /// `events-input` gained partitions and the device's key now maps to a new one, whose
    /// offsets start low: its events keep applying, and the new partition's order is guarded.
    #[tokio::test]
    async fn a_device_that_moves_to_a_new_partition_keeps_updating() {
        let (handler, reads, _dir) = handler().await;
        let on = |partition: i32, offset: i64, seq: u64| {
            let mut record = event(offset, seq);
            record.tp.partition = partition;
            record
        };
        let seq = |v: Option<ResourceView>| v.and_then(|v| v.value["seq"].as_u64());
        handler.handle("d1", &[on(1, 500, 1)]).await.unwrap();
        handler.handle("d1", &[on(6, 0, 2)]).await.unwrap();
        assert_eq!(seq(reads.get("d1").await.unwrap()), Some(2));
        handler.handle("d1", &[on(6, 1, 3), on(6, 2, 4)]).await.unwrap();
        assert_eq!(seq(reads.get("d1").await.unwrap()), Some(4));
        handler.handle("d1", &[on(6, 1, 3)]).await.unwrap();
        assert_eq!(seq(reads.get("d1").await.unwrap()), Some(4), "a redelivery on the new partition is stale");
    }

    fn key_mismatch(err: &HandlerError) -> Option<(Option<String>, String)> {
        match err.source.downcast_ref::<Error>() {
            Some(Error::KeyMismatch { key, device_id, .. }) => Some((key.clone(), device_id.clone())),
            _ => None,
        }
    }

    #[tokio::test]
    async fn keyless_and_mis_keyed_records_fail_for_good_and_write_nothing() {
        let (handler, reads, _dir) = handler().await;
        let err = handler.handle("", &[keyed(None, "d1", 7, 1)]).await.unwrap_err();
        assert_eq!(err.class, conveyor_actors::retry::ErrorClass::Permanent);
        assert_eq!(key_mismatch(&err), Some((None, "d1".into())));
        assert!(err.describe().contains("has no key"), "{}", err.describe());
        let err = handler.handle("d2", &[keyed(Some("d2"), "d1", 8, 2)]).await.unwrap_err();
        assert_eq!(key_mismatch(&err), Some((Some("d2".into()), "d1".into())));
        assert!(err.describe().contains("differs from its device_id"), "{}", err.describe());
        // In a coalesced batch the bad record fails the whole call before anything is
        // written; the partition actor then retries record by record.
        let batch = [event(9, 3), keyed(Some("d1"), "d9", 10, 4), event(11, 5)];
        assert!(key_mismatch(&handler.handle("d1", &batch).await.unwrap_err()).is_some());
        assert!(reads.get("d1").await.unwrap().is_none());
        assert!(reads.get("d9").await.unwrap().is_none());
    }

    #[test]
    fn the_borrowed_decode_requires_every_field_a_device_event_requires() {
        let event = DeviceEvent {
            request_id: uuid::Uuid::now_v7(),
            device_id: "d1".into(),
            payload: serde_json::Map::from_iter([("t".to_string(), serde_json::json!(1))]),
            user_id: "u".into(),
            received_at: chrono::Utc::now(),
        };
        let full = serde_json::to_value(&event).unwrap();
        let text = serde_json::to_vec(&full).unwrap();
        assert!(serde_json::from_slice::<EventRef<'_>>(&text).is_ok(), "a whole event decodes");
        // A field added to `DeviceEvent` and not to `EventRef` would be left unchecked.
        for field in full.as_object().unwrap().keys() {
            let mut without = full.clone();
            without.as_object_mut().unwrap().remove(field);
            let text = serde_json::to_vec(&without).unwrap();
            assert!(serde_json::from_slice::<DeviceEvent>(&text).is_err(), "{field} is required");
            assert!(serde_json::from_slice::<EventRef<'_>>(&text).is_err(), "EventRef lets a missing {field} pass");
        }
    }

    /// The handler reads the payload as raw text; a record that is not a whole `DeviceEvent`
    /// (a payload that is no object, a field missing or of the wrong form) still fails for
    /// good, and a payload stored as text reads back as the same JSON.
    #[tokio::test]
    async fn records_that_are_not_device_events_fail_for_good_and_payloads_keep_their_json() {
        let (handler, reads, _dir) = handler().await;
        let raw =
            |body: serde_json::Value| Record { payload: serde_json::to_vec(&body).unwrap().into(), ..event(1, 0) };
        let full = |payload: serde_json::Value| {
            serde_json::json!({"request_id": uuid::Uuid::now_v7(), "device_id": "d1", "payload": payload,
                "user_id": "u", "received_at": "2026-12-04T00:00:00Z"})
        };
        let mut bad = vec![full(serde_json::json!(5)), full(serde_json::json!([1])), full(serde_json::json!("x"))];
        for (field, value) in [("received_at", "yesterday"), ("request_id", "not-a-uuid")] {
            let mut event = full(serde_json::json!({}));
            event[field] = serde_json::json!(value);
            bad.push(event);
        }
        let mut missing = full(serde_json::json!({}));
        missing.as_object_mut().unwrap().remove("user_id");
        bad.push(missing);
        for body in bad {
            let err = handler.handle("d1", &[raw(body.clone())]).await.unwrap_err();
            assert_eq!(err.class, conveyor_actors::retry::ErrorClass::Permanent, "{body}");
        }
        // Text a `serde_json::Value` cannot hold: a lone surrogate, a number out of range; and
        // a NUL, which PostgreSQL's jsonb refuses (it would fail every retry of the statement).
        for payload in [r#"{"a":"\ud800"}"#, r#"{"a":1e400}"#, r#"{"a":"x\u0000"}"#, r#"{"\u0000":1}"#] {
            let text = format!(
                r#"{{"request_id":"{}","device_id":"d1","payload":{payload},"user_id":"u","received_at":"2026-12-04T00:00:00Z"}}"#,
                uuid::Uuid::now_v7()
            );
            let record = Record { payload: text.into_bytes().into(), ..event(1, 0) };
            let err = handler.handle("d1", &[record]).await.unwrap_err();
            assert_eq!(err.class, conveyor_actors::retry::ErrorClass::Permanent, "{payload}");
        }
        assert!(reads.get("d1").await.unwrap().is_none(), "nothing written");
        let nested = serde_json::json!({"a": {"b": [1, 2.5, null, "é\"q"]}, "z": true});
        handler.handle("d1", &[raw(full(nested.clone()))]).await.unwrap();
        assert_eq!(reads.get("d1").await.unwrap().map(|v| v.value), Some(nested));
    }

    /// Through a partition actor: the keyless record (queued under the empty key) and the
    /// mis-keyed ones reach the dead-letter topic, each alone, and every good record of
    /// their batches still applies.
    #[tokio::test]
    async fn a_partition_dead_letters_only_the_mis_keyed_records() {
        use std::sync::{Arc, Mutex};

        use conveyor_actors::consumer::{DeadLetters, PartitionActor, PartitionArgs, PartitionMsg};
        use conveyor_actors::log::{Ack, ConsumerControl, OutgoingRecord, Producer};

        #[derive(Default)]
        struct Dlq(Mutex<Vec<OutgoingRecord>>);
        #[async_trait]
        impl Producer for Dlq {
            async fn send(&self, record: OutgoingRecord, _: Duration) -> Result<Ack, Error> {
                let mut sent = self.0.lock().unwrap();
                sent.push(record);
                Ok(Ack { partition: 0, offset: sent.len() as i64 - 1 })
            }
            async fn ping(&self, _: Duration) -> Result<(), Error> {
                Ok(())
            }
        }
        struct Control;
        impl ConsumerControl for Control {
            fn pause(&self, _: &TopicPartition) {}
            fn resume(&self, _: &TopicPartition) {}
            fn commit(&self, _: &TopicPartition, _: i64) {}
            fn rewind(&self, _: &TopicPartition) {}
        }

        let (handler, reads, _dir) = handler().await;
        let dlq = Arc::new(Dlq::default());
        let args = PartitionArgs {
            intake: Arc::new(conveyor_actors::log::Intake::new(5_000)),
            tp: TopicPartition::new("events-input", 0),
            handler: Arc::new(handler),
            control: Arc::new(Control),
            dead_letters: DeadLetters { producer: dlq.clone(), topic: "dlq".into(), timeout: Duration::from_secs(1) },
            policy: conveyor_actors::retry::RetryPolicy {
                base: Duration::from_millis(5),
                cap: Duration::from_millis(20),
                max_attempts: 3,
            },
            processing: conveyor_actors::config::ProcessingConfig::default(),
            park: None,
        };
        let (actor, _) = ractor::Actor::spawn(None, PartitionActor, args).await.unwrap();
        let records = [
            keyed(Some("d1"), "d1", 0, 1),
            keyed(None, "d1", 1, 100),
            keyed(None, "d2", 2, 1),
            keyed(Some("d2"), "d1", 3, 101),
            keyed(Some("d1"), "d1", 4, 2),
            keyed(Some("d1"), "d9", 5, 102),
            keyed(Some("d1"), "d1", 6, 3),
        ];
        for record in records {
            actor.cast(PartitionMsg::Record(record)).unwrap();
        }
        let seq = |v: Option<ResourceView>| v.and_then(|v| v.value["seq"].as_u64());
        for _ in 0..500 {
            if dlq.0.lock().unwrap().len() >= 4 && seq(reads.get("d1").await.unwrap()) == Some(3) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let offsets = |sent: &[OutgoingRecord]| {
            let mut offsets: Vec<String> = sent
                .iter()
                .filter_map(|r| {
                    r.headers.iter().find(|h| h.name == conveyor_actors::consumer::dlq_header::SOURCE_OFFSET)
                })
                .map(|h| String::from_utf8_lossy(&h.value).into_owned())
                .collect();
            offsets.sort();
            offsets
        };
        let sent = dlq.0.lock().unwrap().clone();
        assert_eq!(offsets(&sent), ["1", "2", "3", "5"], "exactly the keyless and mis-keyed records");
        for record in &sent {
            let error = record.headers.iter().find(|h| h.name == conveyor_actors::consumer::dlq_header::ERROR).unwrap();
            let error = String::from_utf8_lossy(&error.value);
            assert!(error.contains("has no key") || error.contains("differs from its device_id"), "{error}");
        }
        assert_eq!(seq(reads.get("d1").await.unwrap()), Some(3), "the device's own records all applied");
        assert!(reads.get("d2").await.unwrap().is_none() && reads.get("d9").await.unwrap().is_none());
        actor.stop(None);
    }
}
