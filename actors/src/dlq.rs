//! Dead letters after the fact: an indexer that records every dead letter in the store,
//! and the admin operations on that index (list, show, replay, purge).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::breaker::Breaker;
use crate::consumer::{KeyHandler, dlq_header, park_header};
use crate::log::{Header, OutgoingRecord, Producer, Record};
use crate::retry::HandlerError;
use crate::store::Store;
use crate::store::dead_letter::{self, Column, Entity};

/// Set on replayed records; a record replayed `dlq.max_replays` times is not replayed again.
pub const REPLAY_COUNT_HEADER: &str = "conveyor.replay_count";

fn header_str<'a>(record: &'a Record, name: &str) -> Option<&'a str> {
    record.header(name).and_then(|v| std::str::from_utf8(v).ok())
}

fn header_num<T: std::str::FromStr>(record: &Record, name: &str) -> Option<T> {
    header_str(record, name).and_then(|v| v.parse().ok())
}

/// Headers as stored: text when UTF-8, else base64 under `value_base64`.
pub(crate) fn headers_json(headers: &[Header]) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    headers
        .iter()
        .filter(|h| !h.name.starts_with(dlq_header::PREFIX))
        .map(|h| match std::str::from_utf8(&h.value) {
            Ok(text) => serde_json::json!({"name": h.name, "value": text}),
            Err(_) => serde_json::json!({"name": h.name, "value_base64": b64.encode(&h.value)}),
        })
        .collect()
}

pub(crate) fn headers_from_json(value: &serde_json::Value) -> Vec<Header> {
    let b64 = base64::engine::general_purpose::STANDARD;
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|h| {
                    let name = h["name"].as_str()?.to_string();
                    let value = match (h["value"].as_str(), h["value_base64"].as_str()) {
                        (Some(text), _) => text.as_bytes().to_vec(),
                        (None, Some(encoded)) => b64.decode(encoded).ok()?,
                        _ => return None,
                    };
                    Some(Header { name, value })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Consumes a dead-letter topic into `dead_letters`; indexing a record twice is a no-op.
pub struct DeadLetterIndexer {
    pub store: Store,
}

#[async_trait]
impl KeyHandler for DeadLetterIndexer {
    fn name(&self) -> &'static str {
        "dead-letter-index"
    }

    fn breakers(&self) -> Vec<Arc<Breaker>> {
        vec![self.store.breaker().clone()]
    }

    /// A drill that fails a key still wants that key's dead letters indexed.
    fn fault_injectable(&self) -> bool {
        false
    }

    async fn handle(&self, _key: &str, records: &[Record]) -> Result<(), HandlerError> {
        for record in records {
            let row = dead_letter::ActiveModel {
                dlq_topic: Set(record.tp.topic.clone()),
                dlq_partition: Set(record.tp.partition),
                dlq_offset: Set(record.offset),
                source_topic: Set(header_str(record, dlq_header::SOURCE_TOPIC).unwrap_or("unknown").to_string()),
                source_partition: Set(header_num(record, dlq_header::SOURCE_PARTITION).unwrap_or(-1)),
                source_offset: Set(header_num(record, dlq_header::SOURCE_OFFSET).unwrap_or(-1)),
                key: Set(record.key.clone()),
                payload: Set(record.payload.to_vec()),
                headers: Set(headers_json(&record.headers)),
                error_class: Set(header_str(record, dlq_header::ERROR_CLASS).unwrap_or("unknown").to_string()),
                error: Set(header_str(record, dlq_header::ERROR).unwrap_or_default().to_string()),
                attempts: Set(header_num(record, dlq_header::ATTEMPTS).unwrap_or(0)),
                first_failure_ms: Set(header_num(record, dlq_header::FIRST_FAILURE_MS).unwrap_or(record.timestamp_ms)),
                last_failure_ms: Set(header_num(record, dlq_header::LAST_FAILURE_MS).unwrap_or(record.timestamp_ms)),
                replay_count: Set(header_num(record, REPLAY_COUNT_HEADER).unwrap_or(0)),
                replayed_at: Set(None),
                created_at: Set(chrono::Utc::now()),
                ..Default::default()
            };
            let conflict = OnConflict::columns([Column::DlqTopic, Column::DlqPartition, Column::DlqOffset])
                .do_nothing()
                .to_owned();
            let insert = Entity::insert(row).on_conflict(conflict).exec_without_returning(self.store.connection());
            self.store.guarded("index_dead_letter", insert).await.map_err(crate::store::classify)?;
        }
        Ok(())
    }
}

/// Which dead letters an admin operation applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DeadLetterFilter {
    pub source_topic: Option<String>,
    pub error_class: Option<String>,
    /// Last failure at or after this time (milliseconds since the epoch).
    #[serde(deserialize_with = "crate::json::optional_integer")]
    pub since_ms: Option<i64>,
    /// Last failure before this time.
    #[serde(deserialize_with = "crate::json::optional_integer")]
    pub until_ms: Option<i64>,
    /// Only ids greater than this (paging).
    #[serde(deserialize_with = "crate::json::optional_integer")]
    pub after_id: Option<i64>,
    /// 1 to 1000 (default 100).
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(deserialize_with = "crate::json::optional_u32")]
    pub limit: Option<u32>,
}

impl DeadLetterFilter {
    fn condition(&self) -> Condition {
        let mut c = Condition::all();
        if let Some(t) = &self.source_topic {
            c = c.add(Column::SourceTopic.eq(t.clone()));
        }
        if let Some(e) = &self.error_class {
            c = c.add(Column::ErrorClass.eq(e.clone()));
        }
        if let Some(s) = self.since_ms {
            c = c.add(Column::LastFailureMs.gte(s));
        }
        if let Some(u) = self.until_ms {
            c = c.add(Column::LastFailureMs.lt(u));
        }
        if let Some(a) = self.after_id {
            c = c.add(Column::Id.gt(a));
        }
        c
    }

    /// The filter's source topic, error class and time range, for ids in `(after, up_to]`
    /// (its own paging fields are ignored).
    fn range(&self, after: i64, up_to: i64) -> Condition {
        let unpaged = DeadLetterFilter { after_id: None, limit: None, ..self.clone() };
        unpaged.condition().add(Column::Id.gt(after)).add(Column::Id.lte(up_to))
    }
}

/// A dead letter as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    pub id: i64,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub key: Option<String>,
    pub error_class: String,
    pub error: String,
    pub attempts: i32,
    pub first_failure_ms: i64,
    pub last_failure_ms: i64,
    pub replay_count: i32,
    pub replayed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Only in single views: the payload as JSON when it is JSON, else `payload_base64`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<serde_json::Value>,
}

impl DeadLetterView {
    fn summary(m: &dead_letter::Model) -> Self {
        DeadLetterView {
            id: m.id,
            source_topic: m.source_topic.clone(),
            source_partition: m.source_partition,
            source_offset: m.source_offset,
            key: m.key.clone(),
            error_class: m.error_class.clone(),
            error: m.error.clone(),
            attempts: m.attempts,
            first_failure_ms: m.first_failure_ms,
            last_failure_ms: m.last_failure_ms,
            replay_count: m.replay_count,
            replayed_at: m.replayed_at,
            payload: None,
            payload_base64: None,
            headers: None,
        }
    }

    fn full(m: &dead_letter::Model) -> Self {
        let mut view = Self::summary(m);
        match serde_json::from_slice::<serde_json::Value>(&m.payload) {
            Ok(json) => view.payload = Some(json),
            Err(_) => view.payload_base64 = Some(base64::engine::general_purpose::STANDARD.encode(&m.payload)),
        }
        view.headers = Some(m.headers.clone());
        view
    }
}

/// What replaying one dead letter did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReplayOutcome {
    Replayed { id: i64, topic: String, partition: i32, offset: i64, replay_count: i32 },
    TooManyReplays { id: i64, replay_count: i32 },
    NotFound { id: i64 },
}

/// Admin operations over the dead-letter index.
#[derive(Clone)]
pub struct DeadLetterAdmin {
    pub store: Store,
    pub producer: Arc<dyn Producer>,
    pub max_replays: u32,
    pub timeout: Duration,
}

const DEFAULT_LIMIT: u64 = 100;
const MAX_LIMIT: u64 = 1_000;

impl DeadLetterAdmin {
    async fn find(&self, filter: &DeadLetterFilter) -> Result<Vec<dead_letter::Model>, Error> {
        let limit = Ord::min(filter.limit.map_or(DEFAULT_LIMIT, u64::from), MAX_LIMIT);
        let query = Entity::find().filter(filter.condition()).order_by_asc(Column::Id).limit(limit);
        self.store.guarded("list_dead_letters", query.all(self.store.connection())).await
    }

    pub async fn list(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetterView>, Error> {
        Ok(self.find(filter).await?.iter().map(DeadLetterView::summary).collect())
    }

    pub async fn show(&self, id: i64) -> Result<Option<DeadLetterView>, Error> {
        let found = self.store.guarded("get_dead_letter", Entity::find_by_id(id).one(self.store.connection())).await?;
        Ok(found.as_ref().map(DeadLetterView::full))
    }

    /// Produces the dead letter back to its source topic with its key, payload and original
    /// headers, plus the replay count; refused once `max_replays` is reached.
    pub async fn replay(&self, id: i64) -> Result<ReplayOutcome, Error> {
        let found = self.store.guarded("get_dead_letter", Entity::find_by_id(id).one(self.store.connection())).await?;
        let Some(row) = found else { return Ok(ReplayOutcome::NotFound { id }) };
        self.replay_row(row).await
    }

    pub(crate) async fn replay_row(&self, row: dead_letter::Model) -> Result<ReplayOutcome, Error> {
        let (id, topic) = (row.id, row.source_topic.clone());
        let (record, count) = match self.prepare(row) {
            Ok(prepared) => prepared,
            Err(outcome) => return Ok(outcome),
        };
        let ack = self.producer.send(record, self.timeout).await?;
        self.mark_replayed(&[id]).await?;
        Self::count_replayed(&topic, 1);
        tracing::info!(id, topic = %topic, replay_count = count, "dead letter replayed");
        Ok(ReplayOutcome::Replayed { id, topic, partition: ack.partition, offset: ack.offset, replay_count: count })
    }

    /// The record that replays `row` (its key, payload and original headers plus the replay
    /// count) and that count; `TooManyReplays` once `max_replays` is reached.
    pub(crate) fn prepare(&self, row: dead_letter::Model) -> Result<(OutgoingRecord, i32), ReplayOutcome> {
        if row.replay_count >= self.max_replays as i32 {
            return Err(ReplayOutcome::TooManyReplays { id: row.id, replay_count: row.replay_count });
        }
        let count = row.replay_count + 1;
        let mut headers = headers_from_json(&row.headers);
        let replay_headers =
            [REPLAY_COUNT_HEADER, park_header::REPLAY_SOURCE_PARTITION, park_header::REPLAY_SOURCE_OFFSET];
        headers.retain(|h| !replay_headers.contains(&h.name.as_str()));
        headers.push(Header { name: REPLAY_COUNT_HEADER.into(), value: count.to_string().into_bytes() });
        // Which record it replays: a parked key is released by the replay of its own dead letter.
        let source_partition = row.source_partition.to_string().into_bytes();
        headers.push(Header { name: park_header::REPLAY_SOURCE_PARTITION.into(), value: source_partition });
        let source_offset = row.source_offset.to_string().into_bytes();
        headers.push(Header { name: park_header::REPLAY_SOURCE_OFFSET.into(), value: source_offset });
        let record =
            OutgoingRecord { topic: row.source_topic, key: row.key, payload: bytes::Bytes::from(row.payload), headers };
        Ok((record, count))
    }

    /// Counts one more replay of each of `ids` (one statement) and stamps `replayed_at`.
    pub(crate) async fn mark_replayed(&self, ids: &[i64]) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let update = Entity::update_many()
            .col_expr(Column::ReplayCount, sea_orm::sea_query::ExprTrait::add(Expr::col(Column::ReplayCount), 1))
            .col_expr(Column::ReplayedAt, Expr::value(chrono::Utc::now()))
            .filter(Column::Id.is_in(ids.iter().copied()))
            .exec(self.store.connection());
        self.store.guarded("mark_replayed", update).await?;
        Ok(())
    }

    /// Counts a replay sent to `topic` (`conveyor.dlq.records.replayed`).
    pub(crate) fn count_replayed(topic: &str, n: u64) {
        crate::metrics::metrics()
            .dead_letters_replayed
            .add(n, &[crate::metrics::kv(crate::metrics::TOPIC, topic.to_string())]);
    }

    /// The newest dead letter of each of the source records `(topic, partition, offset)`.
    pub async fn newest_of(
        &self,
        sources: &[(String, i32, i64)],
    ) -> Result<std::collections::HashMap<(String, i32, i64), dead_letter::Model>, Error> {
        if sources.is_empty() {
            return Ok(Default::default());
        }
        let mut any = Condition::any();
        for (topic, partition, offset) in sources {
            any = any.add(
                Condition::all()
                    .add(Column::SourceTopic.eq(topic.clone()))
                    .add(Column::SourcePartition.eq(*partition))
                    .add(Column::SourceOffset.eq(*offset)),
            );
        }
        let query = Entity::find().filter(any).order_by_asc(Column::Id).all(self.store.connection());
        let rows = self.store.guarded("find_dead_letters", query).await?;
        // In id order, so the newest of each source wins.
        Ok(rows.into_iter().map(|m| ((m.source_topic.clone(), m.source_partition, m.source_offset), m)).collect())
    }

    /// The newest dead-letter id (0 with none).
    pub async fn newest_id(&self) -> Result<i64, Error> {
        let query = Entity::find().select_only().column_as(Column::Id.max(), "m").into_tuple::<Option<i64>>();
        let found = self.store.guarded("newest_dead_letter", query.one(self.store.connection())).await?;
        Ok(found.flatten().unwrap_or(0))
    }

    /// Dead letters matching `filter` (paging ignored) with an id in `(after, up_to]`.
    pub async fn count_between(&self, filter: &DeadLetterFilter, after: i64, up_to: i64) -> Result<u64, Error> {
        use sea_orm::PaginatorTrait;
        let query = Entity::find().filter(filter.range(after, up_to)).count(self.store.connection());
        self.store.guarded("count_dead_letters", query).await
    }

    /// Of the dead letters matching `filter` up to id `up_to`, those replayed `max_replays`
    /// times already (a replay would skip them).
    pub async fn count_exhausted(&self, filter: &DeadLetterFilter, up_to: i64) -> Result<u64, Error> {
        use sea_orm::PaginatorTrait;
        let exhausted = filter.range(0, up_to).add(Column::ReplayCount.gte(self.max_replays as i32));
        let query = Entity::find().filter(exhausted).count(self.store.connection());
        self.store.guarded("count_dead_letters", query).await
    }

    /// Up to `limit` dead letters matching `filter` (paging ignored) with an id in
    /// `(after, up_to]`, in id order: a stable page whatever is indexed meanwhile.
    pub async fn page(
        &self,
        filter: &DeadLetterFilter,
        after: i64,
        up_to: i64,
        limit: u64,
    ) -> Result<Vec<dead_letter::Model>, Error> {
        let query = Entity::find().filter(filter.range(after, up_to)).order_by_asc(Column::Id).limit(limit);
        self.store.guarded("page_dead_letters", query.all(self.store.connection())).await
    }

    /// Indexed dead letters per error class.
    pub async fn counts(&self) -> Result<std::collections::BTreeMap<String, u64>, Error> {
        use sea_orm::QuerySelect;
        let query = Entity::find()
            .select_only()
            .column(Column::ErrorClass)
            .column_as(Column::Id.count(), "n")
            .group_by(Column::ErrorClass)
            .into_tuple::<(String, i64)>()
            .all(self.store.connection());
        let rows = self.store.guarded("count_dead_letters", query).await?;
        Ok(rows.into_iter().map(|(class, n)| (class, n.max(0) as u64)).collect())
    }

    /// Replays every dead letter matching `filter`, in id order, when they are at most
    /// `limit` (or the filter's own limit); a larger set is refused with
    /// [`Error::InvalidInput`] (replay jobs handle those), never cut short silently.
    pub async fn replay_matching(&self, filter: &DeadLetterFilter, limit: u32) -> Result<Vec<ReplayOutcome>, Error> {
        let limit = filter.limit.map_or(limit, |l| l.min(limit));
        let probe = DeadLetterFilter { limit: Some(limit.saturating_add(1)), ..filter.clone() };
        let rows = self.find(&probe).await?;
        if rows.len() > limit as usize {
            return Err(Error::InvalidInput {
                fields: vec![crate::error::FieldError::new(
                    "filter",
                    format!(
                        "matches more than {limit} dead letters; replay them with a replay job (POST /admin/replays)"
                    ),
                )],
            });
        }
        let mut out = Vec::new();
        for row in rows {
            out.push(self.replay_row(row).await?);
        }
        Ok(out)
    }

    /// Removes matching entries from the index (the topic's own retention governs the records).
    pub async fn purge(&self, filter: &DeadLetterFilter) -> Result<u64, Error> {
        let ids: Vec<i64> = self.find(filter).await?.iter().map(|m| m.id).collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let delete = Entity::delete_many().filter(Column::Id.is_in(ids)).exec(self.store.connection());
        Ok(self.store.guarded("purge_dead_letters", delete).await?.rows_affected)
    }

    pub async fn delete(&self, id: i64) -> Result<bool, Error> {
        let delete = Entity::delete_by_id(id).exec(self.store.connection());
        Ok(self.store.guarded("delete_dead_letter", delete).await?.rows_affected > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_without_dlq_metadata() {
        let headers = vec![
            Header { name: "traceparent".into(), value: b"00-abc-def-01".to_vec() },
            Header { name: "bin".into(), value: vec![0xff, 0x00] },
            Header { name: dlq_header::ERROR.into(), value: b"boom".to_vec() },
        ];
        let json = headers_json(&headers);
        assert_eq!(json.as_array().map(Vec::len), Some(2));
        assert_eq!(headers_from_json(&json), headers[..2].to_vec());
    }
}
