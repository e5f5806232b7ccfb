//! The in-process cache: moka, bounded by entry count, with a TTL per entry.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::Expiry;
use moka::future::Cache;

use super::CacheBackend;
use crate::Error;

#[derive(Clone)]
struct Entry {
    value: String,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, value: &Entry, _now: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
    fn expire_after_update(
        &self,
        _key: &String,
        value: &Entry,
        _now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub struct MemoryCache {
    inner: Cache<String, Entry>,
}

impl MemoryCache {
    pub fn new(max_entries: u64) -> Self {
        MemoryCache { inner: Cache::builder().max_capacity(max_entries).expire_after(PerEntryTtl).build() }
    }
}

#[async_trait]
impl CacheBackend for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<String>, Error> {
        Ok(self.inner.get(key).await.map(|e| e.value))
    }
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), Error> {
        self.inner.insert(key.to_string(), Entry { value: value.to_string(), ttl }).await;
        Ok(())
    }
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, Error> {
        let entry = self.inner.entry(key.to_string()).or_insert(Entry { value: value.to_string(), ttl }).await;
        Ok(entry.is_fresh())
    }
    async fn delete(&self, key: &str) -> Result<(), Error> {
        self.inner.invalidate(key).await;
        Ok(())
    }
    async fn ping(&self) -> Result<(), Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn set_get_delete_and_nx() {
        let c = MemoryCache::new(100);
        assert_eq!(c.get("a").await.ok().flatten(), None);
        c.set("a", "1", Duration::from_secs(60)).await.ok();
        assert_eq!(c.get("a").await.ok().flatten().as_deref(), Some("1"));
        assert!(!c.set_nx("a", "2", Duration::from_secs(60)).await.unwrap_or(true));
        assert!(c.set_nx("b", "2", Duration::from_secs(60)).await.unwrap_or(false));
        c.delete("a").await.ok();
        assert_eq!(c.get("a").await.ok().flatten(), None);
    }

    #[tokio::test]
    async fn entries_expire_after_their_ttl() {
        let c = MemoryCache::new(100);
        c.set("short", "x", Duration::from_millis(30)).await.ok();
        assert!(c.get("short").await.ok().flatten().is_some());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(c.get("short").await.ok().flatten(), None);
    }
}
