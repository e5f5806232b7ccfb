//! argon2id password hashing, off the async runtime's worker threads and bounded in how
//! many run at once (each holds `argon2_memory_kib` of memory for tens of milliseconds).

use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};
use tokio::sync::Semaphore;

use conveyor_actors::Error;
use conveyor_actors::config::PasswordConfig;

#[derive(Clone)]
pub struct Passwords {
    params: Params,
    permits: Arc<Semaphore>,
    /// Verified against when the email is unknown, so that a login for a missing account
    /// costs what a wrong password costs and timing does not reveal which it was.
    dummy: Arc<OnceLock<String>>,
}

impl Passwords {
    pub fn new(config: &PasswordConfig) -> Result<Self, Error> {
        let params = Params::new(config.argon2_memory_kib, config.argon2_iterations, config.argon2_parallelism, None)
            .map_err(|e| Error::Config { key: "auth.password", reason: e.to_string() })?;
        Ok(Passwords {
            params,
            permits: Arc::new(Semaphore::new(config.max_concurrent_hashes)),
            dummy: Arc::new(OnceLock::new()),
        })
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, self.params.clone())
    }

    /// A PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
    pub async fn hash(&self, password: String) -> Result<String, Error> {
        let _permit = self.permits.acquire().await.map_err(|_| Error::ShuttingDown)?;
        let argon2 = self.argon2();
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            argon2.hash_password(password.as_bytes(), &salt).map(|h| h.to_string())
        })
        .await
        .map_err(|_| Error::ShuttingDown)?
        .map_err(|source| Error::PasswordHash { source })
    }

    /// `true` when `password` matches `stored`; `stored = None` spends the same time and
    /// answers `false`.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, Error> {
        let _permit = self.permits.acquire().await.map_err(|_| Error::ShuttingDown)?;
        let argon2 = self.argon2();
        let dummy = self.dummy.clone();
        tokio::task::spawn_blocking(move || {
            let known = stored.is_some();
            let phc = stored.unwrap_or_else(|| {
                dummy
                    .get_or_init(|| {
                        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
                        argon2.hash_password(b"not a password", &salt).map(|h| h.to_string()).unwrap_or_default()
                    })
                    .clone()
            });
            // The stored string names its own parameters; old hashes keep verifying after
            // the configured cost changes.
            let Ok(parsed) = PasswordHash::new(&phc) else { return false };
            argon2.verify_password(password.as_bytes(), &parsed).is_ok() && known
        })
        .await
        .map_err(|_| Error::ShuttingDown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Passwords {
        let config = PasswordConfig { argon2_memory_kib: 64, argon2_iterations: 1, ..PasswordConfig::default() };
        Passwords::new(&config).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn hashes_are_argon2id_salted_and_verify() {
        let p = cheap();
        let a = p.hash("correct horse".into()).await.unwrap_or_default();
        let b = p.hash("correct horse".into()).await.unwrap_or_default();
        assert!(a.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(p.verify("correct horse".into(), Some(a.clone())).await.unwrap_or(false));
        assert!(!p.verify("wrong".into(), Some(a)).await.unwrap_or(true));
        assert!(!p.verify("not a password".into(), None).await.unwrap_or(true), "unknown user never matches");
    }
}
