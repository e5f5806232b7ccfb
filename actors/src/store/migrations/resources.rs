//! `resources.last_partition`: the stale-write guard compares offsets only within the
//! partition they come from. Rows written before have none (NULL), and their next write
//! applies whatever its offset.

use sea_orm_migration::prelude::*;

pub struct AddLastPartition;

impl MigrationName for AddLastPartition {
    fn name(&self) -> &str {
        "m20261202_000020_resources_last_partition"
    }
}

#[derive(DeriveIden)]
enum Resources {
    Table,
    LastPartition,
}

#[async_trait::async_trait]
impl MigrationTrait for AddLastPartition {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Resources::Table)
                    .add_column(ColumnDef::new(Resources::LastPartition).integer().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(Resources::Table).drop_column(Resources::LastPartition).to_owned())
            .await
    }
}
