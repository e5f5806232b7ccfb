//! The defaults are valid, cross-field rules name their key, and secrets never print.

use super::*;

#[test]
fn defaults_are_valid() {
    assert_eq!(Config::default().validate(), Ok(()));
}

#[test]
fn cross_field_rules_name_the_key() {
    let mut c = Config::default();
    c.log.backend = LogBackendKind::Kafka;
    c.log.kafka.security_protocol = SecurityProtocol::SaslSsl;
    assert_eq!(c.validate().map_err(|e| e.key), Err("log.kafka.sasl_username"));

    let mut c = Config::default();
    c.retry.base_ms = 120_000;
    assert_eq!(c.validate().map_err(|e| e.key), Err("retry.base_ms"));

    let mut c = Config::default();
    c.log.topics.events_dlq = c.log.topics.events_input.clone();
    assert_eq!(c.validate().map_err(|e| e.key), Err("log.topics.events_dlq"));

    let mut c = Config::default();
    c.http.addr = "localhost".into();
    assert_eq!(c.validate().map_err(|e| e.key), Err("http.addr"));
}

#[test]
fn secrets_never_print() {
    let mut c = Config::default();
    c.auth.jwt_secret = Secret::new("hunter2");
    assert!(!format!("{c:?}").contains("hunter2"));
    let json = serde_json::to_string(&c).unwrap_or_default();
    assert!(!json.contains("hunter2"));
    assert!(json.contains("[redacted]"));
}

#[test]
fn url_passwords_are_masked() {
    assert_eq!(masked_url("postgres://u:hunter2@db:5432/x"), "postgres://u:***@db:5432/x");
    assert_eq!(masked_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    assert_eq!(masked_url("memory"), "memory");
    let mut c = Config::default();
    c.store.url = "postgres://u:hunter2@db/x".into();
    assert!(!serde_json::to_string(&c).unwrap_or_default().contains("hunter2"));
}

#[test]
fn default_store_is_sqlite_in_data_dir() {
    assert_eq!(Config::default().store_url(), "sqlite://./data/conveyor.db?mode=rwc");
}

#[test]
fn store_sslmode_is_one_libpq_knows() {
    let mut c = Config::default();
    for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
        c.store.url = format!("postgres://u:p@db/x?sslmode={mode}&sslrootcert=/etc/ca.pem");
        assert_eq!(c.validate(), Ok(()), "{mode}");
    }
    c.store.url = "postgres://u:p@db/x?application_name=c&sslmode=verify".into();
    assert_eq!(c.validate().map_err(|e| e.key), Err("store.url"));
}

#[test]
fn cache_tls_files_need_rediss_and_come_in_pairs() {
    let mut c = Config::default();
    c.cache.tls_ca_file = "/etc/ca.pem".into();
    assert_eq!(c.validate().map_err(|e| e.key), Err("cache.tls_ca_file"), "a CA file with the memory cache");
    c.cache.url = "rediss://cache:6380".into();
    assert_eq!(c.validate(), Ok(()));
    c.cache.tls_cert_file = "/etc/client.pem".into();
    assert_eq!(c.validate().map_err(|e| e.key), Err("cache.tls_cert_file"), "a certificate without its key");
    c.cache.tls_key_file = "/etc/client.key".into();
    assert_eq!(c.validate(), Ok(()));
}

mod secret_files {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn files(contents: &[(&str, &str)]) -> impl Fn(&Path) -> std::io::Result<Vec<u8>> {
        let map: HashMap<PathBuf, Vec<u8>> =
            contents.iter().map(|(p, c)| (PathBuf::from(p), c.as_bytes().to_vec())).collect();
        move |path| map.get(path).cloned().ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }

    #[test]
    fn a_file_gives_the_value_with_its_trailing_newline_trimmed() {
        let read = files(&[("/run/secrets/jwt", "s3cret\n"), ("/run/secrets/db", "postgres://u:p@db/x\r\n")]);
        let got = secrets_from_files(
            &vars(&[
                ("CONVEYOR_AUTH__JWT_SECRET_FILE", "/run/secrets/jwt"),
                ("conveyor_store__url_file", "/run/secrets/db"),
            ]),
            read,
        );
        let got: Vec<(&str, String)> = got.unwrap_or_default().into_iter().map(|s| (s.key, s.value)).collect();
        assert_eq!(
            got,
            vec![("auth.jwt_secret", "s3cret".to_string()), ("store.url", "postgres://u:p@db/x".to_string())]
        );
        // Only one newline is the file's ending; inner and other whitespace is the value's.
        let got = secrets_from_files(
            &vars(&[("CONVEYOR_TELEMETRY__METRICS_TOKEN_FILE", "/t")]),
            files(&[("/t", " a b \n\n")]),
        );
        assert_eq!(got.unwrap_or_default().first().map(|s| s.value.clone()), Some(" a b \n".to_string()));
    }

    #[test]
    fn both_the_variable_and_its_file_is_an_error_naming_both() {
        let err = secrets_from_files(
            &vars(&[("CONVEYOR_AUTH__JWT_SECRET", "x"), ("CONVEYOR_AUTH__JWT_SECRET_FILE", "/s")]),
            files(&[("/s", "y")]),
        )
        .err()
        .map(|e| (e.variable().to_string(), e.to_string()));
        let (var, text) = err.unwrap_or_default();
        assert_eq!(var, "CONVEYOR_AUTH__JWT_SECRET_FILE");
        assert!(text.contains("CONVEYOR_AUTH__JWT_SECRET and CONVEYOR_AUTH__JWT_SECRET_FILE"), "{text}");
    }

    #[test]
    fn an_unreadable_file_names_the_variable_and_path_never_the_content() {
        let err = secrets_from_files(&vars(&[("CONVEYOR_CACHE__URL_FILE", "/missing")]), files(&[]));
        let text = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("CONVEYOR_CACHE__URL_FILE") && text.contains("/missing"), "{text}");
        let err = secrets_from_files(&vars(&[("CONVEYOR_WEBHOOKS__BASIC_AUTH_PASSWORD_FILE", "/bin")]), |_: &Path| {
            Ok(vec![0xff, b'h', b'u', b'n', b't', b'e', b'r'])
        });
        let text = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("/bin") && text.contains("not UTF-8") && !text.contains("hunter"), "{text}");
        let secret = FileSecret { key: "auth.jwt_secret", kind: FileValue::Text, value: "hunter2".into() };
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn only_secret_keys_have_file_variables() {
        assert!(is_secret_file_var("CONVEYOR_LOG__KAFKA__SASL_PASSWORD_FILE"));
        assert!(is_secret_file_var("conveyor_auth__previous_keys_file"));
        assert!(!is_secret_file_var("CONVEYOR_AUTH__JWT_SECRET"));
        assert!(!is_secret_file_var("CONVEYOR_HTTP__ADDR_FILE"));
        assert_eq!(env_name("log.kafka.sasl_password"), "CONVEYOR_LOG__KAFKA__SASL_PASSWORD");
    }

    /// Every field that prints as `[redacted]` (found by setting each string of the
    /// configuration in turn) and every URL that may carry a password has a `_FILE` variable.
    #[test]
    fn every_secret_of_the_configuration_can_come_from_a_file() {
        let mut config = Config::default();
        config.auth.previous_keys = vec![HmacKey { kid: "old".into(), secret: Secret::default() }];
        let base = serde_json::to_value(&config).unwrap_or_default();
        let mut leaves = Vec::new();
        string_leaves(&base, "", &mut leaves);
        let mut secrets = Vec::new();
        for path in leaves {
            let mut changed = base.clone();
            if let Some(leaf) = changed.pointer_mut(&path) {
                *leaf = serde_json::Value::String("x".into());
            }
            let Ok(parsed) = serde_json::from_value::<Config>(changed) else { continue };
            let printed = serde_json::to_value(&parsed).unwrap_or_default();
            if printed.pointer(&path).and_then(|v| v.as_str()) == Some("[redacted]") {
                secrets.push(path);
            }
        }
        assert!(secrets.len() >= 6, "the search found too few secrets: {secrets:?}");
        let covered = |pointer: &str| {
            SECRET_FILE_KEYS.iter().any(|(key, _)| {
                let prefix = format!("/{}", key.replace('.', "/"));
                pointer == prefix || pointer.starts_with(&format!("{prefix}/"))
            })
        };
        for secret in &secrets {
            assert!(covered(secret), "{secret} is a secret without a _FILE variable");
        }
        assert!(covered("/store/url") && covered("/cache/url"), "URLs carry passwords");
    }

    fn string_leaves(value: &serde_json::Value, at: &str, out: &mut Vec<String>) {
        match value {
            serde_json::Value::String(_) => out.push(at.to_string()),
            serde_json::Value::Object(map) => map.iter().for_each(|(k, v)| string_leaves(v, &format!("{at}/{k}"), out)),
            serde_json::Value::Array(items) => {
                items.iter().enumerate().for_each(|(i, v)| string_leaves(v, &format!("{at}/{i}"), out))
            }
            _ => {}
        }
    }
}
