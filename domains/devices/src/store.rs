//! The device pipeline's table, `resources`, on the runtime's store handle.

use std::ops::Deref;

use sea_orm::ActiveValue::Set;
use sea_orm::EntityTrait;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict};

use conveyor_actors::Error;
use conveyor_actors::store::Store;

use crate::resource;

/// How an upsert ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// The row was written.
    Written,
    /// The stored row is already at this offset of the same partition or newer (a
    /// redelivery or replay).
    Stale,
}

/// The store, with the device pipeline's queries; cheap to clone.
#[derive(Clone)]
pub struct DeviceStore(Store);

impl DeviceStore {
    pub fn new(store: Store) -> Self {
        DeviceStore(store)
    }

    /// Writes a device's resource unless the stored one comes from the same or a later
    /// offset of the same partition, so an older event never overwrites a newer one.
    ///
    /// Offsets of different partitions say nothing about order: a write from another
    /// partition (the topic gained partitions and the device moved, or a row from before
    /// partitions were recorded) always applies. One statement, so two writers never race
    /// between a read and a write.
    pub async fn upsert_resource(
        &self,
        id: &str,
        value: serde_json::Value,
        partition: i32,
        offset: i64,
    ) -> Result<Upsert, Error> {
        use resource::Column;
        let row = resource::ActiveModel {
            id: Set(id.to_string()),
            value: Set(value),
            last_offset: Set(offset),
            last_partition: Set(Some(partition)),
            updated_at: Set(chrono::Utc::now()),
        };
        let stored = |c: Column| Expr::col((resource::Entity, c));
        let incoming = |c: Column| Expr::col((Alias::new("excluded"), c));
        let newer = stored(Column::LastPartition)
            .is_null()
            .or(stored(Column::LastPartition).ne(incoming(Column::LastPartition)))
            .or(stored(Column::LastOffset).lt(incoming(Column::LastOffset)));
        let on_conflict = OnConflict::column(Column::Id)
            .update_columns([Column::Value, Column::LastOffset, Column::LastPartition, Column::UpdatedAt])
            .action_and_where(newer)
            .to_owned();
        let query = resource::Entity::insert(row).on_conflict(on_conflict).exec_without_returning(self.connection());
        let rows = self.guarded("upsert_resource", query).await?;
        Ok(if rows > 0 { Upsert::Written } else { Upsert::Stale })
    }

    pub async fn get_resource(&self, id: &str) -> Result<Option<resource::Model>, Error> {
        self.guarded("get_resource", resource::Entity::find_by_id(id.to_string()).one(self.connection())).await
    }
}

impl Deref for DeviceStore {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.0
    }
}
