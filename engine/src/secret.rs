//! The JWT signing secret: configured, or generated once into the data directory so that
//! the embedded default works with no configuration at all.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use conveyor_actors::config::Config;
use conveyor_http::Auth;

pub fn secret_file(config: &Config) -> PathBuf {
    config.data_dir.join("jwt_secret")
}

/// The configured `auth.jwt_secret`, else the one in `{data_dir}/jwt_secret` (created if missing).
pub fn jwt_secret(config: &Config) -> anyhow::Result<Vec<u8>> {
    if !config.auth.jwt_secret.is_empty() {
        return Ok(config.auth.jwt_secret.expose().as_bytes().to_vec());
    }
    let path = secret_file(config);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let trimmed = existing.trim();
        if !trimmed.is_empty() {
            return Ok(trimmed.as_bytes().to_vec());
        }
    }
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(hex.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        "no auth.jwt_secret configured; generated one. Mint a token with: conveyor token mint --sub me --roles device,user"
    );
    Ok(hex.into_bytes())
}

pub fn auth(config: &Config, secret: &[u8]) -> Auth {
    Auth::new(secret, &config.auth.issuer, &config.auth.audience, config.auth.leeway_secs)
}
