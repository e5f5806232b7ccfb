use crate::{Error, Names};

/// The backends a daemon talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backends {
    /// Embedded log, SQLite, in-memory cache (all under the data directory).
    Embedded,
    /// Kafka + PostgreSQL + Redis (or the in-memory cache when no Redis URL is given).
    Real { brokers: String, pg_url: String, redis_url: Option<String> },
}

impl Backends {
    /// The real backends from the variables `scripts/services.sh env` prints; Redis optional.
    pub fn real_from_env() -> Result<Self, Error> {
        let get = |k: &'static str| std::env::var(k).map_err(|_| Error::MissingEnv(k));
        Ok(Backends::Real {
            brokers: get("CONVEYOR_TEST_KAFKA_BROKERS")?,
            pg_url: get("CONVEYOR_TEST_PG_URL")?,
            redis_url: std::env::var("CONVEYOR_TEST_REDIS_URL").ok(),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backends::Embedded => "embedded",
            Backends::Real { .. } => "real",
        }
    }

    /// The daemon's backend settings; schema and cache keys prefixed with `names.id` so
    /// daemons of different tests or runs share a server without seeing each other's rows.
    pub fn env(&self, names: &Names) -> Vec<(String, String)> {
        let Backends::Real { brokers, pg_url, redis_url } = self else { return Vec::new() };
        let id = &names.id;
        [
            ("CONVEYOR_LOG__BACKEND", "kafka".to_string()),
            ("CONVEYOR_LOG__KAFKA__BROKERS", brokers.clone()),
            ("CONVEYOR_LOG__KAFKA__SESSION_TIMEOUT_MS", "6000".to_string()),
            ("CONVEYOR_STORE__URL", pg_url.clone()),
            ("CONVEYOR_STORE__SCHEMA", id.clone()),
            ("CONVEYOR_CACHE__URL", redis_url.clone().unwrap_or_else(|| "memory".to_string())),
            ("CONVEYOR_CACHE__KEY_PREFIX", format!("{id}:")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}
