//! Secrets read from files: `CONVEYOR_SECTION__KEY_FILE=/path` gives `section.key` the file's
//! content (one trailing newline trimmed), as Docker and Kubernetes mount secrets. Only the
//! keys that hold secrets take a `_FILE`: every [`Secret`](crate::Secret) field and the URLs
//! that carry passwords. Errors name the variable and the path, never the content.

use std::path::{Path, PathBuf};

/// How a file's content becomes the key's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileValue {
    /// Taken verbatim as a string (a password, a token, a URL).
    Text,
    /// Written as the environment variable's value would be (`previous_keys`: an array of tables).
    Structured,
}

/// The configuration keys whose value may come from a file, by dotted key.
pub const SECRET_FILE_KEYS: &[(&str, FileValue)] = &[
    ("auth.jwt_secret", FileValue::Text),
    ("auth.previous_keys", FileValue::Structured),
    ("auth.bootstrap_admin_password", FileValue::Text),
    ("log.kafka.sasl_password", FileValue::Text),
    ("store.url", FileValue::Text),
    ("cache.url", FileValue::Text),
    ("webhooks.basic_auth_password", FileValue::Text),
    ("telemetry.metrics_token", FileValue::Text),
];

/// A secret file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("{var} and {file_var} are both set; set one of them")]
    Both { var: String, file_var: String },
    #[error("{file_var}: cannot read {}", path.display())]
    Unreadable {
        file_var: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file_var}: {} is not UTF-8 text", path.display())]
    NotText { file_var: String, path: PathBuf },
}

impl SecretFileError {
    /// The variable to name as the bad key.
    pub fn variable(&self) -> &str {
        match self {
            SecretFileError::Both { file_var, .. }
            | SecretFileError::Unreadable { file_var, .. }
            | SecretFileError::NotText { file_var, .. } => file_var,
        }
    }
}

/// One key's value read from its file.
#[derive(Clone, PartialEq, Eq)]
pub struct FileSecret {
    pub key: &'static str,
    pub kind: FileValue,
    pub value: String,
}

impl std::fmt::Debug for FileSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSecret").field("key", &self.key).field("value", &"[redacted]").finish()
    }
}

/// The environment variable of a dotted key: `auth.jwt_secret` → `CONVEYOR_AUTH__JWT_SECRET`.
pub fn env_name(key: &str) -> String {
    format!("CONVEYOR_{}", key.replace('.', "__").to_ascii_uppercase())
}

/// Whether `var` is the `_FILE` variable of a secret key (then it is not configuration itself).
pub fn is_secret_file_var(var: &str) -> bool {
    SECRET_FILE_KEYS.iter().any(|(key, _)| var.eq_ignore_ascii_case(&format!("{}_FILE", env_name(key))))
}

/// Reads every secret whose `_FILE` variable is set in `vars` (names compared without case,
/// as the rest of the environment is).
pub fn secrets_from_files(
    vars: &[(String, String)],
    read: impl Fn(&Path) -> std::io::Result<Vec<u8>>,
) -> Result<Vec<FileSecret>, SecretFileError> {
    let lookup = |name: &str| vars.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    let mut out = Vec::new();
    for &(key, kind) in SECRET_FILE_KEYS {
        let var = env_name(key);
        let file_var = format!("{var}_FILE");
        let Some(path) = lookup(&file_var) else { continue };
        if lookup(&var).is_some() {
            return Err(SecretFileError::Both { var, file_var });
        }
        let path = PathBuf::from(path);
        let bytes = read(&path).map_err(|source| SecretFileError::Unreadable {
            file_var: file_var.clone(),
            path: path.clone(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| SecretFileError::NotText { file_var, path })?;
        // Mounted secrets and `echo secret > file` end in a newline that is not part of the value.
        let value = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_string();
        out.push(FileSecret { key, kind, value });
    }
    Ok(out)
}
