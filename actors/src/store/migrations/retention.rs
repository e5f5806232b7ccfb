//! Indexes the retention actor's purge queries need, so that finding the next batch of
//! finished rows never scans a table (`crate::retention`).

use sea_orm_migration::prelude::*;

pub struct RetentionIndexes;

impl MigrationName for RetentionIndexes {
    fn name(&self) -> &str {
        "m20261202_000010_retention_indexes"
    }
}

/// `(index, table, columns)`.
const INDEXES: &[(&str, &str, &[&str])] = &[
    ("webhook_deliveries_finished", "webhook_deliveries", &["status", "updated_at"]),
    ("webhook_attempts_delivery", "webhook_attempts", &["delivery_id"]),
    ("notifications_received", "notifications", &["received_at"]),
    ("workflow_runs_finished", "workflow_runs", &["status", "finished_at"]),
    ("sagas_finished", "sagas", &["status", "updated_at"]),
    ("outbox_published", "outbox", &["status", "published_at"]),
    ("dead_letters_created", "dead_letters", &["created_at"]),
    ("refresh_tokens_expires_at", "refresh_tokens", &["expires_at"]),
];

#[async_trait::async_trait]
impl MigrationTrait for RetentionIndexes {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, cols) in INDEXES {
            let mut index = Index::create();
            index.name(*name).table(Alias::new(*table)).if_not_exists();
            for col in *cols {
                index.col(Alias::new(*col));
            }
            manager.create_index(index.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, _) in INDEXES {
            manager.drop_index(Index::drop().name(*name).table(Alias::new(*table)).to_owned()).await?;
        }
        Ok(())
    }
}
