//! `resources`: the latest state of each device, written only by its partition's actor.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "resources")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// The last event's payload, as JSON.
    pub value: Json,
    /// Log offset of the event that wrote `value`; guards against older writes.
    pub last_offset: i64,
    /// The partition `last_offset` is from: offsets compare only within one partition.
    /// `None` for rows written before it was recorded.
    pub last_partition: Option<i32>,
    pub updated_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use crate::store::{DeviceStore, ResourceRow, Upsert};
    use conveyor_actors::config::Config;

    /// SQLite in a temporary directory, and PostgreSQL in a fresh schema as well when
    /// `CONVEYOR_TEST_PG_URL` is set: the guard is one SQL statement per dialect.
    async fn stores(dir: &std::path::Path) -> Vec<(DeviceStore, Option<String>)> {
        let mut configs = vec![Config { data_dir: dir.to_path_buf(), ..Config::default() }];
        if let Ok(url) = std::env::var("CONVEYOR_TEST_PG_URL") {
            let mut pg = Config { data_dir: dir.to_path_buf(), ..Config::default() };
            pg.store.url = url;
            pg.store.schema = format!("unit{}", uuid::Uuid::new_v4().simple());
            configs.push(pg);
        }
        let mut stores = Vec::new();
        for config in configs {
            let store = DeviceStore::new(conveyor_actors::store::Store::connect(&config).await.unwrap());
            store.migrate(crate::migrations::with_runtime()).await.unwrap();
            let schema = (!config.store.schema.is_empty()).then_some(config.store.schema);
            stores.push((store, schema));
        }
        stores
    }

    async fn seq(store: &DeviceStore, id: &str) -> Option<(u64, Option<i32>, i64)> {
        let row = store.get_resource(id).await.unwrap()?;
        Some((row.value["seq"].as_u64()?, row.last_partition, row.last_offset))
    }

    #[tokio::test]
    async fn the_guard_compares_offsets_within_a_partition_only() {
        let dir = tempfile::tempdir().unwrap();
        for (store, schema) in stores(dir.path()).await {
            let up = |seq: u64, partition: i32, offset: i64| {
                let store = store.clone();
                async move { store.upsert_resource("d1", json!({"seq": seq}), partition, offset).await.unwrap() }
            };
            assert_eq!(up(1, 0, 10).await, Upsert::Written);
            // A redelivery, and an older record of the same partition: refused.
            assert_eq!(up(1, 0, 10).await, Upsert::Stale);
            assert_eq!(up(0, 0, 9).await, Upsert::Stale);
            assert_eq!(seq(&store, "d1").await, Some((1, Some(0), 10)));
            // The topic gained partitions and the device moved to one with lower offsets.
            assert_eq!(up(2, 3, 2).await, Upsert::Written, "a lower offset of another partition is not older");
            assert_eq!(seq(&store, "d1").await, Some((2, Some(3), 2)));
            assert_eq!(up(3, 3, 3).await, Upsert::Written, "the device keeps updating on its new partition");
            assert_eq!(up(2, 3, 2).await, Upsert::Stale, "and its new partition's order is guarded");
            assert_eq!(seq(&store, "d1").await, Some((3, Some(3), 3)));
            if let Some(schema) = schema {
                store.execute_raw(&format!("DROP SCHEMA \"{schema}\" CASCADE")).await.unwrap();
            }
        }
    }

    /// The multi-row statement keeps the single-row guard for every row, answers each row's
    /// outcome in order, and applies a device's repeated rows in the order given.
    #[tokio::test]
    async fn a_batch_guards_each_row_and_applies_repeats_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for (store, schema) in stores(dir.path()).await {
            let row = |id: &str, seq: u64, partition: i32, offset: i64| ResourceRow {
                id: id.into(),
                value: serde_json::value::to_raw_value(&json!({"seq": seq})).unwrap(),
                partition,
                offset,
            };
            assert_eq!(store.upsert_resource("old", json!({"seq": 5}), 0, 50).await.unwrap(), Upsert::Written);
            let batch = [
                row("a", 1, 0, 10),
                row("old", 4, 0, 40), // older than the stored row: refused
                row("b", 1, 1, 3),
                row("a", 2, 0, 11),  // the same device again: a later round, applied after seq 1
                row("a", 0, 0, 9),   // and an older one after that: refused
                row("old", 6, 2, 1), // another partition: applies
            ];
            let outcomes = store.upsert_resources(&batch).await.unwrap();
            use Upsert::{Stale, Written};
            assert_eq!(outcomes, [Written, Stale, Written, Written, Stale, Written]);
            assert_eq!(seq(&store, "a").await, Some((2, Some(0), 11)));
            assert_eq!(seq(&store, "b").await, Some((1, Some(1), 3)));
            assert_eq!(seq(&store, "old").await, Some((6, Some(2), 1)));
            // A replay changes nothing (rows of one partition; "old" moved to partition 2).
            let replay = [batch[0].clone(), batch[2].clone(), batch[3].clone(), batch[4].clone(), batch[5].clone()];
            let again = store.upsert_resources(&replay).await.unwrap();
            assert!(again.iter().all(|o| *o == Stale), "{again:?}");
            assert_eq!(store.upsert_resources(&[]).await.unwrap(), []);
            // Larger than SQLite's chunk: every row lands.
            let many: Vec<ResourceRow> = (0..2_500).map(|n| row(&format!("m{n}"), 1, 0, n)).collect();
            let outcomes = store.upsert_resources(&many).await.unwrap();
            assert_eq!(outcomes.iter().filter(|o| **o == Written).count(), 2_500);
            assert_eq!(seq(&store, "m2499").await, Some((1, Some(0), 2499)));
            if let Some(schema) = schema {
                store.execute_raw(&format!("DROP SCHEMA \"{schema}\" CASCADE")).await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn a_row_from_before_partitions_were_recorded_takes_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeviceStore::new(
            conveyor_actors::store::Store::connect(&Config { data_dir: dir.path().to_path_buf(), ..Config::default() })
                .await
                .unwrap(),
        );
        store.migrate(crate::migrations::with_runtime()).await.unwrap();
        // As the migration leaves an old row: no partition, and (say) a high offset that a
        // mis-keyed record left behind.
        store
            .execute_raw(
                "INSERT INTO resources (id, value, last_offset, updated_at) \
                 VALUES ('old', '{\"seq\": 1}', 1000, '2026-01-01T00:00:00Z')",
            )
            .await
            .unwrap();
        assert_eq!(seq(&store, "old").await, Some((1, None, 1000)));
        assert_eq!(store.upsert_resource("old", json!({"seq": 2}), 1, 5).await.unwrap(), Upsert::Written);
        assert_eq!(seq(&store, "old").await, Some((2, Some(1), 5)));
        assert_eq!(store.upsert_resource("old", json!({"seq": 1}), 1, 4).await.unwrap(), Upsert::Stale);
    }
}
