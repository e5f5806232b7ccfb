//! Schema migrations without sea-orm-migration (which re-enables sea-orm's default features
//! and builds sea-schema for a CLI we do not ship). Each crate lists its own migrations;
//! the engine hands [`migrate`] all of them in order. The bookkeeping table is
//! `seaql_migrations (version, applied_at)`, the layout sea-orm-migration kept, so a
//! database it migrated carries on where it stopped.

use std::collections::HashSet;

use async_trait::async_trait;
use sea_orm::sea_query::{
    ColumnDef, IndexCreateStatement, IndexDropStatement, Query, Table, TableAlterStatement, TableCreateStatement,
    TableDropStatement,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, DeriveIden, TransactionTrait};

/// What a migration file needs.
pub mod prelude {
    pub use super::{Migration, MigrationName, SchemaManager};
    pub use sea_orm::sea_query::{Alias, ColumnDef, Expr, ExprTrait, Index, IndexCreateStatement, IntoIden, Table};
    pub use sea_orm::{DbErr, DeriveIden};
}

/// A migration's name: what the database records, so it never changes once released.
pub trait MigrationName {
    fn name(&self) -> &str;
}

/// One schema change, applied once, in its own transaction.
#[async_trait]
pub trait Migration: MigrationName + Send + Sync {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr>;
    /// Undoes `up` (for a developer rolling back by hand; never run by the daemon).
    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr>;
}

/// Runs schema statements inside one migration's transaction.
pub struct SchemaManager<'c> {
    txn: &'c DatabaseTransaction,
}

impl SchemaManager<'_> {
    pub async fn create_table(&self, stmt: TableCreateStatement) -> Result<(), DbErr> {
        self.txn.execute(&stmt).await.map(drop)
    }
    pub async fn alter_table(&self, stmt: TableAlterStatement) -> Result<(), DbErr> {
        self.txn.execute(&stmt).await.map(drop)
    }
    pub async fn drop_table(&self, stmt: TableDropStatement) -> Result<(), DbErr> {
        self.txn.execute(&stmt).await.map(drop)
    }
    pub async fn create_index(&self, stmt: IndexCreateStatement) -> Result<(), DbErr> {
        self.txn.execute(&stmt).await.map(drop)
    }
    pub async fn drop_index(&self, stmt: IndexDropStatement) -> Result<(), DbErr> {
        self.txn.execute(&stmt).await.map(drop)
    }
}

#[derive(DeriveIden)]
enum SeaqlMigrations {
    Table,
    Version,
    AppliedAt,
}

/// Applies the migrations `all` lists that the database has not recorded, in order. A
/// recorded migration missing from `all` (a database from a newer build) is an error.
pub async fn migrate(db: &DatabaseConnection, all: Vec<Box<dyn Migration>>) -> Result<(), DbErr> {
    let install = Table::create()
        .table(SeaqlMigrations::Table)
        .if_not_exists()
        .col(ColumnDef::new(SeaqlMigrations::Version).string().not_null().primary_key())
        .col(ColumnDef::new(SeaqlMigrations::AppliedAt).big_integer().not_null())
        .to_owned();
    db.execute(&install).await?;
    let select = Query::select().column(SeaqlMigrations::Version).from(SeaqlMigrations::Table).to_owned();
    let rows = db.query_all(&select).await?;
    let applied: HashSet<String> =
        rows.iter().map(|row| row.try_get::<String>("", "version")).collect::<Result<_, _>>()?;
    let known: HashSet<&str> = all.iter().map(|m| m.name()).collect();
    if let Some(unknown) = applied.iter().find(|v| !known.contains(v.as_str())) {
        return Err(DbErr::Custom(format!(
            "migration {unknown} is recorded in the database but unknown to this build (a newer build migrated it)"
        )));
    }
    for migration in all.iter().filter(|m| !applied.contains(m.name())) {
        tracing::info!(migration = migration.name(), "applying migration");
        let txn = db.begin().await?;
        migration.up(&SchemaManager { txn: &txn }).await?;
        let record = Query::insert()
            .into_table(SeaqlMigrations::Table)
            .columns([SeaqlMigrations::Version, SeaqlMigrations::AppliedAt])
            .values([migration.name().into(), chrono::Utc::now().timestamp().into()])
            .map_err(|e| DbErr::Custom(e.to_string()))?
            .to_owned();
        txn.execute(&record).await?;
        txn.commit().await?;
    }
    Ok(())
}
