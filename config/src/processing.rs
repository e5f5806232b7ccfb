//! `[processing]`: partition bounds, coalescing, group commit, and the dead-letter policy
//! (what happens to a key's later records once one of its records is dead-lettered), for
//! every topic and per topic by its logical name.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{InvalidConfig, invalid};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessingConfig {
    /// Records handed to a partition actor and not yet done (mailbox included); at the bound
    /// the log client holds the next record back (see `config.toml`).
    pub max_in_flight_per_partition: usize,
    /// Keys handled at once per partition.
    pub max_concurrent_keys: usize,
    /// Most records of one key handed to the handler in one call.
    pub max_coalesce: usize,
    pub commit_interval_ms: u64,
    pub drain_timeout_ms: u64,
    /// Most rows one group-committed store statement writes (keys of every partition whose
    /// writes are ready together share it).
    pub batch_max_rows: usize,
    /// Group-commit statements in flight at once (each holds one store connection).
    pub batch_writers: usize,
    /// What a key's later records do once one of its records is dead-lettered (`continue`
    /// or `park`), unless its topic says otherwise in `topics`.
    pub on_dead_letter: DeadLetterPolicy,
    /// Per topic, by its logical name as in `[log.topics]` (e.g. `events_input`).
    pub topics: BTreeMap<String, TopicProcessing>,
    /// `park`: at most this many parked keys per partition; past it a poison record is
    /// dead-lettered and its key continues (counted, reason `park_limit`).
    pub max_parked_keys_per_partition: usize,
    /// `park`: at most this many records held per parked key; past it a record is
    /// dead-lettered with error class `parked_overflow` and the key stays parked.
    pub max_parked_records_per_key: usize,
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        ProcessingConfig {
            max_in_flight_per_partition: 5_000,
            max_concurrent_keys: 256,
            max_coalesce: 100,
            commit_interval_ms: 1_000,
            drain_timeout_ms: 10_000,
            batch_max_rows: 500,
            batch_writers: 3,
            on_dead_letter: DeadLetterPolicy::Continue,
            topics: BTreeMap::new(),
            max_parked_keys_per_partition: 10_000,
            max_parked_records_per_key: 100_000,
        }
    }
}

impl ProcessingConfig {
    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit_interval_ms)
    }
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
    /// The dead-letter policy of the topic with this logical name (see [`LOGICAL_TOPICS`]).
    pub fn on_dead_letter_for(&self, logical: &str) -> DeadLetterPolicy {
        self.topics.get(logical).and_then(|t| t.on_dead_letter).unwrap_or(self.on_dead_letter)
    }
}

/// The logical topic names of `[log.topics]`, the keys `[processing.topics.*]` accepts.
pub const LOGICAL_TOPICS: &[&str] =
    &["events_input", "events_dlq", "registration", "loyalty", "notifications", "workflows_command"];

/// What a key's later records do once one of its records is dead-lettered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterPolicy {
    /// They are handled as usual (the dead letter can be replayed later, out of order).
    #[default]
    Continue,
    /// They are held, in order, until an operator replays or skips the dead letter.
    Park,
}

/// `[processing.topics.<logical name>]`: keys one topic may set differently.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicProcessing {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_dead_letter: Option<DeadLetterPolicy>,
}

/// The parked-keys bounds, checked with the rest of `[processing]`.
pub(crate) fn validate(
    topics: &BTreeMap<String, TopicProcessing>,
    max_keys: usize,
    max_records: usize,
) -> Result<(), InvalidConfig> {
    if let Some(unknown) = topics.keys().find(|k| !LOGICAL_TOPICS.contains(&k.as_str())) {
        return Err(invalid(
            "processing.topics",
            format!("unknown topic {unknown:?}; expected one of {}", LOGICAL_TOPICS.join(", ")),
        ));
    }
    if max_keys == 0 {
        return Err(invalid("processing.max_parked_keys_per_partition", "must be at least 1"));
    }
    if max_records == 0 {
        return Err(invalid("processing.max_parked_records_per_key", "must be at least 1"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::Config;

    use super::*;

    #[test]
    fn a_topic_overrides_the_default_by_its_logical_name() {
        let mut c = Config::default();
        assert_eq!(c.processing.on_dead_letter_for("events_input"), DeadLetterPolicy::Continue);
        c.processing
            .topics
            .insert("events_input".into(), TopicProcessing { on_dead_letter: Some(DeadLetterPolicy::Park) });
        assert_eq!(c.processing.on_dead_letter_for("events_input"), DeadLetterPolicy::Park);
        assert_eq!(c.processing.on_dead_letter_for("loyalty"), DeadLetterPolicy::Continue);
        assert!(c.validate().is_ok());
        c.processing.topics.insert("events-input".into(), TopicProcessing::default());
        assert_eq!(c.validate().err().map(|e| e.key), Some("processing.topics"), "physical names are refused");
    }

    #[test]
    fn the_bounds_must_be_positive() {
        let mut c = Config::default();
        c.processing.max_parked_records_per_key = 0;
        assert_eq!(c.validate().err().map(|e| e.key), Some("processing.max_parked_records_per_key"));
    }
}
