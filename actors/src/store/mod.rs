//! The store: SQLite (embedded default) or PostgreSQL, both through sea-orm, with
//! migrations from `sea-orm-migration` run at start-up and by `conveyor migrate`.

pub mod batch;
pub mod dead_letter;
pub mod idempotency;
pub mod migrations;
pub mod parked;
pub mod replay_job;
pub mod retention;
pub mod schema;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend};

use crate::Error;
use crate::breaker::Breaker;
use crate::config::Config;
use crate::metrics::{OPERATION, kv, metrics};
use crate::retry::HandlerError;

/// A handle on the store; cheap to clone. Queries go through the store's circuit breaker.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    breaker: Arc<Breaker>,
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
        Ok(Store { db, breaker: Breaker::new("store", config.breaker.clone()) })
    }

    /// Raw SQL, for tests that play a careless writer.
    pub async fn execute_raw(&self, sql: &str) -> Result<(), sea_orm::DbErr> {
        self.db.execute_unprepared(sql).await.map(drop)
    }

    /// Applies the pending ones of `migrations` (the engine lists every crate's).
    pub async fn migrate(&self, migrations: Vec<Box<dyn schema::Migration>>) -> Result<(), Error> {
        schema::migrate(&self.db, migrations).await.map_err(|e| Error::store("migrate", e))
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
    pub async fn guarded<T>(
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
}

/// Classifies a store error for a handler: data problems are permanent, everything else
/// (connection, pool, timeout, deadlock, serialization) is worth retrying.
pub fn classify(err: Error) -> HandlerError {
    // A full log is back-pressure: wait for room, never dead-letter for it.
    if matches!(err, Error::BreakerOpen { .. } | Error::LogFull { .. }) {
        return HandlerError::unavailable(err);
    }
    let permanent = matches!(&err, Error::Store { source, .. } if matches!(
        source.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_) | sea_orm::SqlErr::ForeignKeyConstraintViolation(_))
    ));
    if permanent { HandlerError::permanent(err) } else { HandlerError::retryable(err) }
}
