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

struct Fixture {
    actor: ractor::ActorRef<PartitionMsg>,
    handler: Arc<Applier>,
    control: Arc<Commits>,
    dlq: Arc<Dlq>,
    parked: ParkedStore,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(max_keys: usize, max_records: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&Config { data_dir: dir.path().to_path_buf(), ..Config::default() }).await.unwrap();
        store.migrate(crate::store::migrations::migrations()).await.unwrap();
        let parked = ParkedStore { store };
        let (handler, control, dlq) =
            (Arc::new(Applier::default()), Arc::new(Commits::default()), Arc::new(Dlq::default()));
        let args = PartitionArgs {
            intake: Arc::new(crate::log::Intake::new(5_000)),
            tp: TopicPartition::new("t", 0),
            handler: handler.clone(),
            control: control.clone(),
            dead_letters: DeadLetters { producer: dlq.clone(), topic: "t-dlq".into(), timeout: Duration::from_secs(1) },
            policy: RetryPolicy { base: Duration::from_millis(5), cap: Duration::from_millis(20), max_attempts: 2 },
            processing: ProcessingConfig { commit_interval_ms: 10, max_coalesce: 2, ..ProcessingConfig::default() },
            park: Some(ParkSpec { store: parked.clone(), max_keys, max_records }),
        };
        let (actor, _) = Actor::spawn(None, PartitionActor, args).await.unwrap();
        Fixture { actor, handler, control, dlq, parked, _dir: dir }
    }

    fn send(&self, offset: i64, key: &str, payload: &'static [u8], headers: Vec<Header>) {
        self.actor.cast(PartitionMsg::Record(record(offset, key, payload, headers))).unwrap();
    }

    async fn committed(&self, position: i64) {
        until(|| *self.control.0.lock().unwrap() == Some(position)).await;
    }

    fn applied(&self, key: &str) -> Vec<i64> {
        self.handler.applied.lock().unwrap().get(key).map(|v| v.iter().map(|(o, _)| *o).collect()).unwrap_or_default()
    }
}

fn replay_of(offset: i64) -> Vec<Header> {
    vec![
        header(park_header::REPLAY_SOURCE_PARTITION, "0"),
        header(park_header::REPLAY_SOURCE_OFFSET, &offset.to_string()),
    ]
}

#[tokio::test]
async fn past_the_parked_keys_bound_a_key_continues_after_its_dead_letter() {
    let f = Fixture::start(1, 10).await;
    for (offset, key, payload) in
        [(0, "a", b"poison" as &'static [u8]), (1, "b", b"poison"), (2, "a", b"x"), (3, "b", b"y")]
    {
        f.send(offset, key, payload, vec![]);
    }
    f.committed(4).await;
    assert!(f.applied("a").is_empty(), "a is parked");
    assert_eq!(f.applied("b"), vec![3], "b found the partition full and continued");
    assert_eq!(f.parked.load(&TopicPartition::new("t", 0)).await.unwrap().len(), 1);
    f.actor.stop(None);
}

#[tokio::test]
async fn a_held_record_that_fails_again_parks_the_key_behind_it_and_the_rest_stay() {
    let f = Fixture::start(10, 10).await;
    for (offset, payload) in [(0, b"poison" as &'static [u8]), (1, b"a"), (2, b"poison"), (3, b"b")] {
        f.send(offset, "k", payload, vec![]);
    }
    f.committed(4).await;
    // The first dead letter is skipped while the handler still fails on "poison".
    let skip = vec![header(park_header::CONTROL, park_header::SKIP), header(park_header::REPLAY_SOURCE_OFFSET, "0")];
    f.send(4, "k", b"", skip);
    f.committed(5).await;
    assert_eq!(f.applied("k"), vec![1], "released up to the held record that failed again");
    let loaded = f.parked.load(&TopicPartition::new("t", 0)).await.unwrap();
    assert_eq!((loaded[0].origin_offset, loaded[0].held), (2, 1), "parked again behind offset 2, one held");
    f.handler.healed.store(true, Ordering::SeqCst);
    f.send(5, "k", b"poison", replay_of(2));
    f.committed(6).await;
    assert_eq!(f.applied("k"), vec![1, 2, 3]);
    assert_eq!(f.dlq.0.lock().unwrap().len(), 2);
    f.actor.stop(None);
}

#[tokio::test]
async fn a_parked_key_is_held_then_released_in_order_with_its_original_offsets() {
    let f = Fixture::start(10, 3).await;
    for (offset, key, payload) in [
        (0, "k", b"a" as &'static [u8]),
        (1, "k", b"poison"),
        (2, "k", b"b"),
        (3, "k", b"c"),
        (4, "o", b"x"),
        (5, "k", b"d"),
        (6, "k", b"e"),
    ] {
        f.send(offset, key, payload, vec![]);
    }
    f.committed(7).await;
    assert_eq!(f.applied("k"), vec![0], "nothing after the dead letter is applied");
    assert_eq!(f.applied("o"), vec![4], "another key flows");
    let sent = f.dlq.0.lock().unwrap().clone();
    let class =
        |r: &OutgoingRecord| r.headers.iter().find(|h| h.name == dlq_header::ERROR_CLASS).map(|h| h.value.clone());
    assert_eq!(sent.len(), 2, "the poison record, and the one past max_records");
    assert_eq!(class(&sent[0]), Some(b"permanent".to_vec()));
    assert_eq!(class(&sent[1]), Some(b"parked_overflow".to_vec()));
    let loaded = f.parked.load(&TopicPartition::new("t", 0)).await.unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!((loaded[0].origin_offset, loaded[0].held, loaded[0].release_offset), (1, 3, None));

    // A control record for nobody, then the fixed dead letter replayed.
    let skip_other =
        vec![header(park_header::CONTROL, park_header::SKIP), header(park_header::REPLAY_SOURCE_OFFSET, "99")];
    f.send(7, "k", b"", skip_other);
    f.handler.healed.store(true, Ordering::SeqCst);
    f.send(8, "k", b"poison", replay_of(1));
    f.send(9, "k", b"f", vec![]);
    f.committed(10).await;
    assert_eq!(f.applied("k"), vec![0, 1, 2, 3, 5, 9], "the dead letter at its own offset first, then the held ones");
    // Released and committed past the release: the row goes.
    let mut gone = false;
    for _ in 0..100 {
        if f.parked.load(&TopicPartition::new("t", 0)).await.unwrap().is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "the released key's row is forgotten once its release is committed");
    f.actor.stop(None);
}
