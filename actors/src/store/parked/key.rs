//! `parked_keys`: one row per key held behind a dead letter (`processing.on_dead_letter =
//! "park"`). A released key keeps its row, stamped `released_at`, until the record that
//! released it is committed: a redelivery of that record then finds the release done.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "parked_keys")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub topic: String,
    pub partition: i32,
    pub key: String,
    pub handler: String,
    /// The source offset of the dead-lettered record the key is parked behind.
    pub origin_offset: i64,
    pub error_class: String,
    pub error: String,
    pub parked_at: ChronoDateTimeUtc,
    pub released_at: Option<ChronoDateTimeUtc>,
    /// The offset of the replay or skip record that released the key.
    pub release_offset: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
