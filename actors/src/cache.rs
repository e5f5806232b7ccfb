//! The cache in front of the store: in-process (moka) by default, Redis (fred) when
//! configured. Every key is namespaced by the configured prefix.

mod memory;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::Error;
use crate::breaker::{Breaker, BreakerConfig};
use crate::config::CacheConfig;

/// What a cache backend does; keys arrive already prefixed.
#[async_trait]
pub trait CacheBackend: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<String>, Error>;
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), Error>;
    /// Sets every entry, in one round trip where the backend can.
    async fn set_many(&self, entries: &[(String, String)], ttl: Duration) -> Result<(), Error> {
        for (key, value) in entries {
            self.set(key, value, ttl).await?;
        }
        Ok(())
    }
    /// Sets only if absent; `true` when this call set it.
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, Error>;
    async fn delete(&self, key: &str) -> Result<(), Error>;
    async fn ping(&self) -> Result<(), Error>;
}

/// The cache as the rest of Conveyor sees it.
#[derive(Clone)]
pub struct Cache {
    backend: Arc<dyn CacheBackend>,
    prefix: Arc<str>,
    timeout: Duration,
    /// While open, commands fail at once instead of each waiting out the timeout.
    breaker: Arc<Breaker>,
}

impl Cache {
    /// Connects the configured backend (`memory` or `redis://…`).
    pub async fn connect(config: &CacheConfig, breaker: &BreakerConfig) -> Result<Self, Error> {
        let url = config.url.as_str();
        let timeout = Duration::from_millis(config.command_timeout_ms);
        let backend: Arc<dyn CacheBackend> = if url == "memory" {
            Arc::new(memory::MemoryCache::new(config.max_entries))
        } else {
            Arc::new(redis::RedisCache::connect(config, timeout).await?)
        };
        let breaker = Breaker::new("cache", breaker.clone());
        Ok(Cache { backend, prefix: config.key_prefix.as_str().into(), timeout, breaker })
    }

    /// An in-process cache, for tests and tools.
    pub fn memory(max_entries: u64) -> Self {
        Cache {
            backend: Arc::new(memory::MemoryCache::new(max_entries)),
            prefix: "".into(),
            timeout: Duration::from_secs(1),
            breaker: Breaker::new("cache", BreakerConfig::default()),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    /// Bounds every command so a hung cache cannot hold a request or a key task.
    async fn bounded<T>(&self, op: &'static str, fut: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        let permit = self.breaker.acquire().map_err(|source| Error::BreakerOpen { op, source })?;
        let result = match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout { op, after: self.timeout }),
        };
        permit.record(result.is_err());
        result
    }

    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, Error> {
        self.bounded("cache get", self.backend.get(&self.key(key))).await
    }
    pub async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), Error> {
        self.bounded("cache set", self.backend.set(&self.key(key), value, ttl)).await
    }
    /// Sets every `(key, value)` in one round trip (Redis: one `EVAL`); all or an error.
    pub async fn set_many(&self, entries: &[(String, String)], ttl: Duration) -> Result<(), Error> {
        if entries.is_empty() {
            return Ok(());
        }
        let entries: Vec<(String, String)> = entries.iter().map(|(k, v)| (self.key(k), v.clone())).collect();
        self.bounded("cache set_many", self.backend.set_many(&entries, ttl)).await
    }
    pub async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, Error> {
        self.bounded("cache set_nx", self.backend.set_nx(&self.key(key), value, ttl)).await
    }
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        self.bounded("cache delete", self.backend.delete(&self.key(key))).await
    }
    /// Checks the cache itself, around the breaker: readiness must tell the truth.
    pub async fn ping(&self) -> Result<(), Error> {
        match tokio::time::timeout(self.timeout, self.backend.ping()).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout { op: "cache ping", after: self.timeout }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The in-process cache, and Redis as well when `CONVEYOR_TEST_REDIS_URL` is set.
    async fn caches() -> Vec<Cache> {
        let prefix = format!("unit{}:", uuid::Uuid::new_v4().simple());
        let mut urls = vec!["memory".to_string()];
        urls.extend(std::env::var("CONVEYOR_TEST_REDIS_URL").ok());
        let mut caches = Vec::new();
        for url in urls {
            let config = CacheConfig { url, key_prefix: prefix.clone(), ..CacheConfig::default() };
            caches.push(Cache::connect(&config, &BreakerConfig::default()).await.unwrap());
        }
        caches
    }

    #[tokio::test]
    async fn set_many_sets_every_entry_under_the_prefix_in_one_call() {
        for cache in caches().await {
            cache.set("b", "old", Duration::from_secs(60)).await.unwrap();
            let mut entries: Vec<(String, String)> = (0..50).map(|n| (format!("k{n}"), format!("v{n}"))).collect();
            entries.push(("b".into(), "new".into()));
            cache.set_many(&entries, Duration::from_secs(60)).await.unwrap();
            for (key, value) in &entries {
                assert_eq!(cache.get(key).await.unwrap().as_deref(), Some(value.as_str()), "{key}");
            }
            cache.set_many(&[], Duration::from_secs(60)).await.unwrap();
            for (key, _) in &entries {
                cache.delete(key).await.unwrap();
            }
        }
    }
}
