//! The store: SQLite (embedded default) or PostgreSQL, both through sea-orm, with
//! migrations from `sea-orm-migration` run at start-up and by `conveyor migrate`.

pub mod dead_letter;
pub mod loyalty;
pub mod migrations;
pub mod resource;
pub mod retention;
pub mod sagas;
pub mod users;
pub mod webhooks;
pub mod workflows;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, EntityTrait,
};
use sea_orm_migration::MigratorTrait;

use crate::Error;
use crate::breaker::Breaker;
use crate::config::Config;
use crate::metrics::{OPERATION, kv, metrics};

/// A handle on the store; cheap to clone. Queries go through the store's circuit breaker.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    breaker: Arc<Breaker>,
    /// Ledger writes left to fail as if the database dropped the connection (`[faults]`).
    ledger_faults: Arc<AtomicU32>,
}

/// How an upsert ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// The row was written.
    Written,
    /// The stored row is already at this offset of the same partition or newer (a
    /// redelivery or replay).
    Stale,
}

impl Store {
    /// Connects to `config.store` (creating the Postgres schema when one is configured).
    pub async fn connect(config: &Config) -> Result<Self, Error> {
        let url = config.store_url();
        let is_sqlite = url.starts_with("sqlite:");
        if is_sqlite {
            std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::io(&config.data_dir, e))?;
        }
        let schema = config.store.schema.clone();
        if !is_sqlite && !schema.is_empty() {
            // The schema must exist before connections that search it are opened.
            let bootstrap = Database::connect(ConnectOptions::new(url.clone()).max_connections(1).to_owned())
                .await
                .map_err(|e| Error::store("connect", e))?;
            bootstrap
                .execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", schema.replace('"', "")))
                .await
                .map_err(|e| Error::store("create schema", e))?;
            let _ = bootstrap.close().await;
        }
        let mut opts = ConnectOptions::new(url);
        opts.max_connections(if is_sqlite {
            Ord::min(config.store.max_connections, 4)
        } else {
            config.store.max_connections
        })
        .min_connections(1)
        .connect_timeout(Duration::from_millis(config.store.connect_timeout_ms))
        .acquire_timeout(Duration::from_millis(config.store.connect_timeout_ms))
        .sqlx_logging(false);
        if !is_sqlite && !schema.is_empty() {
            opts.set_schema_search_path(schema);
        }
        if is_sqlite {
            opts.map_sqlx_sqlite_opts(|o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
            });
        }
        let db = Database::connect(opts).await.map_err(|e| Error::store("connect", e))?;
        let ledger_faults = Arc::new(AtomicU32::new(config.faults.loyalty_credit_transient_failures));
        Ok(Store { db, breaker: Breaker::new("store", config.breaker.clone()), ledger_faults })
    }

    /// Raw SQL, for tests that play a careless writer.
    #[cfg(test)]
    pub(crate) async fn execute_raw(&self, sql: &str) -> Result<(), sea_orm::DbErr> {
        self.db.execute_unprepared(sql).await.map(drop)
    }

    /// Spends one injected ledger failure, if any are left.
    fn injected_ledger_failure(&self) -> bool {
        self.ledger_faults.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), Error> {
        migrations::Migrator::up(&self.db, None).await.map_err(|e| Error::store("migrate", e))
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The store's breaker (handlers declare it; `/ready` reports it).
    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    /// Checks the database itself, around the breaker: readiness must tell the truth.
    pub async fn ping(&self) -> Result<(), Error> {
        self.db.ping().await.map_err(|e| Error::store("ping", e))
    }

    /// Runs a query through the breaker; only failures of the database itself (not data
    /// the database refused) count against it. Also records the query's duration.
    pub(crate) async fn guarded<T>(
        &self,
        op: &'static str,
        query: impl Future<Output = Result<T, sea_orm::DbErr>>,
    ) -> Result<T, Error> {
        let permit = self.breaker.acquire().map_err(|source| Error::BreakerOpen { op, source })?;
        let started = Instant::now();
        let result = crate::trace::child_span(op, query).await;
        metrics().store_duration.record(started.elapsed().as_secs_f64(), &[kv(OPERATION, op)]);
        permit.record(matches!(&result, Err(e) if e.sql_err().is_none()));
        result.map_err(|e| Error::store(op, e))
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
        let query = resource::Entity::insert(row).on_conflict(on_conflict).exec_without_returning(&self.db);
        let rows = self.guarded("upsert_resource", query).await?;
        Ok(if rows > 0 { Upsert::Written } else { Upsert::Stale })
    }

    pub async fn get_resource(&self, id: &str) -> Result<Option<resource::Model>, Error> {
        self.guarded("get_resource", resource::Entity::find_by_id(id.to_string()).one(&self.db)).await
    }
}
