//! `[processing]`'s dead-letter policy: what happens to a key's later records once one of
//! its records is dead-lettered, for every topic and per topic by its logical name.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{InvalidConfig, invalid};

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
