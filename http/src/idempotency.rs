//! `Idempotency-Key`: the first request with a key claims it in the store, bound to the
//! SHA-256 of its body; a repeat with the same body within the window gets the first
//! answer (same status and body) and enqueues nothing, a repeat with another body is a
//! 422, and a repeat while the first still runs is a 409. Kept in the store, so a restart
//! forgets nothing.

use chrono::{DateTime, Utc};
use http::StatusCode;
use sha2::{Digest, Sha256};

use conveyor_actors::store::idempotency::{self as keys, IdempotencyKeys, KeyedRequest, StoredAnswer};

use crate::error::{ApiError, FieldError};

pub enum Begin {
    /// This request owns the key; finish with [`Guard::complete`] or [`Guard::abandon`].
    Started(Guard),
    /// An earlier request with this key and body answered this.
    Replay { status: StatusCode, body: serde_json::Value },
}

/// A claimed key. Dropped without an answer (the request was cancelled, e.g. timed out),
/// it releases the key in the background so that a retry is not refused until the claim
/// lapses.
pub struct Guard {
    claim: Option<(IdempotencyKeys, KeyedRequest)>,
    claimed: DateTime<Utc>,
}

pub struct Idempotency;

impl Idempotency {
    /// Claims `key` for `subject` on `scope` with the request `body`. A store that cannot
    /// be asked is a 503: answering without the check could apply the request twice.
    pub async fn begin(
        keys: &IdempotencyKeys,
        subject: &str,
        scope: &str,
        key: &str,
        body: &[u8],
    ) -> Result<Begin, ApiError> {
        let req = KeyedRequest {
            scope: scope.to_string(),
            subject: subject.to_string(),
            key: key.to_string(),
            request_sha256: sha256_hex(body),
        };
        let now = Utc::now();
        // The store's futures are boxed here and below: a handler's future is allocated
        // per request, and these would size every request for what only keyed ones do.
        match Box::pin(keys.begin(&req, now)).await.map_err(|e| ApiError::unavailable("idempotency key store", e))? {
            keys::Begin::Started => Ok(Begin::Started(Guard { claim: Some((keys.clone(), req)), claimed: now })),
            keys::Begin::Replay(StoredAnswer { status, body }) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                Ok(Begin::Replay { status, body })
            }
            keys::Begin::InProgress => Err(ApiError::IdempotencyInProgress),
            keys::Begin::OtherBody => Err(ApiError::IdempotencyKeyReused),
        }
    }
}

impl Guard {
    /// Stores the answer for repeats.
    pub async fn complete(mut self, status: StatusCode, body: &serde_json::Value) {
        let Some((keys, req)) = self.claim.take() else { return };
        let answer = StoredAnswer { status: status.as_u16(), body: body.clone() };
        match Box::pin(keys.complete(&req, self.claimed, &answer)).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(key = req.key, "the idempotency claim lapsed before the answer was stored"),
            Err(err) => {
                tracing::warn!(error = %conveyor_actors::error::chain(&err), "could not store the idempotent answer")
            }
        }
    }

    /// Releases the key so that a retry can succeed.
    pub async fn abandon(mut self) {
        if let Some((keys, req)) = self.claim.take() {
            Box::pin(release(keys, req)).await;
        }
    }
}

async fn release(keys: IdempotencyKeys, req: KeyedRequest) {
    if let Err(err) = keys.abandon(&req).await {
        // The claim lapses on its own after the request timeout.
        tracing::warn!(error = %conveyor_actors::error::chain(&err), "could not release an idempotency key");
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some((keys, req)) = self.claim.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(release(keys, req));
        }
    }
}

fn sha256_hex(body: &[u8]) -> String {
    Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_hash_is_sha256_in_hex() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
