//! The Redis cache through fred. Commands fail fast while Redis is down (callers treat a
//! cache failure as a miss), and the client reconnects in the background.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::{Expiration, SetOptions};

use super::CacheBackend;
use crate::Error;
use crate::config::CacheConfig;

pub struct RedisCache {
    client: Client,
}

impl RedisCache {
    pub async fn connect(cache: &CacheConfig, timeout: Duration) -> Result<Self, Error> {
        let mut config = Config::from_url(&cache.url).map_err(|e| Error::cache("parse cache.url", e))?;
        if config.uses_tls() {
            config.tls = Some(tls_connector(cache)?.into());
        }
        // Keep reconnecting in the background when Redis is down at start-up.
        config.fail_fast = false;
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = timeout;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()
            .map_err(|e| Error::cache("build redis client", e))?;
        log_connection_errors(&client);
        // Connect in the background: the daemon must come up while Redis is down.
        let _task = client.connect();
        match tokio::time::timeout(timeout, client.wait_for_connect()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "redis not reachable yet; reads fall back to the store until it is")
            }
            Err(_) => tracing::warn!("redis not reachable yet; reads fall back to the store until it is"),
        }
        Ok(RedisCache { client })
    }
}

/// The native-tls (OpenSSL) connector for `rediss://`: the configured CA replaces the
/// system's roots, so a server certificate from any other authority is refused; the host
/// name of the URL is verified against the certificate (fred passes it to the handshake).
fn tls_connector(cache: &CacheConfig) -> Result<native_tls::TlsConnector, Error> {
    let mut builder = native_tls::TlsConnector::builder();
    if !cache.tls_ca_file.is_empty() {
        let pem = std::fs::read(&cache.tls_ca_file).map_err(|e| Error::io(&cache.tls_ca_file, e))?;
        let ca = native_tls::Certificate::from_pem(&pem).map_err(|e| Error::cache("read cache.tls_ca_file", e))?;
        builder.disable_built_in_roots(true).add_root_certificate(ca);
    }
    if !cache.tls_cert_file.is_empty() {
        let cert = std::fs::read(&cache.tls_cert_file).map_err(|e| Error::io(&cache.tls_cert_file, e))?;
        let key = std::fs::read(&cache.tls_key_file).map_err(|e| Error::io(&cache.tls_key_file, e))?;
        let identity = native_tls::Identity::from_pkcs8(&cert, &key)
            .map_err(|e| Error::cache("read cache.tls_cert_file and cache.tls_key_file", e))?;
        builder.identity(identity);
    }
    builder.build().map_err(|e| Error::cache("build the cache TLS connector", e))
}

/// Logs why connecting fails (refused, TLS handshake, authentication), once per distinct
/// reason rather than once per reconnection attempt, and when it works again.
fn log_connection_errors(client: &Client) {
    let last = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let on_error = last.clone();
    let _errors = client.on_error(move |(err, server)| {
        let text = err.to_string();
        let mut last = on_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last != text {
            let server = server.map(|s| s.to_string()).unwrap_or_default();
            tracing::warn!(error = %text, server, "redis connection failed");
            *last = text;
        }
        async { Ok(()) }
    });
    let _reconnects = client.on_reconnect(move |server| {
        let mut last = last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !last.is_empty() {
            tracing::info!(server = %server, "redis connected again");
            last.clear();
        }
        async { Ok(()) }
    });
}

/// `SET key value EX ttl` for each key; `ARGV[1]` is the TTL, `ARGV[i + 1]` key i's value.
const SET_MANY: &str =
    "local ttl = ARGV[1] for i, key in ipairs(KEYS) do redis.call('SET', key, ARGV[i + 1], 'EX', ttl) end return #KEYS";

#[async_trait]
impl CacheBackend for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<String>, Error> {
        self.client.get(key).await.map_err(|e| Error::cache("redis GET", e))
    }
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), Error> {
        let secs = ttl.as_secs().max(1) as i64;
        self.client
            .set::<(), _, _>(key, value, Some(Expiration::EX(secs)), None, false)
            .await
            .map_err(|e| Error::cache("redis SET", e))
    }
    /// One `EVAL` for the whole batch: a pipeline of `SET`s cost the client one command
    /// (and its allocations) per entry, a fifth of the processing path's CPU in the
    /// unique-keys benchmark. The script runs the same `SET … EX` for every entry.
    async fn set_many(&self, entries: &[(String, String)], ttl: Duration) -> Result<(), Error> {
        if entries.is_empty() {
            return Ok(());
        }
        let secs = ttl.as_secs().max(1) as i64;
        let keys: Vec<&str> = entries.iter().map(|(key, _)| key.as_str()).collect();
        let mut args: Vec<Value> = Vec::with_capacity(entries.len() + 1);
        args.push(Value::from(secs));
        args.extend(entries.iter().map(|(_, value)| Value::from(value.as_str())));
        self.client
            .eval::<Value, _, _, _>(SET_MANY, keys, args)
            .await
            .map(drop)
            .map_err(|e| Error::cache("redis EVAL set_many", e))
    }
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, Error> {
        let secs = ttl.as_secs().max(1) as i64;
        let reply: Option<String> = self
            .client
            .set(key, value, Some(Expiration::EX(secs)), Some(SetOptions::NX), false)
            .await
            .map_err(|e| Error::cache("redis SET NX", e))?;
        Ok(reply.is_some())
    }
    async fn delete(&self, key: &str) -> Result<(), Error> {
        self.client.del::<i64, _>(key).await.map(|_| ()).map_err(|e| Error::cache("redis DEL", e))
    }
    async fn ping(&self) -> Result<(), Error> {
        self.client.ping::<String>(None).await.map(|_| ()).map_err(|e| Error::cache("redis PING", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_config(ca: &str) -> CacheConfig {
        CacheConfig { url: "rediss://127.0.0.1:1".into(), tls_ca_file: ca.into(), ..CacheConfig::default() }
    }

    #[tokio::test]
    async fn an_unreadable_or_bad_ca_file_is_named_before_any_connection() {
        let err = RedisCache::connect(&tls_config("/nonexistent/ca.pem"), Duration::from_millis(50)).await.err();
        assert!(matches!(&err, Some(Error::Io { path, .. }) if path == "/nonexistent/ca.pem"), "{err:?}");
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let garbage = dir.path().join("ca.pem");
        std::fs::write(&garbage, "not a certificate").unwrap_or_else(|e| panic!("{e}"));
        let err =
            RedisCache::connect(&tls_config(&garbage.display().to_string()), Duration::from_millis(50)).await.err();
        assert!(matches!(&err, Some(Error::Cache { op: "read cache.tls_ca_file", .. })), "{err:?}");
    }
}
