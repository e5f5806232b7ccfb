//! `Idempotency-Key`: the first request with a key claims it in the cache; repeats within
//! the window get the first answer back and enqueue nothing.

use std::time::Duration;

use conveyor_actors::cache::Cache;

use crate::error::{ApiError, FieldError};

const IN_PROGRESS: &str = "\u{0}in-progress";

pub enum Begin {
    /// This request owns the key; finish with [`Guard::complete`] or [`Guard::abandon`].
    Started(Guard),
    /// An earlier request with this key succeeded; this is its answer.
    Replay(serde_json::Value),
}

pub struct Guard {
    cache: Cache,
    key: String,
    window: Duration,
}

pub struct Idempotency;

impl Idempotency {
    /// Claims `key` for `subject` on `scope`. While the cache is down, requests proceed
    /// without deduplication rather than fail: the handlers downstream are idempotent.
    pub async fn begin(
        cache: &Cache,
        subject: &str,
        scope: &str,
        key: &str,
        window: Duration,
    ) -> Result<Begin, ApiError> {
        let full = format!("idem:{scope}:{subject}:{key}");
        match cache.set_nx(&full, IN_PROGRESS, window).await {
            Ok(true) => Ok(Begin::Started(Guard { cache: cache.clone(), key: full, window })),
            Ok(false) => match cache.get(&full).await {
                Ok(Some(v)) if v == IN_PROGRESS => Err(ApiError::IdempotencyInProgress),
                Ok(Some(v)) => match serde_json::from_str(&v) {
                    Ok(body) => Ok(Begin::Replay(body)),
                    Err(_) => Err(ApiError::IdempotencyInProgress),
                },
                // Expired between the two calls: try once more from the top.
                Ok(None) => match cache.set_nx(&full, IN_PROGRESS, window).await {
                    Ok(true) => Ok(Begin::Started(Guard { cache: cache.clone(), key: full, window })),
                    _ => Err(ApiError::IdempotencyInProgress),
                },
                Err(err) => Ok(Begin::Started(Guard::degraded(cache, full, window, &err))),
            },
            Err(err) => Ok(Begin::Started(Guard::degraded(cache, full, window, &err))),
        }
    }
}

impl Guard {
    fn degraded(cache: &Cache, key: String, window: Duration, err: &conveyor_actors::Error) -> Guard {
        tracing::warn!(error = err as &dyn std::error::Error, "idempotency cache unavailable; not deduplicating");
        Guard { cache: cache.clone(), key, window }
    }

    /// Stores the answer for repeats.
    pub async fn complete(self, body: &serde_json::Value) {
        let text = body.to_string();
        if let Err(err) = self.cache.set(&self.key, &text, self.window).await {
            tracing::warn!(error = &err as &dyn std::error::Error, "could not store the idempotent answer");
        }
    }

    /// Releases the key so that a retry can succeed.
    pub async fn abandon(self) {
        let _ = self.cache.delete(&self.key).await;
    }
}

/// The `Idempotency-Key` header, if sent; a malformed one is a 422.
pub fn header_key(headers: &http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value.to_str().unwrap_or_default();
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::Validation(vec![FieldError::new(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters",
        )]));
    }
    Ok(Some(key.to_string()))
}
