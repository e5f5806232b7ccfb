//! Bearer JWTs: HS256 with the configured secret; claims `sub`, `roles`, `exp`. Seed 003's
//! PyJWT tokens (no `iss`/`aud`) are accepted unless the configuration requires them; a
//! present but wrong `iss` or `aud` is refused.

use std::collections::HashSet;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// The roles Conveyor knows.
pub mod roles {
    pub const ADMIN: &str = "admin";
    pub const DEVICE: &str = "device";
    pub const USER: &str = "user";
}

/// The claims we read and write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub sub: String,
    pub roles: Vec<String>,
}

impl Principal {
    /// Requires one of `allowed`.
    pub fn require(&self, allowed: &[&str]) -> Result<(), ApiError> {
        if allowed.iter().any(|r| self.roles.iter().any(|have| have == r)) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(allowed.join(", ")))
        }
    }
}

/// Verifies (and, for tools and tests, mints) tokens.
#[derive(Clone)]
pub struct Auth {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Auth {
    /// `issuer`/`audience` empty means "not required"; a token that carries one anyway must match.
    pub fn new(secret: &[u8], issuer: &str, audience: &str, leeway_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway_secs;
        validation.required_spec_claims = HashSet::from(["exp".to_string()]);
        // jsonwebtoken checks `iss`/`aud` only when configured, and then requires them;
        // we check presence-if-configured and match-if-present ourselves below.
        validation.validate_aud = false;
        Auth {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
            issuer: (!issuer.is_empty()).then(|| issuer.to_string()),
            audience: (!audience.is_empty()).then(|| audience.to_string()),
        }
    }

    /// Checks a bearer token.
    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => ApiError::Unauthorized("token expired"),
                _ => ApiError::Unauthorized("invalid token"),
            })?;
        let c = data.claims;
        check_claim(c.iss.as_deref(), self.issuer.as_deref(), "token issuer not accepted")?;
        check_claim(c.aud.as_deref(), self.audience.as_deref(), "token audience not accepted")?;
        if c.sub.is_empty() {
            return Err(ApiError::Unauthorized("token has no subject"));
        }
        Ok(Principal { sub: c.sub, roles: c.roles })
    }

    /// Reads `Authorization: Bearer …` and verifies it.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let value = headers.get(AUTHORIZATION).ok_or(ApiError::Unauthorized("missing bearer token"))?;
        let text = value.to_str().map_err(|_| ApiError::Unauthorized("invalid authorization header"))?;
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .ok_or(ApiError::Unauthorized("authorization must be a Bearer token"))?;
        self.verify(token.trim())
    }

    /// Signs a development token (`conveyor token mint`), with `iss`/`aud` when configured.
    pub fn mint(
        &self,
        sub: &str,
        roles: &[String],
        ttl: std::time::Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: sub.to_string(),
            roles: roles.to_vec(),
            exp: now + ttl.as_secs() as i64,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: Some(now),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }
}

fn check_claim(present: Option<&str>, wanted: Option<&str>, message: &'static str) -> Result<(), ApiError> {
    match (present, wanted) {
        (Some(p), Some(w)) if p != w => Err(ApiError::Unauthorized(message)),
        (None, Some(_)) => Err(ApiError::Unauthorized(message)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sign(claims: &serde_json::Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret))
            .unwrap_or_default()
    }

    #[test]
    fn accepts_seed_003_style_tokens() {
        let auth = Auth::new(b"local-dev-secret", "", "", 0);
        let exp = chrono::Utc::now().timestamp() + 3600;
        let t = sign(
            &serde_json::json!({"sub": "device-tester", "roles": ["device", "user"], "exp": exp}),
            b"local-dev-secret",
        );
        let p = auth.verify(&t).map_err(|e| e.to_string());
        assert_eq!(p, Ok(Principal { sub: "device-tester".into(), roles: vec!["device".into(), "user".into()] }));
    }

    #[test]
    fn refuses_wrong_secret_expired_and_wrong_issuer() {
        let auth = Auth::new(b"s", "", "", 0);
        let exp = chrono::Utc::now().timestamp() + 3600;
        let wrong = sign(&serde_json::json!({"sub": "a", "roles": [], "exp": exp}), b"other");
        assert!(matches!(auth.verify(&wrong), Err(ApiError::Unauthorized("invalid token"))));
        let old = sign(&serde_json::json!({"sub": "a", "roles": [], "exp": 1000}), b"s");
        assert!(matches!(auth.verify(&old), Err(ApiError::Unauthorized("token expired"))));
        let strict = Auth::new(b"s", "conveyor", "", 0);
        let bad_iss = sign(&serde_json::json!({"sub": "a", "exp": exp, "iss": "evil"}), b"s");
        assert!(strict.verify(&bad_iss).is_err());
        let no_iss = sign(&serde_json::json!({"sub": "a", "exp": exp}), b"s");
        assert!(strict.verify(&no_iss).is_err(), "required issuer must be present");
    }

    #[test]
    fn minted_tokens_verify_and_roles_are_checked() {
        let auth = Auth::new(b"s", "conveyor", "conveyor-api", 0);
        let t = auth.mint("me", &["user".into()], Duration::from_secs(60)).unwrap_or_default();
        let p = auth.verify(&t).map_err(|e| e.to_string());
        assert!(p.is_ok());
        let p = Principal { sub: "me".into(), roles: vec!["user".into()] };
        assert!(p.require(&[roles::USER, roles::ADMIN]).is_ok());
        assert!(matches!(p.require(&[roles::DEVICE, roles::ADMIN]), Err(ApiError::Forbidden(_))));
    }
}
