//! Parked keys for the operator (`processing.on_dead_letter = "park"`): list them with their
//! dead letter, release one by replaying its dead letter, or by skipping it.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::Error;
use crate::consumer::park_header;
use crate::dlq::{DeadLetterAdmin, ReplayOutcome};
use crate::log::{Header, OutgoingRecord, Producer};
use crate::store::parked::{ParkedStore, key};

/// A parked key's dead letter, as the index has it (the newest, if it was dead-lettered again).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ParkedDeadLetter {
    pub id: i64,
    pub error_class: String,
    pub error: String,
    pub replay_count: i32,
}

/// One parked key.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ParkedKeyView {
    /// For paging (`after_id`).
    pub id: i64,
    pub topic: String,
    pub partition: i32,
    pub key: String,
    pub handler: String,
    pub parked_since: chrono::DateTime<chrono::Utc>,
    /// Records held behind the dead letter.
    pub parked_records: u64,
    /// The source offset of the dead-lettered record.
    pub origin_offset: i64,
    /// Null until the dead-letter index has caught up.
    pub dead_letter: Option<ParkedDeadLetter>,
}

/// What a skip did: the control record it wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Skipped {
    pub topic: String,
    pub key: String,
    pub partition: i32,
    pub offset: i64,
}

/// Admin operations over the parked keys.
#[derive(Clone)]
pub struct ParkedKeysAdmin {
    pub parked: ParkedStore,
    pub dead_letters: DeadLetterAdmin,
    pub producer: Arc<dyn Producer>,
    pub timeout: Duration,
}

impl ParkedKeysAdmin {
    /// Parked keys by id, after `after_id`, at most `limit`.
    pub async fn list(&self, topic: Option<&str>, after_id: i64, limit: u64) -> Result<Vec<ParkedKeyView>, Error> {
        let rows = self.parked.list(topic, after_id, limit).await?;
        let sources: Vec<(String, i32, i64)> =
            rows.iter().map(|r| (r.topic.clone(), r.partition, r.origin_offset)).collect();
        let letters = self.dead_letters.newest_of(&sources).await?;
        let mut held = std::collections::HashMap::new();
        for r in &rows {
            if !held.contains_key(&r.topic) {
                let keys: Vec<String> = rows.iter().filter(|k| k.topic == r.topic).map(|k| k.key.clone()).collect();
                held.insert(r.topic.clone(), self.parked.held(&r.topic, &keys).await?);
            }
        }
        Ok(rows
            .into_iter()
            .map(|r| {
                let letter = letters.get(&(r.topic.clone(), r.partition, r.origin_offset));
                ParkedKeyView {
                    parked_records: held.get(&r.topic).and_then(|h| h.get(&r.key)).copied().unwrap_or(0),
                    dead_letter: letter.map(|m| ParkedDeadLetter {
                        id: m.id,
                        error_class: m.error_class.clone(),
                        error: m.error.clone(),
                        replay_count: m.replay_count,
                    }),
                    id: r.id,
                    topic: r.topic,
                    partition: r.partition,
                    key: r.key,
                    handler: r.handler,
                    parked_since: r.parked_at,
                    origin_offset: r.origin_offset,
                }
            })
            .collect())
    }

    async fn parked(&self, topic: &str, key: &str) -> Result<key::Model, Error> {
        self.parked.find(topic, key).await?.ok_or(Error::NotFound { what: "Parked key" })
    }

    /// Replays the parked key's dead letter (`dlq.max_replays` applies): once it is back on
    /// its partition, it is applied, then the held records in order.
    pub async fn replay(&self, topic: &str, key: &str) -> Result<ReplayOutcome, Error> {
        let parked = self.parked(topic, key).await?;
        let source = (parked.topic.clone(), parked.partition, parked.origin_offset);
        let letter = self.dead_letters.newest_of(std::slice::from_ref(&source)).await?.remove(&source);
        let Some(letter) = letter else {
            return Err(Error::Conflict {
                code: "dead_letter_not_indexed",
                message: format!(
                    "the dead letter of {topic}/{} offset {} is not indexed yet",
                    parked.partition, parked.origin_offset
                ),
            });
        };
        self.dead_letters.replay_row(letter).await
    }

    /// Releases the parked key without its dead letter: a control record on its partition
    /// releases the held records in order (the dead letter stays in the index).
    pub async fn skip(&self, topic: &str, key: &str) -> Result<Skipped, Error> {
        let parked = self.parked(topic, key).await?;
        let header = |name: &str, value: String| Header { name: name.into(), value: value.into_bytes() };
        let record = OutgoingRecord {
            topic: topic.to_string(),
            key: Some(key.to_string()),
            payload: bytes::Bytes::new(),
            headers: vec![
                header(park_header::CONTROL, park_header::SKIP.into()),
                header(park_header::REPLAY_SOURCE_PARTITION, parked.partition.to_string()),
                header(park_header::REPLAY_SOURCE_OFFSET, parked.origin_offset.to_string()),
            ],
        };
        let ack = self.producer.send(record, self.timeout).await?;
        tracing::info!(topic, key, origin = parked.origin_offset, "parked key skipped");
        Ok(Skipped { topic: topic.to_string(), key: key.to_string(), partition: ack.partition, offset: ack.offset })
    }
}
