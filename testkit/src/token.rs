//! Tokens as seed 003's README mints them with PyJWT: HS256, `sub`, `roles`, `exp`.

use serde_json::{Value, json};

use crate::Error;

/// An HS256 token for `sub` with `roles`, valid for `ttl_secs`, signed with `secret`.
pub fn mint(secret: &str, sub: &str, roles: &[&str], ttl_secs: i64) -> Result<String, Error> {
    sign(secret, &json!({"sub": sub, "roles": roles, "exp": now_secs() + ttl_secs}))
}

/// Any claims, HS256-signed with `secret`.
pub fn sign(secret: &str, claims: &Value) -> Result<String, Error> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(Error::Sign)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
