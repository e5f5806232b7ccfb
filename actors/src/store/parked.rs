//! The parked keys and their held records (`processing.on_dead_letter = "park"`): what the
//! partition actors write and the admin API reads.

pub mod key;
pub mod record;

use std::collections::HashMap;

use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use crate::Error;
use crate::dlq::{headers_from_json, headers_json};
use crate::log::{Record, TopicPartition};
use crate::store::Store;

/// A parked key as its partition actor loads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedKey {
    pub key: String,
    pub origin_offset: i64,
    /// Records held behind it.
    pub held: u64,
    /// Set once released: the offset of the record that released it.
    pub release_offset: Option<i64>,
}

/// Why a key was parked (its dead letter's error, for the operator).
pub struct ParkCause<'a> {
    pub handler: &'a str,
    pub origin_offset: i64,
    pub error_class: &'a str,
    pub error: &'a str,
}

/// Queries over `parked_keys` and `parked_records`.
#[derive(Clone)]
pub struct ParkedStore {
    pub store: Store,
}

impl ParkedStore {
    /// The keys parked (or released, not yet forgotten) on one partition, with their held counts.
    pub async fn load(&self, tp: &TopicPartition) -> Result<Vec<LoadedKey>, Error> {
        let db = self.store.connection();
        let keys = key::Entity::find()
            .filter(key::Column::Topic.eq(tp.topic.clone()))
            .filter(key::Column::Partition.eq(tp.partition))
            .all(db);
        let keys = self.store.guarded("load_parked_keys", keys).await?;
        let counts = record::Entity::find()
            .select_only()
            .column(record::Column::Key)
            .column_as(record::Column::Id.count(), "n")
            .filter(record::Column::Topic.eq(tp.topic.clone()))
            .filter(record::Column::Partition.eq(tp.partition))
            .group_by(record::Column::Key)
            .into_tuple::<(String, i64)>()
            .all(db);
        let counts: HashMap<String, i64> =
            self.store.guarded("count_parked_records", counts).await?.into_iter().collect();
        Ok(keys
            .into_iter()
            .map(|k| LoadedKey {
                held: counts.get(&k.key).copied().unwrap_or(0).max(0) as u64,
                key: k.key,
                origin_offset: k.origin_offset,
                release_offset: k.released_at.and(k.release_offset),
            })
            .collect())
    }

    /// Parks `key` behind the record at `cause.origin_offset` (again, if it was parked or
    /// released before: the row is replaced).
    pub async fn park(&self, tp: &TopicPartition, key_: &str, cause: &ParkCause<'_>) -> Result<(), Error> {
        let row = key::ActiveModel {
            topic: Set(tp.topic.clone()),
            partition: Set(tp.partition),
            key: Set(key_.to_string()),
            handler: Set(cause.handler.to_string()),
            origin_offset: Set(cause.origin_offset),
            error_class: Set(cause.error_class.to_string()),
            error: Set(cause.error.to_string()),
            parked_at: Set(chrono::Utc::now()),
            released_at: Set(None),
            release_offset: Set(None),
            ..Default::default()
        };
        use key::Column as C;
        let conflict = OnConflict::columns([C::Topic, C::Key])
            .update_columns([
                C::Partition,
                C::Handler,
                C::OriginOffset,
                C::ErrorClass,
                C::Error,
                C::ParkedAt,
                C::ReleasedAt,
                C::ReleaseOffset,
            ])
            .to_owned();
        let insert = key::Entity::insert(row).on_conflict(conflict).exec_without_returning(self.store.connection());
        self.store.guarded("park_key", insert).await.map(drop)
    }

    /// Holds `record` behind its parked key; `false` if it was held already (delivered again).
    pub async fn append(&self, record: &Record) -> Result<bool, Error> {
        let row = record::ActiveModel {
            topic: Set(record.tp.topic.clone()),
            partition: Set(record.tp.partition),
            key: Set(record.key.clone().unwrap_or_default()),
            offset: Set(record.offset),
            payload: Set(record.payload.to_vec()),
            headers: Set(headers_json(&record.headers)),
            timestamp_ms: Set(record.timestamp_ms),
            parked_at: Set(chrono::Utc::now()),
            ..Default::default()
        };
        use record::Column as C;
        let conflict = OnConflict::columns([C::Topic, C::Partition, C::Offset]).do_nothing().to_owned();
        let insert = record::Entity::insert(row).on_conflict(conflict).exec_without_returning(self.store.connection());
        // A conflict is an answer, not a failure of the store (its breaker must not count it).
        let insert = async {
            match insert.await {
                Err(sea_orm::DbErr::RecordNotInserted) => Ok(0),
                other => other,
            }
        };
        Ok(self.store.guarded("park_record", insert).await? > 0)
    }

    /// Up to `limit` held records of `key` in the order they arrived, as records with their
    /// own offsets, each with its row id.
    pub async fn page(&self, tp: &TopicPartition, key_: &str, limit: u64) -> Result<Vec<(i64, Record)>, Error> {
        use record::Column as C;
        let query = record::Entity::find()
            .filter(C::Topic.eq(tp.topic.clone()))
            .filter(C::Key.eq(key_.to_string()))
            .order_by_asc(C::Id)
            .limit(limit)
            .all(self.store.connection());
        let rows = self.store.guarded("page_parked_records", query).await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let record = Record {
                    tp: TopicPartition::new(r.topic, r.partition),
                    offset: r.offset,
                    key: Some(r.key),
                    payload: bytes::Bytes::from(r.payload),
                    headers: headers_from_json(&r.headers),
                    timestamp_ms: r.timestamp_ms,
                };
                (r.id, record)
            })
            .collect())
    }

    /// Removes held records (applied, or dead-lettered again).
    pub async fn delete_records(&self, ids: &[i64]) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let delete = record::Entity::delete_many()
            .filter(record::Column::Id.is_in(ids.iter().copied()))
            .exec(self.store.connection());
        self.store.guarded("release_parked_records", delete).await.map(drop)
    }

    /// Marks `key` released by the record at `release_offset` (its row stays until that
    /// record is committed, see [`ParkedStore::forget`]).
    pub async fn released(&self, topic: &str, key_: &str, release_offset: i64) -> Result<(), Error> {
        use key::Column as C;
        let update = key::Entity::update_many()
            .col_expr(C::ReleasedAt, sea_orm::sea_query::Expr::value(chrono::Utc::now()))
            .col_expr(C::ReleaseOffset, sea_orm::sea_query::Expr::value(release_offset))
            .filter(C::Topic.eq(topic.to_string()))
            .filter(C::Key.eq(key_.to_string()))
            .exec(self.store.connection());
        self.store.guarded("release_parked_key", update).await.map(drop)
    }

    /// Deletes the row of a key released by the record at `release_offset`, now committed.
    pub async fn forget(&self, topic: &str, key_: &str, release_offset: i64) -> Result<(), Error> {
        use key::Column as C;
        let delete = key::Entity::delete_many()
            .filter(C::Topic.eq(topic.to_string()))
            .filter(C::Key.eq(key_.to_string()))
            .filter(C::ReleaseOffset.eq(release_offset))
            .filter(C::ReleasedAt.is_not_null())
            .exec(self.store.connection());
        self.store.guarded("forget_parked_key", delete).await.map(drop)
    }

    /// Parked (not released) keys, by id; `topic` filters; paged by `after_id`.
    pub async fn list(&self, topic: Option<&str>, after_id: i64, limit: u64) -> Result<Vec<key::Model>, Error> {
        use key::Column as C;
        let mut cond = Condition::all().add(C::ReleasedAt.is_null()).add(C::Id.gt(after_id));
        if let Some(t) = topic {
            cond = cond.add(C::Topic.eq(t.to_string()));
        }
        let query = key::Entity::find().filter(cond).order_by_asc(C::Id).limit(limit).all(self.store.connection());
        self.store.guarded("list_parked_keys", query).await
    }

    /// One parked (not released) key.
    pub async fn find(&self, topic: &str, key_: &str) -> Result<Option<key::Model>, Error> {
        use key::Column as C;
        let query = key::Entity::find()
            .filter(C::Topic.eq(topic.to_string()))
            .filter(C::Key.eq(key_.to_string()))
            .filter(C::ReleasedAt.is_null())
            .one(self.store.connection());
        self.store.guarded("get_parked_key", query).await
    }

    /// How many records each of `keys` of `topic` holds.
    pub async fn held(&self, topic: &str, keys: &[String]) -> Result<HashMap<String, u64>, Error> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        use record::Column as C;
        let query = record::Entity::find()
            .select_only()
            .column(C::Key)
            .column_as(C::Id.count(), "n")
            .filter(C::Topic.eq(topic.to_string()))
            .filter(C::Key.is_in(keys.iter().cloned()))
            .group_by(C::Key)
            .into_tuple::<(String, i64)>()
            .all(self.store.connection());
        let rows = self.store.guarded("count_parked_records", query).await?;
        Ok(rows.into_iter().map(|(k, n)| (k, n.max(0) as u64)).collect())
    }
}
