//! `parked_records`: the records held behind a parked key, in arrival (id) order.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "parked_records")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub topic: String,
    pub partition: i32,
    pub key: String,
    /// The record's own source offset: it is handled with it when released.
    pub offset: i64,
    pub payload: Vec<u8>,
    /// As the dead-letter index stores headers: `[{"name", "value"}]` or `value_base64`.
    pub headers: Json,
    pub timestamp_ms: i64,
    pub parked_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
