//! Parked keys in the partition actor, over a SQLite store: a dead letter parks its key,
//! the key's later records are held (and past the bound dead-lettered), other keys flow,
//! and the replay of the dead letter releases the key in order with original offsets.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ractor::Actor;

use super::*;
use crate::config::{Config, ProcessingConfig};
use crate::log::{Ack, ConsumerControl, Header, OutgoingRecord, Producer, Record, TopicPartition};
use crate::retry::{HandlerError, RetryPolicy};
use crate::store::Store;
use crate::store::parked::ParkedStore;

#[derive(Default)]
struct Commits(Mutex<Option<i64>>);

impl ConsumerControl for Commits {
    fn pause(&self, _: &TopicPartition) {}
    fn resume(&self, _: &TopicPartition) {}
    fn commit(&self, _: &TopicPartition, next: i64) {
        *self.0.lock().unwrap() = Some(next);
    }
    fn rewind(&self, _: &TopicPartition) {}
}

#[derive(Default)]
struct Dlq(Mutex<Vec<OutgoingRecord>>);

#[async_trait]
impl Producer for Dlq {
    async fn send(&self, record: OutgoingRecord, _: Duration) -> Result<Ack, crate::Error> {
        let mut sent = self.0.lock().unwrap();
        sent.push(record);
        Ok(Ack { partition: 0, offset: sent.len() as i64 - 1 })
    }
    async fn ping(&self, _: Duration) -> Result<(), crate::Error> {
        Ok(())
    }
}

/// Applies records (remembering offset and payload per key); `poison` fails until healed.
#[derive(Default)]
struct Applier {
    applied: Mutex<HashMap<String, Vec<(i64, String)>>>,
    healed: AtomicBool,
}

#[async_trait]
impl KeyHandler for Applier {
    fn name(&self) -> &'static str {
        "applier"
    }
    async fn handle(&self, key: &str, records: &[Record]) -> Result<(), HandlerError> {
        if !self.healed.load(Ordering::SeqCst) && records.iter().any(|r| r.payload.as_ref() == b"poison") {
            return Err(HandlerError::permanent(std::io::Error::other("cannot apply")));
        }
        let mut applied = self.applied.lock().unwrap();
        let seen = applied.entry(key.to_string()).or_default();
        seen.extend(records.iter().map(|r| (r.offset, String::from_utf8_lossy(&r.payload).into_owned())));
        Ok(())
    }
}

fn record(offset: i64, key: &str, payload: &'static [u8], headers: Vec<Header>) -> Record {
    Record {
        tp: TopicPartition::new("t", 0),
        offset,
        key: Some(key.into()),
        payload: Bytes::from_static(payload),
        headers,
        timestamp_ms: 0,
    }
}

fn header(name: &str, value: &str) -> Header {
    Header { name: name.into(), value: value.as_bytes().to_vec() }
}

async fn until(mut f: impl FnMut() -> bool) {
    for _ in 0..1_000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition never held");
}

#[tokio::test]
async fn a_parked_key_is_held_then_released_in_order_with_its_original_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&Config { data_dir: dir.path().to_path_buf(), ..Config::default() }).await.unwrap();
    store.migrate(crate::store::migrations::migrations()).await.unwrap();
    let parked = ParkedStore { store };
    let (handler, control, dlq) =
        (Arc::new(Applier::default()), Arc::new(Commits::default()), Arc::new(Dlq::default()));
    let args = PartitionArgs {
        tp: TopicPartition::new("t", 0),
        handler: handler.clone(),
        control: control.clone(),
        dead_letters: DeadLetters { producer: dlq.clone(), topic: "t-dlq".into(), timeout: Duration::from_secs(1) },
        policy: RetryPolicy { base: Duration::from_millis(5), cap: Duration::from_millis(20), max_attempts: 2 },
        processing: ProcessingConfig { commit_interval_ms: 10, max_coalesce: 2, ..ProcessingConfig::default() },
        park: Some(ParkSpec { store: parked.clone(), max_keys: 10, max_records: 3 }),
    };
    let (actor, _) = Actor::spawn(None, PartitionActor, args).await.unwrap();
    let committed = || *control.0.lock().unwrap();
    let applied = |key: &str| handler.applied.lock().unwrap().get(key).cloned().unwrap_or_default();
    for (offset, key, payload) in [
        (0, "k", b"a" as &'static [u8]),
        (1, "k", b"poison"),
        (2, "k", b"b"),
        (3, "k", b"c"),
        (4, "o", b"x"),
        (5, "k", b"d"),
    ] {
        actor.cast(PartitionMsg::Record(record(offset, key, payload, vec![]))).unwrap();
    }
    actor.cast(PartitionMsg::Record(record(6, "k", b"e", vec![]))).unwrap();
    until(|| committed() == Some(7)).await;
    assert_eq!(applied("k"), vec![(0, "a".into())], "nothing after the dead letter is applied");
    assert_eq!(applied("o"), vec![(4, "x".into())], "another key flows");
    let sent = dlq.0.lock().unwrap().clone();
    let class =
        |r: &OutgoingRecord| r.headers.iter().find(|h| h.name == dlq_header::ERROR_CLASS).map(|h| h.value.clone());
    assert_eq!(sent.len(), 2, "the poison record, and the one past max_records");
    assert_eq!(class(&sent[0]), Some(b"permanent".to_vec()));
    assert_eq!(class(&sent[1]), Some(b"parked_overflow".to_vec()));
    let loaded = parked.load(&TopicPartition::new("t", 0)).await.unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!((loaded[0].origin_offset, loaded[0].held, loaded[0].release_offset), (1, 3, None));

    // A control record for nobody, then the fixed dead letter replayed.
    let skip_other =
        vec![header(park_header::CONTROL, park_header::SKIP), header(park_header::REPLAY_SOURCE_OFFSET, "99")];
    actor.cast(PartitionMsg::Record(record(7, "k", b"", skip_other))).unwrap();
    handler.healed.store(true, Ordering::SeqCst);
    let replay =
        vec![header(park_header::REPLAY_SOURCE_PARTITION, "0"), header(park_header::REPLAY_SOURCE_OFFSET, "1")];
    actor.cast(PartitionMsg::Record(record(8, "k", b"poison", replay))).unwrap();
    actor.cast(PartitionMsg::Record(record(9, "k", b"f", vec![]))).unwrap();
    until(|| committed() == Some(10)).await;
    let offsets: Vec<i64> = applied("k").iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, vec![0, 1, 2, 3, 5, 9], "the dead letter at its own offset first, then the held ones in order");
    // Released and committed past the release: the rows go.
    let mut gone = false;
    for _ in 0..100 {
        if parked.load(&TopicPartition::new("t", 0)).await.unwrap().is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "the released key's row is forgotten once its release is committed");
    actor.stop(None);
}
