//! Loading the configuration: defaults, then `config.toml` (or `--config PATH`), then
//! `CONVEYOR_SECTION__KEY` environment variables, and secrets from the files named by
//! `CONVEYOR_SECTION__KEY_FILE` (conveyor_config::secrets_from_files); then validation
//! across fields.

use std::path::{Path, PathBuf};

use conveyor_actors::config::{Config, FileValue, is_secret_file_var, secrets_from_files};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};

/// Why the configuration cannot be used, naming the key; the process exits with 64 (EX_USAGE).
#[derive(Debug)]
pub struct BadConfig {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for BadConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.key, self.message)
    }
}

impl std::error::Error for BadConfig {}

/// `error: cause: cause`, for an error whose causes say which file and why.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// The file used when `--config` is not given: `./config.toml` if it exists.
pub fn default_path() -> Option<PathBuf> {
    let p = PathBuf::from("config.toml");
    p.exists().then_some(p)
}

pub fn load(path: Option<&Path>) -> Result<Config, BadConfig> {
    // Defaults come from `#[serde(default)]` on every section, not from a serialised
    // `Config::default()`: serialising would carry redacted secrets into the result.
    let mut figment = Figment::new();
    if let Some(path) = path {
        if !path.exists() {
            return Err(BadConfig { key: "--config".into(), message: format!("{} does not exist", path.display()) });
        }
        figment = figment.merge(Toml::file(path));
    }
    figment = figment.merge(
        Env::prefixed("CONVEYOR_")
            .split("__")
            // `split` has turned `__` into `.` by the time the filter sees the key.
            .filter(|k| {
                is_config_key(k.as_str()) && !is_secret_file_var(&format!("CONVEYOR_{}", k.as_str().replace('.', "__")))
            }),
    );
    let vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.len() > 9 && k[..9].eq_ignore_ascii_case("CONVEYOR_"))
        .collect();
    let secrets = secrets_from_files(&vars, |path| std::fs::read(path)).map_err(|e| {
        let key = e.variable().to_string();
        let chain = error_chain(&e);
        let message = chain.strip_prefix(&format!("{key}: ")).unwrap_or(&chain).to_string();
        BadConfig { key, message }
    })?;
    for secret in secrets {
        figment = match secret.kind {
            FileValue::Text => figment.merge(Serialized::default(secret.key, secret.value)),
            FileValue::Structured => {
                let value: figment::value::Value = secret.value.parse().unwrap_or_else(|never| match never {});
                figment.merge(Serialized::default(secret.key, value))
            }
        };
    }
    let config: Config = figment.extract().map_err(|e| {
        let key = if e.path.is_empty() { "(file)".to_string() } else { e.path.join(".") };
        BadConfig { key, message: e.kind.to_string() }
    })?;
    config.validate().map_err(|e| BadConfig { key: e.key.to_string(), message: e.reason })?;
    Ok(config)
}

/// Top-level keys of [`Config`]; other `CONVEYOR_*` variables (used by scripts and
/// tests) are not configuration and must not trip `deny_unknown_fields`.
const SECTIONS: &[&str] = &[
    "data_dir",
    "http",
    "auth",
    "rate_limit",
    "log",
    "store",
    "cache",
    "ingest",
    "processing",
    "retry",
    "breaker",
    "dlq",
    "loyalty",
    "outbox",
    "faults",
    "webhooks",
    "workflows",
    "retention",
    "telemetry",
    "shutdown",
];

fn is_config_key(key: &str) -> bool {
    let first = key.split("__").next().and_then(|s| s.split('.').next()).unwrap_or_default();
    SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(first))
}

/// The effective configuration as TOML, secrets redacted.
pub fn render(config: &Config) -> String {
    toml::to_string_pretty(config).unwrap_or_else(|e| format!("# cannot render: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_config() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config.toml")
    }

    #[test]
    fn documented_config_file_parses_to_the_defaults() {
        let text = std::fs::read_to_string(root_config()).unwrap_or_default();
        assert!(!text.is_empty(), "config.toml must exist at the repository root");
        let parsed: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("config.toml does not parse: {e}"));
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn every_key_is_documented_in_config_toml() {
        let text = std::fs::read_to_string(root_config()).unwrap_or_default();
        let documented: toml::Table = toml::from_str(&text).unwrap_or_default();
        let defaults: toml::Table = toml::from_str(&render(&Config::default())).unwrap_or_default();
        assert_eq!(keys(&documented, ""), keys(&defaults, ""));
    }

    fn keys(t: &toml::Table, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in t {
            match v {
                toml::Value::Table(inner) => out.extend(keys(inner, &format!("{prefix}{k}."))),
                _ => out.push(format!("{prefix}{k}")),
            }
        }
        out.sort();
        out
    }

    #[test]
    fn only_config_sections_come_from_the_environment() {
        assert!(is_config_key("http.addr"));
        assert!(is_config_key("data_dir"));
        assert!(is_config_key("log__kafka__brokers"));
        assert!(!is_config_key("cache_dir"));
        assert!(!is_config_key("test_pg_url"));
        assert!(!is_config_key("it_backends"));
        let defaults: toml::Table = toml::from_str(&render(&Config::default())).unwrap_or_default();
        let mut top: Vec<&str> = defaults.keys().map(String::as_str).collect();
        top.sort_unstable();
        let mut sections = SECTIONS.to_vec();
        sections.sort_unstable();
        assert_eq!(top, sections, "SECTIONS must list every top-level key");
    }

    #[test]
    fn bad_values_name_their_key() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[http]\naddr = \"nowhere\"\n").unwrap_or_default();
        assert_eq!(load(Some(&path)).map_err(|e| e.key).err().as_deref(), Some("http.addr"));
        std::fs::write(&path, "[log]\npartitions = \"four\"\n").unwrap_or_default();
        assert_eq!(load(Some(&path)).map_err(|e| e.key).err().as_deref(), Some("log.partitions"));
        std::fs::write(&path, "[cache]\nnope = 1\n").unwrap_or_default();
        assert!(load(Some(&path)).is_err());
    }
}
