//! `dead_letters`: an index of the dead-letter topics, for the admin API and CLI. Rows
//! are written by the dead-letter indexer (a consumer of the dead-letter topic), so the
//! topic stays the source of truth and the index is rebuilt by replaying it.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "dead_letters")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Where the dead letter itself lives (unique: indexing it twice is a no-op).
    pub dlq_topic: String,
    pub dlq_partition: i32,
    pub dlq_offset: i64,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    /// The original headers (without the `conveyor.dlq.*` ones), as `[{"name", "value"}]`.
    pub headers: Json,
    pub error_class: String,
    pub error: String,
    pub attempts: i32,
    pub first_failure_ms: i64,
    pub last_failure_ms: i64,
    pub replay_count: i32,
    pub replayed_at: Option<ChronoDateTimeUtc>,
    pub created_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
