//! The `resources` table.

use conveyor_actors::store::schema::prelude::*;

/// The device pipeline's migrations, in order (the engine lists every crate's).
pub fn migrations() -> Vec<Box<dyn Migration>> {
    vec![Box::new(CreateResources), Box::new(AddLastPartition)]
}

/// The runtime's migrations and this crate's: for a store of its own in tests.
pub fn with_runtime() -> Vec<Box<dyn Migration>> {
    let mut all = conveyor_actors::store::migrations::migrations();
    all.extend(migrations());
    all
}

/// The table itself (its own module: each migration names the table with its own `Resources`).
mod create {
    use conveyor_actors::store::schema::prelude::*;

    pub struct CreateResources;

    // Named explicitly: DeriveMigrationName would use the file name, shared by every migration here.
    impl MigrationName for CreateResources {
        fn name(&self) -> &str {
            "m20261123_000001_create_resources"
        }
    }

    #[derive(DeriveIden)]
    enum Resources {
        Table,
        Id,
        Value,
        LastOffset,
        UpdatedAt,
    }

    #[async_trait::async_trait]
    impl Migration for CreateResources {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .create_table(
                    Table::create()
                        .table(Resources::Table)
                        .if_not_exists()
                        .col(ColumnDef::new(Resources::Id).string().not_null().primary_key())
                        .col(ColumnDef::new(Resources::Value).json_binary().not_null())
                        .col(ColumnDef::new(Resources::LastOffset).big_integer().not_null())
                        .col(ColumnDef::new(Resources::UpdatedAt).timestamp_with_time_zone().not_null())
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager.drop_table(Table::drop().table(Resources::Table).to_owned()).await
        }
    }
}

use create::CreateResources;

/// `resources.last_partition`: the stale-write guard compares offsets only within the
/// partition they come from. Rows written before have none (NULL), and their next write
/// applies whatever its offset.
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
impl Migration for AddLastPartition {
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
