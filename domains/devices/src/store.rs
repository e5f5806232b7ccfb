//! The device pipeline's table, `resources`, on the runtime's store handle.

use std::collections::HashSet;
use std::ops::Deref;

use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict};
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, Statement, Value};

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

/// One device's new state, as [`DeviceStore::upsert_resources`] writes it.
#[derive(Debug, Clone)]
pub struct ResourceRow {
    pub id: String,
    /// The payload as JSON text: stored and cached as it is, never parsed again.
    pub value: Box<serde_json::value::RawValue>,
    pub partition: i32,
    pub offset: i64,
}

/// The guard of [`DeviceStore::upsert_resource`], in SQL: the stored row is replaced only
/// by a later offset of its partition, or by any offset of another partition.
const NEWER: &str = "resources.last_partition IS NULL OR resources.last_partition <> excluded.last_partition \
     OR resources.last_offset < excluded.last_offset";

const SET_ALL: &str = "ON CONFLICT (id) DO UPDATE SET value = excluded.value, last_offset = excluded.last_offset, \
     last_partition = excluded.last_partition, updated_at = excluded.updated_at";

/// SQLite's limit is 32,766 bound parameters; five per row, well inside it.
const SQLITE_MAX_ROWS: usize = 1_000;

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

    /// [`upsert_resource`](Self::upsert_resource) for many devices in one statement per
    /// round: PostgreSQL `INSERT … SELECT FROM UNNEST`, SQLite multi-row `VALUES`, the
    /// guard inside the statement either way. One outcome per row, in order. A device that
    /// appears twice goes into a later round, so its rows apply in the order given.
    pub async fn upsert_resources(&self, rows: &[ResourceRow]) -> Result<Vec<Upsert>, Error> {
        let mut outcomes = vec![Upsert::Stale; rows.len()];
        let mut left: Vec<usize> = (0..rows.len()).collect();
        while !left.is_empty() {
            let mut seen = HashSet::new();
            let (round, later): (Vec<usize>, Vec<usize>) = left.iter().partition(|&&i| seen.insert(&rows[i].id));
            let max = if self.backend() == DbBackend::Sqlite { SQLITE_MAX_ROWS } else { usize::MAX };
            for chunk in round.chunks(max) {
                let chunk_rows: Vec<&ResourceRow> = chunk.iter().map(|&i| &rows[i]).collect();
                let written = self.upsert_round(&chunk_rows).await?;
                for &i in chunk {
                    if written.contains(rows[i].id.as_str()) {
                        outcomes[i] = Upsert::Written;
                    }
                }
            }
            left = later;
        }
        Ok(outcomes)
    }

    /// One statement for rows with distinct ids; answers the ids it wrote.
    async fn upsert_round(&self, rows: &[&ResourceRow]) -> Result<HashSet<String>, Error> {
        let now = chrono::Utc::now();
        let stmt = match self.backend() {
            DbBackend::Postgres => Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!(
                    "INSERT INTO resources (id, value, last_offset, last_partition, updated_at) \
                     SELECT u.id, u.value::jsonb, u.last_offset, u.last_partition, $5 \
                     FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int4[]) AS u(id, value, last_offset, last_partition) \
                     {SET_ALL} WHERE {NEWER} RETURNING id"
                ),
                [
                    rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>().into(),
                    rows.iter().map(|r| r.value.get().to_owned()).collect::<Vec<_>>().into(),
                    rows.iter().map(|r| r.offset).collect::<Vec<_>>().into(),
                    rows.iter().map(|r| r.partition).collect::<Vec<_>>().into(),
                    Value::from(now),
                ],
            ),
            backend => {
                let mut values = Vec::with_capacity(rows.len() * 5);
                let mut tuples = Vec::with_capacity(rows.len());
                for r in rows {
                    tuples.push("(?, ?, ?, ?, ?)");
                    values.extend([
                        r.id.clone().into(),
                        r.value.get().to_owned().into(),
                        r.offset.into(),
                        r.partition.into(),
                        Value::from(now),
                    ]);
                }
                Statement::from_sql_and_values(
                    backend,
                    format!(
                        "INSERT INTO resources (id, value, last_offset, last_partition, updated_at) VALUES {} \
                         {SET_ALL} WHERE {NEWER} RETURNING id",
                        tuples.join(", ")
                    ),
                    values,
                )
            }
        };
        let written = self.guarded("upsert_resources", self.connection().query_all_raw(stmt)).await?;
        written
            .iter()
            .map(|row| row.try_get_by_index::<String>(0))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::store("upsert_resources", e))
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
