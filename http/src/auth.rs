//! Bearer authentication for handlers: the token is checked by [`Identity`] (signature,
//! claims, type, revocation), then the subject's rate limit applies.
//!
//! [`Identity`]: conveyor_identity::Identity

use http::HeaderMap;
use http::header::AUTHORIZATION;

pub use conveyor_identity::{Principal, roles};

use crate::AppState;
use crate::error::ApiError;

/// Role checks on an authenticated caller.
pub trait Authorize {
    /// Requires one of `allowed`.
    fn require(&self, allowed: &[&str]) -> Result<(), ApiError>;
}

impl Authorize for Principal {
    fn require(&self, allowed: &[&str]) -> Result<(), ApiError> {
        if allowed.iter().any(|r| self.has_role(r)) { Ok(()) } else { Err(ApiError::Forbidden(allowed.join(", "))) }
    }
}

/// The token of `Authorization: Bearer …`; older clients send the bare token.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers.get(AUTHORIZATION).ok_or(ApiError::Unauthorized("missing bearer token"))?;
    let text = value.to_str().map_err(|_| ApiError::Unauthorized("invalid authorization header"))?.trim();
    let token = match text.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        Some(_) => return Err(ApiError::Unauthorized("authorization must be a Bearer token")),
        None if text.matches('.').count() == 2 => text,
        None => return Err(ApiError::Unauthorized("authorization must be a Bearer token")),
    };
    if token.is_empty() {
        return Err(ApiError::Unauthorized("missing bearer token"));
    }
    Ok(token)
}

impl AppState {
    /// Authenticates the caller and applies its per-subject rate limit.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let token = bearer(headers)?;
        let principal = self.conveyor.identity.authenticate(token).await?;
        self.limits.check_subject(&principal.sub)?;
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static("")));
        h
    }

    #[test]
    fn reads_bearer_and_bare_tokens() {
        assert_eq!(bearer(&headers("Bearer a.b.c")).ok(), Some("a.b.c"));
        assert_eq!(bearer(&headers("bearer  a.b.c ")).ok(), Some("a.b.c"));
        assert_eq!(bearer(&headers("a.b.c")).ok(), Some("a.b.c"), "seed 004 sent the bare token");
        assert!(bearer(&headers("Basic dXNlcjpwYXNz")).is_err());
        assert!(bearer(&headers("garbage")).is_err());
        assert!(bearer(&HeaderMap::new()).is_err());
    }

    #[test]
    fn roles_are_checked() {
        let p = Principal { sub: "me".into(), roles: vec!["user".into()] };
        assert!(p.require(&[roles::USER, roles::ADMIN]).is_ok());
        assert!(matches!(p.require(&[roles::DEVICE, roles::ADMIN]), Err(ApiError::Forbidden(_))));
    }
}
