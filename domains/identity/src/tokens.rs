//! Signing and verifying JWTs.
//!
//! Conveyor signs HS256 with `auth.jwt_secret` under `auth.signing_kid`; earlier secrets
//! stay valid under their own `kid` (rotation). Tokens from an external identity provider
//! verify with RS256/EdDSA public keys (PEM files or a JWKS document). Each key is pinned
//! to its algorithm: the token's header never chooses how it is checked, which is what
//! defeats `alg: none` and an HS256 token "signed" with an RSA public key.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use conveyor_actors::Error;
use conveyor_actors::config::AuthConfig;

/// Why a token was refused; the text is safe to show the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal(pub &'static str);

/// Access tokens call the API; refresh tokens only buy new pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenType {
    Access,
    Refresh,
}

/// `aud` as a string or a list of strings (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::One(a) => a == wanted,
            Audience::Many(list) => list.iter().any(|a| a == wanted),
        }
    }
}

/// The claims Conveyor reads and writes. No email or other private data (seed 004 put
/// the email in every token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    /// Seed 004's name for the user id; Conveyor writes both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Absent in seed 003's tokens, which are access tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<TokenType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The login session this token descends from; revoking it revokes them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fam: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

impl Claims {
    pub fn token_type(&self) -> TokenType {
        self.token_type.unwrap_or(TokenType::Access)
    }
    /// The subject: seed 004 tokens carry `uid` where others carry `sub`.
    pub fn subject(&self) -> &str {
        if self.sub.is_empty() { self.uid.as_deref().unwrap_or_default() } else { &self.sub }
    }
}

struct VerifyKey {
    key: DecodingKey,
    algorithm: Algorithm,
    /// Conveyor's own keys follow `auth.issuer`; external ones `auth.external_issuer`.
    external: bool,
}

/// A signed token and the claims in it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub claims: Claims,
}

/// The keyring.
pub struct TokenKeys {
    signing: EncodingKey,
    signing_kid: String,
    by_kid: HashMap<String, VerifyKey>,
    issuer: String,
    audience: String,
    external_issuer: String,
    require_issuer_audience: bool,
    leeway: u64,
}

impl TokenKeys {
    /// Builds the keyring from configuration; `secret` is the resolved signing secret.
    pub fn new(config: &AuthConfig, secret: &[u8]) -> Result<Self, Error> {
        let mut by_kid = HashMap::new();
        let hs =
            |s: &[u8]| VerifyKey { key: DecodingKey::from_secret(s), algorithm: Algorithm::HS256, external: false };
        by_kid.insert(config.signing_kid.clone(), hs(secret));
        for key in &config.previous_keys {
            by_kid.insert(key.kid.clone(), hs(key.secret.expose().as_bytes()));
        }
        for key in &config.external_keys {
            let pem = std::fs::read(&key.public_key_file).map_err(|e| Error::io(&key.public_key_file, e))?;
            let (decoding, algorithm) = match key.algorithm.as_str() {
                "RS256" => (DecodingKey::from_rsa_pem(&pem), Algorithm::RS256),
                _ => (DecodingKey::from_ed_pem(&pem), Algorithm::EdDSA),
            };
            let decoding = decoding.map_err(|source| Error::Token { op: "reading an external public key", source })?;
            by_kid.insert(key.kid.clone(), VerifyKey { key: decoding, algorithm, external: true });
        }
        if !config.jwks_file.is_empty() {
            load_jwks(Path::new(&config.jwks_file), &mut by_kid)?;
        }
        Ok(TokenKeys {
            signing: EncodingKey::from_secret(secret),
            signing_kid: config.signing_kid.clone(),
            by_kid,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            external_issuer: config.external_issuer.clone(),
            require_issuer_audience: config.require_issuer_audience,
            leeway: config.leeway_secs,
        })
    }

    /// Signs `claims` with the current key, filling `iss`, `aud`, `iat`.
    pub fn sign(&self, mut claims: Claims) -> Result<Issued, Error> {
        claims.iss = Some(self.issuer.clone());
        claims.aud = Some(Audience::One(self.audience.clone()));
        claims.iat.get_or_insert_with(|| chrono::Utc::now().timestamp());
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.signing_kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.signing)
            .map_err(|source| Error::Token { op: "signing a token", source })?;
        Ok(Issued { token, claims })
    }

    /// Signs an access token for tools (`conveyor token mint`, the DLQ CLI); not tied to a
    /// user row, so it carries no family and is revoked by its `jti`.
    pub fn mint(&self, sub: &str, roles: &[String], ttl: std::time::Duration) -> Result<String, Error> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: sub.to_string(),
            uid: None,
            roles: roles.to_vec(),
            token_type: Some(TokenType::Access),
            jti: Some(uuid::Uuid::now_v7().to_string()),
            fam: None,
            iat: Some(now),
            exp: now + ttl.as_secs() as i64,
            iss: None,
            aud: None,
        };
        Ok(self.sign(claims)?.token)
    }

    /// Checks signature, algorithm, time window, issuer and audience.
    pub fn verify(&self, token: &str) -> Result<Claims, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal("invalid token"))?;
        let key = match &header.kid {
            Some(kid) => self.by_kid.get(kid).ok_or(Refusal("unknown signing key"))?,
            // Seed 003's tokens carry no `kid`: they are signed with the shared secret.
            None => self.by_kid.get(&self.signing_kid).ok_or(Refusal("unknown signing key"))?,
        };
        if header.alg != key.algorithm {
            return Err(Refusal("token algorithm not allowed for its key"));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        // jsonwebtoken would require `aud` whenever it checks it; the policy below is ours.
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::from(["exp".to_string()]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => Refusal("token expired"),
                ErrorKind::ImmatureSignature => Refusal("token not yet valid"),
                _ => Refusal("invalid token"),
            }
        })?;
        let claims = data.claims;
        let wanted_issuer = if key.external { &self.external_issuer } else { &self.issuer };
        match &claims.iss {
            Some(iss) if !wanted_issuer.is_empty() && iss != wanted_issuer => {
                return Err(Refusal("token issuer not accepted"));
            }
            None if self.require_issuer_audience || (key.external && !wanted_issuer.is_empty()) => {
                return Err(Refusal("token has no issuer"));
            }
            _ => {}
        }
        match &claims.aud {
            Some(aud) if !aud.contains(&self.audience) => return Err(Refusal("token audience not accepted")),
            None if self.require_issuer_audience => return Err(Refusal("token has no audience")),
            _ => {}
        }
        if claims.subject().is_empty() {
            return Err(Refusal("token has no subject"));
        }
        Ok(claims)
    }
}

fn load_jwks(path: &Path, by_kid: &mut HashMap<String, VerifyKey>) -> Result<(), Error> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let set: JwkSet = serde_json::from_slice(&text).map_err(|source| Error::Config {
        key: "auth.jwks_file",
        reason: format!("{}: not a JWKS document ({source})", path.display()),
    })?;
    for jwk in &set.keys {
        let bad = |reason: &str| Error::Config { key: "auth.jwks_file", reason: reason.to_string() };
        let kid = jwk.common.key_id.clone().ok_or_else(|| bad("every key needs a kid"))?;
        let algorithm = jwks_algorithm(jwk).ok_or_else(|| bad("every key must be RS256 (RSA) or EdDSA (Ed25519)"))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|source| Error::Token { op: "reading a JWKS key", source })?;
        by_kid.insert(kid, VerifyKey { key, algorithm, external: true });
    }
    Ok(())
}

/// A key's algorithm: its `alg`, or, since many providers leave `alg` out, the one its key
/// type implies. Other algorithms are refused rather than guessed.
fn jwks_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, KeyAlgorithm};
    match (jwk.common.key_algorithm, &jwk.algorithm) {
        (Some(KeyAlgorithm::RS256), AlgorithmParameters::RSA(_)) => Some(Algorithm::RS256),
        (Some(KeyAlgorithm::EdDSA), AlgorithmParameters::OctetKeyPair(_)) => Some(Algorithm::EdDSA),
        (None, AlgorithmParameters::RSA(_)) => Some(Algorithm::RS256),
        (None, AlgorithmParameters::OctetKeyPair(p)) if p.curve == EllipticCurve::Ed25519 => Some(Algorithm::EdDSA),
        _ => None,
    }
}

/// The configured signing secret, else the one in `{data_dir}/jwt_secret`, created on
/// first start so that the embedded default needs no configuration.
pub fn resolve_secret(config: &conveyor_actors::config::Config) -> Result<(Vec<u8>, bool), Error> {
    use std::io::Write;
    if !config.auth.jwt_secret.is_empty() {
        return Ok((config.auth.jwt_secret.expose().as_bytes().to_vec(), false));
    }
    let path = config.data_dir.join("jwt_secret");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let trimmed = existing.trim();
        if !trimmed.is_empty() {
            return Ok((trimmed.as_bytes().to_vec(), false));
        }
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::io(&config.data_dir, e))?;
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(|e| Error::io(&path, e))?;
    file.write_all(hex.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| Error::io(&path, e))?;
    Ok((hex.into_bytes(), true))
}

/// The keyring for tools that run beside the daemon (same secret, same file).
pub fn keys_for(config: &conveyor_actors::config::Config) -> Result<TokenKeys, Error> {
    let (secret, _) = resolve_secret(config)?;
    TokenKeys::new(&config.auth, &secret)
}
