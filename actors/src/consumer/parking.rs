//! Parked keys (`processing.on_dead_letter = "park"`): once a record of a key is
//! dead-lettered, the key's later records are held in the store, in order, until an operator
//! replays the dead letter (applied first, then the held records) or skips it.
//!
//! The map of one partition's parked keys is shared by the partition actor (which loads it
//! before any record is handled) and its key tasks; only a key's own task changes that
//! key's entry, and tasks of one key never overlap.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use opentelemetry::KeyValue;

use crate::log::{Record, TopicPartition};
use crate::metrics::{self, kv, metrics};
use crate::store::parked::{LoadedKey, ParkedStore};

/// Headers of replayed records and control records.
pub mod headers {
    /// On a replay: the partition of the dead-lettered record.
    pub const REPLAY_SOURCE_PARTITION: &str = "conveyor.replay.source_partition";
    /// On a replay, and on a skip: the source offset of the dead-lettered record.
    pub const REPLAY_SOURCE_OFFSET: &str = "conveyor.replay.source_offset";
    /// Marks a control record: it never reaches a handler.
    pub const CONTROL: &str = "conveyor.control";
    /// `conveyor.control` of a skip: release the parked key without its dead letter.
    pub const SKIP: &str = "skip";
}

/// A topic's parking, as the engine configures it.
#[derive(Clone)]
pub struct ParkSpec {
    pub store: ParkedStore,
    /// `processing.max_parked_keys_per_partition`.
    pub max_keys: usize,
    /// `processing.max_parked_records_per_key`.
    pub max_records: usize,
}

/// Why parking refused or ignored something (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkRefusal {
    /// The partition holds `max_parked_keys_per_partition` keys: the key continues.
    ParkLimit,
    /// The key holds `max_parked_records_per_key` records: the new one is dead-lettered.
    ParkedOverflow,
    /// A control record that matches no parked key.
    ControlIgnored,
}

impl ParkRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            ParkRefusal::ParkLimit => "park_limit",
            ParkRefusal::ParkedOverflow => "parked_overflow",
            ParkRefusal::ControlIgnored => "control_ignored",
        }
    }
}

/// Where a key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyPark {
    /// Held behind the dead letter of the record at `origin`; `held` records wait.
    Parked { origin: i64, held: u64 },
    /// Released by the record at `by`, not committed yet: a redelivery of it is done already.
    Released { origin: i64, by: i64 },
}

/// What to do with one record of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    Handle,
    /// The key is parked: hold it.
    Park,
    /// Release the parked key: with the replayed dead letter first (`replay`) or without it (a skip).
    Release {
        origin: i64,
        replay: bool,
    },
    /// Nothing to do (handled before this delivery, or a control record for nobody).
    Done,
    /// A control record that matches no parked key.
    Ignored,
}

/// One partition's parked keys.
pub(super) struct Parking {
    pub spec: ParkSpec,
    map: Mutex<HashMap<String, KeyPark>>,
    /// `conveyor.partition.keys.parked` labels: topic and handler.
    labels: [KeyValue; 2],
}

fn header_num(record: &Record, name: &str) -> Option<i64> {
    record.header(name).and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| v.parse().ok())
}

/// The dead-lettered record `record` replays or skips, if it names one of its partition.
fn source_offset(record: &Record) -> Option<i64> {
    let partition = header_num(record, headers::REPLAY_SOURCE_PARTITION);
    if partition.is_some_and(|p| p != i64::from(record.tp.partition)) {
        return None;
    }
    header_num(record, headers::REPLAY_SOURCE_OFFSET)
}

/// How to route `record` of `key`, whose state is `state`. A control record never goes to
/// the handler, whatever the topic's policy.
pub(super) fn route(record: &Record, state: Option<KeyPark>) -> Route {
    let source = source_offset(record);
    if let Some(control) = record.header(headers::CONTROL) {
        return match state {
            Some(KeyPark::Parked { origin, .. }) if control == headers::SKIP.as_bytes() && source == Some(origin) => {
                Route::Release { origin, replay: false }
            }
            Some(KeyPark::Released { origin, by }) if source == Some(origin) && record.offset <= by => Route::Done,
            _ => Route::Ignored,
        };
    }
    match state {
        None => Route::Handle,
        Some(KeyPark::Parked { origin, .. }) if source == Some(origin) => Route::Release { origin, replay: true },
        // Delivered again after a restart: handled (or dead-lettered) before the key parked.
        Some(KeyPark::Parked { origin, .. }) if record.offset <= origin => Route::Done,
        Some(KeyPark::Parked { .. }) => Route::Park,
        Some(KeyPark::Released { origin, by }) if source == Some(origin) && record.offset <= by => Route::Done,
        Some(KeyPark::Released { .. }) => Route::Handle,
    }
}

impl Parking {
    pub fn new(spec: ParkSpec, tp: &TopicPartition, handler: &'static str) -> Self {
        Parking {
            spec,
            map: Mutex::default(),
            labels: [kv(metrics::TOPIC, tp.topic.clone()), kv(metrics::HANDLER, handler)],
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, KeyPark>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<KeyPark> {
        self.lock().get(key).copied()
    }

    /// Sets `key`'s state, keeping the parked-keys gauge in step.
    pub fn set(&self, key: &str, state: KeyPark) {
        let before = self.lock().insert(key.to_string(), state);
        self.count(before, Some(state));
    }

    fn count(&self, before: Option<KeyPark>, after: Option<KeyPark>) {
        let parked = |s: Option<KeyPark>| matches!(s, Some(KeyPark::Parked { .. })) as i64;
        let delta = parked(after) - parked(before);
        if delta != 0 {
            metrics().parked_keys.add(delta, &self.labels);
        }
    }

    /// Parks `key` behind `origin` unless that would pass `max` parked keys (checked and
    /// set at once: keys of a partition park concurrently). `false` when refused.
    pub fn try_park(&self, key: &str, origin: i64, held: u64, max: usize) -> bool {
        let before = {
            let mut map = self.lock();
            let parked = map.iter().filter(|(k, s)| k.as_str() != key && matches!(s, KeyPark::Parked { .. })).count();
            if parked >= max {
                return false;
            }
            map.insert(key.to_string(), KeyPark::Parked { origin, held })
        };
        self.count(before, Some(KeyPark::Parked { origin, held }));
        true
    }

    /// Puts back `key`'s state from before a [`Parking::try_park`] whose store write never
    /// landed (the partition drains).
    pub fn restore(&self, key: &str, state: Option<KeyPark>) {
        let before = match state {
            Some(s) => self.lock().insert(key.to_string(), s),
            None => self.lock().remove(key),
        };
        self.count(before, state);
    }

    /// How many keys are parked now.
    pub fn parked(&self) -> usize {
        self.lock().values().filter(|s| matches!(s, KeyPark::Parked { .. })).count()
    }

    /// The partition's keys as the store has them (before any record is handled).
    pub fn load(&self, keys: Vec<LoadedKey>) {
        for k in keys {
            let state = match k.release_offset {
                Some(by) => KeyPark::Released { origin: k.origin_offset, by },
                None => KeyPark::Parked { origin: k.origin_offset, held: k.held },
            };
            self.set(&k.key, state);
        }
    }

    /// Forgets the released keys whose releasing record is below the committed `position`;
    /// answers them (key, releasing offset) so that their rows can go too.
    pub fn committed(&self, position: i64) -> Vec<(String, i64)> {
        let mut map = self.lock();
        let gone: Vec<(String, i64)> = map
            .iter()
            .filter_map(|(k, s)| match s {
                KeyPark::Released { by, .. } if *by < position => Some((k.clone(), *by)),
                _ => None,
            })
            .collect();
        for (k, _) in &gone {
            map.remove(k);
        }
        gone
    }

    /// Forgets everything (the partition stopped; its next owner loads the store again).
    pub fn clear_all(&self) {
        let n = self.parked() as i64;
        self.lock().clear();
        if n > 0 {
            metrics().parked_keys.add(-n, &self.labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Header;

    fn rec(offset: i64, headers: &[(&str, &str)]) -> Record {
        Record {
            tp: TopicPartition::new("t", 0),
            offset,
            key: Some("k".into()),
            payload: bytes::Bytes::new(),
            headers: headers.iter().map(|(n, v)| Header { name: (*n).into(), value: v.as_bytes().to_vec() }).collect(),
            timestamp_ms: 0,
        }
    }

    const REPLAY_OF_5: &[(&str, &str)] =
        &[(headers::REPLAY_SOURCE_PARTITION, "0"), (headers::REPLAY_SOURCE_OFFSET, "5")];

    #[test]
    fn records_of_a_parked_key_are_held_until_its_dead_letter_comes_back() {
        let parked = Some(KeyPark::Parked { origin: 5, held: 2 });
        assert_eq!(route(&rec(9, &[]), None), Route::Handle);
        assert_eq!(route(&rec(9, &[]), parked), Route::Park);
        assert_eq!(route(&rec(4, &[]), parked), Route::Done, "delivered again: handled before the poison");
        assert_eq!(route(&rec(5, &[]), parked), Route::Done, "the poison itself was dead-lettered");
        assert_eq!(route(&rec(20, REPLAY_OF_5), parked), Route::Release { origin: 5, replay: true });
        let other = [(headers::REPLAY_SOURCE_PARTITION, "0"), (headers::REPLAY_SOURCE_OFFSET, "3")];
        assert_eq!(route(&rec(20, &other), parked), Route::Park, "another dead letter's replay is a later record");
        let elsewhere = [(headers::REPLAY_SOURCE_PARTITION, "1"), (headers::REPLAY_SOURCE_OFFSET, "5")];
        assert_eq!(route(&rec(20, &elsewhere), parked), Route::Park);
        assert_eq!(route(&rec(20, REPLAY_OF_5), None), Route::Handle, "on an unparked key a replay is a record");
    }

    #[test]
    fn control_records_never_reach_the_handler() {
        let parked = Some(KeyPark::Parked { origin: 5, held: 0 });
        let skip = [(headers::CONTROL, headers::SKIP), (headers::REPLAY_SOURCE_OFFSET, "5")];
        assert_eq!(route(&rec(9, &skip), parked), Route::Release { origin: 5, replay: false });
        assert_eq!(route(&rec(9, &skip), None), Route::Ignored);
        let wrong = [(headers::CONTROL, headers::SKIP), (headers::REPLAY_SOURCE_OFFSET, "4")];
        assert_eq!(route(&rec(9, &wrong), parked), Route::Ignored);
        assert_eq!(route(&rec(9, &[(headers::CONTROL, "other")]), parked), Route::Ignored);
    }

    #[test]
    fn a_release_delivered_again_is_done_already() {
        let released = Some(KeyPark::Released { origin: 5, by: 12 });
        assert_eq!(route(&rec(12, REPLAY_OF_5), released), Route::Done);
        assert_eq!(route(&rec(30, REPLAY_OF_5), released), Route::Handle, "a second replay later is a record");
        assert_eq!(route(&rec(13, &[]), released), Route::Handle);
        let skip = [(headers::CONTROL, headers::SKIP), (headers::REPLAY_SOURCE_OFFSET, "5")];
        assert_eq!(route(&rec(12, &skip), released), Route::Done);
    }
}
