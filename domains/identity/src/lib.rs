//! Identity: users, password login, token pairs, refresh-token rotation with reuse
//! detection, and revocation.
//!
//! A login starts a token *family*: every pair bought by refreshing carries the same
//! `fam`. A refresh token buys exactly one new pair; presenting it again means it was
//! stolen (or replayed), so the whole family is revoked. Logout revokes the token and
//! its family. Revocations are written to the store first and then to the cache, which
//! answers the per-request check; a cache miss (a flush, an eviction) falls back to the
//! store, so a flush never un-revokes anything.

pub mod loyalty;
pub mod metrics;
pub mod migrations;
pub mod outbox;
mod password;
pub mod retention;
pub mod saga;
pub mod states;
pub mod store;
pub mod tokens;
mod validate;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use password::Passwords;
pub use tokens::{Claims, Issued, Refusal, TokenKeys, TokenType};

use crate::store::IdentityStore;
use crate::store::users::user;
use conveyor_actors::Error;
use conveyor_actors::cache::Cache;
use conveyor_actors::config::{AuthConfig, PasswordConfig};

/// The roles Conveyor knows.
pub mod roles {
    pub const ADMIN: &str = "admin";
    pub const DEVICE: &str = "device";
    pub const USER: &str = "user";
    /// May post notifications (`POST /notifications`) to be fanned out to webhooks.
    pub const PUBLISHER: &str = "publisher";
}

/// How long a "not revoked" answer is cached: the longest a revocation made through a
/// different, unshared cache (several daemons without Redis) can go unseen.
const NOT_REVOKED_TTL: Duration = Duration::from_secs(10);

/// `POST /auth/registration`'s fields, as sent.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub email: String,
    pub password: String,
    pub name: String,
    pub birthday: String,
}

/// What registration, login and refresh return.
#[derive(Debug, Clone, Serialize)]
pub struct TokenPair {
    pub user_id: String,
    pub access_token: String,
    pub refresh_token: String,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub sub: String,
    pub roles: Vec<String>,
}

impl Principal {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// `GET /auth/info`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserInfo {
    pub user_id: String,
    /// Null for tokens that name no account (devices, tools, external providers).
    pub email: Option<String>,
    pub name: Option<String>,
    pub roles: Vec<String>,
    pub created_at: Option<DateTime<Utc>>,
    /// The registration saga (absent for accounts made by the CLI or bootstrap).
    pub registration: Option<RegistrationState>,
}

impl UserInfo {
    /// What a token says about a subject with no account.
    pub fn principal_only(p: &Principal) -> Self {
        UserInfo {
            user_id: p.sub.clone(),
            email: None,
            name: None,
            roles: p.roles.clone(),
            created_at: None,
            registration: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RegistrationState {
    pub saga_id: String,
    pub status: states::SagaStatus,
}

#[derive(Clone)]
pub struct Identity {
    store: IdentityStore,
    cache: Cache,
    keys: Arc<TokenKeys>,
    passwords: Passwords,
    policy: PasswordConfig,
    access_ttl: Duration,
    refresh_ttl: Duration,
    /// Where `user.registered` goes (through the outbox).
    registration_topic: String,
    /// Wakes the outbox relay when a registration wrote a record.
    outbox_wake: Arc<tokio::sync::Notify>,
}

fn refused(reason: &'static str) -> Error {
    Error::TokenRefused { reason }
}

impl Identity {
    pub fn new(
        config: &AuthConfig,
        keys: Arc<TokenKeys>,
        store: IdentityStore,
        cache: Cache,
        registration_topic: String,
        outbox_wake: Arc<tokio::sync::Notify>,
    ) -> Result<Self, Error> {
        Ok(Identity {
            registration_topic,
            outbox_wake,
            store,
            cache,
            keys,
            passwords: Passwords::new(&config.password)?,
            policy: config.password.clone(),
            access_ttl: Duration::from_secs(config.access_ttl_secs),
            refresh_ttl: Duration::from_secs(config.refresh_ttl_secs),
        })
    }

    pub fn keys(&self) -> &TokenKeys {
        &self.keys
    }

    /// Creates a `user` account, starts its registration saga (the loyalty side credits
    /// the welcome bonus when `user.registered` reaches it) and signs the first pair.
    pub async fn register(&self, form: Registration) -> Result<TokenPair, Error> {
        let user = self.insert_user(form, &[roles::USER], true).await?;
        self.outbox_wake.notify_one();
        self.issue_pair(&user, None).await
    }

    /// Validates, hashes and inserts a user with `roles` (the CLI, bootstrap: no saga).
    pub async fn create_user(&self, form: Registration, roles: &[&str]) -> Result<user::Model, Error> {
        self.insert_user(form, roles, false).await
    }

    async fn insert_user(&self, form: Registration, roles: &[&str], saga: bool) -> Result<user::Model, Error> {
        let valid = validate::registration(&form, &self.policy)?;
        let password_hash = self.passwords.hash(form.password).await?;
        let row = user::Model {
            id: uuid::Uuid::now_v7().to_string(),
            email: valid.email,
            password_hash,
            name: valid.name,
            birthday: valid.birthday,
            roles: roles.join(","),
            created_at: Utc::now(),
        };
        let started = saga;
        let saga = saga.then(|| crate::saga::start_registration(&row.id, &self.registration_topic));
        self.store.insert_user(row.clone(), saga).await?;
        if started {
            crate::saga::registration_started();
        }
        Ok(row)
    }

    /// Creates the configured admin unless its email already has an account.
    pub async fn bootstrap_admin(&self, email: &str, password: &str) -> Result<bool, Error> {
        if self.store.user_by_email(&validate::normalise_email(email)).await?.is_some() {
            return Ok(false);
        }
        let form = Registration {
            email: email.to_string(),
            password: password.to_string(),
            name: "admin".into(),
            birthday: "1970-01-01".into(),
        };
        match self.create_user(form, &[roles::USER, roles::ADMIN]).await {
            Ok(_) => Ok(true),
            Err(Error::EmailTaken) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<TokenPair, Error> {
        let user = self.store.user_by_email(&validate::normalise_email(email)).await?;
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        if !self.passwords.verify(password.to_string(), stored).await? {
            return Err(Error::InvalidCredentials);
        }
        let user = user.ok_or(Error::InvalidCredentials)?;
        self.issue_pair(&user, None).await
    }

    /// Rotates a refresh token: it buys one new pair, and a second use revokes its family.
    pub async fn refresh(&self, token: &str) -> Result<TokenPair, Error> {
        let claims = self.keys.verify(token).map_err(|r| refused(r.0))?;
        if claims.token_type() != TokenType::Refresh {
            return Err(refused("a refresh token is required"));
        }
        let (Some(jti), Some(fam)) = (claims.jti.as_deref(), claims.fam.as_deref()) else {
            return Err(refused("invalid token"));
        };
        if self.is_revoked(fam).await? || self.is_revoked(jti).await? {
            return Err(refused("token revoked"));
        }
        if !self.store.use_refresh_token(jti).await? {
            self.revoke(fam, Utc::now() + self.refresh_ttl).await?;
            tracing::warn!(subject_kind = "user", "refresh token reused: its token family is revoked");
            return Err(refused("refresh token already used; the session is revoked"));
        }
        let user = self.store.user_by_id(claims.subject()).await?.ok_or(refused("the account no longer exists"))?;
        self.issue_pair(&user, Some(fam.to_string())).await
    }

    /// Revokes `token`. An access token is revoked alone (seed 004's logout: the session's
    /// refresh token still works); a refresh token ends its whole session, so every access
    /// token issued in it stops working too.
    pub async fn logout(&self, token: &str) -> Result<(), Error> {
        let claims = self.keys.verify(token).map_err(|r| refused(r.0))?;
        let Some(jti) = &claims.jti else {
            return Err(Error::InvalidInput {
                fields: vec![conveyor_actors::error::FieldError::new(
                    "token",
                    "carries no jti, so it cannot be revoked",
                )],
            });
        };
        self.revoke(jti, DateTime::from_timestamp(claims.exp, 0).unwrap_or_else(Utc::now)).await?;
        if claims.token_type() == TokenType::Refresh
            && let Some(fam) = &claims.fam
        {
            self.revoke(fam, Utc::now() + self.refresh_ttl).await?;
        }
        Ok(())
    }

    /// Authenticates an access token: signature, claims, type, revocation (of the token
    /// itself or of its session).
    pub async fn authenticate(&self, token: &str) -> Result<Principal, Error> {
        let claims = self.keys.verify(token).map_err(|r| refused(r.0))?;
        if claims.token_type() != TokenType::Access {
            return Err(refused("an access token is required"));
        }
        let (token_revoked, session_revoked) =
            tokio::try_join!(self.is_revoked_opt(claims.jti.as_deref()), self.is_revoked_opt(claims.fam.as_deref()))?;
        if token_revoked || session_revoked {
            return Err(refused("token revoked"));
        }
        Ok(Principal { sub: claims.subject().to_string(), roles: claims.roles })
    }

    pub async fn info(&self, principal: &Principal) -> Result<Option<UserInfo>, Error> {
        let Some(u) = self.store.user_by_id(&principal.sub).await? else { return Ok(None) };
        let registration = self
            .store
            .saga_of_user(&u.id, states::SagaKind::Registration)
            .await?
            .map(|s| RegistrationState { saga_id: s.id, status: s.status });
        Ok(Some(UserInfo {
            user_id: u.id,
            email: Some(u.email),
            name: Some(u.name),
            roles: split_roles(&u.roles),
            created_at: Some(u.created_at),
            registration,
        }))
    }

    async fn issue_pair(&self, user: &user::Model, family: Option<String>) -> Result<TokenPair, Error> {
        let family = family.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let now = Utc::now().timestamp();
        let claims = |token_type, ttl: Duration| Claims {
            sub: user.id.clone(),
            uid: Some(user.id.clone()),
            roles: split_roles(&user.roles),
            token_type: Some(token_type),
            jti: Some(uuid::Uuid::now_v7().to_string()),
            fam: Some(family.clone()),
            iat: Some(now),
            exp: now + ttl.as_secs() as i64,
            iss: None,
            aud: None,
        };
        let access = self.keys.sign(claims(TokenType::Access, self.access_ttl))?;
        let refresh = self.keys.sign(claims(TokenType::Refresh, self.refresh_ttl))?;
        let jti = refresh.claims.jti.as_deref().unwrap_or_default();
        let expires = DateTime::from_timestamp(refresh.claims.exp, 0).unwrap_or_else(Utc::now);
        self.store.insert_refresh_token(jti, &family, &user.id, expires).await?;
        Ok(TokenPair { user_id: user.id.clone(), access_token: access.token, refresh_token: refresh.token })
    }

    async fn revoke(&self, id: &str, until: DateTime<Utc>) -> Result<(), Error> {
        self.store.revoke(id, until).await?;
        let ttl = (until - Utc::now()).to_std().unwrap_or(Duration::from_secs(1));
        if let Err(err) = self.cache.set(&revoked_key(id), "1", ttl).await {
            // The store has it; checks that miss the cache read the store.
            tracing::warn!(error = %conveyor_actors::error::chain(&err), "revocation not cached");
        }
        Ok(())
    }

    async fn is_revoked_opt(&self, id: Option<&str>) -> Result<bool, Error> {
        match id {
            Some(id) => self.is_revoked(id).await,
            None => Ok(false),
        }
    }

    /// Cache first; on a miss or a cache failure, the store (and the answer is cached, a
    /// revocation for as long as it lasts).
    async fn is_revoked(&self, id: &str) -> Result<bool, Error> {
        let key = revoked_key(id);
        if let Ok(Some(value)) = self.cache.get(&key).await {
            return Ok(value == "1");
        }
        // Boxed: every request authenticates, and the store's future inlined here made each
        // request's handler future 11 KB larger for a path the cache usually saves.
        Box::pin(self.revoked_in_store(id, &key)).await
    }

    async fn revoked_in_store(&self, id: &str, key: &str) -> Result<bool, Error> {
        let until = self.store.revoked_until(id).await?;
        let fill = match until {
            Some(until) => {
                let ttl = (until - Utc::now()).to_std().unwrap_or(Duration::from_secs(1));
                self.cache.set(key, "1", ttl).await
            }
            // Only into an empty slot: a revocation written meanwhile must win.
            None => self.cache.set_nx(key, "0", NOT_REVOKED_TTL).await.map(drop),
        };
        if let Err(err) = fill {
            tracing::debug!(error = %conveyor_actors::error::chain(&err), "revocation check not cached");
        }
        Ok(until.is_some())
    }
}

fn revoked_key(id: &str) -> String {
    format!("revoked:{id}")
}

fn split_roles(roles: &str) -> Vec<String> {
    roles.split(',').filter(|r| !r.is_empty()).map(str::to_string).collect()
}
