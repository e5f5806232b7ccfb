//! `[log.embedded]`: segments, retention and the disk budget of the embedded log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{InvalidConfig, invalid};

/// The smallest segment accepted; smaller ones would only multiply files.
pub const MIN_SEGMENT_BYTES: u64 = 1024;
/// The smallest journal accepted: smaller would fsync every segment after nearly every batch.
pub const MIN_JOURNAL_BYTES: u64 = 4096;
/// Segment positions are kept as `u32` in the sparse index; this leaves room for one batch
/// and one maximal record past the roll size.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedLogConfig {
    /// A partition's active segment is sealed and a new one started once it would grow past this.
    pub segment_bytes: u64,
    /// ... or once its first record is this old (so that age retention can delete it).
    pub segment_ms: u64,
    /// Sealed segments whose newest record is older than this are deleted; 0 keeps them.
    pub retention_ms: u64,
    /// Per partition: the oldest sealed segments are deleted while the partition is larger; 0: no limit.
    pub retention_bytes: u64,
    /// Per topic: appends fail (HTTP 503) while the topic uses this much disk and every sealed
    /// segment still holds records some consumer group has not committed; 0: no budget.
    pub max_disk_bytes: u64,
    /// How often retention runs (it also runs at once when a topic hits its budget).
    pub retention_check_ms: u64,
    /// Per topic: bytes written to one of the journal's two files before the writer moves to
    /// the other and a checkpoint fsyncs every active segment.
    pub journal_bytes: u64,
    /// Per-topic overrides of the keys above, by topic name.
    pub topics: BTreeMap<String, TopicLogOverrides>,
}

impl Default for EmbeddedLogConfig {
    fn default() -> Self {
        EmbeddedLogConfig {
            segment_bytes: 64 << 20,
            segment_ms: 86_400_000,
            retention_ms: 7 * 86_400_000,
            retention_bytes: 1 << 30,
            max_disk_bytes: 8 << 30,
            retention_check_ms: 10_000,
            journal_bytes: 16 << 20,
            topics: BTreeMap::new(),
        }
    }
}

/// Keys of [`EmbeddedLogConfig`] that one topic may set differently.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicLogOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_disk_bytes: Option<u64>,
}

/// The effective rules of one topic (defaults with its overrides applied); 0 means "no limit"
/// for the retention and budget fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLogPolicy {
    pub segment_bytes: u64,
    pub segment_ms: u64,
    pub retention_ms: u64,
    pub retention_bytes: u64,
    pub max_disk_bytes: u64,
}

impl EmbeddedLogConfig {
    pub fn policy(&self, topic: &str) -> TopicLogPolicy {
        let o = self.topics.get(topic).cloned().unwrap_or_default();
        TopicLogPolicy {
            segment_bytes: o.segment_bytes.unwrap_or(self.segment_bytes),
            segment_ms: o.segment_ms.unwrap_or(self.segment_ms),
            retention_ms: o.retention_ms.unwrap_or(self.retention_ms),
            retention_bytes: o.retention_bytes.unwrap_or(self.retention_bytes),
            max_disk_bytes: o.max_disk_bytes.unwrap_or(self.max_disk_bytes),
        }
    }

    /// Rejects values that cannot work; `partitions` is the partition count of new topics,
    /// as every partition's active segment counts against the topic's budget.
    pub fn validate(&self, partitions: i32) -> Result<(), InvalidConfig> {
        if self.journal_bytes < MIN_JOURNAL_BYTES {
            return Err(invalid("log.embedded.journal_bytes", format!("must be at least {MIN_JOURNAL_BYTES}")));
        }
        if self.retention_check_ms == 0 {
            return Err(invalid("log.embedded.retention_check_ms", "must be at least 1"));
        }
        let defaults = self.policy("");
        check_policy(&defaults, partitions, "log.embedded.segment_bytes", "")?;
        for (topic, overrides) in &self.topics {
            if !super::valid_topic_name(topic) {
                return Err(invalid("log.embedded.topics", format!("{topic:?} is not a legal topic name")));
            }
            if overrides == &TopicLogOverrides::default() {
                return Err(invalid("log.embedded.topics", format!("[log.embedded.topics.{topic:?}] sets nothing")));
            }
            check_policy(&self.policy(topic), partitions, "log.embedded.topics", topic)?;
        }
        Ok(())
    }
}

fn check_policy(p: &TopicLogPolicy, partitions: i32, key: &'static str, topic: &str) -> Result<(), InvalidConfig> {
    let at = if topic.is_empty() { String::new() } else { format!("topic {topic:?}: ") };
    if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&p.segment_bytes) {
        return Err(invalid(
            key,
            format!("{at}segment_bytes must be between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES}"),
        ));
    }
    if p.segment_ms == 0 {
        return Err(invalid(key, format!("{at}segment_ms must be at least 1")));
    }
    // Active segments are never deleted: a budget they alone can fill would refuse appends
    // even when every record was committed.
    let floor = 2 * u64::try_from(partitions.max(1)).unwrap_or(1) * p.segment_bytes;
    if p.max_disk_bytes != 0 && p.max_disk_bytes < floor {
        return Err(invalid(
            key,
            format!("{at}max_disk_bytes must be 0 (no budget) or at least 2 x partitions x segment_bytes = {floor}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_overrides_apply() {
        let mut c = EmbeddedLogConfig::default();
        assert_eq!(c.validate(4), Ok(()));
        c.topics.insert("events-input".into(), TopicLogOverrides { retention_ms: Some(5), ..Default::default() });
        assert_eq!(c.policy("events-input").retention_ms, 5);
        assert_eq!(c.policy("other").retention_ms, c.retention_ms);
        assert_eq!(c.validate(4), Ok(()));
    }

    #[test]
    fn nonsense_is_rejected_by_key() {
        let key = |c: &EmbeddedLogConfig| c.validate(4).map_err(|e| e.key);
        let c = EmbeddedLogConfig { segment_bytes: 10, ..Default::default() };
        assert_eq!(key(&c), Err("log.embedded.segment_bytes"));
        let c = EmbeddedLogConfig { journal_bytes: MIN_JOURNAL_BYTES - 1, ..Default::default() };
        assert_eq!(key(&c), Err("log.embedded.journal_bytes"));
        let c = EmbeddedLogConfig { max_disk_bytes: 1 << 20, ..Default::default() };
        assert_eq!(key(&c), Err("log.embedded.segment_bytes"));
        let c = EmbeddedLogConfig { retention_check_ms: 0, ..Default::default() };
        assert_eq!(key(&c), Err("log.embedded.retention_check_ms"));
        let mut c = EmbeddedLogConfig::default();
        c.topics.insert("t".into(), TopicLogOverrides { segment_ms: Some(0), ..Default::default() });
        assert_eq!(key(&c), Err("log.embedded.topics"));
        let mut c = EmbeddedLogConfig::default();
        c.topics.insert("a/b".into(), TopicLogOverrides { segment_ms: Some(1), ..Default::default() });
        assert_eq!(key(&c), Err("log.embedded.topics"));
    }
}
