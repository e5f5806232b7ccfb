//! `[auth]` and `[rate_limit]`: who may call, with which tokens, how often.

use serde::{Deserialize, Serialize};

use super::Secret;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The HS256 key Conveyor signs with; empty → generated into `{data_dir}/jwt_secret`.
    pub jwt_secret: Secret,
    /// The `kid` written into tokens signed with `jwt_secret`.
    pub signing_kid: String,
    /// Earlier HS256 keys that still verify (key rotation).
    pub previous_keys: Vec<HmacKey>,
    pub issuer: String,
    pub audience: String,
    /// Refuse tokens that carry no `iss`/`aud` (seed 003's tokens carry neither).
    pub require_issuer_audience: bool,
    pub leeway_secs: u64,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    /// `iss` that tokens verified by `external_keys`/`jwks_file` must carry; empty: any.
    pub external_issuer: String,
    pub external_keys: Vec<ExternalKey>,
    /// A JWKS document (RSA and Ed25519 keys with `kid` and `alg`); empty: none.
    pub jwks_file: String,
    /// Creates this admin at start-up when no user has the email.
    pub bootstrap_admin_email: String,
    pub bootstrap_admin_password: Secret,
    pub password: PasswordConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: Secret::default(),
            signing_kid: "primary".into(),
            previous_keys: Vec::new(),
            issuer: "conveyor".into(),
            audience: "conveyor".into(),
            require_issuer_audience: false,
            leeway_secs: 30,
            access_ttl_secs: 900,
            refresh_ttl_secs: 864_000,
            external_issuer: String::new(),
            external_keys: Vec::new(),
            jwks_file: String::new(),
            bootstrap_admin_email: String::new(),
            bootstrap_admin_password: Secret::default(),
            password: PasswordConfig::default(),
        }
    }
}

/// An HS256 verification key for rotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacKey {
    pub kid: String,
    pub secret: Secret,
}

/// A public key of an external identity provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalKey {
    pub kid: String,
    /// `RS256` or `EdDSA`.
    pub algorithm: String,
    /// PEM file holding the public key.
    pub public_key_file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordConfig {
    pub min_length: usize,
    pub max_length: usize,
    /// argon2id memory cost in KiB (OWASP: 19456 with 2 iterations).
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// Hashes computed at once; more wait (each one holds `argon2_memory_kib`).
    pub max_concurrent_hashes: usize,
}

impl Default for PasswordConfig {
    fn default() -> Self {
        PasswordConfig {
            min_length: 8,
            max_length: 128,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            max_concurrent_hashes: 4,
        }
    }
}

/// A token bucket: `per_period` requests every `period_secs`, bursts up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub per_period: u32,
    pub period_secs: u64,
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Peers whose `X-Forwarded-For` is believed (exact IP addresses).
    pub trusted_proxies: Vec<String>,
    /// `/auth/*` per client IP.
    pub auth_per_ip: Quota,
    /// Every other authenticated route, per client IP before the token is checked.
    pub api_per_ip: Quota,
    /// Every other authenticated route, per token subject.
    pub api_per_subject: Quota,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            trusted_proxies: Vec::new(),
            auth_per_ip: Quota { per_period: 30, period_secs: 60, burst: 10 },
            api_per_ip: Quota { per_period: 5_000, period_secs: 1, burst: 10_000 },
            api_per_subject: Quota { per_period: 5_000, period_secs: 1, burst: 10_000 },
        }
    }
}

impl AuthConfig {
    pub(super) fn validate(&self) -> Result<(), super::InvalidConfig> {
        use super::invalid;
        if self.access_ttl_secs == 0 || self.refresh_ttl_secs <= self.access_ttl_secs {
            return Err(invalid("auth.refresh_ttl_secs", "must be longer than auth.access_ttl_secs (> 0)"));
        }
        if self.issuer.is_empty() || self.audience.is_empty() {
            return Err(invalid("auth.issuer", "issuer and audience must not be empty: Conveyor's tokens carry both"));
        }
        for key in &self.external_keys {
            if !matches!(key.algorithm.as_str(), "RS256" | "EdDSA") {
                return Err(invalid("auth.external_keys", format!("{}: algorithm must be RS256 or EdDSA", key.kid)));
            }
        }
        if self.bootstrap_admin_email.is_empty() != self.bootstrap_admin_password.is_empty() {
            return Err(invalid("auth.bootstrap_admin_password", "set both bootstrap_admin_email and its password"));
        }
        let p = &self.password;
        if p.min_length == 0 || p.min_length > p.max_length {
            return Err(invalid("auth.password.min_length", "must be at least 1 and at most max_length"));
        }
        if p.argon2_memory_kib < 8 * p.argon2_parallelism || p.argon2_iterations == 0 || p.argon2_parallelism == 0 {
            return Err(invalid(
                "auth.password.argon2_memory_kib",
                "argon2 needs iterations >= 1, parallelism >= 1, memory >= 8 KiB per lane",
            ));
        }
        if p.max_concurrent_hashes == 0 {
            return Err(invalid("auth.password.max_concurrent_hashes", "must be at least 1"));
        }
        Ok(())
    }
}

impl RateLimitConfig {
    pub(super) fn validate(&self) -> Result<(), super::InvalidConfig> {
        use super::invalid;
        for (key, q) in [
            ("rate_limit.auth_per_ip", self.auth_per_ip),
            ("rate_limit.api_per_ip", self.api_per_ip),
            ("rate_limit.api_per_subject", self.api_per_subject),
        ] {
            if q.per_period == 0 || q.period_secs == 0 || q.burst == 0 {
                return Err(invalid(key, "per_period, period_secs and burst must be at least 1"));
            }
        }
        for proxy in &self.trusted_proxies {
            if proxy.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid("rate_limit.trusted_proxies", format!("{proxy:?} is not an IP address")));
            }
        }
        Ok(())
    }
}
